"""A fal.App whose setup() waits until a file exists: a test decides how long a cold start lasts.

The gate's path comes from ``KUBEFAL_TEST_GATE`` (the FalApp's ``env``); without the variable,
or after ``GATE_TIMEOUT_SECONDS``, setup() goes on, so a forgotten gate cannot hang a runner.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import time

import fal
import pydantic

GATE_TIMEOUT_SECONDS = 120.0


class WorkInput(pydantic.BaseModel):
    seconds: float = pydantic.Field(default=0.0, ge=0, le=30)
    tag: str = ""


class WorkOutput(pydantic.BaseModel):
    tag: str
    pod: str


class Gated(fal.App, name="gated"):  # type: ignore[no-untyped-call]
    machine_type = "S"

    def setup(self) -> None:
        gate = os.environ.get("KUBEFAL_TEST_GATE")
        deadline = time.monotonic() + GATE_TIMEOUT_SECONDS
        while gate and not pathlib.Path(gate).exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    @fal.endpoint("/")
    async def work(self, request: WorkInput) -> WorkOutput:
        await asyncio.sleep(request.seconds)
        return WorkOutput(tag=request.tag, pod=os.environ.get("KUBEFAL_POD_NAME", ""))
