"""A fal.App for the e2e lease tests: a request stays in flight until a file it names exists,
so ``fal runners list`` can be read while it runs."""

from __future__ import annotations

import asyncio
import pathlib
import time

import fal
import pydantic

GATE_TIMEOUT_SECONDS = 180.0


class HoldInput(pydantic.BaseModel):
    gate: str


class HoldOutput(pydantic.BaseModel):
    released: bool


class Held(fal.App, name="held"):  # type: ignore[no-untyped-call]
    machine_type = "S"

    @fal.endpoint("/")
    async def hold(self, request: HoldInput) -> HoldOutput:
        gate = pathlib.Path(request.gate)
        deadline = time.monotonic() + GATE_TIMEOUT_SECONDS
        while not gate.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return HoldOutput(released=gate.exists())
