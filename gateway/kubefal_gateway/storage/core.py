"""Uploads, multipart uploads, reads and retention over a `BlobStore`; no HTTP here.

A stored file is `(namespace, id, name)`: the namespace comes from the caller's API key, the id
is random (128 bits) and the name is the caller's, sanitized (names.py). What the HTTP layer
hands out is a path with a signature segment (signing.py), so a file URL is a capability: it
works without credentials until it expires, and only for the file it names.

Uploads that arrive in more than one request (fal's presigned PUT and the two multipart
flavours) are recorded as small JSON objects under `_kubefal/uploads/` in the same store, their
parts under `_kubefal/parts/<upload id>/`, so any gateway replica sharing the store can take any
request of the upload; the upload id is random and is only ever given to the uploader.

Retention: every object carries its expiry (`retention`, or the shorter lifetime the uploader
asked for with fal's `X-Fal-Object-Lifecycle`); an expired object answers 404 at once and
`sweep` deletes it, together with uploads abandoned for longer than `upload_ttl`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Sequence

from kubefal_gateway.storage import blobs, names, signing

LOGGER = logging.getLogger(__name__)

UPLOADS_PREFIX = "_kubefal/uploads/"
OPEN_PREFIX = "_kubefal/open/"
"""`_kubefal/open/<namespace>/<upload id>`: an empty marker per unfinished upload, counted
against `max_open_uploads` and deleted when the upload ends (or by the sweep, past its
deadline)."""
PARTS_PREFIX = "_kubefal/parts/"
MAX_RECORD_BYTES = 64 * 1024
MAX_LIFETIME_SECONDS = 100 * 365 * 86400
"""Longest `expiration_duration_seconds` a caller may ask for (a larger int is no float)."""


class StorageError(Exception):
    """A refused storage operation (the HTTP layer maps each subclass to a status)."""


class NotFound(StorageError):
    pass


class Invalid(StorageError):
    pass


class TooManyUploads(StorageError):
    """The namespace has `max_open_uploads` unfinished uploads (429)."""


@dataclasses.dataclass(frozen=True)
class FileRef:
    namespace: str
    object_id: str
    name: str

    @property
    def key(self) -> str:
        return names.object_key(self.namespace, self.object_id, self.name)


@dataclasses.dataclass(frozen=True)
class Limits:
    max_file_bytes: int = 1024**3
    """Largest stored file (a single upload, or all parts of a multipart upload together)."""
    url_ttl: float = 7 * 86400.0
    """Seconds a returned file URL stays valid; 0: until the file expires."""
    retention: float = 30 * 86400.0
    """Seconds a file is kept; 0: forever (or until the uploader's own lifetime)."""
    upload_ttl: float = 24 * 3600.0
    """Seconds an initiated (presigned or multipart) upload may take before it is dropped."""
    max_parts: int = 10_000
    """Most parts of one multipart upload."""
    max_open_uploads: int = 1000
    """Unfinished initiated uploads a namespace may have at once (`--storage-max-open-uploads`);
    gateway replicas sharing a store may each admit one more at the same moment."""


@dataclasses.dataclass(frozen=True)
class Upload:
    upload_id: str
    ref: FileRef
    kind: str
    """`put` (presigned PUT) or `multipart`."""
    content_type: str
    expires: float
    """When the finished file expires (0: never)."""
    deadline: float
    """When the unfinished upload is dropped."""

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "namespace": self.ref.namespace,
                "id": self.ref.object_id,
                "name": self.ref.name,
                "kind": self.kind,
                "content_type": self.content_type,
                "expires": self.expires,
                "deadline": self.deadline,
            }
        ).encode()

    @classmethod
    def from_json(cls, upload_id: str, raw: bytes) -> Upload:
        data = json.loads(raw)
        return cls(
            upload_id=upload_id,
            ref=FileRef(str(data["namespace"]), str(data["id"]), str(data["name"])),
            kind=str(data["kind"]),
            content_type=str(data["content_type"]),
            expires=float(data["expires"]),
            deadline=float(data["deadline"]),
        )


def parse_lifecycle(raw: str | None) -> float | None:
    """fal's `X-Fal-Object-Lifecycle` JSON → the requested lifetime in seconds, or None."""
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        raise Invalid("X-Fal-Object-Lifecycle must be JSON") from None
    if not isinstance(data, dict):
        raise Invalid("X-Fal-Object-Lifecycle must be a JSON object")
    seconds = data.get("expiration_duration_seconds")
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0:
        raise Invalid("expiration_duration_seconds must be a positive integer")
    if seconds > MAX_LIFETIME_SECONDS:
        raise Invalid(f"expiration_duration_seconds may be at most {MAX_LIFETIME_SECONDS}")
    return float(seconds)


class _Hashing:
    """Counts and hashes a chunk stream as the backend consumes it (a part's ETag)."""

    def __init__(self, chunks: AsyncIterable[bytes]) -> None:
        self.chunks = chunks
        self.digest = hashlib.sha256()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.chunks:
            self.digest.update(chunk)
            yield chunk

    @property
    def etag(self) -> str:
        return self.digest.hexdigest()[:32]


