"""Zero-copy file responses on plain-TCP listeners: `os.sendfile` from a file to the socket.

Why it exists: a download served through ASGI body messages reads the file into Python
buffers and writes them to the transport, two copies and several event-loop steps per MiB;
the kernel can move the same bytes from the page cache to the socket itself. The REST
listener offers this to its handlers as the ASGI scope extension `kubefal.sendfile` when the
connection is plain TCP (a gateway behind a TLS-terminating proxy); with TLS the bytes must
pass through the TLS library, and handlers use body messages (docs/fal-storage.md,
Performance).

How: the transport's own write buffer (the response head) is flushed first, then
`os.sendfile` runs on a duplicate of the socket's descriptor in the default thread pool (a
file that is not in the page cache makes sendfile read the disk, which must not block the
event loop), each call bounded by what the non-blocking socket takes; when the socket is
full, the event loop waits for it to become writable, at most `stall_timeout` seconds with no
progress (the listener's `--idle-timeout`), then the connection is aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

EXTENSION = "kubefal.sendfile"
"""The ASGI scope extension: `await scope["extensions"][EXTENSION](fd, offset, count)` sends
`count` bytes of the open file `fd` from `offset` as (part of) the response body, after
`http.response.start`; the handler then ends the body with an empty `http.response.body`."""

MAX_CALL_BYTES = 16 * 1024 * 1024
"""Bytes asked of one `os.sendfile` call (the non-blocking socket takes what fits)."""


class SendfileError(ConnectionError):
    """The client went away, stalled past the limit, or the file ended early; the connection
    is unusable (the response is cut short) and has been aborted."""


def _send(socket_fd: int, file_fd: int, offset: int, count: int) -> int:
    """One non-blocking sendfile call; 0 bytes with the socket full is -1."""
    try:
        return os.sendfile(socket_fd, file_fd, offset, count)
    except BlockingIOError:
        return -1


async def _writable(loop: asyncio.AbstractEventLoop, fd: int, timeout: float) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, wake)
    try:
        async with asyncio.timeout(timeout):
            await ready
    finally:
        loop.remove_writer(fd)


async def sendfile(
    transport: asyncio.Transport,
    file_fd: int,
    offset: int,
    count: int,
    *,
    stall_timeout: float,
) -> None:
    """Send `count` bytes of `file_fd` from `offset` on the plain-TCP `transport`; raises
    `SendfileError` (after aborting the transport) when that cannot be done."""
    loop = asyncio.get_running_loop()
    sock = transport.get_extra_info("socket")
    if sock is None or transport.get_extra_info("sslcontext") is not None:
        raise SendfileError("sendfile needs a plain-TCP transport")
    # A duplicate descriptor: the event loop refuses to watch a transport's own descriptor.
    socket_fd = os.dup(sock.fileno())
    call: asyncio.Future[int] | None = None
    try:
        # What the transport still holds (the response head) goes out before the file.
        while transport.get_write_buffer_size():
            if transport.is_closing():
                raise SendfileError("the client went away")
            await _writable(loop, socket_fd, stall_timeout)
            await asyncio.sleep(0)  # the transport's own writer runs in this step too
        while count > 0:
            if transport.is_closing():
                raise SendfileError("the client went away")
            call = loop.run_in_executor(
                None, _send, socket_fd, file_fd, offset, min(count, MAX_CALL_BYTES)
            )
            sent = await asyncio.shield(call)
            if sent < 0:
                await _writable(loop, socket_fd, stall_timeout)
            elif sent == 0:
                raise SendfileError("the file ended before its length")
            else:
                offset += sent
                count -= sent
    except TimeoutError:
        transport.abort()
        raise SendfileError(f"the client read nothing for {stall_timeout:g} s") from None
    except SendfileError:
        transport.abort()
        raise
    except OSError as error:  # EPIPE, ECONNRESET: the client went away
        transport.abort()
        raise SendfileError(f"sendfile failed: {error.strerror}") from error
    finally:
        if call is not None and not call.done():  # cancelled: the call in flight ends first
            with contextlib.suppress(OSError):
                await call
        with contextlib.suppress(OSError):
            os.close(socket_fd)
