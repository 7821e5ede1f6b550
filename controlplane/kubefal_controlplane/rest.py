"""The REST half of the control plane's port: what fal's SDK sends to ``FAL_GRPC_HOST``.

fal's SDK derives its REST base from the gRPC host (``api`` replaced by ``rest``; a host such as
``127.0.0.1:PORT`` stays as it is), so ``fal runners logs``, ``fal files``, ``fal.sync_dir``
and, without ``FAL_REST_HOST``, ``fal deploy``'s app_files upload all arrive on the control
plane's own port. The TLS front door (:mod:`kubefal_controlplane.frontdoor`) hands every
connection that did not negotiate HTTP/2 here. Served:

* ``GET /runners/<id>`` → ``{"runner_id", "namespace", "phase", "started_at", "ended_at"}``;
* ``POST|GET /logs/history?job_id=<id>[&since=&until=&page_size=&search=]`` → ``{"items",
  "next_until"}``, newest first (:mod:`kubefal_controlplane.runner_logs`);
* ``POST|GET /logs/stream?job_id=<id>[&since=&until=&search=]`` → server-sent events, one
  JSON log line each, until the runner's container ends, ``until`` passes, the client goes or
  ``--log-stream-seconds`` pass;
* ``/files/*`` → relayed to the gateway's REST listener (``--gateway-rest-url``), which owns
  ``/data`` and app files, with the caller's own ``Authorization`` header;
* ``GET /healthz``.

Auth is the gRPC side's (:mod:`kubefal_controlplane.auth`), from ``Authorization: Key
<id>:<secret>`` as fal's REST client sends it: none, malformed, unknown, wrong or revoked →
401; a runner of a namespace the key may not see is 404, exactly as ``fal runners stop``.
Every answer that is not 2xx is JSON ``{"detail", "error_type"}``; the HTTP/1.1 connection
layer is :mod:`kubefal_controlplane.http1`.

Limits (each a flag, docs/security.md): request head size (431) and the time to send it
(408), the time between body chunks, the body size relayed (413), concurrent log streams
(429) and their duration, bytes and lines of log read per history page. HTTP/1.1 is parsed by
``h11`` (a strict, sans-IO parser), never by hand.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import urllib.parse
from collections.abc import Callable
from typing import Any, Final, TypeVar

import h11
import httpx
from kubernetes.client.exceptions import ApiException

from kubefal_api import naming
from kubefal_controlplane import (
    app_files,
    auth,
    errors,
    http1,
    rest_logs,
    rpc,
    runner_logs,
    service,
)
from kubefal_controlplane import settings as settings_module
from kubefal_controlplane.rest_logs import RunnerLogs as RunnerLogs

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_JSON_BODY: Final = 64 * 1024
"""The logs endpoints take their arguments in the query; a body is read and dropped."""
MAX_TARGET_CHARS: Final = 8192
RELAYED_REQUEST_HEADERS: Final = frozenset(
    {
        b"authorization",
        b"content-type",
        b"content-length",
        b"accept",
        b"user-agent",
        b"x-kubefal-namespace",
    }
)
RELAYED_RESPONSE_HEADERS: Final = frozenset(
    {
        b"content-type",
        b"content-length",
        b"content-disposition",
        b"etag",
        b"cache-control",
        b"retry-after",
        b"x-content-type-options",
    }
)


class RestApi(rest_logs.LogRoutes):
    """The REST routes; :meth:`serve` runs one connection the front door handed over."""

    def __init__(
        self,
        *,
        controller: service.Controller,
        logs: rest_logs.RunnerLogs | None,
        authenticator: auth.Authenticator,
        settings: settings_module.Settings,
    ) -> None:
        self.controller = controller
        self.logs = logs
        self.authenticator = authenticator
        self.settings = settings
        self._calls = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.max_workers, thread_name_prefix="controlplane-rest"
        )
        self._streams = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, settings.log_streams), thread_name_prefix="controlplane-logs"
        )
        self._open_streams = 0
        self._gateway: httpx.AsyncClient | None = None

    def close(self) -> None:
        self._calls.shutdown(wait=False, cancel_futures=True)
        self._streams.shutdown(wait=False, cancel_futures=True)

    async def aclose(self) -> None:
        if self._gateway is not None:
            await self._gateway.aclose()
            self._gateway = None

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._calls, lambda: function(*args))

    # ---- connection loop ---------------------------------------------------------------------

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = http1.Connection(reader, writer, self.settings)
        loop = asyncio.get_running_loop()
        try:
            while True:
                deadline = loop.time() + self.settings.rest_header_timeout
                try:
                    event = await connection.next_event(deadline=deadline)
                except http1.HttpError as error:
                    if error.status == 408 and connection.received == 0:
                        return  # an idle keep-alive connection: close quietly
                    raise
                if isinstance(event, h11.ConnectionClosed):
                    return
                if not isinstance(event, h11.Request):
                    raise http1.Gone()
                head = len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
                if head > self.settings.rest_max_header_bytes:
                    # h11 bounds a head that arrives in pieces; one that came whole is
                    # measured here.
                    raise http1.HttpError(
                        431,
                        f"Request head too large: the limit is "
                        f"{self.settings.rest_max_header_bytes} bytes",
                    )
                names = {name for name, _ in event.headers}  # h11 lowercases them
                if b"content-length" in names and b"transfer-encoding" in names:
                    # h11 reads the chunked body and ignores the length, which the /files
                    # relay would pass on with a body of another size (RFC 9112 6.3: refuse).
                    raise http1.HttpError(
                        400, "Content-Length and Transfer-Encoding together: send one of them"
                    )
                try:
                    await self._handle(connection, event)
                except http1.HttpError as error:
                    await connection.send_error(error)
                except errors.RpcFailure as failure:
                    await connection.send_error(http1.from_failure(failure))
                if connection.h11.our_state is h11.MUST_CLOSE or (
                    connection.h11.their_state is not h11.DONE
                ):
                    return
                try:
                    connection.h11.start_next_cycle()
                except h11.LocalProtocolError:
                    return
                connection.received = 0
        except http1.HttpError as error:
            with contextlib.suppress(http1.Gone):
                await connection.send_error(error)
        except http1.Gone:
            pass
        except Exception:
            logger.exception("REST connection failed")
            with contextlib.suppress(http1.Gone):
                await connection.send_error(http1.HttpError(500, "Internal error; see the log"))

    # ---- routing -------------------------------------------------------------------------------

    async def _handle(self, connection: http1.Connection, request: h11.Request) -> None:
        target = request.target.decode("ascii", "replace")
        if len(target) > MAX_TARGET_CHARS:
            raise http1.HttpError(414, "Request target too long")
        path, _, query = target.partition("?")
        method = request.method.decode("ascii", "replace")
        headers = {name.lower(): value for name, value in request.headers}
        if path == "/healthz":
            await connection.read_body(MAX_JSON_BODY)
            await connection.send_json(200, {"status": "ok"})
            return
        if path.startswith("/files/"):
            caller = await self._authenticate(headers, connection)
            await self._relay(connection, request, method, target, caller)
            return
        routes = {"/logs/history": self._history, "/logs/stream": self._stream}
        if path in routes:
            if method not in ("GET", "POST"):
                raise http1.HttpError(405, "Use POST (or GET)")
            await connection.read_body(MAX_JSON_BODY)
            caller = await self._authenticate(headers, connection)
            await routes[path](connection, caller, _query(query))
            return
        if path == "/users/current":
            # The fal CLI's --team check (fal.auth.current_user_info) with a key: who it is.
            if method != "GET":
                raise http1.HttpError(405, "Use GET")
            await connection.read_body(MAX_JSON_BODY)
            caller = await self._authenticate(headers, connection)
            await connection.send_json(200, caller.record.fal_account())
            return
        if path.startswith("/runners/") and path.count("/") == 2:
            if method != "GET":
                raise http1.HttpError(405, "Use GET")
            await connection.read_body(MAX_JSON_BODY)
            caller = await self._authenticate(headers, connection)
            pod = await self._runner(caller, urllib.parse.unquote(path[len("/runners/") :]))
            await connection.send_json(200, runner_logs.runner_times(pod, naming.RUNNER_CONTAINER))
            return
        await connection.read_body(MAX_JSON_BODY)
        raise http1.HttpError(
            404, f"Path {path[:200]!r} is not served by the kubefal control plane"
        )

    async def _authenticate(
        self, headers: dict[bytes, bytes], connection: http1.Connection
    ) -> auth.Caller:
        raw = headers.get(b"authorization", b"").decode("latin-1").strip()
        scheme, _, credential = raw.partition(" ")
        if not raw or scheme.lower() != "key":
            raise http1.HttpError(401, "Missing API key: send 'Authorization: Key <id>:<secret>'")
        key_id, _, secret = credential.strip().partition(":")
        metadata = [(auth.METADATA_KEY_ID, key_id), (auth.METADATA_KEY_SECRET, secret)]
        try:
            return await self._call(
                functools.partial(
                    self.authenticator.authenticate,
                    client=auth.socket_ip(connection.writer.get_extra_info("peername")),
                ),
                metadata,
            )
        except errors.RpcFailure as failure:
            raise http1.from_failure(failure) from None
        except ApiException as error:
            raise http1.from_failure(rpc.api_failure(error, "reading the API key")) from None

    async def _runner(self, caller: auth.Caller, runner_id: str) -> dict[str, Any]:
        try:
            return await self._call(self.controller._runner_pod, caller, runner_id)
        except ApiException as error:
            raise http1.from_failure(rpc.api_failure(error, f"runner {runner_id}")) from None

    # ---- /files/*: the gateway's REST listener -----------------------------------------------

    def _gateway_client(self) -> httpx.AsyncClient:
        if self._gateway is None:
            url = self.settings.gateway_rest_url
            assert url is not None
            self._gateway = httpx.AsyncClient(
                base_url=url.rstrip("/"),
                verify=app_files.gateway_verify(self.settings),
                trust_env=False,
                follow_redirects=False,
                timeout=httpx.Timeout(
                    connect=self.settings.gateway_timeout * 5,
                    read=300.0,
                    write=300.0,
                    pool=30.0,
                ),
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            )
        return self._gateway

    async def _relay(
        self,
        connection: http1.Connection,
        request: h11.Request,
        method: str,
        target: str,
        caller: auth.Caller,
    ) -> None:
        path = target.partition("?")[0]
        segments = urllib.parse.unquote(path).split("/")
        if any(segment in (".", "..") for segment in segments) or "\\" in path:
            await connection.read_body(MAX_JSON_BODY)
            raise http1.HttpError(400, "Path segments '.' and '..' are not allowed")
        if self.settings.gateway_rest_url is None:
            await connection.read_body(MAX_JSON_BODY)
            raise http1.HttpError(
                503,
                "This control plane has no gateway REST address (--gateway-rest-url), so "
                "fal files, sync_dir and app_files are not served here",
            )
        headers = [
            (name, value)
            for name, value in request.headers
            if name.lower() in RELAYED_REQUEST_HEADERS or name.lower().startswith(b"x-fal-")
        ]
        # The body is relayed as it comes (aiter_raw): ask for it unencoded.
        headers.append((b"accept-encoding", b"identity"))
        has_body = any(
            name.lower() in (b"content-length", b"transfer-encoding") for name, _ in request.headers
        )
        body = connection.body_chunks(self.settings.rest_max_body_bytes)
        client = self._gateway_client()
        outgoing = client.build_request(
            method,
            target,
            headers=headers,
            content=body if has_body else None,
        )
        try:
            response = await client.send(outgoing, stream=True)
        except http1.HttpError:
            raise
        except httpx.HTTPError as error:
            logger.warning("gateway REST relay of %s %r failed: %s", method, path[:200], error)
            raise http1.HttpError(
                502, "The gateway's file API cannot be reached; try again"
            ) from None
        try:
            if not has_body:
                await connection.read_body(MAX_JSON_BODY)
            # Else, when the gateway answered before reading the whole body (an early
            # refusal), the connection closes after this response (serve's loop).
            relayed = [
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in response.headers.multi_items()
                if name.lower().encode("latin-1") in RELAYED_RESPONSE_HEADERS
            ]
            await connection.send(h11.Response(status_code=response.status_code, headers=relayed))
            async for chunk in response.aiter_raw(http1.READ_CHUNK):
                await connection.send(h11.Data(data=chunk))
            await connection.send(h11.EndOfMessage())
        except httpx.HTTPError as error:
            logger.warning("gateway REST relay of %s %r broke off: %s", method, path[:200], error)
            raise http1.Gone() from None
        finally:
            await response.aclose()


def _query(query: str) -> dict[str, str]:
    try:
        pairs = urllib.parse.parse_qsl(
            query, keep_blank_values=True, strict_parsing=False, max_num_fields=32
        )
    except ValueError:
        raise http1.HttpError(400, "Too many query parameters") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        params.setdefault(name, value)
    return params
