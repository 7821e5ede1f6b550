"""Find the user's `fal.App` class from a reference such as ``app.py::MyApp`` or ``pkg.mod::MyApp``.

A file is executed with `runpy.run_path`, the loader `fal run` and `fal deploy` use, with its
directory put first on ``sys.path`` so sibling modules of a mounted app import. A module path
is imported with `importlib`. Either way the class must be a `fal.App` subclass.

``fal deploy`` of an app with ``local_python_modules`` sends those modules only inside the
cloudpickled function (by value). The control plane never unpickles; it ships the pickle next
to the app file with a small JSON note (``_kubefal_local_modules.json``: the modules and the
client's Python). Here, in the runner pod that runs the user's code anyway, the pickle is
loaded, the module objects it carries are put into ``sys.modules`` under their names, and the
app file is then loaded as usual, so its ``import localpkg`` finds them. Code objects do not
survive a change of Python minor version, so a mismatch stops the runner with a clear error
(the control plane refuses such a deploy before it starts).
"""

from __future__ import annotations

import importlib
import json
import pathlib
import pickle
import runpy
import sys
import types
from typing import Any

import fal

LOCAL_MODULES_NOTE = "_kubefal_local_modules.json"
"""Next to the app file: ``{"python": "3.11", "pickle": "<file>", "modules": [...]}``."""
MAX_OBJECTS_VISITED = 200_000


class AppLoadError(RuntimeError):
    """The reference does not name a loadable `fal.App` subclass."""


def split_app_ref(app_ref: str) -> tuple[str, str]:
    """Split ``location::ClassName`` into its two parts."""
    location, separator, class_name = app_ref.rpartition("::")
    if not separator or not location or not class_name:
        raise AppLoadError(f"app reference {app_ref!r} must look like file.py::Class")
    return location, class_name


def _reachable_modules(root: object) -> list[types.ModuleType]:
    """Module objects reachable from ``root`` through functions (globals, closures, wrapped
    functions), classes (their attributes) and modules (their attributes)."""
    found: list[types.ModuleType] = []
    seen: set[int] = set()
    pending: list[object] = [root]
    while pending and len(seen) < MAX_OBJECTS_VISITED:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, types.ModuleType):
            found.append(item)
            pending.extend(vars(item).values())
        elif isinstance(item, types.FunctionType):
            pending.extend(item.__globals__.values())
            pending.extend(cell.cell_contents for cell in item.__closure__ or () if _filled(cell))
            wrapped = getattr(item, "__wrapped__", None)
            if wrapped is not None:
                pending.append(wrapped)
        elif isinstance(item, staticmethod | classmethod):
            pending.append(item.__func__)
        elif isinstance(item, type):
            pending.extend(vars(item).values())
        elif isinstance(item, dict):
            pending.extend(item.values())
    return found


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def restore_local_modules(app_file: pathlib.Path) -> list[str]:
    """Put the local modules ``fal deploy`` pickled by value into ``sys.modules``; return
    their names (none when the app has no local-modules note)."""
    note_path = app_file.parent / LOCAL_MODULES_NOTE
    if not note_path.is_file():
        return []
    try:
        note = json.loads(note_path.read_text())
        wanted = [str(name) for name in note["modules"]]
        client_python = str(note["python"])
        pickle_path = app_file.parent / str(note["pickle"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise AppLoadError(f"{note_path} is not a kubefal local-modules note: {error}") from error
    runner_python = f"{sys.version_info.major}.{sys.version_info.minor}"
    if client_python.split(".")[:2] != runner_python.split("."):
        raise AppLoadError(
            f"local_python_modules were pickled by Python {client_python}, and this runner runs "
            f"Python {runner_python}: pickled code needs the same minor version; deploy from "
            f"Python {runner_python}, or with `kubefal deploy`, which ships the modules' source"
        )
    with pickle_path.open("rb") as file:
        # The user's own code, in the user's pod (never in the control plane).
        function = pickle.load(file)
    for module in _reachable_modules(function):
        name = module.__name__
        if any(name == top or name.startswith(f"{top}.") for top in wanted):
            sys.modules.setdefault(name, module)
    missing = [name for name in wanted if name not in sys.modules]
    if missing:
        raise AppLoadError(
            f"local_python_modules {', '.join(missing)} are not in the pickled function; "
            "deploy with `kubefal deploy`, which ships the modules' source"
        )
    return wanted


def _load_namespace(location: str) -> dict[str, Any]:
    if location.endswith(".py") or "/" in location:
        path = pathlib.Path(location).resolve()
        if not path.is_file():
            raise AppLoadError(f"app file {path} does not exist")
        restore_local_modules(path)
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
