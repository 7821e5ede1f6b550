"""A real fal.App for the /data tests of `kubefal run`: its setup() "downloads" weights to /data
once (a runner that finds them there downloads nothing), and it reads files synced to /data."""

import os
import pathlib

import fal
import pydantic

WEIGHTS = pathlib.Path("/data/weights/model.bin")


class ReadInput(pydantic.BaseModel):
    path: str = ""


class ReadOutput(pydantic.BaseModel):
    pid: int
    downloaded_at_setup: bool
    weights: str
    hf_home: str
    secret: str
    content: str | None


class DataApp(fal.App):  # type: ignore[no-untyped-call]
    machine_type = "S"
    keep_alive = 60

    def setup(self) -> None:
        self.downloaded = not WEIGHTS.exists()
        if self.downloaded:
            WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
            WEIGHTS.write_text(f"weights written by runner {os.getpid()}")

    @fal.endpoint("/")
    def read(self, payload: ReadInput) -> ReadOutput:
        target = pathlib.Path("/data") / payload.path if payload.path else None
        return ReadOutput(
            pid=os.getpid(),
            downloaded_at_setup=self.downloaded,
            weights=WEIGHTS.read_text(),
            hf_home=os.environ.get("HF_HOME", ""),
            secret=os.environ.get("KUBEFAL_TEST_SECRET", ""),
            content=target.read_text() if target is not None and target.is_file() else None,
        )
