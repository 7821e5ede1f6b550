"""Which requests are inside the app, by request id, so the gateway can cancel one.

When a queued request is cancelled while it runs, the gateway drops its connection and sends
``POST /_kubefal/cancel/{request_id}``. An ``async def`` endpoint runs in the task that serves the
request, so cancelling that task makes the app see `asyncio.CancelledError` where it awaits, and
the request's multiplexing slot is given back once the app has unwound. A plain ``def`` endpoint
runs in Starlette's threadpool: a thread cannot be stopped, and cancelling the awaiting task would
free the slot while the thread still computes. Such a request is only marked: it keeps its slot
until the thread returns, and its response is then replaced by fal's 499. Nothing here knows HTTP;
`asgi` maps the outcomes to responses.
"""

from __future__ import annotations

import asyncio
import collections.abc
import enum
import inspect
from typing import Any

CANCEL_WAIT_SECONDS = 1.0
"""How long a cancel waits for an async request to unwind before it answers "requested"."""


class CancelOutcome(enum.Enum):
    """What a cancel achieved."""

    CANCELLED = "cancelled"
    """Every request with the id stopped and gave its slot back."""
    REQUESTED = "requested"
    """Marked, but some work goes on (a threadpool endpoint, or an app slow to unwind)."""
    UNKNOWN = "unknown"
    """No request with the id is inside the app."""


def runs_in_threadpool(scope: collections.abc.Mapping[str, Any]) -> bool:
    """True when the routed endpoint is a plain function that FastAPI runs in a worker thread.

    Routing stores the route and endpoint in the request's scope; before routing no thread runs.
    """
    dependant = getattr(scope.get("route"), "dependant", None)
    if dependant is not None:
        return not bool(dependant.is_coroutine_callable)
    endpoint = scope.get("endpoint")
    return endpoint is not None and not inspect.iscoroutinefunction(endpoint)


class InFlightRequest:
    """One admitted HTTP request: the task serving it and whether it was cancelled."""

    __slots__ = ("_finished", "cancel_requested", "done", "request_id", "scope", "task")

    def __init__(
        self,
        *,
        request_id: str,
        task: asyncio.Task[Any] | None,
        scope: collections.abc.Mapping[str, Any],
    ) -> None:
        self.request_id = request_id
        self.task = task
        self.scope = scope
        self.cancel_requested = False
        self.done = False
        self._finished: asyncio.Event | None = None

    def cancel(self) -> bool:
        """Stop the request's work; False when it runs in a thread and can only be marked."""
        in_thread = runs_in_threadpool(self.scope) or self.task is None
        if not self.cancel_requested:
            self.cancel_requested = True
            if not in_thread:
                assert self.task is not None
                self.task.cancel()
        return not in_thread

    def cancel_if_async(self) -> None:
        """Stop the request's work when that is possible (its client hung up)."""
        if not self.cancel_requested and not runs_in_threadpool(self.scope) and self.task:
            self.cancel_requested = True
            self.task.cancel()

    def mark_done(self) -> None:
        """The request left the app (its slot is free)."""
        self.done = True
        if self._finished is not None:
            self._finished.set()

    async def wait_done(self, timeout: float) -> bool:
        """Wait until `mark_done`; False when ``timeout`` seconds passed first."""
        if self.done:
            return True
        if self._finished is None:
            self._finished = asyncio.Event()
        try:
            await asyncio.wait_for(self._finished.wait(), timeout=timeout)
        except TimeoutError:
            return False
        return True


class InFlightRegistry:
    """The requests inside the app by id (a retried id may briefly be there twice)."""

    def __init__(self, *, cancel_wait_seconds: float = CANCEL_WAIT_SECONDS) -> None:
        self._by_id: dict[str, list[InFlightRequest]] = {}
        self._cancel_wait_seconds = cancel_wait_seconds

    def add(self, request: InFlightRequest) -> None:
        same_id = self._by_id.get(request.request_id)
        if same_id is None:
            self._by_id[request.request_id] = [request]
        else:
            same_id.append(request)

    def remove(self, request: InFlightRequest) -> None:
        same_id = self._by_id.get(request.request_id)
        if same_id is None:
            return
        if len(same_id) == 1:
            del self._by_id[request.request_id]
        else:
            same_id.remove(request)
        request.mark_done()

    def __len__(self) -> int:
        return sum(len(same_id) for same_id in self._by_id.values())

    async def cancel(self, request_id: str) -> CancelOutcome:
        """Cancel every request with ``request_id``; wait a little for async ones to unwind."""
        requests = list(self._by_id.get(request_id, ()))
        if not requests:
            return CancelOutcome.UNKNOWN
        stopped = [request for request in requests if request.cancel()]
        if len(stopped) < len(requests):
            return CancelOutcome.REQUESTED
        for request in stopped:
            if not await request.wait_done(self._cancel_wait_seconds):
                return CancelOutcome.REQUESTED
        return CancelOutcome.CANCELLED
