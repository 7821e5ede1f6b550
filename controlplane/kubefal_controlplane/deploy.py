"""``fal deploy`` (``RegisterApplication``) as a FalApp, without running the user's code here.

The SDK sends the app three ways at once: the main file's source (``source_code``), a
cloudpickled callable (``function``), and the environment (requirements, Python version).
The control plane holds cluster credentials, so it never unpickles anything: it deploys the
*source*. The file goes into a ConfigMap named after its content hash (so new code changes
the pod template and rolls the runners), and the FalApp serves ``app.py::<Class>``.

The class is found without executing anything: the source is parsed with :mod:`ast` for
classes deriving from ``fal.App``; when there are several, the one whose name the pickle
mentions wins (:mod:`pickletools` lists a pickle's opcodes and their string arguments without
loading it).

``local_python_modules`` (read from the class body with :mod:`ast`) travel only inside the
pickle, by value. The control plane still never loads it: it ships the pickle as bytes next to
the app file, with a note naming the modules and the client's Python, in a bundle of ConfigMaps
(:mod:`kubefal_api.bundles`); the runner pod, which runs the user's code anyway, loads it and
puts those modules into ``sys.modules`` before it loads the app file. Pickled code needs the
runner's Python minor version (``RUNNER_PYTHON``), so another one fails the deploy here, with
what to do.

``app_files`` (``files``: the SDK uploads them by content hash to the app-files REST API,
which the gateway serves; :mod:`kubefal_controlplane.app_files` reads them back with the
deploying caller's key) go into the same bundle at their paths below
``app_files_context_dir``, with the app file where the SDK's runtime config says it sits
below that directory (``app_files_relative_path``, read from the pickle's opcodes).

The environment (requirements, a container image) is :mod:`kubefal_controlplane.deploy_env`,
the FalApp spec the request becomes :mod:`kubefal_controlplane.deploy_spec`; their names used
by callers are re-exported here.

What this does not carry, and refuses with a message instead of dropping silently:
``entrypoint`` apps, container images (``kind="container"``).
Requirement layers stay layers (``spec.requirementLayers``; a flat list is ``spec.requirements``);
the fal serving stack the SDK adds to every app (fastapi, pydantic, uvicorn ...) is left out,
because kubefal's runner image brings its own.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import hashlib
import json
import pickletools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

import isolate_proto
from google.protobuf import json_format

from kubefal_api import bundles, naming, v1alpha1
from kubefal_controlplane import errors
from kubefal_controlplane.deploy_env import (
    ContainerImage as ContainerImage,
)
from kubefal_controlplane.deploy_env import (
    container_image as container_image,
)
from kubefal_controlplane.deploy_env import (
    requirement_fields as requirement_fields,
)
from kubefal_controlplane.deploy_env import (
    requirement_layers as requirement_layers,
)
from kubefal_controlplane.deploy_env import (
    requirements as requirements,
)

APP_FILE: Final = "app.py"
MAX_SOURCE_BYTES: Final = 900 * 1024
"""A ConfigMap holds at most 1 MiB; the rest of the object needs some room."""
MAX_PICKLE_SCAN_BYTES: Final = 32 * 1024 * 1024
SOURCE_HASH_LENGTH: Final = 10
LABEL_SOURCE_OF: Final = f"{v1alpha1.GROUP}/source-of"


def _is_fal_app_base(base: ast.expr, local_apps: set[str]) -> bool:
    if isinstance(base, ast.Attribute):
        return base.attr == "App"
    if isinstance(base, ast.Name):
        return base.id == "App" or base.id in local_apps
    return False


def app_classes(source: str) -> list[str]:
    """Names of the classes in ``source`` that derive from ``fal.App`` (directly or via a
    class of the same file), in file order. Parses only; never executes; refuses a file too
    large for its ConfigMap before parsing it."""
    _check_source_size(source)
    try:
        tree = ast.parse(source)
    except SyntaxError as error:
        raise errors.invalid_argument(
            "source_code", f"the app file does not parse: line {error.lineno}: {error.msg}"
        ) from error
    except (RecursionError, MemoryError, ValueError) as error:
        # Hostile nesting (e.g. 200,000 unary minus signs) exhausts the parser.
        raise errors.invalid_argument(
            "source_code", f"the app file does not parse: {type(error).__name__}"
        ) from error
    found: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
            _is_fal_app_base(base, set(found)) for base in node.bases
        ):
            found.append(node.name)
    return found


RUNNER_PYTHON: Final = "3.11"
"""Python minor version of kubefal's runner image (its lock file pins Debian's 3.11)."""
FUNCTION_FILE: Final = "_kubefal_function.pkl"
LOCAL_MODULES_NOTE: Final = "_kubefal_local_modules.json"
"""The runner's ``kubefal_runner.loading.LOCAL_MODULES_NOTE``."""
LABEL_SOURCE_REVISION: Final = f"{v1alpha1.GROUP}/source-revision"


