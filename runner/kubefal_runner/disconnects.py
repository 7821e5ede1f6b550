"""Notice a client that hangs up while the app still computes its answer, so the work stops.

uvicorn only reports a dropped connection to a ``receive()`` call, and a FastAPI endpoint stops
calling ``receive()`` once it has its body; Starlette's own listener covers streamed responses
only. So for a request still running after `WATCH_AFTER_SECONDS` (nearly all requests finish
sooner and cost only a timer), a small pump task takes over the calls to uvicorn's ``receive()``
and queues what arrives for the app (body chunks the app has not read yet, then
``http.disconnect``). When the disconnect comes before the response is complete, it calls
``on_disconnect``. The app keeps getting every message in order, ``http.disconnect`` included.
"""

from __future__ import annotations

import asyncio
import collections.abc
from typing import Any

Message = collections.abc.MutableMapping[str, Any]
Receive = collections.abc.Callable[[], collections.abc.Awaitable[Message]]

WATCH_AFTER_SECONDS = 0.1
"""A request running longer than this gets its connection watched."""


class DisconnectWatch:
    """Stands between uvicorn's ``receive`` and the app's for one HTTP request."""

    __slots__ = (
        "_app_receiving",
        "_disconnected",
        "_messages",
        "_on_disconnect",
        "_pump",
        "_pump_wanted",
        "_receive",
        "_timer",
        "response_complete",
    )

    def __init__(
        self,
        *,
        receive: Receive,
        on_disconnect: collections.abc.Callable[[], None],
        delay: float = WATCH_AFTER_SECONDS,
    ) -> None:
        self._receive = receive
        self._on_disconnect = on_disconnect
        self._app_receiving = False
        self._pump_wanted = False
        self._disconnected = False
        self._messages: asyncio.Queue[Message] | None = None
        self._pump: asyncio.Task[None] | None = None
        self.response_complete = False
        self._timer = asyncio.get_running_loop().call_later(delay, self._start)

    def _start(self) -> None:
        if self._pump is not None or self.response_complete:
            return
        if self._app_receiving:  # never two readers: start when the app's call returns
            self._pump_wanted = True
            return
        self._messages = asyncio.Queue()
        self._pump = asyncio.get_running_loop().create_task(self._run_pump())

    async def _run_pump(self) -> None:
        assert self._messages is not None
        while True:
            message = await self._receive()
            self._messages.put_nowait(message)
            if message["type"] == "http.disconnect":
                self._disconnected = True
                if not self.response_complete:
                    self._on_disconnect()
                return

    async def receive(self) -> Message:
        """The ``receive`` the app gets."""
        if self._messages is None:
            self._app_receiving = True
            try:
                message = await self._receive()
            finally:
                self._app_receiving = False
            if self._pump_wanted:
                self._pump_wanted = False
                self._start()
            return message
        if self._disconnected and self._messages.empty():
            return {"type": "http.disconnect"}
        return await self._messages.get()

    def close(self) -> None:
        """The request is over: stop the timer and the pump."""
        self._timer.cancel()
        if self._pump is not None:
            self._pump.cancel()
