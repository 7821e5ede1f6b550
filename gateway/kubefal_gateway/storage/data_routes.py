"""fal's files API over `/data` (`fal files list|upload|download|rm|mv`, `fal.sync_dir`).

Paths as the fal SDK sends them (`fal/files.py`, `fal/upload.py`, `fal/sync.py`,
`openapi_fal_rest.api.files`), relative to the caller's namespace's `/data`:

* `GET /files/list/<path>` → `[{"path": "/data/...", "size", "is_file", "updated_time"}]`;
* `GET /files/file/<path>` → the bytes; `DELETE /files/file/<path>`;
* `POST /files/file/local/<path>[?unzip=true]`, multipart/form-data field `file_upload`
  (`sync_dir` uploads a zip with `unzip=true`);
* `POST /files/file/multipart/<path>/initiate` → `{"upload_id"}`, `PUT .../<id>/<n>` (form
  field `file_upload`) → `{"part_number", "etag"}`, `POST .../<id>/complete` with `{"parts"}`
  → `{"etag": <md5 of the file>}`, `POST .../<id>/cancel`;
* `POST /files/rename/<path>` with `{"destination"}`;
* `POST /files/dir/check_hash/<path>` with `{"hash"}` → whether the directory holds that
  `.fal_hash` (sync_dir skips the upload when it does);
* `POST /files/file/url/<path>` is refused (400): the gateway fetches no URL for a caller.

Credentials: an API key (`Authorization: Key ...`); the namespace is the key's (routes.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import io
import os
import pathlib
import secrets
from collections.abc import Callable
from typing import IO, Any, TypeVar

from kubefal_gateway import errors, http_api
from kubefal_gateway.http_api import Receive, Scope, Send, header_value
from kubefal_gateway.storage import datafiles

T = TypeVar("T")
MAX_JSON_BYTES = 64 * 1024
FORM_OVERHEAD = 64 * 1024
PREFIXES = ("/files/list/", "/files/file/", "/files/rename/", "/files/dir/check_hash/")


class _Range(io.RawIOBase):
    """A readable, seekable window `[start, start + length)` of an open file (zipfile seeks)."""

    def __init__(self, handle: IO[bytes], start: int, length: int) -> None:
        super().__init__()
        self.handle = handle
        self.start = start
        self.length = length
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.length}[whence]
        self.position = max(0, min(self.length, base + offset))
        return self.position

    def readinto(self, buffer: Any) -> int:
        wanted = min(len(buffer), self.length - self.position)
        if wanted <= 0:
            return 0
        self.handle.seek(self.start + self.position)
        chunk = self.handle.read(wanted)
        buffer[: len(chunk)] = chunk
        self.position += len(chunk)
        return len(chunk)


def to_gateway_error(error: Exception) -> errors.GatewayError | None:
    if isinstance(error, datafiles.DataNotFound):
        return errors.NotFound(str(error))
    if isinstance(error, datafiles.DataInvalid):
        return errors.BadRequest(str(error))
    if isinstance(error, datafiles.DataTooLarge):
        return errors.PayloadTooLarge(str(error))
    if isinstance(error, datafiles.DataBusy):
        return errors.TooManyRequests(str(error), retry_after=60)
    return None


class DataApi:
    def __init__(self, files: datafiles.DataFiles) -> None:
        self.files = files

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        from kubefal_gateway.storage import routes

        try:
            return await asyncio.get_running_loop().run_in_executor(
                None, functools.partial(function, *args)
            )
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise routes.StorageFull(f"/data is full: {error.strerror}") from error
            raise routes.StorageUnavailable(f"/data failed: {error.strerror}") from error

    async def _form_body(
        self, scope: Scope, receive: Receive, namespace: str, limit: int
    ) -> pathlib.Path:
        """The request body in a temporary file under the namespace's /data (same disk)."""
        base = await self._run(self.files.base, namespace)
        path = base / f"{datafiles.HIDDEN_PREFIX}body-{secrets.token_hex(8)}"
        declared = header_value(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise errors.PayloadTooLarge(f"File too large: the limit is {limit} bytes")
        loop = asyncio.get_running_loop()
        handle = await self._run(path.open, "wb")
        total = 0
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise errors.BadRequest("Client disconnected")
                chunk = message.get("body", b"")
                total += len(chunk)
                if total > limit:
                    raise errors.PayloadTooLarge(f"File too large: the limit is {limit} bytes")
                if chunk:
                    await loop.run_in_executor(None, handle.write, chunk)
                if not message.get("more_body", False):
                    break
        except BaseException:
            handle.close()
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        handle.close()
        return path

    async def _with_form_file(
        self,
        scope: Scope,
        receive: Receive,
        namespace: str,
        use: Callable[[IO[bytes], int], T],
    ) -> T:
        limit = self.files.limits.max_file_bytes + FORM_OVERHEAD
        body = await self._form_body(scope, receive, namespace, limit)
        content_type = (header_value(scope, b"content-type") or b"").decode("latin-1")

        def consume() -> T:
            start, end = datafiles.form_file(body, content_type)
            with body.open("rb") as handle:
                window = io.BufferedReader(_Range(handle, start, end - start), 1024 * 1024)
                return use(window, end - start)

        try:
            return await self._run(consume)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(body)

    async def handle(self, scope: Scope, receive: Receive, send: Send, namespace: str) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        files = self.files
        if path.startswith("/files/list/"):
            self._only(method, "GET")
            entries = await self._run(files.listing, namespace, path[len("/files/list/") :])
            await http_api.send_json(send, 200, entries)
        elif path.startswith("/files/rename/"):
            self._only(method, "POST")
            body = await http_api.read_json(scope, receive, limit=MAX_JSON_BYTES)
            destination = body.get("destination") if isinstance(body, dict) else None
            if not isinstance(destination, str):
                raise errors.BadRequest("Send {'destination': '/data/...'}")
            await self._run(files.rename, namespace, path[len("/files/rename/") :], destination)
            await http_api.send_json(send, 200, True)
        elif path.startswith("/files/dir/check_hash/"):
            self._only(method, "POST")
            body = await http_api.read_json(scope, receive, limit=MAX_JSON_BYTES)
            expected = body.get("hash") if isinstance(body, dict) else None
            if not isinstance(expected, str):
                raise errors.BadRequest("Send {'hash': '...'}")
            target = path[len("/files/dir/check_hash/") :]
            await http_api.send_json(
                send, 200, await self._run(files.check_hash, namespace, target, expected)
            )
        else:
            await self._file(scope, receive, send, namespace, path[len("/files/file/") :])

    @staticmethod
    def _only(method: str, allowed: str) -> None:
        if method != allowed:
            raise errors.MethodNotAllowed(f"Use {allowed}")

    async def _file(
        self, scope: Scope, receive: Receive, send: Send, namespace: str, rest: str
    ) -> None:
        method: str = scope["method"]
        files = self.files
        if method == "GET":
            await self._download(send, await self._run(files.file, namespace, rest))
        elif method == "DELETE":
            await self._run(files.delete, namespace, rest)
            await http_api.send_json(send, 200, True)
        elif method == "POST" and rest.startswith("local/"):
            target = rest[len("local/") :]
            unzip = http_api.query_params(scope).get("unzip", "").lower() in ("true", "1")

            def store(source: IO[bytes], size: int) -> None:
                if unzip:
                    files.unzip(namespace, target, source)
                else:
                    files.place(namespace, target, source, size)

            await self._with_form_file(scope, receive, namespace, store)
            await http_api.send_json(send, 200, True)
        elif method == "POST" and rest.startswith("url/"):
            raise errors.BadRequest(
                "kubefal does not fetch URLs for callers: download the file and upload it"
            )
        elif rest.startswith("multipart/"):
            await self._multipart(scope, receive, send, namespace, rest[len("multipart/") :])
        else:
            raise errors.MethodNotAllowed(f"{method} is not allowed here")

    async def _multipart(
        self, scope: Scope, receive: Receive, send: Send, namespace: str, rest: str
    ) -> None:
        method: str = scope["method"]
        files = self.files
        head, _, last = rest.rpartition("/")
        if method == "POST" and last == "initiate":
            upload_id = await self._run(files.begin, namespace, head)
            await http_api.send_json(send, 200, {"upload_id": upload_id})
            return
        target, _, upload_id = head.rpartition("/")
        if method == "PUT" and last.isascii() and last.isdigit() and len(last) < 10:
            number = int(last)

            def store(source: IO[bytes], size: int) -> str:
                return files.part(namespace, target, upload_id, number, source, size)

            etag = await self._with_form_file(scope, receive, namespace, store)
            await http_api.send_json(send, 200, {"part_number": number, "etag": etag})
        elif method == "POST" and last == "complete":
            body = await http_api.read_json(scope, receive, limit=MAX_JSON_BYTES)
            raw_parts = body.get("parts") if isinstance(body, dict) else None
            if not isinstance(raw_parts, list) or not all(
                isinstance(part, dict) and isinstance(part.get("part_number"), int)
                for part in raw_parts
            ):
                raise errors.BadRequest("Send {'parts': [{'part_number': n, 'etag': ...}]}")
            parts = [(int(part["part_number"]), str(part.get("etag", ""))) for part in raw_parts]
            md5 = await self._run(files.complete, namespace, target, upload_id, parts)
            await http_api.send_json(send, 200, {"etag": md5})
        elif method == "POST" and last == "cancel":
            await self._run(files.cancel, namespace, target, upload_id)
            await http_api.send_json(send, 200, True)
        else:
            raise errors.NotFound("Unknown multipart request")

    async def _download(self, send: Send, path: pathlib.Path) -> None:
        loop = asyncio.get_running_loop()
        handle = await self._run(path.open, "rb")
        try:
            size = os.fstat(handle.fileno()).st_size
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/octet-stream"),
                        (b"content-length", str(size).encode()),
                    ],
                }
            )
            while chunk := await loop.run_in_executor(None, handle.read, 1024 * 1024):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            handle.close()
