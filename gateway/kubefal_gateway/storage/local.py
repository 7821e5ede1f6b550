"""The embedded object store: files on a local disk or a mounted volume.

The default backend (`--storage PATH`): it needs nothing, suits `kubefal run` and small
clusters, and several gateway replicas can share it on a ReadWriteMany volume. Layout under the
root: `data/<key>` holds the bytes, `meta/<key>.json` the metadata, `tmp/` the writes in
progress. A write goes to `tmp/` and is renamed into place only when complete, data first and
metadata last, so a reader sees a whole object or none; a failed write (too large, disk full,
client gone) removes its temporary file. File I/O runs in the default thread pool, so the
event loop never waits on the disk, in few large steps overlapped with the network (measured
with bench/storage.py, see docs/fal-storage.md): a write hands the received chunks as they are
(only runs of small ones joined, `blobs.coalesce`) to one `os.writev` per `WRITE_BLOCK_BYTES`
(no copy into a joined buffer, four thread hops per 16 MiB) and keeps receiving the next
block while that one is written; a read keeps the next `BLOCK_BYTES` read in flight while
the caller sends the current one. A write is flushed to the disk (file, then the directories
it was renamed into) before it returns: an acknowledged upload survives a crash, and a volume
that fails late (NFS reports ENOSPC at fsync) fails the upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import pathlib
import secrets
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Mapping
from typing import BinaryIO

from kubefal_gateway.storage import blobs

BLOCK_BYTES = 1024 * 1024
"""Read size: two of these per download are in memory (the one sent, the one read ahead)."""
WRITE_BLOCK_BYTES = 4 * 1024 * 1024
"""Received bytes gathered before one write (an upload holds at most this plus one chunk)."""
MAX_IOVECS = 512
"""Chunks per `os.writev` call (the kernel's IOV_MAX is 1024)."""
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _write_all(descriptor: int, chunks: list[bytes], sync: bool = False) -> None:
    """Write every byte of `chunks` with as few `writev` calls as the kernel allows; with `sync`,
    then flush the file to the disk."""
    views = [memoryview(chunk) for chunk in chunks if chunk]
    while views:
        written = os.writev(descriptor, views[:MAX_IOVECS])
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]
    if sync:
        os.fsync(descriptor)


def _write_file(path: pathlib.Path, data: bytes) -> None:
    """A small file, flushed to the disk."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        _write_all(descriptor, [data], sync=True)
    finally:
        os.close(descriptor)


def _sync_directory(path: pathlib.Path) -> None:
    """Make a rename into `path` durable."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _classify(error: OSError) -> blobs.BlobError:
    if error.errno in FULL_ERRNOS:
        return blobs.StoreFull(f"no space left in the file store: {error.strerror}")
    return blobs.StoreUnavailable(f"file store error: {error.strerror}")


