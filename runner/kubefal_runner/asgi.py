"""The thin raw-ASGI layer between uvicorn and the SDK's own app: the guard and ``/_kubefal/*``.

Everything the app serves (routes, validation, errors, OpenAPI, realtime WebSockets) stays the
SDK's; this layer only adds what Kubernetes and the gateway need, at the cost of a header scan and a
context variable per request:

* the ``max_multiplexing`` guard: an HTTP request or a WebSocket session beyond the limit, during
  ``setup()``, while draining or once unhealthy gets a 503 ``{"detail": ...}`` with
  ``x-fal-needs-retry: 1`` and ``x-kubefal-rejected: busy|not-ready|draining|unhealthy`` so the
  gateway retries on another runner (the SDK's ``GET /health`` and ``/_kubefal/*`` are never
  guarded);
* a request cut off by the end of a drain gets the same 503 (not uvicorn's 500), so the gateway
  retries it;
* ``x-fal-request-id``: passed through, generated when absent, echoed on the response, and set as
  the context under which the request's logs are captured (``x-fal-endpoint`` passes untouched);
* ``x-kubefal-log-lines: N`` on every app response whose length is declared: the log lines kept
  for the request so far, so the gateway skips fetching logs when there are none (a streamed
  response, without ``content-length``, gets no count: lines may still follow);
* ``POST /_kubefal/cancel/{id}`` (see `cancellation`): 200 ``{"status":"OK"}`` when the request
  stopped and freed its slot, 202 ``{"status":"CANCELLATION_REQUESTED"}`` when work goes on (a
  threadpool endpoint keeps its slot until its thread returns), 404 for an id not in flight; a
  cancelled request whose connection is still open ends with fal's 499;
* a client that hangs up before its answer started cancels an async request the same way
  (`disconnects`); a threadpool one runs to its end, as under the SDK alone;
* ``GET /_kubefal/ready``, ``/_kubefal/health``, ``/_kubefal/info``, ``/_kubefal/logs/{id}``;
* the app's health check as fal runs it: ``/_kubefal/health`` (the liveness probe) calls it when
  it is to be called regularly (fal's default); an app response carrying
  ``x-fal-runner-health-check`` (removed from the response, it is meant for the platform) runs it
  once more in the background. A failure of that requested check makes the runner ``unhealthy``
  for good: it admits nothing new and both probes fail, so Kubernetes takes it out of traffic and
  restarts it, as fal kills such a runner.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import json
import logging
import uuid
from typing import Any

from kubefal_runner import cancellation, disconnects, health, lifespan, request_logs, state

Scope = collections.abc.MutableMapping[str, Any]
Message = lifespan.Message
Receive = collections.abc.Callable[[], collections.abc.Awaitable[Message]]
Send = collections.abc.Callable[[Message], collections.abc.Awaitable[None]]

logger = logging.getLogger(__name__)

CONTROL_PREFIX = "/_kubefal/"
READY_PATH = "/_kubefal/ready"
"""200 once setup() finished, 503 before (kubefal_api.naming.RUNNER_READY_PATH: the runner does
not import kubefal_api, its import time is every cold start's; tests/api/test_shared_contracts.py
holds the two equal)."""
HEALTH_PATH = "/_kubefal/health"
"""The app's health check (kubefal_api.naming.RUNNER_HEALTH_PATH)."""
LOGS_PREFIX = "/_kubefal/logs/"
CANCEL_PREFIX = "/_kubefal/cancel/"
REQUEST_ID_HEADER = b"x-fal-request-id"
MAX_REQUEST_ID_BYTES = 256
"""A longer ``x-fal-request-id`` is refused (400; a WebSocket is closed 1008): the id keys the
request's kept log lines, so it must not be a caller's megabytes (the gateway sends UUIDs)."""
LOG_LINES_HEADER = b"x-kubefal-log-lines"
CONTENT_LENGTH_HEADER = b"content-length"
HEALTH_CHECK_REQUEST_HEADER = b"x-fal-runner-health-check"
"""On an app response: run the health check now (fal's manual health checks)."""
REQUEST_CANCELLED_STATUS = 499
"""fal's status for a request cancelled by its client (``RequestCancelledException``)."""
REQUEST_CANCELLED_DETAIL = "Request cancelled by the client."
WEBSOCKET_TRY_AGAIN_LATER = 1013
WEBSOCKET_POLICY_VIOLATION = 1008

