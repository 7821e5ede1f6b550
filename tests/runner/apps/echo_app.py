# mypy: disable-error-code="no-untyped-call"
# (fal.App.__init_subclass__ is untyped; the app itself stays as a user would write it.)
"""An echo app with a sync and an async endpoint: the smallest real fal.App (also the bench app)."""

from __future__ import annotations

import fal
from pydantic import BaseModel


class EchoInput(BaseModel):
    text: str


class EchoOutput(BaseModel):
    text: str


class EchoApp(fal.App, keep_alive=30, name="echo"):
    machine_type = "XS"

    @fal.endpoint("/")
    def echo(self, request: EchoInput) -> EchoOutput:
        return EchoOutput(text=request.text)

    @fal.endpoint("/async")
    async def echo_async(self, request: EchoInput) -> EchoOutput:
        return EchoOutput(text=request.text)
