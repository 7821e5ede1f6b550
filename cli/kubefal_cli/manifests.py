"""Pure builders: a ``fal.App``'s configuration → the FalApp and ConfigMap that deploy applies.

The FalApp is validated through ``kubefal_api.v1alpha1`` (the models the CRD is generated from),
so a value the API server would refuse is reported here, naming the fal attribute to change.
The same dicts feed ``kubefal deploy`` (server-side apply) and ``kubefal render`` (commented YAML),
which is how the two stay identical.

App files: the app's file and the other ``.py`` files of its directory (not sub-directories; not
hidden or ``test_*`` files, nor names a ConfigMap key cannot hold, which Python could not import
anyway) go into one ConfigMap, key = file name, mounted into the runner's working directory.
A ConfigMap holds at most 1 MiB; larger apps belong in an image (``--image``, files baked in).

An app that sets fal ``app_files`` or ``local_python_modules`` gets a bundle instead
(:mod:`kubefal_api.bundles`): the files ``fal deploy`` would upload, collected by the SDK's own
code with ``app_files_ignore`` and relative to ``app_files_context_dir``, plus each local module
or package's source, packed into several ConfigMaps projected into the app directory
(``spec.source.configMaps``), so paths, sub-directories and binary files arrive as on fal. What
is left out (a missing path, compiled files of a package) is reported, never dropped silently.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import re
import sys
from typing import Any

import pydantic

from kubefal_api import bundles, naming, v1alpha1
from kubefal_cli import appref, errors

MAX_CONFIG_MAP_BYTES = 1024 * 1024
"""ConfigMaps are limited to 1 MiB of data (etcd's object size limit, with headroom)."""
_CONFIG_MAP_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_SKIPPED_FILE_PREFIXES = (".", "test_")


@dataclasses.dataclass(frozen=True)
class Target:
    """Where and how to deploy: namespace, FalApp name, image and rollout strategy."""

    namespace: str
    name: str
    image: str | None = None
    strategy: v1alpha1.Strategy = v1alpha1.Strategy.ROLLING


def config_map_name(app_name: str) -> str:
    """Name of the ConfigMap holding a FalApp's files."""
    return f"{app_name}-source"


def validate_name(name: str) -> str:
    if len(name) > naming.MAX_APP_NAME_LENGTH or not re.fullmatch(naming.APP_NAME_PATTERN, name):
        raise errors.CliError(
            f"{name!r} cannot be a FalApp name (a DNS-1035 label: lowercase letters, digits and "
            f"'-', starting with a letter, at most {naming.MAX_APP_NAME_LENGTH} characters)",
            hint="pass --name with a valid name, or set app_name on the class",
        )
    return name


def app_files(ref: appref.AppRef) -> dict[str, str]:
    """The app's file plus its directory's other ``.py`` files (hidden and test_ files skipped)."""
    chosen = {ref.path}
    chosen.update(
        path
        for path in ref.path.parent.glob("*.py")
        if path.is_file() and not path.name.startswith(_SKIPPED_FILE_PREFIXES)
    )
    files: dict[str, str] = {}
    for path in sorted(chosen):
        if not _CONFIG_MAP_KEY.fullmatch(path.name):
            continue
        try:
            files[path.name] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise errors.CliError(
                f"cannot read {path}: {error}",
                hint="make the file readable UTF-8 text, or move it out of the app's directory",
            ) from error
    total = sum(len(text.encode("utf-8")) for text in files.values())
    if total > MAX_CONFIG_MAP_BYTES:
        raise errors.CliError(
            f"the app's files in {ref.path.parent} total {total} bytes; a ConfigMap holds "
            f"at most {MAX_CONFIG_MAP_BYTES} (1 MiB)",
            hint="move the app to a directory of its own, or bake it into an image (--image)",
        )
    return files


@dataclasses.dataclass(frozen=True)
class AppBundle:
    """What a bundled app carries: its files by path, the app file's path among them, and
    what was left out (path, reason)."""

    files: dict[str, bytes]
    app_path: str
    left_out: list[tuple[str, str]]


def uses_bundle(config: appref.AppConfig) -> bool:
    """True when the app needs more than its directory's .py files in one ConfigMap."""
    return bool(config.app_files or config.local_python_modules)


def _context_dir(config: appref.AppConfig) -> pathlib.Path:
    """fal's rule: app_files_context_dir relative to the app file's directory, or that
    directory itself."""
    base = config.ref.path.parent
    if not config.app_files_context_dir:
        return base
    context = pathlib.Path(config.app_files_context_dir).expanduser()
    return (context if context.is_absolute() else base / context).resolve()


def _add(files: dict[str, bytes], path: str, data: bytes, *, origin: str) -> None:
    if path in files and files[path] != data:
        raise errors.CliError(
            f"two different files would land at {path} ({origin})",
            hint="rename one of them, or leave one out with app_files_ignore",
        )
    files[path] = data


def _app_files(
    config: appref.AppConfig, context: pathlib.Path, left_out: list[tuple[str, str]]
) -> list[tuple[str, pathlib.Path]]:
    """fal ``app_files`` as the SDK collects them (fal.file_sync), ignores applied."""
    import fal.file_sync

    patterns = [re.compile(pattern) for pattern in config.app_files_ignore]
    for entry in config.app_files:
        if not (context / entry).exists():
            left_out.append((entry, f"app_files entry not found under {context}"))
    # No credentials are needed to collect: nothing is uploaded.
    sync = fal.file_sync.FileSync(str(config.ref.path), credentials=object())
    try:
        collected = sync.collect_files(
            [entry for entry in config.app_files if (context / entry).exists()],
            files_context_dir=str(context),
            files_ignore=patterns,
        )
    except Exception as error:
        raise errors.CliError(
            f"collecting app_files failed: {error}",
            hint="fix app_files / app_files_ignore so that `fal deploy` would accept them",
        ) from error
    return [
        (metadata.relative_path, pathlib.Path(metadata.absolute_path))
        for metadata in collected
        if not any(pattern.search(metadata.relative_path) for pattern in patterns)
    ]


def _module_files(
    config: appref.AppConfig, name: str, left_out: list[tuple[str, str]]
) -> list[tuple[str, pathlib.Path]]:
    """A local module's source file, or every file of a local package (compiled files left
    out), at its import path below the app directory's root."""
    sys.path.insert(0, str(config.ref.path.parent))
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    finally:
        sys.path.remove(str(config.ref.path.parent))
    if spec is None:
        raise errors.CliError(
            f"local_python_modules names {name!r}, which is not importable here",
            hint="run kubefal from where `fal deploy` would find the module, or fix the name",
        )
    prefix = name.replace(".", "/")
    if spec.submodule_search_locations:
        root = pathlib.Path(next(iter(spec.submodule_search_locations)))
        found: list[tuple[str, pathlib.Path]] = []
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root).as_posix()
            if "__pycache__" in path.parts or path.suffix == ".pyc":
                if path.is_file():
                    left_out.append((f"{prefix}/{relative}", "compiled Python (rebuilt on import)"))
                continue
            if path.is_file():
                found.append((f"{prefix}/{relative}", path))
        return found
    if spec.origin and spec.origin.endswith(".py"):
        return [(f"{prefix}.py", pathlib.Path(spec.origin))]
    raise errors.CliError(
        f"local_python_modules names {name!r}, which is not Python source ({spec.origin})",
        hint="list only modules and packages written in Python; install the others as requirements",
    )


