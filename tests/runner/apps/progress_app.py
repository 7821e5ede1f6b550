# mypy: disable-error-code="no-untyped-call"
# (fal.App.__init_subclass__ is untyped; the app itself stays as a user would write it.)
"""An app whose endpoints write progress output without newlines, as progress bars do.

``/progress`` redraws a bar with ``\\r`` until it has written ``mebibytes`` MiB to stderr (tqdm's
stream) and then prints one final line. ``/progress-until`` redraws until the file named by
``KUBEFAL_TEST_RELEASE_GATE`` exists, so a test can signal the runner while output flows.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time

import fal
from pydantic import BaseModel

GATE_TIMEOUT_SECONDS = 120.0
REDRAW = "\r" + "#" * 4093 + " |"
"""One redraw of a 4 KiB-wide bar: a carriage return, then the bar, never a newline."""


class ProgressInput(BaseModel):
    mebibytes: int


class ProgressApp(fal.App):
    max_multiplexing = 2

    @fal.endpoint("/progress")
    def progress(self, data: ProgressInput) -> dict[str, int]:
        redraws = data.mebibytes * 1024 * 1024 // len(REDRAW)
        for _ in range(redraws):
            sys.stderr.write(REDRAW)
        print("done")  # noqa: T201 (what the test captures)
        return {"redraws": redraws}

    @fal.endpoint("/progress-until")
    def progress_until(self) -> dict[str, int]:
        gate = pathlib.Path(os.environ["KUBEFAL_TEST_RELEASE_GATE"])
        deadline = time.monotonic() + GATE_TIMEOUT_SECONDS
        redraws = 0
        while not gate.exists() and time.monotonic() < deadline:
            for _ in range(64):
                sys.stderr.write("\r" + "=" * 1000 + ">")
            redraws += 64
        return {"redraws": redraws}
