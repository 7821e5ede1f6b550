"""The one protocol every object-store backend implements, and the errors they raise.

Keys are `/`-separated paths whose segments match `names`' patterns (checked again by each
backend: defence in depth). Values are written from an async stream of chunks with a size limit
checked while the bytes arrive, so a too-large upload is cut off at the limit rather than
buffered; a failed or refused write leaves nothing behind (no partial object becomes visible).
Metadata is a small str→str mapping stored with the object (content type, expiry, file name).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Mapping
from typing import Protocol, TypeVar

_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
MAX_KEY_SEGMENTS = 6


class BlobError(Exception):
    """Base class of backend failures."""


class BlobNotFound(BlobError):
    pass


class BlobTooLarge(BlobError):
    """The stream exceeded the write's limit; nothing was stored."""


class StoreFull(BlobError):
    """The backend has no space left (ENOSPC, EDQUOT, EFBIG, S3 quota); nothing was stored."""


class StoreUnavailable(BlobError):
    """The backend cannot be reached or failed; the operation may be retried."""


@dataclasses.dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    meta: Mapping[str, str]


def check_key(key: str) -> str:
    """A key whose every segment is a safe name: no `..`, no empty segment, no absolute path."""
    segments = key.split("/")
    if not 1 <= len(segments) <= MAX_KEY_SEGMENTS or not all(
        _SEGMENT.fullmatch(segment) for segment in segments
    ):
        raise ValueError(f"invalid object key {key[:120]!r}")
    return key


class BlobStore(Protocol):
    """An object store: write-once objects with metadata, streamed reads, prefix listings."""

    kind: str

    async def write(
        self, key: str, chunks: AsyncIterable[bytes], *, limit: int, meta: Mapping[str, str]
    ) -> int:
        """Store the stream under `key` (replacing any object there) and return its size;
        BlobTooLarge beyond `limit` bytes, StoreFull, StoreUnavailable."""
        ...

    async def stat(self, key: str) -> BlobInfo:
        """Size and metadata; BlobNotFound."""
        ...

    def read(
        self, key: str, *, chunk_size: int = ..., start: int = 0, length: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """The object's bytes from `start`, `length` of them (None: to the end; the caller
        keeps the range within the object's size); BlobNotFound on the first iteration when
        it is absent."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the object; absent objects are fine."""
        ...

    def list(self, prefix: str) -> AsyncIterator[str]:
        """Keys starting with `prefix` (a whole-segment prefix ending in `/`, or empty)."""
        ...

    async def close(self) -> None: ...


async def read_all(store: BlobStore, key: str, *, limit: int) -> bytes:
    """A small object's bytes (upload records, the signing key); BlobTooLarge beyond `limit`."""
    parts: list[bytes] = []
    total = 0
    async for chunk in store.read(key):
        total += len(chunk)
        if total > limit:
            raise BlobTooLarge(f"{key} exceeds {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def one_chunk(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


MIN_CHUNK_BYTES = 16 * 1024
"""Smallest chunk a backend's write gathers (see `coalesce`)."""


async def coalesce(
    chunks: AsyncIterable[bytes], *, min_bytes: int = MIN_CHUNK_BYTES
) -> AsyncGenerator[bytes, None]:
    """``chunks`` with runs of small ones joined into chunks of at least ``min_bytes``; chunks
    that large already pass as they are (no copy). The sender decides how the request body is
    cut: a writer gathering a block as a list of received chunks holds at most
    block / ``min_bytes`` entries, however small the pieces a client trickles."""
    small = bytearray()
    async for chunk in chunks:
        if not small and len(chunk) >= min_bytes:
            yield chunk
            continue
        small += chunk
        if len(small) >= min_bytes:
            yield bytes(small)
            small.clear()
    if small:
        yield bytes(small)


E = TypeVar("E", bound=Exception)


async def read_ahead(
    read: Callable[[int], bytes],
    *,
    chunk_size: int,
    length: int | None,
    errors: tuple[type[E], ...],
    classify: Callable[[E], BlobError],
) -> AsyncGenerator[bytes, None]:
    """A backend's blocking ``read(size)`` as an async stream: called in the default executor
    until it returns nothing (or ``length`` bytes came), the next block read while the caller
    sends this one (two blocks in memory); a read failing with one of ``errors`` raises
    ``classify(error)``. Closed early (``aclose``), it waits for the read in flight, so the
    caller may then close the source."""
    loop = asyncio.get_running_loop()
    left = -1 if length is None else length  # -1: to the end

    def next_read() -> asyncio.Future[bytes]:
        size = chunk_size if left < 0 else min(chunk_size, left)
        return loop.run_in_executor(None, read, size)

    ahead: asyncio.Future[bytes] | None = next_read() if left else None
    try:
        while ahead is not None:
            try:
                chunk = await ahead
            except errors as error:
                ahead = None
                raise classify(error) from error
            if not chunk:
                ahead = None
                return
            if left > 0:
                left -= len(chunk)
            ahead = next_read() if left else None
            yield chunk
    finally:
        if ahead is not None:  # closed early: let the read in flight finish first
            with contextlib.suppress(*errors):
                await ahead
