"""fal's HTTP API as raw ASGI: the queue listener, the run listener and the admin listener.

Raw ASGI rather than FastAPI or Starlette on purpose: routing here is a split of the path into
`{namespace}/{name}/...`, and a framework costs 30-165 us per request on this machine
(docs/design-decisions.md), more than the rest of the hop together. The handlers stay thin: they
parse the request, authorize it and call the core (`core.Gateway`: store, dispatcher); every domain
error goes through `errors.to_http`, and anything unexpected becomes a logged 500 with a JSON
`detail`.

Contract (docs/fal-compat.md, "fal_client 1.0.3"):

* queue: `POST /{ns}/{name}[/{subpath}][?fal_webhook=URL]` submits;
  `GET /{ns}/{name}/requests/{id}/status[?logs=1]`, `GET /{ns}/{name}/requests/{id}` and
  `PUT /{ns}/{name}/requests/{id}/cancel` follow; the URLs returned never contain the subpath,
  and use the Host the client called and `https` when served over TLS.
* run: any method on `/{ns}/{name}[/{subpath}]` runs synchronously and forwards `/{subpath}` and
  the query raw, as the client encoded them (checked by `targets.py`; subpaths under
  `/_kubefal` are 404); a run is sent to one runner and never retried (dispatch.py); a client
  that hangs up gets its runner told to cancel and its slot freed (`HangUpWatch`);
  `.../stream` or `Accept: text/event-stream` streams the answer unbuffered; WebSockets are
  proxied verbatim. A WebSocket authenticates with `Authorization: Key ...` (fal_client's
  `use_jwt=False`), with `?fal_jwt_token=<realtime token>` (fal_client's default: a short-lived
  token from the REST listener's `POST /tokens/`, storage/realtime.py) or with
  `?fal_jwt_token=<id>:<secret>`; `fal_jwt_token` and `max_buffering` are not forwarded.

One module per API (`queue`, `run`, `realtime` for WebSockets, `admin`) and `routing` (the
listeners' ASGI callables: which API serves a request, and the mapping of errors to answers).
This package module holds what they share, and what the storage listener (storage/routes.py)
uses too: the small ASGI helpers (JSON answers, bounded body reads, header and query parsing)
and `ApiPart`, the base of each API's handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from kubefal_api import apikeys
from kubefal_gateway import (
    apps,
    auth,
    core,
    dispatch,
    errors,
    queueing,
    targets,
    upstream,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_CONTENT_TYPE = b"text/event-stream"
DROPPED_REQUEST_HEADERS = upstream.HOP_BY_HOP | {
    b"authorization",
    b"x-fal-queue-priority",
    b"x-fal-request-timeout",
    b"x-fal-runner-hint",
    b"x-fal-request-id",
    b"x-fal-endpoint",
    dispatch.CALLER_HEADER,
}


# ---- small ASGI helpers ---------------------------------------------------------------------
async def until_disconnect(receive: Receive) -> None:
    """Return when the client goes away; the request's (empty) body messages come first."""
    while (await receive())["type"] != "http.disconnect":
        pass


HANG_UP_WATCH_AFTER = 1.0
"""A run still waiting for its answer after this many seconds gets its client connection watched
(most answer sooner and cost only a timer; a hang-up during a shorter run wastes less than this
much runner time). Under load many runs take over 0.1 s, and a watch task each costs CPU."""


