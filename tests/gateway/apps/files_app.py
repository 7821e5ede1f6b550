"""A fal.App for the storage tests: fal.toolkit uploads (Image.from_pil, File.from_bytes), a
URL downloaded and hashed inside the app, and a realtime endpoint.

The runner reaches the gateway's REST listener through `FAL_REST_HOST`, `FAL_KEY` and
`SSL_CERT_FILE` only; nothing here knows about kubefal.
"""

from __future__ import annotations

import hashlib
import urllib.request

import fal
from fal.toolkit import File, Image
from pydantic import BaseModel


class MakeInput(BaseModel):
    text: str = "hello"
    size: int = 32


class MakeOutput(BaseModel):
    image: Image
    file: File


class HashInput(BaseModel):
    url: str


class HashOutput(BaseModel):
    sha256: str
    size: int


class KvInput(BaseModel):
    op: str
    key: str
    value: str = ""
    db: str = "shared-db"


class KvOutput(BaseModel):
    value: str | None
    pid: int


class FilesApp(fal.App):
    @fal.endpoint("/")
    def make(self, request: MakeInput) -> MakeOutput:
        from PIL import Image as PILImage

        picture = PILImage.new("RGB", (request.size, request.size), color=(200, 30, 60))
        return MakeOutput(
            image=Image.from_pil(picture, format="png"),
            file=File.from_bytes(
                request.text.encode(), content_type="text/plain", file_name="greeting.txt"
            ),
        )

    @fal.endpoint("/hash")
    def hash(self, request: HashInput) -> HashOutput:
        digest = hashlib.sha256()
        size = 0
        with urllib.request.urlopen(request.url, timeout=60) as response:
            while chunk := response.read(1024 * 1024):
                digest.update(chunk)
                size += len(chunk)
        return HashOutput(sha256=digest.hexdigest(), size=size)

    @fal.endpoint("/kv")
    def kv(self, request: KvInput) -> KvOutput:
        import os

        from fal.toolkit.kv import KVStore

        store = KVStore(request.db)
        if request.op == "set":
            store.set(request.key, request.value)
        elif request.op == "delete":
            store.delete(request.key)
        return KvOutput(value=store.get(request.key), pid=os.getpid())

    @fal.realtime("/realtime")
    def realtime(self, request: MakeInput) -> HashOutput:
        return HashOutput(
            sha256=hashlib.sha256(request.text.encode()).hexdigest(), size=len(request.text)
        )
