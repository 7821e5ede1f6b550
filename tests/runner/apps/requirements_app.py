# mypy: disable-error-code="no-untyped-call"
# (fal.App.__init_subclass__ is untyped; the app itself stays as a user would write it.)
"""An app that needs a package only its requirements provide (installed by the runner at start)."""

from __future__ import annotations

import importlib

import fal


class RequirementsApp(fal.App):
    requirements = ["kubefal-probe-package==1.0"]

    def setup(self) -> None:
        self.probe = importlib.import_module("kubefal_probe_package")

    @fal.endpoint("/")
    def where(self) -> dict[str, str]:
        return {"value": self.probe.VALUE, "file": self.probe.__file__}
