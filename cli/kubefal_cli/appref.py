"""Load a user's ``fal.App`` class offline and read its normalized configuration.

``app.py::MyApp`` is the same reference ``fal run`` and ``fal deploy`` take. The class is loaded
with ``runpy`` and its configuration read through ``fal.app.wrap_app``, the SDK's own
normalization (class keyword arguments, attributes and defaults merged), so ``kubefal deploy``
sees exactly what ``fal deploy`` would send. Nothing here needs credentials or the network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import re
import runpy
import sys
import traceback
from collections.abc import Iterator
from typing import Any

from kubefal_api import v1alpha1
from kubefal_cli import errors

_NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclasses.dataclass(frozen=True)
class AppRef:
    """A parsed ``path[::Class]`` reference."""

    path: pathlib.Path
    class_name: str | None

    def __str__(self) -> str:
        return f"{self.path}::{self.class_name}" if self.class_name else str(self.path)


@dataclasses.dataclass(frozen=True)
class HealthCheck:
    """The app's ``@fal.endpoint(..., health_check=fal.HealthCheck(...))``, if any."""

    path: str
    method: str
    start_period_seconds: int | None
    timeout_seconds: int | None
    failure_threshold: int | None
    call_regularly: bool | None


@dataclasses.dataclass(frozen=True)
class ContainerImage:
    """What a ``fal.ContainerImage`` carries that kubefal builds with."""

    dockerfile: str
    build_args: dict[str, str]
    secrets: dict[str, str]
    """Build secrets, name to value (fal ``secrets``); they go into a Secret, never a FalApp."""
    copy_sources: tuple[str, ...]
    """The Dockerfile's COPY/ADD sources (the build context it reads)."""


@dataclasses.dataclass(frozen=True)
class AppConfig:
    """A ``fal.App``'s configuration as the SDK normalizes it (None: not set, SDK default)."""

    ref: AppRef
    class_name: str
    app_name: str
    auth: str | None
    machine_types: tuple[str, ...]
    num_gpus: int | None
    regions: tuple[str, ...] | None
    requirements: tuple[str, ...]
    keep_alive: int | None
    min_concurrency: int | None
    max_concurrency: int | None
    concurrency_buffer: int | None
    concurrency_buffer_perc: int | None
    scaling_delay: int | None
    max_multiplexing: int | None
    request_timeout: int | None
    startup_timeout: int | None
    skip_retry_conditions: tuple[str, ...] | None
    health_check: HealthCheck | None
    example_arguments: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Placeholder values for the required fields of ``POST /``, for printed examples."""
    persistent_data: bool | None = None
    """The class attribute ``kubefal_persistent_data`` (FalApp ``persistentData``: the
    namespace's shared /data in every runner); None when the class does not set it."""
    scaling_policy: str | None = None
    """The class attribute ``kubefal_scaling_policy`` (FalApp ``scaling.policy``: "fal" or
    "countStarting"); None when the class does not set it."""
    requirement_layers: tuple[tuple[str, ...], ...] = ()
    """``requirements`` as the runner installs them: one layer for a flat list, the class's
    layers for a list of lists (empty layers dropped)."""
    app_files: tuple[str, ...] = ()
    """fal ``app_files``: files and directories shipped with the app (relative to
    ``app_files_context_dir``)."""
    app_files_ignore: tuple[str, ...] = ()
    """fal ``app_files_ignore``: regular expressions of relative paths left out."""
    app_files_context_dir: str | None = None
    """fal ``app_files_context_dir``: the directory app_files are relative to (default: the
    app file's directory)."""
    local_python_modules: tuple[str, ...] = ()
    """fal ``local_python_modules``: modules or packages of the caller's machine that go with
    the app."""
    container_image: ContainerImage | None = None
    """fal ``image=fal.ContainerImage(...)`` (``kind="container"``): built in the cluster."""


def parse_ref(text: str) -> AppRef:
    """``"app.py::MyApp"`` → :class:`AppRef`; the file must exist."""
    path_text, separator, class_name = text.partition("::")
    if separator and not class_name.isidentifier():
        raise errors.CliError(
            f"{class_name!r} is not a Python class name",
            hint="write the reference as path/to/app.py::MyApp",
        )
    path = pathlib.Path(path_text).expanduser()
    if not path.is_file():
        raise errors.CliError(
            f"no such file: {path}",
            hint="pass the path of the Python file that defines your fal.App, e.g. app.py::MyApp",
        )
    if path.suffix != ".py":
        raise errors.CliError(
            f"{path} is not a .py file",
            hint="pass the Python file that defines your fal.App, e.g. app.py::MyApp",
        )
    return AppRef(path=path.resolve(), class_name=class_name or None)


@contextlib.contextmanager
def _importable_from(directory: pathlib.Path) -> Iterator[None]:
    sys.path.insert(0, str(directory))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(directory))