def _class_assignments(source: str, class_name: str) -> list[tuple[str, ast.expr]]:
    """``name = value`` statements of the class body (plain and annotated)."""
    found: list[tuple[str, ast.expr]] = []
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.ClassDef) and node.name == class_name):
            continue
        for statement in node.body:
            if isinstance(statement, ast.Assign):
                found += [
                    (target.id, statement.value)
                    for target in statement.targets
                    if isinstance(target, ast.Name)
                ]
            elif (
                isinstance(statement, ast.AnnAssign)
                and statement.value is not None
                and isinstance(statement.target, ast.Name)
            ):
                found.append((statement.target.id, statement.value))
    return found


def _is_empty(value: ast.expr) -> bool:
    return (isinstance(value, ast.List | ast.Tuple) and not value.elts) or (
        isinstance(value, ast.Constant) and value.value is None
    )


def local_modules(source: str, class_name: str) -> list[str]:
    """The class's ``local_python_modules``, read from its body without executing it."""
    for name, value in _class_assignments(source, class_name):
        if name != "local_python_modules" or _is_empty(value):
            continue
        if isinstance(value, ast.List | ast.Tuple) and all(
            isinstance(item, ast.Constant) and isinstance(item.value, str) for item in value.elts
        ):
            return [str(item.value) for item in value.elts if isinstance(item, ast.Constant)]
        raise errors.failed_precondition(
            f"source_code: {class_name}.local_python_modules must be a literal list of module "
            "names for kubefal to read it without running your code, e.g. ['helpers']"
        )
    return []


def client_python(environments: Sequence[isolate_proto.EnvironmentDefinition]) -> str | None:
    """The ``python_version`` the SDK sent (its own interpreter's), if any."""
    for environment in environments:
        config = json_format.MessageToDict(environment.configuration)
        version = config.get("python_version")
        if isinstance(version, str) and version:
            return version
    return None


APP_FILES_DIR_FIELD: Final = "app_files_relative_path"
"""fal's ``FunctionRuntimeConfig`` field: the app file's directory below
``app_files_context_dir`` (``fal.app_files.get_app_files_relative_path``)."""


_MEMO_PUT: Final = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MEMO_GET: Final = frozenset({"GET", "BINGET", "LONG_BINGET"})
_NOTHING: Final = object()


def _pickle_tokens(data: bytes) -> Iterator[object]:
    """The values a pickle pushes, in order: strings (memo references to strings resolved),
    ``None`` and booleans, and a placeholder for anything else; memo writes are no values.
    Only strings are kept in the memo (a pickler never memoizes ``None`` or a boolean), so a
    pickle of memo writes holds no memory here: it is the caller's, as large as a message.
    Picklers number memo entries 0, 1, 2 ... (``MEMOIZE`` takes the next number), so the
    next number is one past the highest written."""
    memo: dict[int, str] = {}
    size = 0
    last: object = _NOTHING
    for opcode, argument, _position in pickletools.genops(data):
        name = opcode.name
        if name == "MEMOIZE" or (name in _MEMO_PUT and isinstance(argument, int)):
            index = size if name == "MEMOIZE" else int(argument)  # type: ignore[arg-type]
            size = max(size, index + 1)
            if isinstance(last, str):
                memo[index] = last
            else:
                memo.pop(index, None)
            continue
        if name in _MEMO_GET and isinstance(argument, int):
            last = memo.get(argument, _NOTHING)
        elif name == "NONE":
            last = None
        elif name in ("NEWTRUE", "NEWFALSE"):
            last = name == "NEWTRUE"
        else:
            last = argument if isinstance(argument, str) else _NOTHING
        yield last