class LocalBlobStore:
    kind = "local"

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root.resolve()
        for sub in ("data", "meta", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def _path(self, area: str, key: str, suffix: str = "") -> pathlib.Path:
        blobs.check_key(key)
        path = self.root / area / (key + suffix)
        if not path.resolve().is_relative_to(self.root / area):
            raise ValueError(f"object key {key!r} leaves the store")
        return path

    async def write(
        self, key: str, chunks: AsyncIterable[bytes], *, limit: int, meta: Mapping[str, str]
    ) -> int:
        data_path = self._path("data", key)
        meta_path = self._path("meta", key, ".json")
        temporary = self.root / "tmp" / secrets.token_hex(12)
        loop = asyncio.get_running_loop()

        async def settle(write: asyncio.Future[None] | None) -> None:
            # Only the disk's errors are the store's; the caller's stream raises its own.
            if write is None:
                return
            try:
                await write
            except OSError as error:
                raise _classify(error) from error

        size = 0
        try:
            descriptor = await loop.run_in_executor(
                None, os.open, temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
            )
        except OSError as error:
            raise _classify(error) from error
        try:
            writing: asyncio.Future[None] | None = None  # one block at a time, in order
            try:
                pending: list[bytes] = []
                pending_bytes = 0
                async for chunk in blobs.coalesce(chunks):
                    size += len(chunk)
                    if size > limit:
                        raise blobs.BlobTooLarge(f"the file exceeds {limit} bytes")
                    pending.append(chunk)
                    pending_bytes += len(chunk)
                    if pending_bytes >= WRITE_BLOCK_BYTES:
                        await settle(writing)
                        writing = loop.run_in_executor(None, _write_all, descriptor, pending)
                        pending, pending_bytes = [], 0
                await settle(writing)
                writing = None
                # The last block and the fsync in one step: an upload is acknowledged only once
                # its bytes are on disk (and a full or failing volume, NFS included, reports it
                # here as 507/503 rather than losing an acknowledged file later).
                await settle(loop.run_in_executor(None, _write_all, descriptor, pending, True))
            finally:
                if writing is not None:  # failed mid-way: the block in flight ends first
                    with contextlib.suppress(OSError):
                        await writing
                with contextlib.suppress(OSError):
                    await loop.run_in_executor(None, os.close, descriptor)
            meta_text = json.dumps(dict(meta, size=str(size))).encode()
            await settle(
                loop.run_in_executor(None, self._commit, temporary, data_path, meta_path, meta_text)
            )
        finally:
            with contextlib.suppress(OSError):
                temporary.unlink()
        return size

    def _commit(
        self, temporary: pathlib.Path, data_path: pathlib.Path, meta_path: pathlib.Path, meta: bytes
    ) -> None:
        meta_temporary = self.root / "tmp" / (secrets.token_hex(12) + ".json")
        try:
            _write_file(meta_temporary, meta)
            data_path.parent.mkdir(parents=True, exist_ok=True)
            meta_path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temporary, data_path)
            os.replace(meta_temporary, meta_path)
            for directory in {data_path.parent, meta_path.parent}:
                _sync_directory(directory)
        finally:
            with contextlib.suppress(OSError):
                meta_temporary.unlink()

    async def stat(self, key: str) -> blobs.BlobInfo:
        meta_path = self._path("meta", key, ".json")
        data_path = self._path("data", key)

        def load() -> blobs.BlobInfo:
            try:
                meta = json.loads(meta_path.read_bytes())
                size = data_path.stat().st_size
            except FileNotFoundError:
                raise blobs.BlobNotFound(key) from None
            except (OSError, ValueError) as error:
                raise blobs.StoreUnavailable(f"file store error: {error}") from error
            return blobs.BlobInfo(
                key=key, size=size, meta={str(k): str(v) for k, v in meta.items()}
            )

        return await asyncio.get_running_loop().run_in_executor(None, load)

    def data_file(self, key: str) -> pathlib.Path:
        """Where the object's bytes are (for zero-copy serving: routes open it themselves)."""
        return self._path("data", key)

    async def read(
        self, key: str, *, chunk_size: int = BLOCK_BYTES, start: int = 0, length: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        path = self._path("data", key)
        loop = asyncio.get_running_loop()

        def open_at() -> BinaryIO:
            handle = path.open("rb")
            if start:
                handle.seek(start)
            return handle

        try:
            handle = await loop.run_in_executor(None, open_at)
        except FileNotFoundError:
            raise blobs.BlobNotFound(key) from None
        except OSError as error:
            raise _classify(error) from error
        reads = blobs.read_ahead(
            handle.read,
            chunk_size=chunk_size,
            length=length,
            errors=(OSError,),
            classify=_classify,
        )
        try:
            async with contextlib.aclosing(reads):
                async for chunk in reads:
                    yield chunk
        finally:
            await loop.run_in_executor(None, handle.close)

    async def delete(self, key: str) -> None:
        paths = (self._path("meta", key, ".json"), self._path("data", key))

        def remove() -> None:
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            for path in paths:
                # Drop now-empty parent directories up to the area root.
                parent = path.parent
                with contextlib.suppress(OSError):
                    while parent != self.root and parent.parent != self.root:
                        parent.rmdir()
                        parent = parent.parent

        await asyncio.get_running_loop().run_in_executor(None, remove)

    async def list(self, prefix: str) -> AsyncIterator[str]:
        base = self.root / "meta"

        def scan() -> list[str]:
            found: list[str] = []
            start = base / prefix if prefix else base
            if not start.is_dir():
                return found
            for directory, _, files in os.walk(start):
                for file in files:
                    if file.endswith(".json"):
                        relative = pathlib.Path(directory, file).relative_to(base).as_posix()
                        found.append(relative[: -len(".json")])
            return sorted(found)

        for key in await asyncio.get_running_loop().run_in_executor(None, scan):
            yield key

    async def close(self) -> None:
        return None
