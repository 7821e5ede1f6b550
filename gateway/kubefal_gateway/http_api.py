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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import websockets
import websockets.asyncio.client

from kubefal_gateway import (
    admin_auth,
    apps,
    auth,
    core,
    discovery,
    dispatch,
    errors,
    queue_worker,
    queueing,
    runners,
    targets,
    upstream,
    webhook_targets,
)
from kubefal_gateway.storage import realtime, signing

LOGGER = logging.getLogger(__name__)

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
}
DROPPED_RESPONSE_HEADERS = upstream.HOP_BY_HOP | {b"date", b"server", b"x-fal-request-id"}
STRIPPED_WS_QUERY = frozenset({"fal_jwt_token", "max_buffering"})
ANNOUNCE_MAX_BYTES = 1024
"""A runner's announcement is `{"pod": "<name>"}`: anything longer is refused (413)."""


# ---- small ASGI helpers ---------------------------------------------------------------------
async def _until_disconnect(receive: Receive) -> None:
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
        await _until_disconnect(self._receive)
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


IN_PROGRESS_STATUS = prepare_json(202, {"status": "IN_PROGRESS", "logs": None})
"""The status answer of a running job polled without logs (most status polls)."""


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


def _falsey(value: str | None) -> bool:
    return value is None or value.lower() in ("", "0", "false", "no")


