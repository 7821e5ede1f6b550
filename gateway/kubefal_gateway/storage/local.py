"""The embedded object store: files on a local disk or a mounted volume.

The default backend (`--storage PATH`): it needs nothing, suits `kubefal run` and small
clusters, and several gateway replicas can share it on a ReadWriteMany volume. Layout under the
root: `data/<key>` holds the bytes, `meta/<key>.json` the metadata, `tmp/` the writes in
progress. A write goes to `tmp/` and is renamed into place only when complete, data first and
metadata last, so a reader sees a whole object or none; a failed write (too large, disk full,
client gone) removes its temporary file. File I/O runs in the default thread pool, in blocks of
`BLOCK_BYTES`, so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import pathlib
import secrets
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Mapping

from kubefal_gateway.storage import blobs

BLOCK_BYTES = 1024 * 1024
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


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

        async def disk(function: Callable[..., object], *args: object) -> None:
            # Only the disk's errors are the store's; the caller's stream raises its own.
            try:
                await loop.run_in_executor(None, function, *args)
            except OSError as error:
                raise _classify(error) from error

        size = 0
        try:
            handle = await loop.run_in_executor(None, temporary.open, "wb")
        except OSError as error:
            raise _classify(error) from error
        try:
            try:
                buffer = bytearray()
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise blobs.BlobTooLarge(f"the file exceeds {limit} bytes")
                    buffer += chunk
                    if len(buffer) >= BLOCK_BYTES:
                        block, buffer = bytes(buffer), bytearray()
                        await disk(handle.write, block)
                if buffer:
                    await disk(handle.write, bytes(buffer))
                await disk(handle.flush)
            finally:
                with contextlib.suppress(OSError):
                    await loop.run_in_executor(None, handle.close)
            meta_text = json.dumps(dict(meta, size=str(size))).encode()
            await disk(self._commit, temporary, data_path, meta_path, meta_text)
        finally:
            with contextlib.suppress(OSError):
                temporary.unlink()
        return size

    def _commit(
        self, temporary: pathlib.Path, data_path: pathlib.Path, meta_path: pathlib.Path, meta: bytes
    ) -> None:
        meta_temporary = self.root / "tmp" / (secrets.token_hex(12) + ".json")
        try:
            meta_temporary.write_bytes(meta)
            data_path.parent.mkdir(parents=True, exist_ok=True)
            meta_path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temporary, data_path)
            os.replace(meta_temporary, meta_path)
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

    async def read(self, key: str, *, chunk_size: int = BLOCK_BYTES) -> AsyncGenerator[bytes, None]:
        path = self._path("data", key)
        loop = asyncio.get_running_loop()
        try:
            handle = await loop.run_in_executor(None, path.open, "rb")
        except FileNotFoundError:
            raise blobs.BlobNotFound(key) from None
        except OSError as error:
            raise _classify(error) from error
        try:
            while True:
                try:
                    chunk = await loop.run_in_executor(None, handle.read, chunk_size)
                except OSError as error:
                    raise _classify(error) from error
                if not chunk:
                    return
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