class HangUpWatch:
    """Cancels the task serving a run when its client hangs up before the answer is complete.

    uvicorn reports a dropped connection only to a `receive()` call, and drops what is sent
    after it silently: without this, a runner would finish the work of a caller long gone and
    an abandoned stream would hold its slot until the runner ends it. The handler catches the
    cancellation (`hung_up` is then True), and the runner is told to cancel the request.
    Call `close` before sending the final body part (uvicorn's `receive()` then reports a
    disconnect too)."""

    __slots__ = ("_pump", "_receive", "_task", "_timer", "closed", "hung_up")

    def __init__(self, receive: Receive, *, delay: float = HANG_UP_WATCH_AFTER) -> None:
        self._receive = receive
        self._task = asyncio.current_task()
        self._pump: asyncio.Task[None] | None = None
        self.hung_up = False
        self.closed = False
        self._timer = asyncio.get_running_loop().call_later(delay, self._start)

    def _start(self) -> None:
        if not self.closed:
            self._pump = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        await until_disconnect(self._receive)
        if not self.closed and self._task is not None:
            self.hung_up = True
            self._task.cancel()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._timer.cancel()
            if self._pump is not None:
                self._pump.cancel()


async def send_json(
    send: Send,
    status: int,
    payload: object,
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = orjson.dumps(payload)
    response_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if headers:
        response_headers += headers
    await send({"type": "http.response.start", "status": status, "headers": response_headers})
    await send({"type": "http.response.body", "body": body})


def prepare_json(status: int, payload: object) -> tuple[dict[str, object], dict[str, object]]:
    """The two ASGI messages of a constant JSON answer, built once (`send_prepared`)."""
    body = orjson.dumps(payload)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    return (
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body},
    )


async def send_prepared(send: Send, messages: tuple[dict[str, object], dict[str, object]]) -> None:
    start, body = messages
    await send(start)
    await send(body)


async def serve_lifespan(receive: Receive, send: Send) -> None:
    """ASGI lifespan with nothing to set up: acknowledge start-up and shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def send_error(send: Send, error: errors.GatewayError) -> None:
    status, headers, body = errors.to_http(error)
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_internal_error(send: Send) -> None:
    with contextlib.suppress(Exception):
        await send({"type": "http.response.start", "status": 500, "headers": JSON_HEADERS})
        await send({"type": "http.response.body", "body": errors.INTERNAL_ERROR_BODY})


def header_value(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


async def read_body(scope: Scope, receive: Receive, *, limit: int) -> bytes:
    declared = header_value(scope, b"content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise errors.BadRequest("Invalid Content-Length header") from None
        if size > limit:
            raise errors.PayloadTooLarge(f"Request body of {size} bytes exceeds {limit} bytes")
    parts: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise errors.BadRequest("Client disconnected")
        chunk = message.get("body", b"")
        if chunk:
            total += len(chunk)
            if total > limit:
                raise errors.PayloadTooLarge(f"Request body exceeds {limit} bytes")
            parts.append(chunk)
        if not message.get("more_body", False):
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def read_json(scope: Scope, receive: Receive, *, limit: int) -> Any:
    """The request body parsed as JSON (`{}` when empty); 400 when it is not JSON."""
    raw = await read_body(scope, receive, limit=limit)
    if not raw:
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise errors.BadRequest("The body must be JSON") from None


def client_host(scope: Scope) -> str | None:
    """The caller's IP address (the TCP peer), for per-address throttles."""
    client = scope.get("client")
    return str(client[0]) if client else None


def split_app_path(path: str) -> tuple[str, str, str]:
    """`/ns/name/rest...` → (ns, name, "/rest..."); raises NotFound for a path without an app."""
    parts = path.split("/", 3)
    if len(parts) < 3 or not parts[1] or not parts[2]:
        raise errors.NotFound(f"Path {path!r} does not name an app: use /<namespace>/<name>/...")
    rest = "/" + parts[3] if len(parts) == 4 else "/"
    return parts[1], parts[2], rest


def raw_path(scope: Scope) -> bytes:
    """The path as the client sent it, still percent-encoded (what is forwarded)."""
    raw: bytes | None = scope.get("raw_path")
    if raw is None:  # optional in ASGI; re-encoding the decoded path is as safe
        return urllib.parse.quote(scope["path"]).encode("ascii")
    return raw


