"""A fal.App that counts, itself, how many requests it runs at once and how often it ran each one.

The two-gateway tests use it to check `maxMultiplexing` where it matters, at the runner: the
gateways' own bookkeeping is what is under test, so it cannot be the witness.
"""

from __future__ import annotations

import collections
import os
import threading
import time

import fal
from fastapi.responses import JSONResponse
from pydantic import BaseModel

_LOCK = threading.Lock()
_STATE = {"current": 0, "max": 0}
_RUNS: collections.Counter[str] = collections.Counter()


class WorkInput(BaseModel):
    tag: str = ""
    sleep: float = 0.0


class WorkOutput(BaseModel):
    tag: str
    pid: int


class FlakyInput(BaseModel):
    tag: str = ""
    fail_runs: int = 0
    sleep: float = 0.0


class StatsInput(BaseModel):
    pass


class StatsOutput(BaseModel):
    current: int
    max_concurrent: int
    runs: dict[str, int]


class CountingApp(fal.App, keep_alive=30, name="counting"):
    machine_type = "XS"

    @fal.endpoint("/")
    def work(self, request: WorkInput) -> WorkOutput:
        with _LOCK:
            _STATE["current"] += 1
            _STATE["max"] = max(_STATE["max"], _STATE["current"])
            _RUNS[request.tag] += 1
        try:
            time.sleep(request.sleep)
        finally:
            with _LOCK:
                _STATE["current"] -= 1
        return WorkOutput(tag=request.tag, pid=os.getpid())

    @fal.endpoint("/flaky")
    def flaky(self, request: FlakyInput) -> JSONResponse:
        """Its first `fail_runs` runs of a tag ask to be retried (500 + X-Fal-Needs-Retry)."""
        with _LOCK:
            _RUNS[request.tag] += 1
            run = _RUNS[request.tag]
        if run <= request.fail_runs:
            return JSONResponse(
                {"detail": f"run {run} fails", "error_type": "flaky"},
                status_code=500,
                headers={"x-fal-needs-retry": "1"},
            )
        time.sleep(request.sleep)
        return JSONResponse({"tag": request.tag, "run": run})

    @fal.endpoint("/stats")
    def stats(self, request: StatsInput) -> StatsOutput:
        with _LOCK:
            return StatsOutput(
                current=_STATE["current"], max_concurrent=_STATE["max"], runs=dict(_RUNS)
            )
