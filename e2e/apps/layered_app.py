"""A fal.App whose requirements come in layers (fal's list of lists)."""

import importlib

import fal


class LayeredApp(fal.App):  # type: ignore[no-untyped-call]
    requirements = [["kubefal-probe-package==1.0"], ["kubefal-probe-extra==1.0"]]

    def setup(self) -> None:
        self.first = importlib.import_module("kubefal_probe_package")
        self.second = importlib.import_module("kubefal_probe_extra")

    @fal.endpoint("/")
    def where(self) -> dict[str, str]:
        return {"first": self.first.VALUE, "second": self.second.VALUE}
