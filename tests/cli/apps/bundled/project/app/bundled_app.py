"""A fal.App that needs more than its own file: app_files (text, binary, a sub-directory) read
relative to a context directory above the app, and a local package (local_python_modules)."""

import pathlib

import fal
import localpkg
from helpers import greeting


class BundledApp(fal.App):  # type: ignore[no-untyped-call]
    app_name = "bundled-app"
    app_files = ["assets", "app/helpers", "missing.txt"]
    app_files_ignore = [r"\.skip$"]
    app_files_context_dir = ".."
    local_python_modules = ["localpkg"]

    @fal.endpoint("/")
    def answer(self) -> dict[str, object]:
        root = pathlib.Path(__file__).resolve().parent.parent
        return {
            "greeting": greeting(),
            "package": localpkg.describe(),
            "text": (root / "assets" / "notes.txt").read_text(),
            "binary": list((root / "assets" / "blob.bin").read_bytes()),
            "skipped": (root / "assets" / "ignored.skip").exists(),
            # fal runs the app in its own directory below the context directory.
            "relative": pathlib.Path("../assets/notes.txt").read_text(),
        }
