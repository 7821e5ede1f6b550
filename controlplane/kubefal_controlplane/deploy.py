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

What this does not carry, and refuses with a message instead of dropping silently:
``entrypoint`` apps, container images (``kind="container"``).
Requirement layers stay layers (``spec.requirementLayers``; a flat list is ``spec.requirements``);
the fal serving stack the SDK adds to every app (fastapi, pydantic, uvicorn ...) is left out,
because kubefal's runner image brings its own.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import pickletools
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import isolate_proto
from google.protobuf import json_format

from kubefal_api import bundles, naming, v1alpha1
from kubefal_controlplane import errors

APP_FILE: Final = "app.py"
MAX_SOURCE_BYTES: Final = 900 * 1024
"""A ConfigMap holds at most 1 MiB; the rest of the object needs some room."""
MAX_PICKLE_SCAN_BYTES: Final = 32 * 1024 * 1024
SOURCE_HASH_LENGTH: Final = 10
LABEL_SOURCE_OF: Final = f"{v1alpha1.GROUP}/source-of"
FAL_SERVE_REQUIREMENTS: Final = frozenset(
    {"uvicorn", "starlette_exporter", "packaging", "structlog", "tomli", "tomli-w", "httpx>=0.20"}
)
"""What fal's SDK appends to every app's requirements (``fal.api.api.SERVE_REQUIREMENTS``),
besides the pinned ``fastapi``, ``pydantic`` and ``tblib`` matched by prefix below."""
FAL_PINNED_PREFIXES: Final = ("fastapi==", "pydantic==", "tblib==")

RETRY_CONDITIONS: Final = {
    isolate_proto.RetryCondition.TIMEOUT: v1alpha1.RetryCondition.TIMEOUT,
    isolate_proto.RetryCondition.SERVER_ERROR: v1alpha1.RetryCondition.SERVER_ERROR,
    isolate_proto.RetryCondition.CONNECTION_ERROR: v1alpha1.RetryCondition.CONNECTION_ERROR,
}
AUTH_MODES: Final = {
    isolate_proto.ApplicationAuthMode.PRIVATE: v1alpha1.AuthMode.PRIVATE,
    isolate_proto.ApplicationAuthMode.PUBLIC: v1alpha1.AuthMode.PUBLIC,
    isolate_proto.ApplicationAuthMode.SHARED: v1alpha1.AuthMode.SHARED,
}


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


def _pickle_tokens(data: bytes) -> list[object]:
    """The values a pickle pushes, in order: strings (memo references resolved), ``None``
    and booleans, and a placeholder for anything else; memo writes are no values."""
    memo: dict[int, object] = {}
    tokens: list[object] = []
    for opcode, argument, _position in pickletools.genops(data):
        name = opcode.name
        last = tokens[-1] if tokens else _NOTHING
        if name == "MEMOIZE":
            memo[len(memo)] = last
        elif name in _MEMO_PUT and isinstance(argument, int):
            memo[argument] = last
        elif name in _MEMO_GET and isinstance(argument, int):
            tokens.append(memo.get(argument, _NOTHING))
        elif name == "NONE":
            tokens.append(None)
        elif name in ("NEWTRUE", "NEWFALSE"):
            tokens.append(name == "NEWTRUE")
        else:
            tokens.append(argument if isinstance(argument, str) else _NOTHING)
    return tokens


def app_files_dir(function: bytes) -> str:
    """Where the SDK says the app file sits below ``app_files_context_dir`` (``.``: there),
    read from the pickle's opcodes without loading it (memo references resolved), from the
    runtime config's state; ``.`` when the pickle does not say."""
    if len(function) > MAX_PICKLE_SCAN_BYTES:
        return "."
    try:
        tokens = _pickle_tokens(function)
    except (ValueError, EOFError, KeyError, IndexError, TypeError):
        return "."
    found: object = None
    for index in range(len(tokens) - 3):
        # The state of a FunctionRuntimeConfig: {field: value, "include_cwd_in_sys_path":
        # True|False}. The class's definition names the field too (annotations, fields,
        # code), never in that shape; its default (None) comes before the instance's state.
        if (
            tokens[index] == APP_FILES_DIR_FIELD
            and tokens[index + 2] == "include_cwd_in_sys_path"
            and isinstance(tokens[index + 3], bool)
        ):
            found = tokens[index + 1]
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


