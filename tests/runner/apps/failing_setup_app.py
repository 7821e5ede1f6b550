# mypy: disable-error-code="no-untyped-call"
# (fal.App.__init_subclass__ is untyped; the app itself stays as a user would write it.)
"""An app whose setup() raises: the runner must exit 3 with the traceback in its log."""

from __future__ import annotations

import fal


class FailingSetupApp(fal.App):
    def setup(self) -> None:
        raise RuntimeError("model weights are missing")

    @fal.endpoint("/")
    def run(self) -> dict[str, str]:
        return {"never": "served"}
