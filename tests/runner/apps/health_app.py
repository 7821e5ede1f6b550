# mypy: disable-error-code="no-untyped-call"
# (fal.App.__init_subclass__ is untyped; the app itself stays as a user would write it.)
"""An app with a health check fal calls only on request (``call_regularly=False``).

``/healthz`` is the check: it counts its calls and fails once ``/break`` was called. ``/work``
answers with ``x-fal-runner-health-check`` when asked to, as an app does that noticed trouble.
"""

from __future__ import annotations

import fal
from fastapi.responses import JSONResponse
from pydantic import BaseModel


class WorkInput(BaseModel):
    ask_for_check: bool = False


class HealthApp(fal.App):
    max_multiplexing = 2

    def setup(self) -> None:
        self.broken = False
        self.checks = 0

    @fal.endpoint("/healthz", health_check=fal.HealthCheck(call_regularly=False))
    def healthz(self) -> dict[str, bool]:
        self.checks += 1
        if self.broken:
            raise RuntimeError("the model fell over")
        return {"ok": True}

    @fal.endpoint("/break")
    def break_it(self) -> dict[str, bool]:
        self.broken = True
        return {"broken": True}

    @fal.endpoint("/checks")
    def checks_made(self) -> dict[str, int]:
        return {"checks": self.checks}

    @fal.endpoint("/work")
    def work(self, data: WorkInput) -> JSONResponse:
        headers = {"x-fal-runner-health-check": "1"} if data.ask_for_check else {}
        return JSONResponse({"done": True}, headers=headers)
