# mypy: disable-error-code="no-untyped-call"
# (fal.App.__init_subclass__ is untyped; the app itself stays as a user would write it.)
"""An app for cancel and log-count tests; files named by environment variables steer it.

``KUBEFAL_TEST_CANCEL_MARKER``: ``/sleep`` writes this file when it sees `asyncio.CancelledError`.
``KUBEFAL_TEST_RELEASE_GATE``: the sync ``/block`` waits (in its worker thread) until it exists.
``/stream`` answers three server-sent events.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import time
from collections.abc import AsyncIterator

import fal
from fastapi.responses import StreamingResponse

SLEEP_SECONDS = 30.0
GATE_TIMEOUT_SECONDS = 120.0
GATE_POLL_SECONDS = 0.02


class CancelApp(fal.App):
    max_multiplexing = 1

    @fal.endpoint("/sleep")
    async def sleep(self) -> dict[str, str]:
        try:
            await asyncio.sleep(SLEEP_SECONDS)
        except asyncio.CancelledError:
            pathlib.Path(os.environ["KUBEFAL_TEST_CANCEL_MARKER"]).write_text("cancelled")
            raise
        return {"slept": "fully"}

    @fal.endpoint("/block")
    def block(self) -> dict[str, str]:
        gate = pathlib.Path(os.environ["KUBEFAL_TEST_RELEASE_GATE"])
        deadline = time.monotonic() + GATE_TIMEOUT_SECONDS
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(GATE_POLL_SECONDS)
        return {"blocked": "until released"}

    @fal.endpoint("/silent")
    async def silent(self) -> dict[str, str]:
        return {"said": "nothing"}

    @fal.endpoint("/chatty")
    def chatty(self) -> dict[str, str]:
        print("first line")  # noqa: T201 - user output is what the runner captures
        print("second line")  # noqa: T201
        return {"said": "two lines"}

    @fal.endpoint("/stream")
    async def stream(self) -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            for index in range(3):
                yield f"data: {index}\n\n"
                await asyncio.sleep(0)

        return StreamingResponse(events(), media_type="text/event-stream")
