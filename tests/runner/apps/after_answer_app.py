# mypy: disable-error-code="no-untyped-call"
# (fal.App.__init_subclass__ is untyped; the app itself stays as a user would write it.)
"""An app that keeps working after its answer: ``/answer-then-work`` answers at once and runs a
Starlette background task (inside the same ASGI call) until the file named by
``KUBEFAL_TEST_RELEASE_GATE`` exists; ``/stats`` tells how many background tasks finished."""

from __future__ import annotations

import os
import pathlib
import time

import fal
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse

GATE_TIMEOUT_SECONDS = 120.0
GATE_POLL_SECONDS = 0.02


class AfterAnswerApp(fal.App):
    max_multiplexing = 1

    def setup(self) -> None:
        self.finished_after_answer = 0

    def _work_after_answer(self) -> None:
        gate = pathlib.Path(os.environ["KUBEFAL_TEST_RELEASE_GATE"])
        deadline = time.monotonic() + GATE_TIMEOUT_SECONDS
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(GATE_POLL_SECONDS)
        self.finished_after_answer += 1

    @fal.endpoint("/answer-then-work")
    def answer_then_work(self) -> JSONResponse:
        return JSONResponse({"answered": True}, background=BackgroundTask(self._work_after_answer))

    @fal.endpoint("/stats")
    def stats(self) -> dict[str, int]:
        return {"finished_after_answer": self.finished_after_answer}
