"""A fal.App that answers with an environment variable: proves fal secrets reach runners."""

from __future__ import annotations

import os

import fal
import pydantic


class EchoInput(pydantic.BaseModel):
    name: str


class EchoOutput(pydantic.BaseModel):
    value: str | None


class SecretEcho(fal.App, name="secret-echo"):  # type: ignore[no-untyped-call]
    machine_type = "S"

    @fal.endpoint("/")
    async def echo(self, request: EchoInput) -> EchoOutput:
        return EchoOutput(value=os.environ.get(request.name))