def app_bundle(config: appref.AppConfig) -> AppBundle:
    """The files an app with app_files or local_python_modules carries, by path below the app
    directory (fal's /app)."""
    context = _context_dir(config)
    try:
        app_directory = config.ref.path.parent.relative_to(context).as_posix()
    except ValueError as error:
        raise errors.CliError(
            f"the app file {config.ref.path} is outside app_files_context_dir {context}",
            hint="point app_files_context_dir at a directory that contains the app file",
        ) from error
    prefix = "" if app_directory == "." else f"{app_directory}/"
    left_out: list[tuple[str, str]] = []
    files: dict[str, bytes] = {}
    for name, text in app_files(config.ref).items():
        _add(files, prefix + name, text.encode("utf-8"), origin="the app's directory")
    for relative, path in _app_files(config, context, left_out):
        _add(files, relative, path.read_bytes(), origin="app_files")
    for module in config.local_python_modules:
        for relative, path in _module_files(config, module, left_out):
            _add(files, relative, path.read_bytes(), origin=f"local_python_modules {module}")
    return AppBundle(files=files, app_path=prefix + config.ref.path.name, left_out=left_out)


def pack_bundle(config: appref.AppConfig, *, target: Target) -> bundles.Bundle:
    try:
        return bundles.pack(
            app_bundle(config).files, namespace=target.namespace, app_name=target.name
        )
    except bundles.BundleError as error:
        raise errors.CliError(
            f"{config.class_name}'s files cannot be carried to the cluster: {error}",
            hint="bake the files into an image and pass --image, or shrink app_files "
            "(app_files_ignore)",
        ) from error


