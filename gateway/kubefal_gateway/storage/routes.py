"""The REST listener (`--rest-port`): fal's storage and token endpoints as raw ASGI.

Raw ASGI like http_api.py (same helpers, same error shape: a JSON `detail` and an
`error_type`). The exact protocol, and which client sends what, is in docs/fal-storage.md:

* `POST /storage/auth/token?storage_type=fal-cdn-v3` (API key) → a CDN upload token;
* `POST /files/upload` (CDN token or API key) → `{"access_url"}`;
* `POST /files/upload/multipart` → `{"access_url", "uploadId"}`, then
  `PUT <access_url>/multipart/<uploadId>/<n>` (→ `ETag`) and
  `POST <access_url>/multipart/<uploadId>/complete` with `{"parts": [...]}`;
* `POST /storage/upload/initiate?storage_type=...` (API key) → `{"file_url", "upload_url"}`,
  then `PUT <upload_url>` with the bytes (no credentials: the URL is the capability);
* `POST /storage/upload/initiate-multipart?storage_type=fal-cdn-v3` → `{"file_url",
  "upload_url"}`, then `PUT <upload_url>/<n>` and `POST <upload_url>/complete`;
* `GET|HEAD /files/<namespace>/<id>/<expires>.<sig>/<name>`: the file, without credentials
  until the URL expires; `-` instead of the signature asks for an API key of the namespace;
* `POST /tokens/` (API key) → a realtime token (realtime.py);
* `/files/list|file|rename|dir/...`: fal's files API over `/data` (data_routes.py);
* `GET /kv/get/<db>/<key>`, `PUT /kv/set/<db>/<key>[?ttl=s]`, `DELETE /kv/delete/<db>/<key>`:
  fal.toolkit's KV store (kv.py);
* `POST /files/missing_hashes`, `/files/app/multipart/<hash>/...`, `GET /files/app/<hash>`:
  fal deploy's app_files, by content hash, per namespace (app_files.py).

Statuses: 400 malformed, 401 no or bad credentials, 403 bad signature, expired URL or another
namespace's key, 404 unknown or expired file or upload, 413 over `--storage-max-file-bytes`,
503 object store unreachable, 507 object store full.
"""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable

from kubefal_api import apikeys
from kubefal_gateway import core as gateway_core
from kubefal_gateway import errors, http_api
from kubefal_gateway.http_api import Receive, Scope, Send, header_value
from kubefal_gateway.storage import (
    app_files,
    blobs,
    data_routes,
    kv,
    names,
    realtime,
    serving,
    signing,
)
from kubefal_gateway.storage import core as storage_core

LOGGER = logging.getLogger(__name__)

MAX_JSON_BYTES = 1024 * 1024
_TOKEN = re.compile(r"[0-9]{1,12}\.[A-Za-z0-9_-]{" + str(signing.SIGNATURE_CHARS) + "}")
NAMESPACE_HEADER = b"x-kubefal-namespace"


class StorageFull(errors.GatewayError):
    status = 507
    error_type = "storage_full"


class StorageUnavailable(errors.GatewayError):
    """The object store cannot be reached; nothing was stored, the caller may retry."""

    status = 503
    error_type = "storage_unavailable"


class _ClientGone(Exception):
    pass


def _is_file_url(path: str) -> bool:
    """`/files/<namespace>/<id>/<token>/<name>...` (not one of the /data API's paths)."""
    parts = path.split("/")
    if len(parts) < 6:
        return False
    try:
        names.check_namespace(parts[2])
        names.check_id(parts[3])
    except names.InvalidName:
        return False
    return parts[4] == "-" or _TOKEN.fullmatch(parts[4]) is not None


def _require_scope(record: apikeys.KeyRecord, scope: str) -> None:
    """403 unless the key's scopes include `scope` (docs/fal-storage.md, Credentials)."""
    if not record.allows_scope(scope):
        raise errors.Forbidden(
            f"API key {record.id} may not be used for {scope!r} "
            f"(its scopes: {', '.join(record.scopes) or 'none'})"
        )