def _find_app_class(namespace: dict[str, Any], ref: AppRef) -> tuple[str, type[Any]]:
    import fal

    apps = {
        name: value
        for name, value in namespace.items()
        if isinstance(value, type) and issubclass(value, fal.App) and value is not fal.App
    }
    if ref.class_name is not None:
        candidate = namespace.get(ref.class_name)
        if candidate is None:
            found = ", ".join(sorted(apps)) or "none"
            raise errors.CliError(
                f"{ref.path} defines no {ref.class_name!r}",
                hint=f"use one of the fal.App classes it defines ({found}): {ref.path}::<Class>",
            )
        if candidate not in apps.values():
            raise errors.CliError(
                f"{ref.class_name!r} in {ref.path} is not a fal.App subclass",
                hint="point at a class that subclasses fal.App",
            )
        return ref.class_name, candidate
    if len(apps) == 1:
        [(name, cls)] = apps.items()
        return name, cls
    if not apps:
        raise errors.CliError(
            f"{ref.path} defines no fal.App subclass",
            hint="define `class MyApp(fal.App): ...` in the file, or point at the right file",
        )
    raise errors.CliError(
        f"{ref.path} defines several fal.Apps: {', '.join(sorted(apps))}",
        hint=f"name the one you mean: {ref.path}::{sorted(apps)[0]}",
    )


def load_class(ref: AppRef) -> tuple[str, type[Any]]:
    """Run the file (as ``fal run`` does) and return the selected ``fal.App`` class."""
    with _importable_from(ref.path.parent):
        try:
            namespace = runpy.run_path(str(ref.path))
        except Exception as error:
            raise errors.CliError(
                f"importing {ref.path} failed: {type(error).__name__}: {error}",
                hint="fix the error above; the file must import without a GPU or network access",
                details="".join(traceback.format_exception(error)[-6:]),
            ) from error
        return _find_app_class(namespace, ref)


def _optional_int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def _flat_requirements(requirements: object) -> tuple[str, ...]:
    flat: list[str] = []
    for entry in requirements or []:  # type: ignore[attr-defined]
        if isinstance(entry, list | tuple):
            flat.extend(str(item) for item in entry)
        else:
            flat.append(str(entry))
    return tuple(flat)


def _requirement_layers(requirements: object) -> tuple[tuple[str, ...], ...]:
    entries = list(requirements or [])  # type: ignore[call-overload]
    if entries and all(isinstance(entry, list | tuple) for entry in entries):
        layers = [tuple(str(item) for item in entry) for entry in entries]
    else:
        layers = [_flat_requirements(entries)]
    return tuple(layer for layer in layers if layer)