def _field_path(location: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in location)


def falapp_spec(config: appref.AppConfig, *, target: Target) -> v1alpha1.FalAppSpec:
    """The FalApp spec for ``config``; unset fal attributes take the CRD's defaults."""
    scaling = {
        key: value
        for key, value in {
            "min_concurrency": config.min_concurrency,
            "max_concurrency": config.max_concurrency,
            "keep_alive": config.keep_alive,
            "concurrency_buffer": config.concurrency_buffer,
            "concurrency_buffer_perc": config.concurrency_buffer_perc,
            "scaling_delay": config.scaling_delay,
            "max_multiplexing": config.max_multiplexing,
            "policy": config.scaling_policy,
        }.items()
        if value is not None
    }
    app_path = config.ref.path.name
    if target.image is None and uses_bundle(config):
        app_path = app_bundle(config).app_path
    fields: dict[str, Any] = {
        "app": f"{app_path}::{config.class_name}",
        **(
            {"requirement_layers": [list(layer) for layer in config.requirement_layers]}
            if len(config.requirement_layers) > 1
            else {"requirements": list(config.requirements)}
        ),
        "machine_types": list(config.machine_types),
        "num_gpus": config.num_gpus,
        "regions": list(config.regions or ()),
        "auth": config.auth or v1alpha1.AuthMode.PRIVATE,
        "scaling": scaling,
        "strategy": target.strategy,
        "skip_retry_conditions": list(config.skip_retry_conditions or ()),
    }
    if target.image is None and config.container_image is not None:
        fields["container_image"] = container_image_fields(config, target=target)
    if target.image is not None:
        fields["image"] = target.image
    elif uses_bundle(config):
        fields["source"] = pack_bundle(config, target=target).source
    else:
        fields["source"] = {"config_map_ref": {"name": config_map_name(target.name)}}
    if config.request_timeout is not None:
        fields["request_timeout"] = config.request_timeout
    if config.startup_timeout is not None:
        fields["startup_timeout"] = config.startup_timeout
    if config.persistent_data is not None:
        fields["persistent_data"] = config.persistent_data
    if config.health_check is not None:
        health = config.health_check
        fields["health_check"] = {
            key: value
            for key, value in {
                "path": health.path,
                "method": health.method,
                "start_period_seconds": health.start_period_seconds,
                "timeout_seconds": health.timeout_seconds,
                "failure_threshold": health.failure_threshold,
                "call_regularly": health.call_regularly,
            }.items()
            if value is not None
        }
    try:
        return v1alpha1.FalAppSpec.model_validate(fields)
    except pydantic.ValidationError as error:
        problems = "\n".join(
            f"spec.{_field_path(issue['loc'])}: {issue['msg']}" for issue in error.errors()
        )
        raise errors.CliError(
            f"{config.class_name} cannot be expressed as a FalApp",
            hint="change the fal.App attribute behind the field named above",
            details=problems,
        ) from error