def _to_gateway_error(error: Exception) -> errors.GatewayError | None:
    if isinstance(error, errors.GatewayError):
        return error
    data_error = data_routes.to_gateway_error(error)
    if data_error is not None:
        return data_error
    if isinstance(error, blobs.BlobTooLarge):
        return errors.PayloadTooLarge(f"File too large: {error}")
    if isinstance(error, blobs.StoreFull):
        return StorageFull(f"The file store is full; nothing was stored ({error})")
    if isinstance(error, blobs.StoreUnavailable):
        return StorageUnavailable(f"The file store is unavailable; try again ({error})")
    if isinstance(error, storage_core.NotFound):
        return errors.NotFound(str(error))
    if isinstance(error, storage_core.TooManyUploads):
        return errors.TooManyRequests(str(error), retry_after=60)
    if isinstance(error, storage_core.Invalid | names.InvalidName):
        return errors.BadRequest(str(error))
    if isinstance(error, kv.KvUnavailable):
        return StorageUnavailable(f"The KV store is unavailable; try again ({error})")
    if isinstance(error, signing.Expired):
        return errors.Forbidden("This file URL has expired")
    if isinstance(error, signing.BadSignature):
        return errors.Forbidden("Invalid file URL signature (or a URL for another file)")
    return None


class RestApi:
    """The REST listener's ASGI callable; `storage` may be created lazily (`ensure`)."""

    def __init__(
        self,
        gateway: gateway_core.Gateway,
        storage: Callable[[], Awaitable[storage_core.Storage]],
        *,
        public_url: str = "",
        default_namespace: str = "default",
        cdn_token_ttl: float = 3600.0,
        realtime_max_ttl: float = 3600.0,
        kv_store: kv.KvStore | None = None,
        data: data_routes.DataApi | None = None,
    ) -> None:
        self.gateway = gateway
        self.keys = gateway.keys
        self._storage = storage
        self.public_url = public_url.rstrip("/")
        self.default_namespace = default_namespace
        self.cdn_token_ttl = cdn_token_ttl
        self.realtime_max_ttl = realtime_max_ttl
        self.kv = kv_store
        self.data = data

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await http_api.serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send)
        except _ClientGone:
            return
        except Exception as error:
            mapped = _to_gateway_error(error)
            if mapped is None:
                LOGGER.exception("unexpected error on %s %r", scope["method"], scope["path"])
                await http_api.send_internal_error(send)
            else:
                await http_api.send_error(send, mapped)

    # ---- helpers ----
    def _base(self, scope: Scope) -> str:
        return self.public_url or http_api.base_url(scope)

    async def _api_key(
        self, scope: Scope, *, needs: str | None = apikeys.SCOPE_STORAGE
    ) -> apikeys.KeyRecord:
        """The caller's verified key, which must hold the scope ``needs`` (None: any)."""
        header = header_value(scope, b"authorization")
        if not header:
            raise errors.MissingCredentials(
                "Missing API key: send 'Authorization: Key <id>:<secret>'"
            )
        record = await self.keys.verify(
            header.decode("latin-1"), client=http_api.client_host(scope)
        )
        if needs is not None:
            _require_scope(record, needs)
        self.keys.admit(record)
        return record

    async def _uploader(self, scope: Scope) -> str:
        """The namespace an upload goes to, from a CDN token or an API key."""
        header = header_value(scope, b"authorization")
        if header is not None and header[:7].lower() == b"bearer ":
            try:
                grant = (await self._storage()).signer.check_cdn_token(
                    header[7:].decode("latin-1").strip()
                )
            except signing.Expired:
                raise errors.MissingCredentials("Upload token expired") from None
            except signing.BadSignature:
                raise errors.MissingCredentials("Invalid upload token") from None
            record = self.keys.records.get(grant.key_id)
            if record is None or record.revoked:
                raise errors.MissingCredentials("The upload token's API key is revoked")
            _require_scope(record, apikeys.SCOPE_STORAGE)
            if not record.allows_namespace(grant.namespace):
                # The key lost the namespace after the token was issued (docs/fal-storage.md,
                # "Credentials and namespaces"): the token grants no more than its key now.
                raise errors.Forbidden(
                    f"This upload token's API key may no longer store files in {grant.namespace!r}"
                )
            self.keys.admit(record)
            return grant.namespace
        return self._namespace(scope, await self._api_key(scope))

    def _namespace(self, scope: Scope, record: apikeys.KeyRecord) -> str:
        """`X-Kubefal-Namespace` if the key allows it, else the key's own namespace."""
        requested = header_value(scope, NAMESPACE_HEADER)
        if requested is not None:
            namespace = names.check_namespace(requested.decode("latin-1"))
            if not record.allows_namespace(namespace):
                raise errors.Forbidden(f"This API key may not store files in {namespace!r}")
            return namespace
        explicit = sorted(ns for ns in record.namespaces if ns != apikeys.ALL_NAMESPACES)
        if record.all_namespaces or not explicit:
            return self.default_namespace
        return explicit[0]

    async def _body_chunks(
        self, scope: Scope, receive: Receive, limit: int
    ) -> AsyncIterator[bytes]:
        declared = header_value(scope, b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise errors.BadRequest("Invalid Content-Length header") from None
            if size > limit:
                raise errors.PayloadTooLarge(
                    f"File too large: {size} bytes, the limit is {limit} bytes"
                )
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone()
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return

    # ---- routing ----
    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path in ("/storage/auth/token", "/storage/auth/token/"):
            self._only(method, "POST")
            await self._cdn_token(scope, receive, send)
        elif path == "/files/upload":
            self._only(method, "POST")
            await self._upload(scope, receive, send)
        elif path == "/files/upload/multipart":
            self._only(method, "POST")
            await self._begin(scope, receive, send, kind="multipart", style="cdn")
        elif path == "/storage/upload/initiate":
            self._only(method, "POST")
            await self._begin(scope, receive, send, kind="put", style="rest")
        elif path == "/storage/upload/initiate-multipart":
            self._only(method, "POST")
            storage_type = http_api.query_params(scope).get("storage_type", "fal-cdn-v3")
            if storage_type != "fal-cdn-v3":
                raise errors.BadRequest(
                    "Multipart uploads support storage_type=fal-cdn-v3 only on kubefal"
                )
            await self._begin(scope, receive, send, kind="multipart", style="rest")
        elif path in ("/tokens", "/tokens/"):
            self._only(method, "POST")
            await self._realtime_token(scope, receive, send)
        elif path == "/files/missing_hashes" or path.startswith("/files/app/"):
            # fal deploy's app_files (fal.file_sync), read back by the control plane.
            record = await self._api_key(scope)
            files = app_files.AppFiles(await self._storage())
            await files.handle(scope, receive, send, self._namespace(scope, record))
        elif path.startswith(data_routes.PREFIXES) and not _is_file_url(path):
            if self.data is None:
                raise errors.NotFound("This gateway serves no /data (see --data-root)")
            record = await self._api_key(scope)
            await self.data.handle(scope, receive, send, self._namespace(scope, record))
        elif path.startswith("/files/"):
            await self._file(scope, receive, send)
        elif path.startswith("/kv/"):
            await self._kv(scope, receive, send)
        elif path == "/users/current":
            # The fal CLI's --team check with a key (the REST host is this listener).
            self._only(method, "GET")
            account = (await self._api_key(scope, needs=None)).fal_account()
            await http_api.send_json(send, 200, account)
        elif path == "/healthz":
            await http_api.send_json(send, 200, {"status": "ok"})
        else:
            raise errors.NotFound(f"Path {path[:200]} not found")

    @staticmethod
    def _only(method: str, allowed: str) -> None:
        if method != allowed:
            raise errors.MethodNotAllowed(f"Use {allowed}")

    # ---- endpoints ----
    async def _cdn_token(self, scope: Scope, receive: Receive, send: Send) -> None:
        record = await self._api_key(scope)
        namespace = self._namespace(scope, record)
        await http_api.read_body(scope, receive, limit=MAX_JSON_BYTES)
        storage = await self._storage()
        expires = int(storage.clock() + self.cdn_token_ttl)
        token = storage.signer.cdn_token(record.id, namespace, expires=expires)
        await http_api.send_json(
            send,
            200,
            {
                "token": token,
                "token_type": "Bearer",
                "base_url": self._base(scope),
                "expires_at": datetime.datetime.fromtimestamp(expires, datetime.UTC).isoformat(),
            },
        )

    async def _upload(self, scope: Scope, receive: Receive, send: Send) -> None:
        namespace = await self._uploader(scope)
        storage = await self._storage()
        file_name = header_value(scope, b"x-fal-file-name")
        content_type = header_value(scope, b"content-type")
        lifetime = storage_core.parse_lifecycle(self._lifecycle(scope))
        ref, url_path, size = await storage.put(
            namespace,
            file_name=None if file_name is None else file_name.decode("utf-8", "replace"),
            content_type=names.content_type(
                None if content_type is None else content_type.decode("latin-1")
            ),
            chunks=self._body_chunks(scope, receive, storage.limits.max_file_bytes),
            lifetime=lifetime,
        )
        await http_api.send_json(
            send,
            200,
            {
                "access_url": self._base(scope) + url_path,
                "file_name": ref.name,
                "file_size": size,
                "content_type": names.content_type(
                    None if content_type is None else content_type.decode("latin-1")
                ),
            },
        )

    @staticmethod
    def _lifecycle(scope: Scope) -> str | None:
        raw = header_value(scope, b"x-fal-object-lifecycle") or header_value(
            scope, b"x-fal-object-lifecycle-preference"
        )
        return None if raw is None else raw.decode("latin-1")

    async def _begin(
        self, scope: Scope, receive: Receive, send: Send, *, kind: str, style: str
    ) -> None:
        storage = await self._storage()
        lifetime = storage_core.parse_lifecycle(self._lifecycle(scope))
        if style == "cdn":
            namespace = await self._uploader(scope)
            file_name_raw = header_value(scope, b"x-fal-file-name")
            content_type_raw = header_value(scope, b"content-type")
            file_name = None if file_name_raw is None else file_name_raw.decode("utf-8", "replace")
            content_type = names.content_type(
                None if content_type_raw is None else content_type_raw.decode("latin-1")
            )
            await http_api.read_body(scope, receive, limit=MAX_JSON_BYTES)
        else:
            namespace = self._namespace(scope, await self._api_key(scope))
            body = await http_api.read_json(scope, receive, limit=MAX_JSON_BYTES)
            if not isinstance(body, dict):
                raise errors.BadRequest("Send a JSON object with file_name and content_type")
            name_value = body.get("file_name")
            type_value = body.get("content_type")
            file_name = name_value if isinstance(name_value, str) else None
            content_type = names.content_type(type_value if isinstance(type_value, str) else None)
        upload, url_path = await storage.begin(
            namespace,
            file_name=file_name,
            content_type=content_type,
            lifetime=lifetime,
            kind=kind,
        )
        file_url = self._base(scope) + url_path
        if style == "cdn":
            payload = {"access_url": file_url, "uploadId": upload.upload_id}
        else:
            suffix = "upload" if kind == "put" else "multipart"
            payload = {
                "file_url": file_url,
                "upload_url": f"{file_url}/{suffix}/{upload.upload_id}",
            }
        await http_api.send_json(send, 200, payload)

    async def _realtime_token(self, scope: Scope, receive: Receive, send: Send) -> None:
        record = await self._api_key(scope, needs=apikeys.SCOPE_APPS)
        body = await http_api.read_json(scope, receive, limit=MAX_JSON_BYTES)
        storage = await self._storage()
        token = realtime.issue(
            storage.signer,
            record,
            body=body,
            now=storage.clock(),
            max_ttl=self.realtime_max_ttl,
        )
        await http_api.send_json(send, 200, token)

    async def _kv(self, scope: Scope, receive: Receive, send: Send) -> None:
        """fal.toolkit's KVStore: `/kv/{get|set|delete}/<db>/<key>` (storage/kv.py)."""
        if self.kv is None:
            raise errors.NotFound("This gateway serves no KV store")
        parts = scope["path"].split("/", 4)  # ["", "kv", operation, db, key]
        if len(parts) != 5:
            raise errors.NotFound("Use /kv/{get|set|delete}/<db>/<key>")
        _, _, operation, db, key = parts
        expected = {"get": "GET", "set": "PUT", "delete": "DELETE"}.get(operation)
        if expected is None:
            raise errors.NotFound("Use /kv/{get|set|delete}/<db>/<key>")
        self._only(scope["method"], expected)
        try:
            kv.check_db(db)
            kv.check_key(key)
            ttl = kv.parse_ttl(http_api.query_params(scope).get("ttl"))
        except ValueError as error:
            raise errors.BadRequest(str(error)) from None
        namespace = await self._uploader(scope)
        kv_scope = f"{namespace}/{db}"
        if operation == "get":
            value = await self.kv.get(kv_scope, key)
            if value is None:
                raise errors.NotFound(f"Key {key[:100]!r} not found")
            await http_api.send_json(send, 200, {"value": value.decode("utf-8", "replace")})
        elif operation == "set":
            value = await http_api.read_body(scope, receive, limit=kv.MAX_VALUE_BYTES)
            await self.kv.set(kv_scope, key, value, ttl=ttl)
            await http_api.send_json(send, 200, {"status": "ok"})
        else:
            await self.kv.delete(kv_scope, key)
            await http_api.send_json(send, 200, {"status": "ok"})

    async def _file(self, scope: Scope, receive: Receive, send: Send) -> None:
        parts = scope["path"].split("/")  # ["", "files", ns, id, token, name, ...]
        if len(parts) < 6:
            raise errors.NotFound("Not a file URL")
        storage = await self._storage()
        _, _, namespace, object_id, token, name, *rest = parts
        try:
            ref = storage_core.FileRef(
                names.check_namespace(namespace),
                names.check_id(object_id),
                names.check_file_name(name),
            )
        except names.InvalidName:
            raise errors.NotFound("Not a file URL") from None
        if token == "-":
            record = await self._api_key(scope)
            if not record.allows_namespace(ref.namespace):
                raise errors.Forbidden(f"This API key may not read files of {ref.namespace!r}")
        else:
            storage.check_url(ref, token)
        method = scope["method"]
        if not rest:
            if method not in ("GET", "HEAD"):
                raise errors.MethodNotAllowed("Use GET or HEAD on a file URL")
            await self._serve(scope, send, storage, ref)
        elif len(rest) == 2 and rest[0] == "upload" and method == "PUT":
            await storage.put_upload(
                ref, rest[1], self._body_chunks(scope, receive, storage.limits.max_file_bytes)
            )
            await http_api.send_json(send, 200, {})
        elif len(rest) == 3 and rest[0] == "multipart" and rest[2] == "complete":
            self._only(method, "POST")
            await self._complete(scope, receive, send, storage, ref, rest[1])
        elif (
            len(rest) == 3
            and rest[0] == "multipart"
            and rest[2].isascii()
            and rest[2].isdigit()
            and len(rest[2]) < 7
        ):
            self._only(method, "PUT")
            etag = await storage.put_part(
                ref,
                rest[1],
                int(rest[2]),
                self._body_chunks(scope, receive, storage.limits.max_file_bytes),
            )
            await http_api.send_json(
                send, 200, {"etag": etag}, headers=[(b"etag", f'"{etag}"'.encode())]
            )
        else:
            raise errors.NotFound("Not a file URL")

    async def _complete(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        storage: storage_core.Storage,
        ref: storage_core.FileRef,
        upload_id: str,
    ) -> None:
        body = await http_api.read_json(scope, receive, limit=MAX_JSON_BYTES)
        raw_parts = body.get("parts") if isinstance(body, dict) else None
        if not isinstance(raw_parts, list):
            raise errors.BadRequest("Send {'parts': [{'partNumber': n, 'etag': '...'}, ...]}")
        parts: list[tuple[int, str]] = []
        for item in raw_parts:
            number = (
                item.get("partNumber", item.get("part_number")) if isinstance(item, dict) else None
            )
            etag = item.get("etag") if isinstance(item, dict) else None
            if isinstance(number, bool) or not isinstance(number, int) or not isinstance(etag, str):
                raise errors.BadRequest("Each part needs an integer partNumber and a string etag")
            parts.append((number, etag))
        url_path, size = await storage.complete(ref, upload_id, parts)
        await http_api.send_json(
            send, 200, {"access_url": self._base(scope) + url_path, "file_size": size}
        )

    async def _serve(
        self, scope: Scope, send: Send, storage: storage_core.Storage, ref: storage_core.FileRef
    ) -> None:
        try:
            await serving.serve(scope, send, storage, ref)
        except serving.ClientGone:
            raise _ClientGone() from None
