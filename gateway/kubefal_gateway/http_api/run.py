"""fal's run API: a synchronous request forwarded to one runner, its answer relayed back.

Any method on `/{ns}/{name}[/{subpath}]` runs synchronously and forwards `/{subpath}` and the query
raw, as the client encoded them (checked by `targets.py`; subpaths under `/_kubefal` are 404); a run
is sent to one runner and never retried (dispatch.py); a client that hangs up gets its runner told
to cancel and its slot freed (`HangUpWatch`); `.../stream` or `Accept: text/event-stream` streams
the answer unbuffered.
"""

from __future__ import annotations

import asyncio
import logging
import time

from kubefal_gateway import (
    dispatch,
    errors,
    queue_worker,
    queueing,
    upstream,
)
from kubefal_gateway.http_api import (
    ApiPart,
    HangUpWatch,
    Receive,
    Scope,
    Send,
    forwarded_headers,
    parse_hint,
    parse_priority,
    read_body,
    wants_stream,
)

LOGGER = logging.getLogger(__name__)

DROPPED_RESPONSE_HEADERS = upstream.HOP_BY_HOP | {b"date", b"server", b"x-fal-request-id"}


class RunApi(ApiPart):
    """The run listener's HTTP handlers."""

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        namespace, name, subpath = self._forward_path(scope)
        if scope["method"] == "HEAD":
            raise errors.MethodNotAllowed("HEAD is not supported; fal endpoints take POST")
        query = self._forward_query(scope)
        app, caller = await self._app_and_caller(scope, namespace, name)
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
                    caller=caller,
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
