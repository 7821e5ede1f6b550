"""An app that uploads through fal.toolkit (Image.from_pil, File.from_bytes) and nothing else:
on kubefal its runner needs no key from the user, the operator gives it one (runner_keys)."""

from __future__ import annotations

import os

import fal
from fal.toolkit import File, Image
from pydantic import BaseModel


class Input(BaseModel):
    text: str = "hello"


class Output(BaseModel):
    image: Image
    file: File
    key_id: str


class StorageApp(fal.App):
    @fal.endpoint("/")
    def make(self, request: Input) -> Output:
        from PIL import Image as PILImage

        picture = PILImage.new("RGB", (16, 16), color=(10, 200, 30))
        return Output(
            image=Image.from_pil(picture, format="png"),
            file=File.from_bytes(request.text.encode(), content_type="text/plain"),
            key_id=os.environ.get("FAL_KEY", ":").split(":")[0],
        )