RETRY_HEADERS = ((b"x-fal-needs-retry", b"1"), (b"retry-after", b"1"))
"""On every 503 the runner makes: safe to resend, preferably to another runner."""

REJECTION_DETAILS = {
    state.Rejection.BUSY: "runner is at its max_multiplexing limit of {limit} requests",
    state.Rejection.NOT_READY: "runner is not ready: setup() has not finished",
    state.Rejection.DRAINING: "runner is draining before shutdown",
    state.Rejection.UNHEALTHY: "runner is unhealthy: its health check failed",
}


def _json_body(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


async def send_json(
    send: Send,
    *,
    status: int,
    payload: Any,
    headers: collections.abc.Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Send a complete JSON HTTP response."""
    body = _json_body(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RunnerASGI:
    """Wraps the SDK's ASGI app with the guard, request ids and the ``/_kubefal/*`` endpoints."""

    def __init__(
        self,
        *,
        app: lifespan.ASGIApp,
        runner_state: state.RunnerState,
        log_capture: request_logs.RequestLogCapture,
        app_info: dict[str, Any],
        health_check: dict[str, Any] | None,
    ) -> None:
        self._app = app
        self._state = runner_state
        self._log_capture = log_capture
        self._app_info = app_info
        self._health_check = health_check
        call_regularly = None if health_check is None else health_check.get("call_regularly")
        self._call_regularly = call_regularly is not False  # fal's default is True
        self._requested_check: asyncio.Task[None] | None = None
        self.unhealthy_detail: str | None = None
        """Why the runner is unhealthy (a requested health check failed); None while healthy."""
        self.in_flight = cancellation.InFlightRegistry()
        self.startup_seconds: dict[str, float] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        if scope_type == "lifespan":
            # uvicorn runs with lifespan="off"; the LifespanDriver owns the app's lifespan.
            return
        path: str = scope["path"]
        if path.startswith(CONTROL_PREFIX):
            if scope_type == "http":
                await self._serve_control(scope, send)
            else:
                await receive()
                await send({"type": "websocket.close", "code": WEBSOCKET_POLICY_VIOLATION})
            return
        if path == "/health":
            await self._app(scope, receive, send)
            return

        request_id: bytes | None = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                request_id = value
                break
        if request_id is None:
            request_id = str(uuid.uuid4()).encode()
            scope = {**scope, "headers": [*scope["headers"], (REQUEST_ID_HEADER, request_id)]}
        elif len(request_id) > MAX_REQUEST_ID_BYTES:
            detail = f"x-fal-request-id is longer than {MAX_REQUEST_ID_BYTES} bytes"
            if scope_type == "http":
                await send_json(send, status=400, payload={"detail": detail})
            else:
                await receive()
                close = {"type": "websocket.close", "code": WEBSOCKET_POLICY_VIOLATION}
                await send({**close, "reason": detail})
            return
        request_id_header = (REQUEST_ID_HEADER, request_id)

        rejection = self._state.try_admit()
        if rejection is not None:
            await self._reject(
                scope_type=scope_type,
                scope_extensions=scope.get("extensions") or {},
                receive=receive,
                send=send,
                rejection=rejection,
                request_id_header=request_id_header,
            )
            return

        request_id_text = request_id.decode("latin-1")
        if scope_type != "http":
            await self._serve_session(
                scope=scope,
                receive=receive,
                send=send,
                request_id_text=request_id_text,
                request_id_header=request_id_header,
            )
            return

        response_started = False
        answered = False
        in_flight = cancellation.InFlightRequest(
            request_id=request_id_text, task=asyncio.current_task(), scope=scope
        )
        log_capture = self._log_capture

        def cancel_unless_answering() -> None:
            if not response_started:  # a streamed answer is stopped by Starlette itself
                in_flight.cancel_if_async()

        watch = disconnects.DisconnectWatch(receive=receive, on_disconnect=cancel_unless_answering)

        async def send_with_request_id(message: Message) -> None:
            nonlocal response_started, answered
            if in_flight.cancel_requested:
                return  # a threadpool endpoint finished after its cancel: the 499 follows
            if message["type"] == "http.response.body" and not message.get("more_body"):
                watch.response_complete = True
                await send(message)
                if not answered:  # the slot admits the next request now (state.py)
                    answered = True
                    self._state.answered()
                return
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), request_id_header]
                if any(name.lower() == HEALTH_CHECK_REQUEST_HEADER for name, _ in headers):
                    headers = [h for h in headers if h[0].lower() != HEALTH_CHECK_REQUEST_HEADER]
                    self.request_health_check()
                if any(name.lower() == CONTENT_LENGTH_HEADER for name, _ in headers):
                    count = log_capture.line_count(request_id_text)
                    headers.append((LOG_LINES_HEADER, str(count).encode()))
                message["headers"] = headers
                response_started = True
            await send(message)

        token = request_logs.CURRENT_REQUEST_ID.set(request_id_text)
        self.in_flight.add(in_flight)
        try:
            await self._app(scope, watch.receive, send_with_request_id)
        except asyncio.CancelledError:
            task = in_flight.task
            if in_flight.cancel_requested and task is not None and task.cancelling() <= 1:
                # Our own cancel (not the end of a drain): handled here, uvicorn sees a return.
                if task.cancelling():
                    task.uncancel()
                if not response_started:
                    await self._send_cancelled(send, request_id_header, request_id_text)
                return
            # Cut off at the end of a drain: tell the gateway to run it elsewhere (not a 500).
            if not response_started:
                with contextlib.suppress(Exception):  # the client may be gone already
                    await send_json(
                        send,
                        status=503,
                        payload={"detail": "runner stopped before the request finished"},
                        headers=[*RETRY_HEADERS, request_id_header],
                    )
            raise
        finally:
            watch.close()
            request_logs.CURRENT_REQUEST_ID.reset(token)
            self._state.release(answered=answered)
            self.in_flight.remove(in_flight)
            self._log_capture.finish_request(request_id_text)
        if in_flight.cancel_requested and not response_started:
            await self._send_cancelled(send, request_id_header, request_id_text)

    async def _send_cancelled(
        self, send: Send, request_id_header: tuple[bytes, bytes], request_id_text: str
    ) -> None:
        """fal's 499 for a cancelled request, if its client still listens."""
        count = self._log_capture.line_count(request_id_text)
        with contextlib.suppress(Exception):  # the client (usually the gateway) may be gone
            await send_json(
                send,
                status=REQUEST_CANCELLED_STATUS,
                payload={"detail": REQUEST_CANCELLED_DETAIL},
                headers=[request_id_header, (LOG_LINES_HEADER, str(count).encode())],
            )

    async def _serve_session(
        self,
        *,
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id_text: str,
        request_id_header: tuple[bytes, bytes],
    ) -> None:
        """A WebSocket session holds a slot for its whole life; it is not cancellable by id."""

        async def send_with_request_id(message: Message) -> None:
            if message["type"] == "websocket.accept":
                message["headers"] = [*message.get("headers", ()), request_id_header]
            await send(message)

        token = request_logs.CURRENT_REQUEST_ID.set(request_id_text)
        try:
            await self._app(scope, receive, send_with_request_id)
        finally:
            request_logs.CURRENT_REQUEST_ID.reset(token)
            self._state.release()
            self._log_capture.finish_request(request_id_text)

    async def _reject(
        self,
        *,
        scope_type: str,
        scope_extensions: collections.abc.Mapping[str, Any],
        receive: Receive,
        send: Send,
        rejection: state.Rejection,
        request_id_header: tuple[bytes, bytes],
    ) -> None:
        detail = REJECTION_DETAILS[rejection].format(limit=self._state.max_multiplexing)
        headers = [
            *RETRY_HEADERS,
            (b"x-kubefal-rejected", rejection.value.encode()),
            request_id_header,
        ]
        if scope_type == "http":
            await send_json(send, status=503, payload={"detail": detail}, headers=headers)
            return
        await receive()  # websocket.connect
        if "websocket.http.response" not in scope_extensions:
            await send({"type": "websocket.close", "code": WEBSOCKET_TRY_AGAIN_LATER})
            return
        body = _json_body({"detail": detail})
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *headers,
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})

    async def _serve_control(self, scope: Scope, send: Send) -> None:
        path: str = scope["path"]
        if path.startswith(CANCEL_PREFIX) and len(path) > len(CANCEL_PREFIX):
            if scope["method"] != "POST":
                await send_json(
                    send,
                    status=405,
                    payload={"detail": f"{scope['method']} is not allowed on {path}; use POST"},
                    headers=[(b"allow", b"POST")],
                )
                return
            await self._serve_cancel(send, request_id=path[len(CANCEL_PREFIX) :])
            return
        if scope["method"] not in ("GET", "HEAD"):
            await send_json(
                send,
                status=405,
                payload={"detail": f"{scope['method']} is not allowed on {path}; use GET"},
                headers=[(b"allow", b"GET")],
            )
            return
        if path == READY_PATH:
            await self._serve_ready(send)
        elif path == HEALTH_PATH:
            await self._serve_health(send)
        elif path == "/_kubefal/info":
            await send_json(send, status=200, payload=self.describe())
        elif path.startswith(LOGS_PREFIX) and len(path) > len(LOGS_PREFIX):
            request_id = path[len(LOGS_PREFIX) :]
            entries = self._log_capture.store.entries(request_id)
            await send_json(send, status=200, payload=entries)
        else:
            await send_json(send, status=404, payload={"detail": f"Path {path} not found"})

    async def _serve_cancel(self, send: Send, *, request_id: str) -> None:
        outcome = await self.in_flight.cancel(request_id)
        if outcome is cancellation.CancelOutcome.CANCELLED:
            await send_json(send, status=200, payload={"status": "OK"})
        elif outcome is cancellation.CancelOutcome.REQUESTED:
            await send_json(send, status=202, payload={"status": "CANCELLATION_REQUESTED"})
        else:
            await send_json(
                send,
                status=404,
                payload={"detail": f"request {request_id} is not in flight on this runner"},
            )

    def describe(self) -> dict[str, Any]:
        """The app's configuration plus the runner's live state."""
        return {
            **self._app_info,
            "runner": {
                "state": self._state.phase.value,
                "in_flight": self._state.in_flight,
                "finishing": self._state.finishing,
                "max_multiplexing": self._state.max_multiplexing,
                "admitted_total": self._state.admitted_total,
                "rejected_total": {
                    reason.value: count for reason, count in self._state.rejected_total.items()
                },
                "startup_seconds": self.startup_seconds,
            },
        }

    def request_health_check(self) -> None:
        """Run the health check in the background (one at a time); a failure is final."""
        if self._requested_check is not None and not self._requested_check.done():
            return
        self._requested_check = asyncio.get_running_loop().create_task(
            self._run_requested_check(), name="kubefal-requested-health-check"
        )

    async def _run_requested_check(self) -> None:
        result = await self.check_health()
        if result.healthy or self.unhealthy_detail is not None:
            return
        self.unhealthy_detail = f"requested health check failed: {result.detail}"
        self._state.mark_unhealthy()
        logger.warning("runner is unhealthy and takes no new requests: %s", self.unhealthy_detail)

    def _phase_detail(self, phase: state.Phase) -> str:
        if phase is state.Phase.UNHEALTHY and self.unhealthy_detail:
            return self.unhealthy_detail
        return f"runner is {phase}"

    async def _serve_ready(self, send: Send) -> None:
        phase = self._state.phase
        if self._state.ready:
            await send_json(send, status=200, payload={"ready": True, "state": phase.value})
        else:
            await send_json(
                send,
                status=503,
                payload={"ready": False, "state": phase.value, "detail": self._phase_detail(phase)},
            )

    async def _serve_health(self, send: Send) -> None:
        phase = self._state.phase
        if phase in (
            state.Phase.SETUP,
            state.Phase.FAILED,
            state.Phase.STOPPED,
            state.Phase.UNHEALTHY,
        ):
            await send_json(
                send,
                status=503,
                payload={
                    "healthy": False,
                    "state": phase.value,
                    "detail": self._phase_detail(phase),
                },
            )
            return
        if not self._call_regularly:
            # Checked only when a response asks for it (request_health_check).
            await send_json(
                send,
                status=200,
                payload={
                    "healthy": True,
                    "state": phase.value,
                    "detail": "health check runs only when a response asks for it",
                },
            )
            return
        result = await self.check_health()
        payload = {
            "healthy": result.healthy,
            "state": phase.value,
            "path": self._health_check["path"] if self._health_check else "/health",
            "status_code": result.status_code,
            "detail": result.detail,
        }
        await send_json(send, status=200 if result.healthy else 503, payload=payload)

    async def check_health(self) -> health.HealthCheckResult:
        """Run the app's configured health check in-process, else the SDK's ``GET /health``."""
        request_id = f"kubefal-health-{uuid.uuid4()}".encode()
        return await health.check(
            self._app, self._health_check, headers=[(REQUEST_ID_HEADER, request_id)]
        )