def requirement_layers(
    environments: Sequence[isolate_proto.EnvironmentDefinition],
) -> list[list[str]]:
    """The user's requirements, layer by layer as the SDK sent them (a flat list is one
    layer); fal's own serving stack is left out, and a layer left empty by that is dropped."""
    layers: list[list[str]] = []
    for index, environment in enumerate(environments):
        field = f"environments[{index}]"
        if environment.kind == "container":
            continue  # built in the cluster (container_image); its requirements are fal's own
        if environment.kind not in ("virtualenv", "conda", "pip"):
            raise errors.invalid_argument(f"{field}.kind", f"{environment.kind!r} is unknown")
        config = json_format.MessageToDict(environment.configuration)
        raw = config.get("requirements") or []
        if not isinstance(raw, list):
            raise errors.invalid_argument(f"{field}.requirements", "not a list")
        if all(isinstance(item, list) for item in raw):
            given: list[list[Any]] = list(raw)
        elif any(isinstance(item, list) for item in raw):
            raise errors.invalid_argument(
                f"{field}.requirements", "a list of strings or a list of lists, not a mix"
            )
        else:
            given = [raw]
        if len(given) > v1alpha1.MAX_REQUIREMENT_LAYERS:
            raise errors.invalid_argument(
                f"{field}.requirements",
                f"{len(given)} layers; kubefal keeps at most {v1alpha1.MAX_REQUIREMENT_LAYERS}",
            )
        for layer in given:
            wanted: list[str] = []
            for item in layer:
                text = str(item).strip()
                if (
                    not text
                    or text in FAL_SERVE_REQUIREMENTS
                    or text.startswith(FAL_PINNED_PREFIXES)
                ):
                    continue
                if len(text) > 1024:
                    raise errors.invalid_argument(f"{field}.requirements", "an entry is too long")
                if text.startswith("-"):
                    # pip reads it as an option (--index-url, -r FILE, -e PATH...), not a
                    # requirement: it would change where and what every runner installs.
                    raise errors.invalid_argument(
                        f"{field}.requirements",
                        f"{text[:100]!r} is a pip option, not a requirement; kubefal installs "
                        "requirements only (configure package indexes in the runner image)",
                    )
                if text not in wanted:
                    wanted.append(text)
            if wanted:
                layers.append(wanted)
    return layers


@dataclasses.dataclass(frozen=True)
class ContainerImage:
    """A ``fal.ContainerImage`` as the SDK sends it: built in the cluster by the operator."""

    dockerfile: str
    build_args: dict[str, str]
    secrets: dict[str, str]
    """Build secrets (name to value); they go into a Secret, never into the FalApp."""


def container_image(
    environments: Sequence[isolate_proto.EnvironmentDefinition],
) -> ContainerImage | None:
    """The app's ``fal.ContainerImage`` (``kind="container"``), or None; what kubefal cannot
    build is refused naming the field."""
    for index, environment in enumerate(environments):
        if environment.kind != "container":
            continue
        field = f"environments[{index}].image"
        image = json_format.MessageToDict(environment.configuration).get("image")
        if not isinstance(image, dict):
            raise errors.invalid_argument(field, "kind='container' needs a fal.ContainerImage")
        dockerfile = image.get("dockerfile_str")
        if not isinstance(dockerfile, str) or not dockerfile.strip():
            raise errors.invalid_argument(f"{field}.dockerfile_str", "empty")
        if len(dockerfile.encode()) > v1alpha1.MAX_DOCKERFILE_BYTES:
            raise errors.invalid_argument(
                f"{field}.dockerfile_str", f"larger than {v1alpha1.MAX_DOCKERFILE_BYTES} bytes"
            )
        copied = [str(source) for source in image.get("docker_files_list") or []]
        if copied:
            raise errors.failed_precondition(
                f"{field}: the Dockerfile copies files from the build context "
                f"({', '.join(copied[:5])}), which kubefal does not carry yet: fetch them in a "
                "RUN step, or build the image yourself and deploy it with "
                "`kubefal deploy app.py::MyApp --image <image>`"
            )
        pairs: dict[str, dict[str, str]] = {}
        for name in ("build_args", "secrets"):
            given = image.get(name) or {}
            if not isinstance(given, dict) or not all(
                isinstance(value, str) for value in given.values()
            ):
                raise errors.invalid_argument(f"{field}.{name}", "a map of strings")
            pairs[name] = {str(key): value for key, value in given.items()}
        try:
            v1alpha1.ContainerImageSpec(dockerfile=dockerfile, build_args=pairs["build_args"])
        except ValueError as error:
            raise errors.invalid_argument(f"{field}.build_args", str(error)) from error
        for key in pairs["secrets"]:
            if not BUILD_SECRET_ID.match(key):
                raise errors.invalid_argument(
                    f"{field}.secrets", f"{key[:64]!r} is not a secret id ([-._a-zA-Z0-9]+)"
                )
        return ContainerImage(
            dockerfile=dockerfile, build_args=pairs["build_args"], secrets=pairs["secrets"]
        )
    return None