def app_files_dir(function: bytes) -> str:
    """Where the SDK says the app file sits below ``app_files_context_dir`` (``.``: there),
    read from the pickle's opcodes without loading it (memo references resolved), from the
    runtime config's state; ``.`` when the pickle does not say."""
    if len(function) > MAX_PICKLE_SCAN_BYTES:
        return "."
    found: object = None
    window: collections.deque[object] = collections.deque(maxlen=4)
    try:
        for token in _pickle_tokens(function):
            window.append(token)
            # The state of a FunctionRuntimeConfig: {field: value, "include_cwd_in_sys_path":
            # True|False}. The class's definition names the field too (annotations, fields,
            # code), never in that shape; its default (None) comes before the instance's state.
            if (
                len(window) == 4
                and window[0] == APP_FILES_DIR_FIELD
                and window[2] == "include_cwd_in_sys_path"
                and isinstance(window[3], bool)
            ):
                found = window[1]
    except (ValueError, EOFError, KeyError, IndexError, TypeError):
        return "."
    found = found if isinstance(found, str) else None
    return "." if found is None else _checked_app_dir(found)


def _checked_app_dir(value: str) -> str:
    if value in ("", "."):
        return "."
    if not bundles.is_valid_path(value):
        raise errors.failed_precondition(
            f"app_files_context_dir: the app file's directory below it is {value[:200]!r}; "
            "point app_files_context_dir at a directory that contains the app file, and use "
            "plain relative names ([-._a-zA-Z0-9/], no '..')"
        )
    return value


@dataclasses.dataclass(frozen=True)
class SourceObjects:
    """The ConfigMaps holding one deploy's code and the ``spec.source`` that mounts them."""

    config_maps: list[dict[str, Any]]
    spec_source: dict[str, Any]
    revision: str
    app_path: str = APP_FILE
    """The app file's path in the bundle (``spec.app`` is ``<it>::<Class>``)."""

    def stale_selector(self, app_name: str) -> str:
        """Label selector of this app's source ConfigMaps of other revisions."""
        return f"{LABEL_SOURCE_OF}={app_name},{LABEL_SOURCE_REVISION}!={self.revision}"


def source_objects(
    *,
    namespace: str,
    app_name: str,
    source: str,
    function: bytes,
    modules: Sequence[str],
    python: str | None,
    app_files: Mapping[str, bytes] | None = None,
    app_dir: str = ".",
) -> SourceObjects:
    """The app file alone in one ConfigMap; with local modules or app_files, a bundle: the
    app file at ``<app_dir>/app.py``, each app file at its path, and with local modules the
    pickled function (as opaque bytes) and the note the runner reads, next to the app file."""
    if not modules and not app_files:
        config_map = source_config_map(namespace=namespace, app_name=app_name, source=source)
        revision = config_map["metadata"]["name"].rsplit("-", 1)[-1]
        config_map["metadata"]["labels"][LABEL_SOURCE_REVISION] = revision
        return SourceObjects(
            config_maps=[config_map],
            spec_source={"configMapRef": {"name": config_map["metadata"]["name"]}},
            revision=revision,
        )
    prefix = "" if app_dir == "." else f"{app_dir}/"
    app_path = prefix + APP_FILE
    files: dict[str, bytes] = dict(app_files or {})
    if app_path in files:
        raise errors.failed_precondition(
            f"files: app_files has a file at {app_path}, where kubefal puts the app file; "
            "rename it or leave it out with app_files_ignore"
        )
    files[app_path] = source.encode("utf-8")
    if modules:
        files.update(_local_module_files(function, modules, python, prefix=prefix))
    try:
        bundle = bundles.pack(files, namespace=namespace, app_name=app_name)
    except bundles.BundleError as error:
        what = "app_files" if app_files else "pickled local_python_modules"
        raise errors.failed_precondition(
            f"files: the app and its {what} cannot be carried: {error}; put large files in "
            "/data (fal files upload) or an image, or deploy with `kubefal deploy --image`"
        ) from error
    revision = hashlib.sha256(
        "".join(cm["metadata"]["name"] for cm in bundle.config_maps).encode()
    ).hexdigest()[:SOURCE_HASH_LENGTH]
    for config_map in bundle.config_maps:
        config_map["metadata"]["labels"][LABEL_SOURCE_REVISION] = revision
    return SourceObjects(
        config_maps=bundle.config_maps,
        spec_source=bundle.source,
        revision=revision,
        app_path=app_path,
    )


