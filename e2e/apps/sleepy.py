"""A fal.App for the full-system tests: it sleeps, then says who served it and when.

Each response names the runner pod (``KUBEFAL_POD_NAME``, set by the pod runner) and the
wall-clock time the request started, so tests can check which runner served what and in
which order the gateway dispatched the queue.
"""

from __future__ import annotations

import asyncio
import os
import time

import fal
import pydantic


class SleepInput(pydantic.BaseModel):
    seconds: float = pydantic.Field(default=0.0, ge=0, le=30)
    tag: str = ""


class SleepOutput(pydantic.BaseModel):
    tag: str
    pod: str
    started: float


class Sleepy(fal.App, name="sleepy"):  # type: ignore[no-untyped-call]
    machine_type = "S"

    @fal.endpoint("/")
    async def sleep(self, request: SleepInput) -> SleepOutput:
        started = time.time()
        print(f"sleeping {request.seconds}s for {request.tag}")
        await asyncio.sleep(request.seconds)
        return SleepOutput(
            tag=request.tag, pod=os.environ.get("KUBEFAL_POD_NAME", ""), started=started
        )
