"""The fal.App the chaos suite drives: echoes a per-request nonce, sleeps, crashes on demand.

Every execution leaves one file `<tag>.<uuid>` in `$CHAOS_EXEC_DIR`, so the suite counts how
often each request really ran (a request run twice leaves two files), whoever dispatched it.
"""

from __future__ import annotations

import os
import pathlib
import time
import uuid

import fal
from pydantic import BaseModel


class ChaosInput(BaseModel):
    tag: str
    nonce: str = ""
    sleep: float = 0.0
    crash: bool = False


class ChaosOutput(BaseModel):
    tag: str
    nonce: str
    pid: int


class ChaosApp(fal.App, keep_alive=300, name="chaos"):
    machine_type = "XS"

    @fal.endpoint("/")
    def run(self, request: ChaosInput) -> ChaosOutput:
        exec_dir = pathlib.Path(os.environ["CHAOS_EXEC_DIR"])
        (exec_dir / f"{request.tag}.{uuid.uuid4().hex}").write_text(str(os.getpid()))
        if request.crash:
            os._exit(17)
        if request.sleep:
            time.sleep(request.sleep)
        return ChaosOutput(tag=request.tag, nonce=request.nonce, pid=os.getpid())