def _local_module_files(
    function: bytes, modules: Sequence[str], python: str | None, *, prefix: str
) -> dict[str, bytes]:
    if python is None or python.split(".")[:2] != RUNNER_PYTHON.split("."):
        raise errors.failed_precondition(
            f"environments[0].python_version: your Python is {python or 'unknown'}, and "
            f"kubefal's runner runs Python {RUNNER_PYTHON}; local_python_modules travel as "
            "pickled code, which needs the same Python minor version: deploy from Python "
            f"{RUNNER_PYTHON}, or with `kubefal deploy app.py::MyApp`, which ships the "
            "modules' source"
        )
    note = {"python": python, "pickle": FUNCTION_FILE, "modules": list(modules)}
    return {
        prefix + FUNCTION_FILE: function,
        prefix + LOCAL_MODULES_NOTE: json.dumps(note).encode(),
    }


def pickle_strings(data: bytes) -> set[str]:
    """Every string argument of the pickle's opcodes, read without loading the pickle."""
    strings: set[str] = set()
    if len(data) > MAX_PICKLE_SCAN_BYTES:
        return strings
    try:
        for _opcode, argument, _position in pickletools.genops(data):
            if isinstance(argument, str) and len(argument) <= 256:
                strings.add(argument)
    except (ValueError, EOFError, KeyError, IndexError, TypeError):
        return strings
    return strings


def choose_class(source: str, function: bytes) -> str:
    candidates = app_classes(source)
    if not candidates:
        raise errors.invalid_argument(
            "source_code", "no class deriving from fal.App found in the app file"
        )
    if len(candidates) == 1:
        return candidates[0]
    strings = pickle_strings(function)
    mentioned = [name for name in candidates if name in strings]
    if len(mentioned) == 1:
        return mentioned[0]
    raise errors.failed_precondition(
        f"source_code: the app file defines several fal.App classes ({', '.join(candidates)}) "
        "and the request does not say which one to deploy; deploy file.py::Class from a file "
        "with one app class"
    )


def source_config_map_name(app_name: str, source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()[:SOURCE_HASH_LENGTH]
    return f"{app_name[: 63 - SOURCE_HASH_LENGTH - 5]}-src-{digest}"


def _check_source_size(source: str) -> None:
    if len(source.encode("utf-8")) > MAX_SOURCE_BYTES:
        raise errors.failed_precondition(
            f"source_code: the app file is larger than {MAX_SOURCE_BYTES} bytes, too large for "
            "a ConfigMap; bake it into an image and use `kubefal deploy --image`"
        )


def source_config_map(*, namespace: str, app_name: str, source: str) -> dict[str, Any]:
    _check_source_size(source)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": source_config_map_name(app_name, source),
            "namespace": namespace,
            "labels": {
                LABEL_SOURCE_OF: app_name,
                naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
            },
        },
        "data": {APP_FILE: source},
    }
