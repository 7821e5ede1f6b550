# mypy: disable-error-code="no-untyped-call"
# (fal.App.__init_subclass__ is untyped; the app itself stays as a user would write it.)
"""An app whose requirements come in layers (fal's list of lists), installed by the runner."""

from __future__ import annotations

import importlib

import fal


class LayeredApp(fal.App):
    requirements = [["kubefal-probe-package==1.0"], ["kubefal-probe-extra==1.0"]]

    def setup(self) -> None:
        self.probe = importlib.import_module("kubefal_probe_package")
        self.extra = importlib.import_module("kubefal_probe_extra")

    @fal.endpoint("/")
    def where(self) -> dict[str, str]:
        return {
            "value": self.probe.VALUE,
            "file": self.probe.__file__,
            "extra": self.extra.VALUE,
            "extra_file": self.extra.__file__,
        }