class Storage:
    """The file service: what fal's storage protocol needs, over one `BlobStore`."""

    def __init__(
        self,
        store: blobs.BlobStore,
        signer: signing.Signer,
        limits: Limits,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.signer = signer
        self.limits = limits
        self.clock = clock

    # ---- naming and URLs ----
    def new_ref(self, namespace: str, file_name: str | None) -> FileRef:
        return FileRef(
            names.check_namespace(namespace), names.new_id(), names.sanitize_file_name(file_name)
        )

    def _object_expiry(self, lifetime: float | None) -> float:
        now = self.clock()
        candidates = [value for value in (self.limits.retention, lifetime) if value]
        return now + min(candidates) if candidates else 0.0

    def _url_expiry(self, object_expires: float) -> int:
        now = self.clock()
        candidates = [value for value in (object_expires,) if value]
        if self.limits.url_ttl:
            candidates.append(now + self.limits.url_ttl)
        return int(min(candidates)) + 1 if candidates else 0

    def url_path(self, ref: FileRef, *, object_expires: float) -> str:
        """`/files/<namespace>/<id>/<expires>.<sig>/<name>`: the capability for one file."""
        expires = self._url_expiry(object_expires)
        token = self.signer.file_token(ref.namespace, ref.object_id, ref.name, expires=expires)
        return f"/files/{ref.namespace}/{ref.object_id}/{token}/{ref.name}"

    def check_url(self, ref: FileRef, token: str) -> None:
        """signing.BadSignature / signing.Expired for a URL this gateway did not issue."""
        self.signer.check_file_token(
            token, ref.namespace, ref.object_id, ref.name, now=self.clock()
        )

    # ---- single-request uploads ----
    async def put(
        self,
        namespace: str,
        *,
        file_name: str | None,
        content_type: str,
        chunks: AsyncIterable[bytes],
        lifetime: float | None,
    ) -> tuple[FileRef, str, int]:
        """Store a file; returns (ref, url path, size)."""
        ref = self.new_ref(namespace, file_name)
        expires = self._object_expiry(lifetime)
        size = await self.store.write(
            ref.key,
            chunks,
            limit=self.limits.max_file_bytes,
            meta=self._meta(content_type, expires),
        )
        return ref, self.url_path(ref, object_expires=expires), size

    def _meta(self, content_type: str, expires: float) -> dict[str, str]:
        return {
            "type": names.content_type(content_type),
            "expires": repr(expires),
            "created": repr(self.clock()),
        }

    # ---- uploads in several requests ----
    async def begin(
        self,
        namespace: str,
        *,
        file_name: str | None,
        content_type: str,
        lifetime: float | None,
        kind: str,
    ) -> tuple[Upload, str]:
        """Record an upload; returns it and the finished file's URL path."""
        await self.admit_upload(namespace)
        ref = self.new_ref(namespace, file_name)
        upload = Upload(
            upload_id=names.new_id(),
            ref=ref,
            kind=kind,
            content_type=names.content_type(content_type),
            expires=self._object_expiry(lifetime),
            deadline=self.clock() + self.limits.upload_ttl,
        )
        await self.store.write(
            UPLOADS_PREFIX + upload.upload_id,
            blobs.one_chunk(upload.to_json()),
            limit=MAX_RECORD_BYTES,
            meta={"type": "application/json", "expires": repr(upload.deadline)},
        )
        await self.mark_open(namespace, upload.upload_id, deadline=upload.deadline)
        return upload, self.url_path(ref, object_expires=upload.expires)

    async def admit_upload(self, namespace: str) -> None:
        """TooManyUploads when `namespace` has `max_open_uploads` open-upload markers (these
        uploads' and fal deploy's app-file uploads', app_files.py)."""
        open_count = 0
        async for _ in self.store.list(f"{OPEN_PREFIX}{names.check_namespace(namespace)}/"):
            open_count += 1
            if open_count >= self.limits.max_open_uploads:
                raise TooManyUploads(
                    f"{self.limits.max_open_uploads} uploads are already open in {namespace!r}:"
                    " finish one, or wait until abandoned ones expire"
                )

    async def mark_open(self, namespace: str, upload_id: str, *, deadline: float) -> None:
        """Count the upload against `max_open_uploads` until its `open_marker` is deleted or
        `deadline` passes (the sweep)."""
        await self.store.write(
            self.open_marker(namespace, upload_id),
            blobs.one_chunk(b""),
            limit=0,
            meta={"type": "text/plain", "expires": repr(deadline)},
        )

    @staticmethod
    def open_marker(namespace: str, upload_id: str) -> str:
        return f"{OPEN_PREFIX}{namespace}/{upload_id}"

    async def _upload(self, ref: FileRef, upload_id: str, kind: str) -> Upload:
        try:
            names.check_id(upload_id)
            raw = await blobs.read_all(
                self.store, UPLOADS_PREFIX + upload_id, limit=MAX_RECORD_BYTES
            )
            upload = Upload.from_json(upload_id, raw)
        except (blobs.BlobNotFound, names.InvalidName):
            raise NotFound("Upload not found, finished or expired") from None
        except (ValueError, KeyError, TypeError):
            raise NotFound("Upload not found, finished or expired") from None
        if upload.ref != ref or upload.kind != kind or upload.deadline <= self.clock():
            raise NotFound("Upload not found, finished or expired")
        return upload

    async def put_upload(self, ref: FileRef, upload_id: str, chunks: AsyncIterable[bytes]) -> int:
        """The presigned PUT of a `put` upload: stores the file and ends the upload."""
        upload = await self._upload(ref, upload_id, "put")
        size = await self.store.write(
            ref.key,
            chunks,
            limit=self.limits.max_file_bytes,
            meta=self._meta(upload.content_type, upload.expires),
        )
        await self.store.delete(UPLOADS_PREFIX + upload_id)
        await self.store.delete(self.open_marker(upload.ref.namespace, upload.upload_id))
        return size

    async def put_part(
        self, ref: FileRef, upload_id: str, number: int, chunks: AsyncIterable[bytes]
    ) -> str:
        """One part of a multipart upload; returns its ETag (sent back at completion)."""
        await self._upload(ref, upload_id, "multipart")
        if not 1 <= number <= self.limits.max_parts:
            raise Invalid(f"part number must be between 1 and {self.limits.max_parts}")
        hashing = _Hashing(chunks)
        await self.store.write(
            f"{PARTS_PREFIX}{upload_id}/{number}",
            hashing,
            limit=self.limits.max_file_bytes,
            meta={"type": "application/octet-stream"},
        )
        etag = hashing.etag
        # The ETag is the part's digest; record it with the part for the completion check.
        await self.store.write(
            f"{PARTS_PREFIX}{upload_id}/{number}.etag",
            blobs.one_chunk(etag.encode()),
            limit=MAX_RECORD_BYTES,
            meta={"type": "text/plain"},
        )
        return etag

    async def complete(
        self, ref: FileRef, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> tuple[str, int]:
        """Join the listed parts, in order, into the file; returns (url path, size)."""
        upload = await self._upload(ref, upload_id, "multipart")
        if not parts or len(parts) > self.limits.max_parts:
            raise Invalid("complete needs between 1 and max-parts parts")
        ordered = sorted(parts)
        numbers = [number for number, _ in ordered]
        if len(set(numbers)) != len(numbers):
            raise Invalid("a part number is listed twice")
        for number, etag in ordered:
            try:
                stored = await blobs.read_all(
                    self.store, f"{PARTS_PREFIX}{upload_id}/{number}.etag", limit=MAX_RECORD_BYTES
                )
            except blobs.BlobNotFound:
                raise Invalid(f"part {number} was not uploaded") from None
            if stored.decode() != etag.strip().strip('"'):
                raise Invalid(f"part {number}: the ETag does not match the uploaded part")

        async def joined() -> AsyncIterator[bytes]:
            for number, _ in ordered:
                async for chunk in self.store.read(f"{PARTS_PREFIX}{upload_id}/{number}"):
                    yield chunk

        size = await self.store.write(
            ref.key,
            joined(),
            limit=self.limits.max_file_bytes,
            meta=self._meta(upload.content_type, upload.expires),
        )
        await self._drop_upload(upload_id)
        await self.store.delete(self.open_marker(upload.ref.namespace, upload.upload_id))
        return self.url_path(ref, object_expires=upload.expires), size

    async def _drop_upload(self, upload_id: str) -> None:
        await self.store.delete(UPLOADS_PREFIX + upload_id)
        keys = [key async for key in self.store.list(f"{PARTS_PREFIX}{upload_id}/")]
        for key in keys:
            await self.store.delete(key)

    # ---- reads ----
    async def info(self, ref: FileRef) -> blobs.BlobInfo:
        """The file's size and metadata; NotFound when absent or past its retention."""
        try:
            info = await self.store.stat(ref.key)
        except blobs.BlobNotFound:
            raise NotFound("File not found") from None
        expires = float(info.meta.get("expires", "0") or 0)
        if expires and expires <= self.clock():
            raise NotFound("File not found (its retention has passed)")
        return info

    async def open(self, ref: FileRef) -> tuple[blobs.BlobInfo, AsyncGenerator[bytes, None]]:
        """The file's size and metadata and a stream of its bytes; NotFound when absent or
        past its retention."""
        info = await self.info(ref)
        return info, self.store.read(ref.key)

    # ---- retention ----
    async def sweep(self, *, max_keys: int = 100_000) -> int:
        """Delete expired files and abandoned uploads; returns how many objects went."""
        now = self.clock()
        removed = 0
        seen = 0
        expired: list[str] = []
        async for key in self.store.list(""):
            seen += 1
            if seen > max_keys:
                break
            if key.startswith(PARTS_PREFIX):
                continue
            try:
                info = await self.store.stat(key)
            except blobs.BlobNotFound:
                continue
            expires = float(info.meta.get("expires", "0") or 0)
            if expires and expires <= now:
                expired.append(key)
        for key in expired:
            if key.startswith(UPLOADS_PREFIX):
                await self._drop_upload(key[len(UPLOADS_PREFIX) :])
            else:
                await self.store.delete(key)
            removed += 1
        return removed
