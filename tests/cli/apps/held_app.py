"""A real fal.App whose requests stay in flight until a file named in the request exists, so
a test can see them as leases in `fal runners list`."""

import pathlib
import time

import fal
import pydantic

GATE_TIMEOUT_SECONDS = 120.0


class HoldInput(pydantic.BaseModel):
    gate: str
    label: str


class HoldOutput(pydantic.BaseModel):
    label: str


class CliHeldApp(fal.App):  # type: ignore[no-untyped-call]
    keep_alive = 120
    machine_type = "S"
    max_multiplexing = 2
    min_concurrency = 0
    max_concurrency = 1
    request_timeout = 180

    @fal.endpoint("/")
    async def hold(self, payload: HoldInput) -> HoldOutput:
        import asyncio

        gate = pathlib.Path(payload.gate)
        deadline = time.monotonic() + GATE_TIMEOUT_SECONDS
        while not gate.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return HoldOutput(label=payload.label)