def parse_start_timeout(scope: Scope) -> float | None:
    raw = header_value(scope, b"x-fal-request-timeout")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise errors.BadRequest("X-Fal-Request-Timeout must be a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise errors.BadRequest("X-Fal-Request-Timeout must be a positive number of seconds")
    return value


def parse_priority(scope: Scope) -> queueing.Priority:
    raw = header_value(scope, b"x-fal-queue-priority")
    try:
        return queueing.Priority.from_header(None if raw is None else raw.decode("latin-1"))
    except ValueError as error:
        raise errors.BadRequest(str(error)) from None


def parse_hint(scope: Scope) -> str | None:
    raw = header_value(scope, b"x-fal-runner-hint")
    return None if raw is None else raw.decode("latin-1").strip() or None


def forwarded_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    return [
        (name, value) for name, value in scope["headers"] if name not in DROPPED_REQUEST_HEADERS
    ]


def query_params(scope: Scope) -> dict[str, str]:
    raw = scope.get("query_string", b"")
    if not raw:
        return {}
    return dict(urllib.parse.parse_qsl(raw.decode("latin-1"), keep_blank_values=True))


def base_url(scope: Scope) -> str:
    host = header_value(scope, b"host")
    if host is None:
        server = scope.get("server") or ("localhost", None)
        host_text = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
    else:
        host_text = host.decode("latin-1")
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    return f"{scheme}://{host_text}"


def wants_stream(scope: Scope, subpath: str) -> bool:
    if subpath == "/stream" or subpath.endswith("/stream"):
        return True
    accept = header_value(scope, b"accept")
    return accept is not None and SSE_CONTENT_TYPE in accept


def falsey(value: str | None) -> bool:
    return value is None or value.lower() in ("", "0", "false", "no")


class ApiPart:
    """What the handlers of every API share: the gateway, app lookup with authorization, and
    the checked subpath and query a request forwards to a runner."""

    def __init__(self, gateway: core.Gateway) -> None:
        self.gateway = gateway
        self.settings = gateway.settings

    async def _app_and_caller(
        self, scope: Scope, namespace: str, name: str
    ) -> tuple[apps.AppConfig, str | None]:
        """The app and the caller's API key id (None: a public app called without a key)."""
        app, record = await self._app_and_key(scope, namespace, name)
        return app, None if record is None else record.id

    async def _app_and_key(
        self, scope: Scope, namespace: str, name: str, *, identify: bool = False
    ) -> tuple[apps.AppConfig, apikeys.KeyRecord | None]:
        """The app and the caller's checked API key (None: a public app called without a key).
        With `identify`, a key sent to a public app is verified too (`auth.identify`: the
        queue binds requests to it); otherwise a public app does not look at keys."""
        app = self.gateway.registry.get(f"{namespace}/{name}")
        if app is None:
            raise errors.NotFound(f"App {namespace}/{name} not found")
        raw = header_value(scope, b"authorization")
        authorization = None if raw is None else raw.decode("latin-1")
        record = await auth.authorize(
            self.gateway.keys, app=app, authorization=authorization, client=client_host(scope)
        )
        if record is None and identify:
            record = await auth.identify(
                self.gateway.keys, authorization=authorization, client=client_host(scope)
            )
        return app, record

    def _forward_path(self, scope: Scope) -> tuple[str, str, str]:
        """(namespace, name, raw subpath) of a request whose subpath goes to a runner."""
        return targets.forward_path(raw_path(scope), max_url_bytes=self.settings.max_url_bytes)

    def _forward_query(self, scope: Scope) -> str:
        return targets.forward_query(
            scope.get("query_string", b""), limit=self.settings.max_url_bytes
        )

    def _run_wait(self, scope: Scope) -> float:
        """How long a sync request may wait for a runner: its start timeout, at most the cap."""
        start_timeout = parse_start_timeout(scope)
        limit = self.settings.run_start_timeout
        return limit if start_timeout is None else min(start_timeout, limit)
