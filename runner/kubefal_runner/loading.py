"""Find the user's `fal.App` class from a reference such as ``app.py::MyApp`` or ``pkg.mod::MyApp``.

A file is executed with `runpy.run_path`, the loader `fal run` and `fal deploy` use, with its
directory put first on ``sys.path`` so sibling modules of a mounted app import. A module path
is imported with `importlib`. Either way the class must be a `fal.App` subclass.
"""

from __future__ import annotations

import importlib
import pathlib
import runpy
import sys
from typing import Any

import fal


class AppLoadError(RuntimeError):
    """The reference does not name a loadable `fal.App` subclass."""


def split_app_ref(app_ref: str) -> tuple[str, str]:
    """Split ``location::ClassName`` into its two parts."""
    location, separator, class_name = app_ref.rpartition("::")
    if not separator or not location or not class_name:
        raise AppLoadError(f"app reference {app_ref!r} must look like file.py::Class")
    return location, class_name


def _load_namespace(location: str) -> dict[str, Any]:
    if location.endswith(".py") or "/" in location:
        path = pathlib.Path(location).resolve()
        if not path.is_file():
            raise AppLoadError(f"app file {path} does not exist")
        app_directory = str(path.parent)
        if app_directory not in sys.path:
            sys.path.insert(0, app_directory)
        return runpy.run_path(str(path))
    try:
        module = importlib.import_module(location)
    except ImportError as error:
        raise AppLoadError(f"cannot import app module {location!r}: {error}") from error
    return vars(module)


def load_app_class(app_ref: str) -> type[fal.App]:
    """Return the `fal.App` subclass named by ``app_ref``."""
    location, class_name = split_app_ref(app_ref)
    namespace = _load_namespace(location)
    candidate = namespace.get(class_name)
    if candidate is None:
        raise AppLoadError(f"{location} defines no {class_name!r}")
    if not (isinstance(candidate, type) and issubclass(candidate, fal.App)):
        raise AppLoadError(f"{app_ref} is not a fal.App subclass")
    return candidate
