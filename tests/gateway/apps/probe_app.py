"""A fal.App for the gateway tests: echo, logs, slow work, failures, a crash, SSE and realtime.

`/async-sleep` (an `async def` endpoint, so the runner can stop it) leaves `done-<tag>` or
`cancelled-<tag>` in the executions directory; `/forever` streams until its client goes away and
then leaves `stream-stopped-<tag>`.

Executions are counted as files in `$GATEWAY_TEST_EXEC_DIR` (one file per execution, named after
the input's `tag`), so tests can tell how often the app really ran a request.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import fal
from fastapi.responses import StreamingResponse
from pydantic import BaseModel


class ProbeInput(BaseModel):
    text: str = ""
    tag: str = ""
    sleep: float = 0.0
    log_lines: int = 0
    fail: bool = False
    crash_once: bool = False


class ProbeOutput(BaseModel):
    text: str
    tag: str
    pid: int


class RealtimeInput(BaseModel):
    prompt: str


class RealtimeOutput(BaseModel):
    text: str


def _record_execution(exec_dir: pathlib.Path, tag: str) -> None:
    """One file per execution: the runner's pid and when it started (CLOCK_MONOTONIC, the same
    clock in every process of the machine), so tests order executions without file mtimes."""
    started = time.monotonic_ns()
    (exec_dir / f"{tag}.{uuid.uuid4().hex}").write_text(f"{os.getpid()} {started}")


def _exec_dir() -> pathlib.Path | None:
    raw = os.environ.get("GATEWAY_TEST_EXEC_DIR")
    return pathlib.Path(raw) if raw else None


class ProbeApp(fal.App, keep_alive=30, name="probe"):
    machine_type = "XS"

    def provide_hints(self) -> list[str]:
        return [os.environ.get("GATEWAY_TEST_HINT", "no-hint")]

    @fal.endpoint("/")
    def probe(self, request: ProbeInput) -> ProbeOutput:
        exec_dir = _exec_dir()
        if exec_dir is not None and request.tag:
            _record_execution(exec_dir, request.tag)
        if request.crash_once and exec_dir is not None:
            marker = exec_dir / f"crashed-{request.tag}"
            if not marker.exists():
                marker.write_text("1")
                os._exit(17)
        for index in range(request.log_lines):
            print(f"log line {index}", flush=True)  # noqa: T201 - the runner captures stdout
        if request.sleep:
            time.sleep(request.sleep)
        if request.fail:
            raise RuntimeError("the probe app was asked to fail")
        return ProbeOutput(text=request.text, tag=request.tag, pid=os.getpid())

    @fal.endpoint("/echo")
    def echo(self, request: ProbeInput) -> ProbeOutput:
        return ProbeOutput(text="echo:" + request.text, tag=request.tag, pid=os.getpid())

    @fal.endpoint("/stream")
    def stream(self, request: ProbeInput) -> StreamingResponse:
        def events() -> Iterator[str]:
            for index in range(3):
                yield f"data: {json.dumps({'index': index, 'text': request.text})}\n\n"
                time.sleep(0.05)

        return StreamingResponse(events(), media_type="text/event-stream")

    @fal.endpoint("/async-sleep")
    async def async_sleep(self, request: ProbeInput) -> ProbeOutput:
        exec_dir = _exec_dir()
        assert exec_dir is not None and request.tag
        _record_execution(exec_dir, request.tag)
        try:
            await asyncio.sleep(request.sleep)
        except asyncio.CancelledError:
            (exec_dir / f"cancelled-{request.tag}").write_text("1")
            raise
        (exec_dir / f"done-{request.tag}").write_text("1")
        return ProbeOutput(text=request.text, tag=request.tag, pid=os.getpid())

    @fal.endpoint("/forever")
    def forever(self, request: ProbeInput) -> StreamingResponse:
        exec_dir = _exec_dir()

        async def events() -> AsyncIterator[str]:
            try:
                index = 0
                while True:
                    yield f"data: {json.dumps({'index': index, 'tag': request.tag})}\n\n"
                    index += 1
                    await asyncio.sleep(0.05)
            finally:
                if exec_dir is not None:
                    (exec_dir / f"stream-stopped-{request.tag}").write_text("1")

        return StreamingResponse(events(), media_type="text/event-stream")

    @fal.realtime("/realtime")
    def realtime(self, request: RealtimeInput) -> RealtimeOutput:
        return RealtimeOutput(text=request.prompt[::-1])