# ---- the listeners ----------------------------------------------------------------------------
class Api:
    """The ASGI callables of the three listeners, over one `core.Gateway`."""

    def __init__(self, gateway: core.Gateway) -> None:
        self.gateway = gateway
        self.settings = gateway.settings
        self.webhook_policy = webhook_targets.TargetPolicy.from_settings(gateway.settings)

    async def _app_and_auth(self, scope: Scope, namespace: str, name: str) -> apps.AppConfig:
        app = self.gateway.registry.get(f"{namespace}/{name}")
        if app is None:
            raise errors.NotFound(f"App {namespace}/{name} not found")
        authorization = header_value(scope, b"authorization")
        await auth.authorize(
            self.gateway.keys,
            app=app,
            authorization=None if authorization is None else authorization.decode("latin-1"),
            client=client_host(scope),
        )
        return app

    # ---- entry points ----
    async def queue_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._guard(self._queue, scope, receive, send)

    async def run_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        await self._guard(self._run, scope, receive, send)

    async def combined_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One listener for both APIs: a Host starting with `queue.` selects the queue API."""
        host = header_value(scope, b"host") or b""
        if scope["type"] == "http" and host.startswith(b"queue."):
            await self.queue_app(scope, receive, send)
        else:
            await self.run_app(scope, receive, send)

    async def admin_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._guard(self._admin, scope, receive, send)

    async def _guard(
        self,
        handler: Callable[[Scope, Receive, Send], Awaitable[None]],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await handler(scope, receive, send)
        except errors.GatewayError as error:
            await send_error(send, error)
        except queueing.QueueError:
            self.gateway.metrics.store_errors.labels("api").inc()
            LOGGER.exception("queue store failure on %s %r", scope["method"], scope["path"])
            await send_error(send, errors.RunnerUnavailable("Queue store unavailable"))
        except Exception:
            LOGGER.exception("unexpected error on %s %r", scope["method"], scope["path"])
            await send_internal_error(send)

    # ---- queue API ----
    async def _queue(self, scope: Scope, receive: Receive, send: Send) -> None:
        namespace, name, rest = split_app_path(scope["path"])
        method = scope["method"]
        if rest.startswith("/requests/"):
            parts = rest.split("/")  # ["", "requests", id, ("status"|"cancel")?]
            if 3 <= len(parts) <= 4 and parts[2]:
                suffix = parts[3] if len(parts) == 4 else ""
                app = await self._app_and_auth(scope, namespace, name)
                request_id = parts[2]
                if suffix == "status" and method == "GET":
                    await self._status(scope, send, app=app, request_id=request_id)
                    return
                if suffix == "" and method == "GET":
                    await self._result(send, app=app, request_id=request_id)
                    return
                if suffix == "cancel" and method == "PUT":
                    await self._cancel(send, app=app, request_id=request_id)
                    return
                if suffix in ("", "status", "cancel"):
                    raise errors.MethodNotAllowed(f"{method} is not allowed on {scope['path']}")
        if method != "POST":
            raise errors.MethodNotAllowed("Submit requests with POST")
        await self._submit(scope, receive, send, namespace=namespace, name=name, subpath=rest)

    async def _submit(
        self, scope: Scope, receive: Receive, send: Send, *, namespace: str, name: str, subpath: str
    ) -> None:
        # What is stored and forwarded comes from the raw path, checked (`subpath` is decoded).
        namespace, name, subpath = self._forward_path(scope)
        query = targets.without_parameter(self._forward_query(scope), "fal_webhook")
        app = await self._app_and_auth(scope, namespace, name)
        # Stored headers count against --max-request-bytes with the body, and have a cap.
        stored_headers = forwarded_headers(scope)
        header_bytes = sum(len(key) + len(value) for key, value in stored_headers)
        if header_bytes > self.settings.max_job_header_bytes:
            raise errors.HeadersTooLarge(
                f"Headers of {header_bytes} bytes exceed the {self.settings.max_job_header_bytes}"
                " bytes a queued request may store"
            )
        priority = parse_priority(scope)
        start_timeout = parse_start_timeout(scope)
        webhook = query_params(scope).get("fal_webhook")
        if webhook is not None:
            try:
                self.webhook_policy.parse(webhook)
            except webhook_targets.InvalidTarget as error:
                raise errors.BadRequest(f"fal_webhook is not an acceptable URL: {error}") from None
        body = await read_body(
            scope, receive, limit=max(0, self.settings.max_request_bytes - header_bytes)
        )
        now = time.time()
        request_id = queueing.new_request_id()
        job = queueing.Job(
            request_id=request_id,
            app_id=app.app_id,
            path=f"{subpath}?{query}" if query else subpath,
            method="POST",
            headers=tuple(
                (key.decode("latin-1"), value.decode("latin-1")) for key, value in stored_headers
            ),
            body=body,
            priority=priority,
            submitted_at=now,
            start_deadline=None if start_timeout is None else now + start_timeout,
            webhook_url=webhook,
            runner_hint=parse_hint(scope),
        )
        try:
            position = await self.gateway.store.submit(
                job, max_queued=self.settings.max_queued_per_app
            )
        except queueing.QueueFullError as full:
            raise errors.QueueFull(
                f"Too many queued requests: {full}; try again later", retry_after=1
            ) from None
        base = f"{base_url(scope)}/{app.app_id}/requests/{request_id}"
        await send_json(
            send,
            200,
            {
                "request_id": request_id,
                "gateway_request_id": request_id,
                "response_url": base,
                "status_url": base + "/status",
                "cancel_url": base + "/cancel",
                "status": "IN_QUEUE",
                "queue_position": position,
            },
        )

    async def _view(
        self, app: apps.AppConfig, request_id: str, *, with_logs: bool, with_body: bool
    ) -> queueing.JobView:
        view = await self.gateway.store.view(request_id, with_logs=with_logs, with_body=with_body)
        if view is None or view.app_id != app.app_id:
            raise errors.NotFound(f"Request {request_id} not found")
        return view

    async def _status(
        self, scope: Scope, send: Send, *, app: apps.AppConfig, request_id: str
    ) -> None:
        with_logs = bool(scope.get("query_string")) and not _falsey(query_params(scope).get("logs"))
        worker = self.gateway.worker
        if (
            not with_logs
            and worker is not None
            and worker.running_apps.get(request_id) == app.app_id
        ):
            # Running here: IN_PROGRESS in the store too (leased by this gateway, not completed).
            await send_prepared(send, IN_PROGRESS_STATUS)
            return
        view = await self._view(app, request_id, with_logs=with_logs, with_body=False)
        if view.state is queueing.JobState.IN_PROGRESS and view.logs is None:
            await send_prepared(send, IN_PROGRESS_STATUS)  # most polls: one constant answer
            return
        logs = None if view.logs is None else [line.to_fal() for line in view.logs]
        if view.state is queueing.JobState.IN_QUEUE:
            payload: dict[str, object] = {
                "status": "IN_QUEUE",
                "queue_position": view.queue_position or 0,
            }
            await send_json(send, 202, payload)
        elif view.state is queueing.JobState.IN_PROGRESS:
            await send_json(send, 202, {"status": "IN_PROGRESS", "logs": logs})
        else:
            result = view.result
            await send_json(
                send,
                200,
                {
                    "status": "COMPLETED",
                    "logs": logs,
                    "metrics": dict(result.metrics) if result is not None else {},
                    "error": None if result is None else result.error,
                    "error_type": None if result is None else result.error_type,
                },
            )

    async def _result(self, send: Send, *, app: apps.AppConfig, request_id: str) -> None:
        view = await self._view(app, request_id, with_logs=False, with_body=True)
        if view.state is not queueing.JobState.COMPLETED or view.result is None:
            raise errors.StillInProgress("Request is still in progress")
        result = view.result
        headers = [
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in result.headers
        ]
        headers.append((b"x-fal-request-id", request_id.encode()))
        if result.error_type is not None:
            headers.append((b"x-fal-error-type", result.error_type.encode()))
        headers.append((b"content-length", str(len(result.body)).encode()))
        await send(
            {"type": "http.response.start", "status": result.status_code, "headers": headers}
        )
        await send({"type": "http.response.body", "body": result.body})

    async def _cancel(self, send: Send, *, app: apps.AppConfig, request_id: str) -> None:
        view = await self.gateway.store.view(request_id)
        if view is None or view.app_id != app.app_id:
            await send_json(send, 404, {"status": "NOT_FOUND", "detail": "Request not found"})
            return
        outcome = await self.gateway.store.cancel(request_id)
        if outcome is queueing.CancelOutcome.NOT_FOUND:
            await send_json(send, 404, {"status": "NOT_FOUND", "detail": "Request not found"})
            return
        status = 202 if outcome is queueing.CancelOutcome.CANCELLATION_REQUESTED else 200
        await send_json(send, status, {"status": outcome.value})

    # ---- run API ----
    async def _run(self, scope: Scope, receive: Receive, send: Send) -> None:
        namespace, name, subpath = self._forward_path(scope)
        if scope["method"] == "HEAD":
            raise errors.MethodNotAllowed("HEAD is not supported; fal endpoints take POST")
        query = self._forward_query(scope)
        app = await self._app_and_auth(scope, namespace, name)
        priority = parse_priority(scope)
        wait_timeout = self._run_wait(scope)
        body = await read_body(scope, receive, limit=self.settings.max_request_bytes)
        request_id = queueing.new_request_id()
        headers = forwarded_headers(scope)
        headers.append((b"x-fal-request-id", request_id.encode()))
        headers.append(
            (b"x-fal-endpoint", queue_worker.endpoint_name(app.app_id, subpath).encode())
        )
        target = f"{subpath}?{query}" if query else subpath
        stream = wants_stream(scope, subpath)
        accepted = time.monotonic()
        metrics = self.gateway.metrics
        forwarder = self.gateway.forwarder
        slots = forwarder.slots_for(app)
        slots.sync_requests += 1
        hang_up = HangUpWatch(receive)
        forwarded: dispatch.ForwardResult | None = None
        try:
            try:
                forwarded = await forwarder.forward(
                    app=app,
                    method=scope["method"],
                    target=target,
                    headers=headers,
                    body=body,
                    request_id=request_id,
                    retry=False,
                    priority=priority.name.lower(),
                    hint=parse_hint(scope),
                    wait_timeout=wait_timeout,
                    stream=stream,
                    max_body=None if stream else self.settings.max_result_bytes,
                    cancel_abandoned=True,
                )
            except errors.QueueWaitTimeout:
                metrics.observe_request(
                    app.app_id, "run", "start_timeout", time.monotonic() - accepted
                )
                raise
            metrics.observe_dispatch(app.app_id, "run", forwarded.started - accepted)
            response = forwarded.response
            response_headers = [
                (key, value)
                for key, value in response.headers
                if key not in DROPPED_RESPONSE_HEADERS
            ]
            response_headers.append((b"x-fal-request-id", request_id.encode()))
            if not stream:
                hang_up.close()
                response_headers.append((b"content-length", str(len(response.body)).encode()))
                await send(
                    {
                        "type": "http.response.start",
                        "status": response.status,
                        "headers": response_headers,
                    }
                )
                await send({"type": "http.response.body", "body": response.body})
            else:
                await self._relay_stream(send, response, response_headers, hang_up)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not hang_up.hung_up or task is None or task.cancelling() > 1:
                raise
            task.uncancel()  # the client hung up: nobody to answer, the runner is told
            if forwarded is not None:
                forwarder.cancel_later(forwarded.runner, request_id)
            metrics.observe_request(app.app_id, "run", "client_gone", time.monotonic() - accepted)
        finally:
            hang_up.close()
            slots.sync_requests -= 1
            if forwarded is not None:
                forwarded.release()
                if not hang_up.hung_up:
                    metrics.observe_request(
                        app.app_id,
                        "run",
                        "ok" if forwarded.response.status < 400 else "error",
                        time.monotonic() - accepted,
                    )

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

    async def _relay_stream(
        self,
        send: Send,
        response: upstream.UpstreamResponse,
        headers: list[tuple[bytes, bytes]],
        hang_up: HangUpWatch,
    ) -> None:
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        try:
            async for chunk in response.iter_body():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except upstream.UpstreamError:
            LOGGER.warning("runner stream broke off")
        finally:
            response.abandon()
        hang_up.close()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    # ---- WebSockets ----
    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            namespace, name, subpath = self._forward_path(scope)
            params = query_params(scope)
            authorization = header_value(scope, b"authorization")
            token = params.get("fal_jwt_token")
            app = self.gateway.registry.get(f"{namespace}/{name}")
            if app is None:
                raise errors.NotFound(f"App {namespace}/{name} not found")
            signer = self.gateway.signer
            if (
                authorization is None
                and token
                and signer is not None
                and signing.is_realtime_token(token)
            ):
                # A token from POST /tokens/ (fal_client's default realtime(use_jwt=True)).
                realtime.authorize(self.gateway.keys, signer, token=token, app=app)
            else:
                await auth.authorize(
                    self.gateway.keys,
                    app=app,
                    authorization=authorization.decode("latin-1")
                    if authorization is not None
                    else (f"Key {token}" if token else None),
                    client=client_host(scope),
                )
        except errors.GatewayError as error:
            await receive()  # websocket.connect
            status, headers, body = errors.to_http(error)
            await send(
                {"type": "websocket.http.response.start", "status": status, "headers": headers}
            )
            await send({"type": "websocket.http.response.body", "body": body})
            return
        slots = self.gateway.forwarder.slots_for(app)
        slots.sync_requests += 1
        try:
            await self._websocket_session(
                scope, receive, send, slots=slots, app=app, subpath=subpath, params=params
            )
        finally:
            slots.sync_requests -= 1

    async def _websocket_session(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        slots: dispatch.AppSlots,
        app: apps.AppConfig,
        subpath: str,
        params: dict[str, str],
    ) -> None:
        try:
            runner = await slots.acquire(timeout=self._run_wait(scope))
        except errors.GatewayError as error:
            await receive()
            await send({"type": "websocket.close", "code": 1013, "reason": error.detail[:120]})
            return
        try:
            await self._proxy_websocket(
                scope, receive, send, runner=runner, subpath=subpath, params=params, app=app
            )
        finally:
            slots.release(runner)

    async def _proxy_websocket(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        runner: runners.Runner,
        subpath: str,
        params: dict[str, str],
        app: apps.AppConfig,
    ) -> None:
        query = urllib.parse.urlencode(
            {key: value for key, value in params.items() if key not in STRIPPED_WS_QUERY}
        )
        uri = f"ws://{runner.host}:{runner.port}{subpath}" + (f"?{query}" if query else "")
        request_id = queueing.new_request_id()
        extra = [
            ("x-fal-request-id", request_id),
            ("x-fal-endpoint", queue_worker.endpoint_name(app.app_id, subpath)),
        ]
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        try:
            upstream_ws = await websockets.asyncio.client.connect(
                uri, additional_headers=extra, max_size=None, open_timeout=30, compression=None
            )
        except (OSError, websockets.exceptions.WebSocketException, TimeoutError) as error:
            self.gateway.runners.mark_unready(runner)
            await send(
                {
                    "type": "websocket.close",
                    "code": 1011,
                    "reason": f"runner unavailable: {error}"[:120],
                }
            )
            return
        await send({"type": "websocket.accept"})

        async def client_to_runner() -> None:
            while True:
                incoming = await receive()
                if incoming["type"] == "websocket.receive":
                    data = incoming.get("bytes")
                    await upstream_ws.send(data if data is not None else incoming.get("text", ""))
                elif incoming["type"] == "websocket.disconnect":
                    await upstream_ws.close()
                    return

        async def runner_to_client() -> None:
            with contextlib.suppress(websockets.exceptions.ConnectionClosed):
                async for frame in upstream_ws:
                    if isinstance(frame, bytes):
                        await send({"type": "websocket.send", "bytes": frame})
                    else:
                        await send({"type": "websocket.send", "text": frame})
            code = upstream_ws.close_code or 1000
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": code})

        tasks = [
            asyncio.ensure_future(client_to_runner()),
            asyncio.ensure_future(runner_to_client()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            await upstream_ws.close()

    # ---- admin API ----
    async def _admin(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        gateway = self.gateway
        if admin_auth.needs_token(
            path,
            token=self.settings.admin_token,
            protect_metrics=self.settings.admin_token_metrics,
        ):
            admin_auth.check(scope["headers"], token=self.settings.admin_token)
        if path == "/healthz":
            await send_json(send, 200, {"status": "ok"})
        elif path == "/readyz":
            ready = gateway.ready
            store_error = await gateway.store_unavailable() if ready else None
            body: dict[str, object] = {"ready": ready and store_error is None}
            if store_error is not None:
                body["detail"] = f"Queue store unavailable: {store_error}"
            await send_json(send, 200 if body["ready"] else 503, body)
        elif path == "/metrics":
            try:
                await gateway.signals.refresh_all()
            except queueing.QueueError:
                # Still served: the metrics are how an operator learns the store is down
                # (docs/operations.md, KubefalStoreErrors); the queue gauges keep their last values.
                gateway.metrics.store_errors.labels("metrics").inc()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")],
                }
            )
            await send({"type": "http.response.body", "body": gateway.metrics.render()})
        elif path == admin_auth.ANNOUNCE_PATH:
            await self._announce(scope, receive, send)
        elif path == "/_kubefal/scaling/watch":
            await self._scaling_watch(scope, receive, send)
        elif path.startswith("/_kubefal/apps/") and path.endswith("/scaling"):
            parts = path.split("/")  # ["", "_kubefal", "apps", ns, name, "scaling"]
            if len(parts) != 6:
                raise errors.NotFound("Use /_kubefal/apps/<namespace>/<name>/scaling")
            app = gateway.registry.get(f"{parts[3]}/{parts[4]}")
            if app is None:
                raise errors.NotFound(f"App {parts[3]}/{parts[4]} not found")
            signal = await gateway.signals.compute(app)
            await send_json(send, 200, signal.to_json())
        else:
            raise errors.NotFound(f"Path {path} not found")

    async def _announce(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`POST /_kubefal/runners/ready` from a runner that finished setup(), optionally with
        `{"pod": "<its pod name>"}`: who it is comes from the TCP peer address (discovery.py)."""
        if scope["method"] != "POST":
            raise errors.MethodNotAllowed("Announce a runner with POST")
        body = await read_body(scope, receive, limit=ANNOUNCE_MAX_BYTES)
        pod_name: str | None = None
        if body:
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise errors.BadRequest("The announcement must be a JSON object") from None
            if not isinstance(parsed, dict) or not isinstance(parsed.get("pod", ""), str):
                raise errors.BadRequest('The announcement must be {"pod": "<pod name>"}')
            pod_name = parsed.get("pod") or None
        kube = self.gateway.discovery
        peer = client_host(scope)
        if kube is None or peer is None:
            raise errors.NotFound("This gateway does not discover runners from Kubernetes")
        try:
            app_id, runner_id = kube.announce(peer, pod_name=pod_name)
        except discovery.NotAnnounceable as refused:
            raise errors.Forbidden(str(refused)) from None
        await send_json(send, 200, {"app": app_id, "runner": runner_id, "ready": True})

    async def _scaling_watch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Server-sent events: every app's signal at once, then each change as it happens."""
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", SSE_CONTENT_TYPE),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        subscription = self.gateway.signals.subscribe()
        disconnected = asyncio.ensure_future(_until_disconnect(receive))
        try:
            for app in list(self.gateway.registry.apps.values()):
                signal = await self.gateway.signals.compute(app)
                await send(
                    {"type": "http.response.body", "body": signal.to_sse(), "more_body": True}
                )
            while not disconnected.done():
                getter = asyncio.ensure_future(subscription.get())
                done, _ = await asyncio.wait(
                    {getter, disconnected}, timeout=15.0, return_when=asyncio.FIRST_COMPLETED
                )
                if getter in done:
                    await send(
                        {
                            "type": "http.response.body",
                            "body": getter.result().to_sse(),
                            "more_body": True,
                        }
                    )
                else:
                    getter.cancel()
                    if not done:
                        await send(
                            {
                                "type": "http.response.body",
                                "body": b": keep-alive\n\n",
                                "more_body": True,
                            }
                        )
        finally:
            disconnected.cancel()
            self.gateway.signals.unsubscribe(subscription)
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": b"", "more_body": False})