BUILD_SECRET_ID: Final = re.compile(v1alpha1.BUILD_SECRET_ID_PATTERN)


def build_secret_name(app_name: str) -> str:
    """The Secret holding an app's build secrets (what ``kubefal deploy`` names it too)."""
    return f"{app_name[: 63 - 14]}-build-secrets"


def requirements(environments: Sequence[isolate_proto.EnvironmentDefinition]) -> list[str]:
    """Every requirement of every layer, in order (what the runner ends up with)."""
    return [item for layer in requirement_layers(environments) for item in layer]


def requirement_fields(layers: Sequence[Sequence[str]]) -> dict[str, Any]:
    """FalApp spec fields for ``layers``: one layer stays the flat ``requirements``;
    several become ``requirementLayers``, installed in order."""
    if len(layers) <= 1:
        return {"requirements": list(layers[0]) if layers else []}
    return {"requirementLayers": [list(layer) for layer in layers]}


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


OWNED_FIELDS: Final = (
    "app",
    "source",
    "requirements",
    "requirementLayers",
    "auth",
    "strategy",
    "machineTypes",
    "numGpus",
    "regions",
    "requestTimeout",
    "startupTimeout",
    "scaling",
    "healthCheck",
    "skipRetryConditions",
)
"""FalApp spec fields a ``fal deploy`` decides; every other field (image, env, scaler, fields
added later) is kept as the existing FalApp has it, e.g. from GitOps."""


def merged_spec(wanted: Mapping[str, Any], existing: Mapping[str, Any] | None) -> dict[str, Any]:
    """``wanted`` over an existing app's spec: owned fields replaced (or back to their
    defaults when the deploy leaves them unset), the rest kept; the fal secrets reference is
    added to the app's own ``envFrom`` sources."""
    current = dict((existing or {}).get("spec") or {})
    for field in OWNED_FIELDS:
        current.pop(field, None)
    env_from = list(current.pop("envFrom", []) or [])
    for source in wanted.get("envFrom") or []:
        if source not in env_from:
            env_from.append(source)
    merged = {**current, **{k: v for k, v in wanted.items() if k != "envFrom"}}
    if env_from:
        merged["envFrom"] = env_from
    return merged


def _optional(message: Any, field: str) -> int | None:
    return int(getattr(message, field)) if message.HasField(field) else None


