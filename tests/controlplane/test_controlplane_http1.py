"""The REST connection layer (controlplane http1.py) over a real TCP connection."""

from __future__ import annotations

import asyncio
import json
import socket

import h11

from kubefal_controlplane import auth, http1, rest, service
from kubefal_controlplane import settings as settings_module


def test_an_answer_the_client_does_not_read_ends_the_connection_in_time() -> None:
    """A client that stops reading (a follow stream left open, say) cannot hold the
    connection past --rest-header-timeout per part of the answer."""

    async def scenario() -> None:
        settings = settings_module.Settings(local_credentials=True, rest_header_timeout=1.0)
        outcome: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connection = http1.Connection(reader, writer, settings)
            try:
                await connection.next_event()
                await connection.send(h11.Response(status_code=200, headers=[]))
                for _ in range(10_000):  # 640 MiB: far more than the socket buffers hold
                    await connection.send(h11.Data(data=b"x" * 64 * 1024))
                outcome.set_result(None)
            except BaseException as error:
                outcome.set_result(error)
                raise
            finally:
                writer.transport.abort()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.sendall(b"GET /logs/stream HTTP/1.1\r\nhost: x\r\n\r\n")
        try:
            # Never read: the server must give up on its own (the wait is only a safety net).
            error = await asyncio.wait_for(outcome, 120)
        finally:
            client.close()
            server.close()
        assert isinstance(error, http1.Gone)

    asyncio.run(scenario())


def test_a_request_with_a_length_and_chunked_framing_is_refused_and_the_connection_closed() -> None:
    """h11 reads such a body as chunked and ignores Content-Length, which the /files relay
    passed on to the gateway with a body of another size; the request is 400 instead."""
    settings = settings_module.Settings(local_credentials=True, rest_header_timeout=30.0)
    authenticator = auth.Authenticator(lambda _key_id: None, cache_seconds=1.0)
    api = rest.RestApi(
        controller=service.Controller(
            cluster=None,  # type: ignore[arg-type]
            authenticator=authenticator,
            settings=settings,
        ),
        logs=None,
        authenticator=authenticator,
        settings=settings,
    )

    async def front_door(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await api.serve(reader, writer)
        finally:
            writer.close()  # as frontdoor.FrontDoor does once serve returns

    async def scenario() -> bytes:
        server = await asyncio.start_server(front_door, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n"
            b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        try:
            # Read to the end: the server closes the connection after its answer.
            return await asyncio.wait_for(reader.read(), 60)
        finally:
            writer.close()
            server.close()
            api.close()

    answer = asyncio.run(scenario())

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert json.loads(body)["detail"].startswith("Content-Length and Transfer-Encoding")