def container_image_fields(config: appref.AppConfig, *, target: Target) -> dict[str, Any]:
    """``spec.containerImage`` for a ``fal.ContainerImage`` app (built in the cluster)."""
    image = config.container_image
    assert image is not None
    if image.copy_sources:
        raise errors.CliError(
            f"{config.class_name}'s Dockerfile copies files from the build context "
            f"({', '.join(image.copy_sources[:5])}), which kubefal does not carry yet",
            hint="fetch them in a RUN step, ship them as app_files, or build the image yourself "
            "and pass --image",
        )
    fields: dict[str, Any] = {"dockerfile": image.dockerfile, "build_args": image.build_args}
    if image.secrets:
        fields["secret_ref"] = {"name": naming.build_secret_name(target.name)}
    return fields


def build_secret_manifest(
    config: appref.AppConfig, *, target: Target, owner_uid: str | None
) -> dict[str, Any] | None:
    """The Secret holding a ContainerImage's build secrets (owned by the FalApp), if any."""
    image = config.container_image
    if image is None or not image.secrets or target.image is not None:
        return None
    metadata: dict[str, Any] = {
        "name": naming.build_secret_name(target.name),
        "namespace": target.namespace,
        "labels": {
            "app.kubernetes.io/managed-by": "kubefal-cli",
            naming.LABEL_BUILD_OF: target.name,
        },
    }
    if owner_uid is not None:
        metadata["ownerReferences"] = [
            naming.owner_reference(target.name, owner_uid, controller=True)
        ]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "stringData": dict(image.secrets),
    }


CLUSTER_SIDE_FIELDS = frozenset(
    {"service_account_name", "automount_service_account_token", "fal_key_secret_ref"}
)
"""FalApp fields about the cluster, not the fal.App class: a rendered manifest carries them only
when set, so a platform team's defaults (and a GitOps diff) are not overwritten by render."""


def _without_empty_lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: _without_empty_lists(item)
            for key, item in value.items()
            if not (isinstance(item, list) and not item)
        }
    return value


def falapp_manifest(config: appref.AppConfig, *, target: Target) -> dict[str, Any]:
    """The FalApp object to apply (empty lists and the cluster-side fields no class sets left
    out, so the CRD's defaults apply)."""
    spec = falapp_spec(config, target=target)
    kube_spec = spec.to_kube()
    for name in CLUSTER_SIDE_FIELDS - spec.model_fields_set:
        kube_spec.pop(v1alpha1.FalAppSpec.model_fields[name].alias or name, None)
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "metadata": {
            "name": target.name,
            "namespace": target.namespace,
            "labels": {naming.LABEL_MANAGED_BY: naming.MANAGED_BY},
        },
        "spec": _without_empty_lists(kube_spec),
    }


def config_map_manifest(
    config: appref.AppConfig, *, target: Target, owner_uid: str | None = None
) -> dict[str, Any]:
    """The ConfigMap with the app's files; owned by the FalApp once its uid is known."""
    metadata: dict[str, Any] = {
        "name": config_map_name(target.name),
        "namespace": target.namespace,
        "labels": {
            naming.LABEL_APP: target.name,
            naming.LABEL_PART_OF: naming.PART_OF,
            naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
        },
    }
    if owner_uid is not None:
        metadata["ownerReferences"] = [naming.owner_reference(target.name, owner_uid)]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": app_files(config.ref),
    }


def source_config_maps(
    config: appref.AppConfig, *, target: Target, owner_uid: str | None = None
) -> list[dict[str, Any]]:
    """Every ConfigMap holding the app's files (none with --image); owned by the FalApp once
    its uid is known."""
    if target.image is not None:
        return []
    if not uses_bundle(config):
        return [config_map_manifest(config, target=target, owner_uid=owner_uid)]
    config_maps = pack_bundle(config, target=target).config_maps
    if owner_uid is not None:
        for config_map in config_maps:
            config_map["metadata"]["ownerReferences"] = [
                naming.owner_reference(target.name, owner_uid)
            ]
    return config_maps


def manifests(config: appref.AppConfig, *, target: Target) -> list[dict[str, Any]]:
    """What ``kubefal deploy`` applies, in order: the ConfigMaps (unless --image), the FalApp."""
    falapp = falapp_manifest(config, target=target)
    return [*source_config_maps(config, target=target), falapp]
