"""`fal deploy`'s app_files: files uploaded by content hash, kept per namespace until deployed.

The fal SDK uploads an app's `app_files` before it calls `RegisterApplication`, by hash
(`fal/file_sync.py`, `fal/upload.py`), to `FAL_REST_HOST` (or the control plane's port, which
relays `/files/*` here):

* `POST /files/missing_hashes` `{"hashes": [...]}` → the hashes this namespace does not hold;
* `POST /files/app/multipart/<hash>/initiate` with the file's metadata (`size`, `mode`, ...)
  → `{"upload_id"}`, or 409 when the file is already held (the SDK then skips it);
* `PUT .../<hash>/<upload_id>/<n>`, multipart/form-data field `file_upload` → `{"part_number",
  "etag"}`;
* `POST .../<hash>/<upload_id>/complete` `{"parts", "metadata"}` → `{"hash"}`, after checking
  that SHA-256 of the bytes and the mode (fal's `compute_hash`) is `<hash>`;
* `POST .../<hash>/<upload_id>/cancel`;
* `GET /files/app/<hash>` → the bytes (kubefal's own: the control plane reads the files of a
  `fal deploy` with the deploying caller's key and bundles them, docs/packaging.md).

The namespace is the caller's key's, as for every upload (routes.py). Objects live in the
file store under `_kubefal/appfiles/<namespace>/<hash>`, with the store's retention (the
control plane copies them into the app's ConfigMaps at deploy time); upload records and parts
under `_kubefal/appuploads/` expire after `UPLOAD_TTL`; until then an upload counts against
the namespace's `--storage-max-open-uploads` like every initiated upload (core.py, 429 beyond).
An app file travels in a ConfigMap, so one is at most `MAX_APP_FILE_BYTES` (413 naming `/data`
and images instead).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any, Final

from kubefal_gateway import errors, http_api
from kubefal_gateway.http_api import Receive, Scope, Send, header_value
from kubefal_gateway.storage import blobs, forms
from kubefal_gateway.storage import core as storage_core

FILES_PREFIX: Final = "_kubefal/appfiles"
UPLOADS_PREFIX: Final = "_kubefal/appuploads"
MAX_APP_FILE_BYTES: Final = 1024 * 1024
"""What one ConfigMap can carry, roughly (the control plane's bundles are stricter)."""
MAX_PARTS: Final = 16
MAX_HASHES: Final = 65_536
STAT_EACH_UP_TO: Final = 64
"""Above this many hashes, missing_hashes lists the namespace's files instead of a stat each."""
MAX_JSON_BYTES: Final = 8 * 1024 * 1024
FORM_OVERHEAD: Final = 64 * 1024
UPLOAD_TTL: Final = 3600.0
_HASH = re.compile(r"[0-9a-f]{64}")
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
TOO_LARGE = (
    "app_files travel to the cluster in ConfigMaps: one file may be at most {limit} bytes; "
    "put larger files in /data (fal files upload, fal.sync_dir) or in an image"
)


class Conflict(errors.GatewayError):
    """The SDK reads 409 on initiate as "already uploaded" and skips the file."""

    status = 409
    error_type = "already_exists"


def check_hash(value: object) -> str:
    if not isinstance(value, str) or not _HASH.fullmatch(value):
        raise errors.BadRequest("A file hash is 64 lowercase hexadecimal characters")
    return value


def _check_upload_id(value: str) -> str:
    if not _UPLOAD_ID.fullmatch(value):
        raise errors.NotFound("Unknown upload")
    return value


def file_key(namespace: str, file_hash: str) -> str:
    return f"{FILES_PREFIX}/{namespace}/{file_hash}"


def _record_key(namespace: str, upload_id: str) -> str:
    return f"{UPLOADS_PREFIX}/{namespace}/{upload_id}/record"


def _part_key(namespace: str, upload_id: str, number: int) -> str:
    return f"{UPLOADS_PREFIX}/{namespace}/{upload_id}/part-{number}"


def form_file(body: bytes, content_type: str, field: str = "file_upload") -> bytes:
    """The content of the file field `field` of a multipart/form-data body held in memory."""
    delimiter = forms.delimiter(content_type)
    if delimiter is None:
        raise errors.BadRequest("Send the part as multipart/form-data")
    found = forms.field_range(body, delimiter, field)
    if found is None:
        raise errors.BadRequest(f"The form has no {field!r} file")
    return body[found[0] : found[1]]


def fal_hash(data: bytes, mode: int) -> str:
    """fal's `compute_hash`: SHA-256 of the content, then of the decimal file mode."""
    digest = hashlib.sha256(data)
    digest.update(f"{mode}".encode())
    return digest.hexdigest()


def _is_decimal(text: str) -> bool:
    """ASCII digits only: `str.isdigit` also takes "²", which `int` refuses (a 500)."""
    return text.isascii() and text.isdigit()


def _mode(metadata: object) -> int:
    raw = metadata.get("mode") if isinstance(metadata, dict) else None
    if not isinstance(raw, str | int) or isinstance(raw, bool) or not _is_decimal(str(raw)):
        raise errors.BadRequest("metadata.mode: the file's mode as a decimal number")
    mode = int(str(raw)[:12])
    if not 0 <= mode < 2**32:
        raise errors.BadRequest("metadata.mode: out of range")
    return mode


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


class AppFiles:
    """The app-files routes over the file store; `handle` takes one request."""

    def __init__(self, storage: storage_core.Storage) -> None:
        self.storage = storage
        self.store = storage.store

    async def _held(self, key: str) -> blobs.BlobInfo | None:
        """The object's size and metadata when held and not past its retention (the sweep
        deletes it later); None otherwise."""
        try:
            info = await self.store.stat(key)
        except blobs.BlobNotFound:
            return None
        expires = float(info.meta.get("expires", "0") or 0)
        return None if expires and expires <= self.storage.clock() else info

    async def handle(self, scope: Scope, receive: Receive, send: Send, namespace: str) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/files/missing_hashes":
            self._only(method, "POST")
            await self._missing(scope, receive, send, namespace)
            return
        rest = path[len("/files/app/") :]
        if not rest.startswith("multipart/"):
            self._only(method, "GET")
            await self._download(send, namespace, check_hash(rest))
            return
        parts = rest[len("multipart/") :].split("/")
        file_hash = check_hash(parts[0])
        if len(parts) == 2 and parts[1] == "initiate":
            self._only(method, "POST")
            await self._initiate(scope, receive, send, namespace, file_hash)
        elif len(parts) == 3 and parts[2] == "complete":
            self._only(method, "POST")
            await self._complete(scope, receive, send, namespace, file_hash, parts[1])
        elif len(parts) == 3 and parts[2] == "cancel":
            self._only(method, "POST")
            await self._cancel(scope, receive, send, namespace, parts[1])
        elif len(parts) == 3 and parts[2].isascii() and parts[2].isdigit() and len(parts[2]) < 4:
            self._only(method, "PUT")
            await self._part(scope, receive, send, namespace, file_hash, parts[1], int(parts[2]))
        else:
            raise errors.NotFound("Unknown app-files request")

    @staticmethod
    def _only(method: str, allowed: str) -> None:
        if method != allowed:
            raise errors.MethodNotAllowed(f"Use {allowed}")

    async def _missing(self, scope: Scope, receive: Receive, send: Send, namespace: str) -> None:
        body = await http_api.read_json(scope, receive, limit=MAX_JSON_BYTES)
        hashes = body.get("hashes") if isinstance(body, dict) else None
        if not isinstance(hashes, list) or len(hashes) > MAX_HASHES:
            raise errors.BadRequest(f"Send {{'hashes': [...]}} with at most {MAX_HASHES} hashes")
        wanted = list(dict.fromkeys(check_hash(value) for value in hashes))
        maybe_held = set(wanted)
        if len(wanted) > STAT_EACH_UP_TO:
            # One listing of what the namespace holds, then a stat (retention) per held hash
            # only: a long list of hashes costs no request to the store per hash.
            prefix = file_key(namespace, "")
            maybe_held &= {key.removeprefix(prefix) async for key in self.store.list(prefix)}
        missing = [
            h
            for h in wanted
            if h not in maybe_held or await self._held(file_key(namespace, h)) is None
        ]
        await http_api.send_json(send, 200, missing)

    async def _initiate(
        self, scope: Scope, receive: Receive, send: Send, namespace: str, file_hash: str
    ) -> None:
        metadata = await http_api.read_json(scope, receive, limit=64 * 1024)
        mode = _mode(metadata)
        size_raw = metadata.get("size") if isinstance(metadata, dict) else None
        if size_raw is not None:
            if not _is_decimal(str(size_raw)):
                raise errors.BadRequest("metadata.size: the file's size in bytes")
            if int(str(size_raw)[:15]) > MAX_APP_FILE_BYTES:
                raise errors.PayloadTooLarge(TOO_LARGE.format(limit=MAX_APP_FILE_BYTES))
        if await self._held(file_key(namespace, file_hash)) is not None:
            raise Conflict("This file is already uploaded")
        await self.storage.admit_upload(namespace)
        upload_id = secrets.token_hex(16)
        record = {"hash": file_hash, "mode": mode}
        deadline = self.storage.clock() + UPLOAD_TTL
        await self.store.write(
            _record_key(namespace, upload_id),
            _one(json.dumps(record).encode()),
            limit=4096,
            meta={"expires": repr(deadline)},
        )
        await self.storage.mark_open(namespace, upload_id, deadline=deadline)
        await http_api.send_json(send, 200, {"upload_id": upload_id})

    async def _record(self, namespace: str, upload_id: str, file_hash: str) -> dict[str, Any]:
        try:
            raw = await blobs.read_all(
                self.store, _record_key(namespace, _check_upload_id(upload_id)), limit=4096
            )
        except blobs.BlobNotFound:
            raise errors.NotFound("Unknown or finished upload") from None
        record = json.loads(raw)
        if not isinstance(record, dict) or record.get("hash") != file_hash:
            raise errors.NotFound("Unknown or finished upload")
        return record

    async def _part(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        namespace: str,
        file_hash: str,
        upload_id: str,
        number: int,
    ) -> None:
        if number < 1:
            raise errors.BadRequest("Part numbers start at 1")
        if number > MAX_PARTS:  # parts of at least fal's chunk size: over the file limit
            raise errors.PayloadTooLarge(TOO_LARGE.format(limit=MAX_APP_FILE_BYTES))
        await self._record(namespace, upload_id, file_hash)
        body = await http_api.read_body(scope, receive, limit=MAX_APP_FILE_BYTES + FORM_OVERHEAD)
        content_type = (header_value(scope, b"content-type") or b"").decode("latin-1")
        data = form_file(body, content_type)
        if len(data) > MAX_APP_FILE_BYTES:
            raise errors.PayloadTooLarge(TOO_LARGE.format(limit=MAX_APP_FILE_BYTES))
        await self.store.write(
            _part_key(namespace, upload_id, number),
            _one(data),
            limit=MAX_APP_FILE_BYTES,
            meta={"expires": repr(self.storage.clock() + UPLOAD_TTL)},
        )
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        await http_api.send_json(send, 200, {"part_number": number, "etag": etag})

    async def _complete(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        namespace: str,
        file_hash: str,
        upload_id: str,
    ) -> None:
        record = await self._record(namespace, upload_id, file_hash)
        body = await http_api.read_json(scope, receive, limit=64 * 1024)
        raw_parts = body.get("parts") if isinstance(body, dict) else None
        if not isinstance(raw_parts, list) or not 1 <= len(raw_parts) <= MAX_PARTS:
            raise errors.BadRequest("Send {'parts': [{'part_number': n, 'etag': ...}]}")
        numbers: list[int] = []
        for part in raw_parts:
            number = part.get("part_number") if isinstance(part, dict) else None
            if isinstance(number, bool) or not isinstance(number, int):
                raise errors.BadRequest("Each part needs an integer part_number")
            numbers.append(number)
        chunks: list[bytes] = []
        total = 0
        for number in sorted(set(numbers)):
            if not 1 <= number <= MAX_PARTS:
                raise errors.BadRequest(f"Part {number} is out of range")
            try:
                chunk = await blobs.read_all(
                    self.store, _part_key(namespace, upload_id, number), limit=MAX_APP_FILE_BYTES
                )
            except blobs.BlobNotFound:
                raise errors.BadRequest(f"Part {number} was not uploaded") from None
            total += len(chunk)
            if total > MAX_APP_FILE_BYTES:
                raise errors.PayloadTooLarge(TOO_LARGE.format(limit=MAX_APP_FILE_BYTES))
            chunks.append(chunk)
        data = b"".join(chunks)
        if fal_hash(data, int(record["mode"])) != file_hash:
            raise errors.BadRequest(
                "The uploaded bytes do not match the file hash (SHA-256 of content and mode)"
            )
        await self.store.write(
            file_key(namespace, file_hash),
            _one(data),
            limit=MAX_APP_FILE_BYTES,
            meta=self.storage._meta("application/octet-stream", self.storage._object_expiry(None))
            | {"mode": str(record["mode"])},
        )
        await self._drop(namespace, upload_id)
        await http_api.send_json(send, 200, {"hash": file_hash})

    async def _cancel(
        self, scope: Scope, receive: Receive, send: Send, namespace: str, upload_id: str
    ) -> None:
        await http_api.read_body(scope, receive, limit=64 * 1024)
        await self._drop(namespace, _check_upload_id(upload_id))
        await http_api.send_json(send, 200, True)

    async def _drop(self, namespace: str, upload_id: str) -> None:
        for number in range(1, MAX_PARTS + 1):
            await self.store.delete(_part_key(namespace, upload_id, number))
        await self.store.delete(_record_key(namespace, upload_id))
        await self.store.delete(self.storage.open_marker(namespace, upload_id))

    async def _download(self, send: Send, namespace: str, file_hash: str) -> None:
        key = file_key(namespace, file_hash)
        info = await self._held(key)
        if info is None:
            raise errors.NotFound(f"No app file {file_hash} in this namespace")
        data = await blobs.read_all(self.store, key, limit=MAX_APP_FILE_BYTES)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/octet-stream"),
                    (b"content-length", str(len(data)).encode()),
                    (b"x-fal-file-mode", info.meta.get("mode", "").encode("latin-1")),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data, "more_body": False})
