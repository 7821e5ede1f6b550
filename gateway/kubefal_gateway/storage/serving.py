"""Serving a stored file's bytes (`GET|HEAD` on a file URL), whole or one byte range.

Why a module of its own: the download is the storage path that moves the most bytes, and it
has two ways to move them. On a plain-TCP connection (a gateway behind a TLS-terminating
proxy) a file of the embedded store goes from the page cache to the socket with `sendfile`
(the listener's `kubefal.sendfile` scope extension, zerocopy.py), with no byte passing
through Python; otherwise (TLS, or the S3 store) the bytes are read in blocks and sent as ASGI
body messages, the next block read while the current one is sent. Both honour one
`Range: bytes=...` (206 with `Content-Range`; 416 when it starts past the end; several
ranges or a malformed header: the whole file, as RFC 9110 allows). The caller has checked
the URL's signature or the API key before; the file's retention is checked here
(`Storage.info`). docs/fal-storage.md, Reading and Performance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import Awaitable, Callable

from kubefal_gateway import errors, zerocopy
from kubefal_gateway.http_api import Scope, Send, header_value
from kubefal_gateway.storage import blobs, local
from kubefal_gateway.storage import core as storage_core

LOGGER = logging.getLogger(__name__)

_RANGE = re.compile(rb"bytes=(\d{0,19})-(\d{0,19})")


class ClientGone(Exception):
    """The body broke off after the status went out (client gone or store failing)."""


class RangeNotSatisfiable(errors.GatewayError):
    status = 416
    error_type = "range_not_satisfiable"


def byte_range(header: bytes | None, size: int) -> tuple[int, int] | None:
    """(start, length) of a single `bytes=` range within `size`, None for the whole file;
    RangeNotSatisfiable when it starts at or past the end."""
    if header is None or size == 0:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None or (not match[1] and not match[2]):
        return None  # several ranges, another unit, malformed: serve the whole file
    if not match[1]:  # suffix: the last N bytes
        suffix = int(match[2])
        if suffix == 0:
            raise RangeNotSatisfiable(
                "The range is empty", headers=((b"content-range", f"bytes */{size}".encode()),)
            )
        return max(0, size - suffix), min(suffix, size)
    start = int(match[1])
    end = None if not match[2] else int(match[2])
    if end is not None and end < start:
        return None  # invalid: ignored, as RFC 9110 says
    if start >= size:
        raise RangeNotSatisfiable(
            f"The range starts at {start}, the file has {size} bytes",
            headers=((b"content-range", f"bytes */{size}".encode()),),
        )
    last = size - 1 if end is None else min(end, size - 1)
    return start, last - start + 1


async def serve(
    scope: Scope, send: Send, storage: storage_core.Storage, ref: storage_core.FileRef
) -> None:
    info = await storage.info(ref)
    size = info.size
    wanted = byte_range(header_value(scope, b"range"), size)
    start, length = (0, size) if wanted is None else wanted
    headers = [
        (b"content-type", info.meta.get("type", "application/octet-stream").encode("latin-1")),
        (b"content-length", str(length).encode()),
        (b"content-disposition", f'inline; filename="{ref.name}"'.encode()),
        (b"cache-control", b"private, max-age=3600"),
        (b"x-content-type-options", b"nosniff"),
        (b"accept-ranges", b"bytes"),
    ]
    status = 200
    if wanted is not None:
        status = 206
        headers.append((b"content-range", f"bytes {start}-{start + length - 1}/{size}".encode()))
    if scope["method"] == "HEAD":
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    sendfile = scope.get("extensions", {}).get(zerocopy.EXTENSION)
    if sendfile is not None and isinstance(storage.store, local.LocalBlobStore) and length:
        await _serve_sendfile(send, sendfile, storage.store, ref, status, headers, start, length)
    else:
        await _serve_chunks(send, storage, ref, status, headers, start, length)


async def _serve_sendfile(
    send: Send,
    sendfile: Callable[[int, int, int], Awaitable[None]],
    store: local.LocalBlobStore,
    ref: storage_core.FileRef,
    status: int,
    headers: list[tuple[bytes, bytes]],
    start: int,
    length: int,
) -> None:
    loop = asyncio.get_running_loop()
    try:
        path = store.data_file(ref.key)
        descriptor = await loop.run_in_executor(None, os.open, path, os.O_RDONLY)
    except FileNotFoundError:
        raise errors.NotFound("File not found") from None
    except OSError as error:
        raise blobs.StoreUnavailable(f"file store error: {error.strerror}") from error
    try:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        try:
            await sendfile(descriptor, start, length)
        except zerocopy.SendfileError as error:
            LOGGER.info("file %s broke off while being sent: %s", ref.key, error)
            raise ClientGone() from None
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        with contextlib.suppress(OSError):
            os.close(descriptor)


async def _serve_chunks(
    send: Send,
    storage: storage_core.Storage,
    ref: storage_core.FileRef,
    status: int,
    headers: list[tuple[bytes, bytes]],
    start: int,
    length: int,
) -> None:
    chunks = storage.store.read(ref.key, start=start, length=length)
    # The first chunk is read before the status goes out, so a store failure is still a
    # clean 503; later failures can only cut the body short (the length tells the client).
    iterator = chunks.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        first = b""
    except blobs.BlobNotFound:
        raise errors.NotFound("File not found") from None
    await send({"type": "http.response.start", "status": status, "headers": headers})
    try:
        await send({"type": "http.response.body", "body": first, "more_body": True})
        async for chunk in iterator:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except (blobs.BlobError, OSError):
        LOGGER.warning("file %s broke off while being served", ref.key)
        await chunks.aclose()
        raise ClientGone() from None
    await send({"type": "http.response.body", "body": b"", "more_body": False})