def falapp_spec(
    request: isolate_proto.RegisterApplicationRequest,
    *,
    class_name: str,
    existing: Mapping[str, Any] | None,
    secrets_name: str,
    config_map: str | None = None,
    source: Mapping[str, Any] | None = None,
    app_path: str = APP_FILE,
) -> dict[str, Any]:
    """The FalApp spec a ``RegisterApplication`` asks for.

    ``scale`` false (``fal deploy`` without ``--reset-scale``) keeps an existing app's
    ``spec.scaling``; true, or a new app, takes the class's values.
    """
    spec: dict[str, Any] = {
        "app": f"{app_path}::{class_name}",
        "source": dict(source) if source is not None else {"configMapRef": {"name": config_map}},
        **requirement_fields(requirement_layers(list(request.environments))),
        "auth": AUTH_MODES.get(request.auth_mode, v1alpha1.AuthMode.PRIVATE).value
        if request.HasField("auth_mode")
        else v1alpha1.AuthMode.PRIVATE.value,
        "strategy": (
            v1alpha1.Strategy.RECREATE.value
            if request.HasField("deployment_strategy")
            and request.deployment_strategy == isolate_proto.DeploymentStrategy.RECREATE
            else v1alpha1.Strategy.ROLLING.value
        ),
        "envFrom": [{"secretRef": {"name": secrets_name, "optional": True}}],
    }
    image = container_image(list(request.environments))
    if image is not None:
        # secretRef, when the image has secrets, is the service's (it writes the Secret).
        spec["containerImage"] = {"dockerfile": image.dockerfile, "buildArgs": image.build_args}
    scaling: dict[str, Any] = {}
    if request.HasField("machine_requirements"):
        machine = request.machine_requirements
        machine_types = list(machine.machine_types) or (
            [machine.machine_type] if machine.HasField("machine_type") else []
        )
        if machine_types:
            spec["machineTypes"] = machine_types
        if machine.HasField("num_gpus") and machine.num_gpus > 0:
            spec["numGpus"] = machine.num_gpus
        if machine.valid_regions:
            spec["regions"] = list(machine.valid_regions)
        for proto_field, spec_field in (
            ("request_timeout", "requestTimeout"),
            ("startup_timeout", "startupTimeout"),
        ):
            value = _optional(machine, proto_field)
            if value is not None:
                spec[spec_field] = value
        for proto_field, scaling_field in (
            ("keep_alive", "keepAlive"),
            ("max_concurrency", "maxConcurrency"),
            ("min_concurrency", "minConcurrency"),
            ("concurrency_buffer", "concurrencyBuffer"),
            ("concurrency_buffer_perc", "concurrencyBufferPerc"),
            ("scaling_delay_seconds", "scalingDelay"),
            ("max_multiplexing", "maxMultiplexing"),
        ):
            value = _optional(machine, proto_field)
            if value is not None:
                scaling[scaling_field] = value
    keep_scale = existing is not None and request.HasField("scale") and not request.scale
    existing_scaling = dict(((existing or {}).get("spec") or {}).get("scaling") or {})
    if keep_scale:
        scaling = existing_scaling
    elif "policy" in existing_scaling:
        # fal's protocol has no field for the kubefal scaling policy: a deploy keeps it.
        scaling["policy"] = existing_scaling["policy"]
    if scaling:
        spec["scaling"] = scaling
    if request.HasField("health_check_config"):
        check = request.health_check_config
        health: dict[str, Any] = {"path": check.path}
        for proto_field, spec_field in (
            ("start_period_seconds", "startPeriodSeconds"),
            ("timeout_seconds", "timeoutSeconds"),
            ("failure_threshold", "failureThreshold"),
        ):
            value = _optional(check, proto_field)
            if value is not None:
                health[spec_field] = value
        if check.HasField("call_regularly"):
            health["callRegularly"] = check.call_regularly
        if check.HasField("method"):
            health["method"] = "GET" if check.method == check.Method.GET else "POST"
        spec["healthCheck"] = health
    conditions = []
    for condition in request.skip_retry_conditions:
        if condition not in RETRY_CONDITIONS:
            raise errors.invalid_argument(
                "skip_retry_conditions",
                "kubefal can skip retries on timeout, server_error and connection_error only",
            )
        conditions.append(RETRY_CONDITIONS[condition].value)
    if conditions:
        spec["skipRetryConditions"] = sorted(set(conditions))
    spec = merged_spec(spec, existing)
    try:
        v1alpha1.FalAppSpec.model_validate(spec)
    except ValueError as error:
        entries: list[Any] = getattr(error, "errors", lambda: [])()
        where = ".".join(str(part) for part in entries[0]["loc"]) if entries else "spec"
        message = entries[0]["msg"] if entries else str(error)
        top = str(entries[0]["loc"][0]) if entries and entries[0]["loc"] else ""
        field = SPEC_REQUEST_FIELDS.get(top, "machine_requirements")
        raise errors.invalid_argument(field, f"{where}: {message}") from error
    return spec


SPEC_REQUEST_FIELDS: Final = {
    "requirements": "environments",
    "requirementLayers": "environments",
    "requirement_layers": "environments",
    "healthCheck": "health_check_config",
    "health_check": "health_check_config",
    "skipRetryConditions": "skip_retry_conditions",
    "skip_retry_conditions": "skip_retry_conditions",
}
"""The request field a spec validation error comes from (the rest: machine_requirements)."""
