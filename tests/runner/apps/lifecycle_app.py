# mypy: disable-error-code="no-untyped-call"
# (fal.App.__init_subclass__ is untyped; the app itself stays as a user would write it.)
"""An app for lifecycle, guard and log tests; files named by environment variables steer it.

``KUBEFAL_TEST_SETUP_GATE``: setup() waits until this file exists.
``KUBEFAL_TEST_RELEASE_GATE``: ``/hold`` requests wait until this file exists.
``KUBEFAL_TEST_TEARDOWN_MARKER``: teardown() writes this file.
``/stats`` reports how many requests were inside the app at once, counted by the app itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import sys
import time

import fal
from fastapi import WebSocket
from pydantic import BaseModel

GATE_TIMEOUT_SECONDS = 120.0
GATE_POLL_SECONDS = 0.02

logger = logging.getLogger("lifecycle_app")


def _gate(name: str) -> pathlib.Path | None:
    value = os.environ.get(name, "")
    return pathlib.Path(value) if value else None


class LogInput(BaseModel):
    words: list[str]


class LifecycleApp(fal.App):
    max_multiplexing = 2

    def setup(self) -> None:
        self.inside = 0
        self.most_inside = 0
        self.completed = 0
        gate = _gate("KUBEFAL_TEST_SETUP_GATE")
        deadline = time.monotonic() + GATE_TIMEOUT_SECONDS
        while gate is not None and not gate.exists() and time.monotonic() < deadline:
            time.sleep(GATE_POLL_SECONDS)

    def teardown(self) -> None:
        marker = _gate("KUBEFAL_TEST_TEARDOWN_MARKER")
        if marker is not None:
            marker.write_text(f"torn down after {self.completed} completed requests")

    @fal.endpoint("/hold")
    async def hold(self) -> dict[str, int]:
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            gate = _gate("KUBEFAL_TEST_RELEASE_GATE")
            deadline = time.monotonic() + GATE_TIMEOUT_SECONDS
            while gate is not None and not gate.exists() and time.monotonic() < deadline:
                await asyncio.sleep(GATE_POLL_SECONDS)
        finally:
            self.inside -= 1
        self.completed += 1
        return {"completed": self.completed}

    @fal.endpoint("/stats")
    def stats(self) -> dict[str, int]:
        return {"inside": self.inside, "most_inside": self.most_inside}

    @fal.endpoint("/request-context")
    async def request_context(self) -> dict[str, str | None]:
        current = self.current_request
        return {
            "request_id": current.request_id if current else None,
            "endpoint": current.endpoint if current else None,
        }

    @fal.endpoint("/log")
    def log(self, request: LogInput) -> dict[str, int]:
        for word in request.words:
            print(f"print {word}")  # noqa: T201 - user output is what the runner captures
        sys.stderr.write("stderr partial ")
        sys.stderr.write("line\n")
        logger.warning("warning %s", request.words[0])
        return {"logged": len(request.words)}

    @fal.endpoint("/ws", is_websocket=True)
    async def websocket_session(self, websocket: WebSocket) -> None:
        await websocket.accept()
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            async for message in websocket.iter_text():
                await websocket.send_text(message.upper())
        finally:
            self.inside -= 1
