# mypy: disable-error-code="no-untyped-call"
# (fal.App.__init_subclass__ is untyped; the app itself stays as a user would write it.)
"""A realtime app: msgpack over WebSocket, as `fal_client.realtime()` speaks it."""

from __future__ import annotations

import fal
from pydantic import BaseModel


class PromptInput(BaseModel):
    prompt: str


class TextOutput(BaseModel):
    text: str


class RealtimeApp(fal.App):
    @fal.endpoint("/")
    def reverse(self, request: PromptInput) -> TextOutput:
        return TextOutput(text=request.prompt[::-1])

    @fal.realtime("/realtime")
    def reverse_realtime(self, request: PromptInput) -> TextOutput:
        return TextOutput(text=request.prompt[::-1])
