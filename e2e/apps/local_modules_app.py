"""A fal.App that ships a local package with local_python_modules (pickled by value by the SDK)."""

import fal
import localpkg


class LocalModulesApp(fal.App):  # type: ignore[no-untyped-call]
    local_python_modules = ["localpkg"]

    @fal.endpoint("/")
    def hello(self) -> dict[str, str]:
        return {"package": localpkg.describe()}
