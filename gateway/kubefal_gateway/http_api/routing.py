"""The ASGI callables of the gateway's listeners: which API serves a request, and how errors
become answers.

The run listener serves HTTP runs (`run`) and WebSockets (`realtime`); one combined listener
serves the queue API for a Host starting with `queue.`; every handler runs under `_guard`, which
turns a `GatewayError` into its status with a JSON `detail`, a queue store failure into a 503 and
anything unexpected into a logged 500.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from kubefal_gateway import core, errors, queueing
from kubefal_gateway.http_api import (
    Receive,
    Scope,
    Send,
    admin,
    header_value,
    queue,
    realtime,
    run,
    send_error,
    send_internal_error,
    serve_lifespan,
)

LOGGER = logging.getLogger(__name__)


class Api:
    """The ASGI callables of the three listeners, over one `core.Gateway`."""

    def __init__(self, gateway: core.Gateway) -> None:
        self.gateway = gateway
        self.queue = queue.QueueApi(gateway)
        self.run = run.RunApi(gateway)
        self.realtime = realtime.RealtimeApi(gateway)
        self.admin = admin.AdminApi(gateway)

    async def queue_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._guard(self.queue.serve, scope, receive, send)

    async def run_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self.realtime.serve(scope, receive, send)
            return
        await self._guard(self.run.serve, scope, receive, send)

    async def combined_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One listener for both APIs: a Host starting with `queue.` selects the queue API."""
        host = header_value(scope, b"host") or b""
        if scope["type"] == "http" and host.startswith(b"queue."):
            await self.queue_app(scope, receive, send)
        else:
            await self.run_app(scope, receive, send)

    async def admin_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._guard(self.admin.serve, scope, receive, send)

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
