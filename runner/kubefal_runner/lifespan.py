"""Drive the SDK app's ASGI lifespan ourselves, so the port can be open while ``setup()`` runs.

Under plain uvicorn the SDK's lifespan (``setup()`` then, at exit, ``teardown()``) runs before the
port opens, so a probe cannot tell "still in setup" from "dead". The runner instead opens the port
first (uvicorn with ``lifespan="off"``), answers ``/_kubefal/ready`` with 503 during setup, and
sends the lifespan messages to the SDK app from here: ``lifespan.startup`` at start,
``lifespan.shutdown`` after the drain. fal apps keep no lifespan state, so the ``state`` dict stays
private to this scope.
"""

from __future__ import annotations

import asyncio
import collections.abc
from typing import Any

Message = collections.abc.MutableMapping[str, Any]
ASGIApp = collections.abc.Callable[
    [
        collections.abc.MutableMapping[str, Any],
        collections.abc.Callable[[], collections.abc.Awaitable[Message]],
        collections.abc.Callable[[Message], collections.abc.Awaitable[None]],
    ],
    collections.abc.Awaitable[None],
]


class LifespanFailed(RuntimeError):
    """``setup()`` or ``teardown()`` raised; the message holds the app's traceback."""


class LifespanDriver:
    """Sends ``lifespan.startup``/``lifespan.shutdown`` to an ASGI app and reports the outcome."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outcomes: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _receive(self) -> Message:
        return await self._inbox.get()

    async def _send(self, message: Message) -> None:
        await self._outcomes.put(message)

    async def _run(self) -> None:
        scope: dict[str, Any] = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": {},
        }
        try:
            await self._app(scope, self._receive, self._send)
        except BaseException as error:  # the failure was reported through a message already
            await self._outcomes.put({"type": "kubefal.lifespan.crashed", "message": repr(error)})
            if not isinstance(error, Exception):
                raise

    async def _exchange(self, *, request: str, expected: str) -> None:
        await self._inbox.put({"type": request})
        outcome = await self._outcomes.get()
        if outcome["type"] != expected:
            raise LifespanFailed(str(outcome.get("message") or outcome["type"]))

    async def startup(self) -> None:
        """Run the app's ``setup()``; raise `LifespanFailed` with its traceback when it fails."""
        self._task = asyncio.create_task(self._run(), name="fal-app-lifespan")
        await self._exchange(request="lifespan.startup", expected="lifespan.startup.complete")

    async def shutdown(self) -> None:
        """Run the app's ``teardown()``; raise `LifespanFailed` when it fails."""
        if self._task is None or self._task.done():
            return
        try:
            await self._exchange(request="lifespan.shutdown", expected="lifespan.shutdown.complete")
        finally:
            await asyncio.gather(self._task, return_exceptions=True)