def _strings(value: object, attribute: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise errors.CliError(
            f"{attribute} must be a list of strings, not {value!r}",
            hint=f"set {attribute} = ['...'] on the fal.App class",
        )
    return tuple(value)


_PLACEHOLDERS: dict[str, Any] = {
    "string": "hello",
    "integer": 1,
    "number": 1.0,
    "boolean": False,
    "array": [],
    "object": {},
}


def _resolve(schema: dict[str, Any], openapi: dict[str, Any]) -> dict[str, Any]:
    reference = schema.get("$ref")
    if isinstance(reference, str) and reference.startswith("#/components/schemas/"):
        name = reference.rsplit("/", 1)[1]
        resolved = openapi.get("components", {}).get("schemas", {}).get(name, {})
        return resolved if isinstance(resolved, dict) else {}
    return schema


def _placeholder(schema: dict[str, Any], openapi: dict[str, Any]) -> Any:
    schema = _resolve(schema, openapi)
    for variant in schema.get("anyOf") or schema.get("allOf") or []:
        if isinstance(variant, dict) and variant.get("type") != "null":
            return _placeholder(variant, openapi)
    if schema.get("examples"):
        return schema["examples"][0]
    if schema.get("enum"):
        return schema["enum"][0]
    if "minimum" in schema and schema.get("type") in ("integer", "number"):
        return schema["minimum"]
    return _PLACEHOLDERS.get(str(schema.get("type")), "...")


def example_arguments(openapi: dict[str, Any]) -> dict[str, Any]:
    """Placeholders for the required request fields of the app's root endpoint (``POST /``)."""
    operation = openapi.get("paths", {}).get("/", {}).get("post", {})
    content = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
    body = _resolve(content.get("schema", {}), openapi)
    properties = body.get("properties", {})
    return {
        name: _placeholder(properties.get(name, {}), openapi)
        for name in body.get("required", [])
        if isinstance(name, str)
    }


def read_config(ref: AppRef) -> AppConfig:
    """Load ``ref`` and read its normalized configuration with ``fal.app.wrap_app``."""
    import fal.app

    class_name, cls = load_class(ref)
    try:
        wrapped = fal.app.wrap_app(cls)
        health = cls.get_health_check_config()
    except Exception as error:
        raise errors.CliError(
            f"fal rejected {class_name}: {type(error).__name__}: {error}",
            hint="fix the class so that `fal run` would accept it",
        ) from error
    host: dict[str, Any] = dict(wrapped.options.host)
    openapi = (host.get("metadata") or {}).get("openapi") or {}
    machine_type = host.get("machine_type") or "S"
    machine_types = (machine_type,) if isinstance(machine_type, str) else tuple(machine_type)
    regions = host.get("regions")
    skip = host.get("skip_retry_conditions")
    app_name = str(wrapped.app_name or cls.app_name)
    if not _NAME_PATTERN.fullmatch(app_name):
        raise errors.CliError(
            f"the app name {app_name!r} is not a valid Kubernetes name",
            hint="set app_name (lowercase letters, digits and '-') or pass --name",
        )
    return AppConfig(
        ref=ref,
        class_name=class_name,
        app_name=app_name,
        auth=wrapped.app_auth,
        machine_types=machine_types,
        num_gpus=_optional_int(host.get("num_gpus")),
        regions=tuple(regions) if regions else None,
        # The SDK's own serving requirements (fastapi, uvicorn, ... pinned to this laptop's
        # versions) are left out: the runner image provides them.
        requirements=_flat_requirements(cls.requirements),
        keep_alive=_optional_int(host.get("keep_alive")),
        min_concurrency=_optional_int(host.get("min_concurrency")),
        max_concurrency=_optional_int(host.get("max_concurrency")),
        concurrency_buffer=_optional_int(host.get("concurrency_buffer")),
        concurrency_buffer_perc=_optional_int(host.get("concurrency_buffer_perc")),
        scaling_delay=_optional_int(host.get("scaling_delay")),
        max_multiplexing=_optional_int(host.get("max_multiplexing")),
        request_timeout=_optional_int(host.get("request_timeout")),
        startup_timeout=_optional_int(host.get("startup_timeout")),
        skip_retry_conditions=tuple(skip) if skip else None,
        health_check=None
        if health is None
        else HealthCheck(
            path=str(health.path),
            method=str(health.method or "POST"),
            start_period_seconds=_optional_int(health.start_period_seconds),
            timeout_seconds=_optional_int(health.timeout_seconds),
            failure_threshold=_optional_int(health.failure_threshold),
            call_regularly=health.call_regularly,
        ),
        example_arguments=example_arguments(openapi) if isinstance(openapi, dict) else {},
        persistent_data=_persistent_data(cls),
        scaling_policy=_scaling_policy(cls),
        requirement_layers=_requirement_layers(cls.requirements),
        app_files=_strings(host.get("app_files"), "app_files"),
        app_files_ignore=_strings(host.get("app_files_ignore"), "app_files_ignore"),
        app_files_context_dir=host.get("app_files_context_dir"),
        local_python_modules=_strings(
            getattr(cls, "local_python_modules", None), "local_python_modules"
        ),
        container_image=_container_image(wrapped.options.environment),
    )


def _container_image(environment: dict[str, Any]) -> ContainerImage | None:
    """The ``fal.ContainerImage`` of a ``kind="container"`` app, as the SDK serialised it."""
    if environment.get("kind") != "container":
        return None
    image = environment.get("image")
    if not isinstance(image, dict) or not str(image.get("dockerfile_str") or "").strip():
        raise errors.CliError(
            'kind="container" needs image=fal.ContainerImage.from_dockerfile_str(...)',
            hint="give the app a ContainerImage (or drop kind='container' for the generic runner)",
        )
    return ContainerImage(
        dockerfile=str(image["dockerfile_str"]),
        build_args={str(k): str(v) for k, v in (image.get("build_args") or {}).items()},
        secrets={str(k): str(v) for k, v in (image.get("secrets") or {}).items()},
        copy_sources=tuple(str(source) for source in image.get("docker_files_list") or ()),
    )


def _persistent_data(cls: type) -> bool | None:
    value = getattr(cls, "kubefal_persistent_data", None)
    if value is None or isinstance(value, bool):
        return value
    raise errors.CliError(
        f"kubefal_persistent_data must be True or False, not {value!r}",
        hint="set `kubefal_persistent_data = True` on the fal.App class to get /data",
    )


SCALING_POLICIES = tuple(policy.value for policy in v1alpha1.ScalingPolicy)
"""The values of FalApp ``spec.scaling.policy``."""


def _scaling_policy(cls: type) -> str | None:
    value = getattr(cls, "kubefal_scaling_policy", None)
    if value is None or value in SCALING_POLICIES:
        return value
    raise errors.CliError(
        f"kubefal_scaling_policy must be one of {', '.join(SCALING_POLICIES)}, not {value!r}",
        hint='set `kubefal_scaling_policy = "countStarting"` on the fal.App class so runners '
        "already starting count against the queue",
    )
