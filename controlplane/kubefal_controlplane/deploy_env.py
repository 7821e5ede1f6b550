"""The environment a ``fal deploy`` asks for, as kubefal keeps it: the requirements (layers
stay layers; fal's own serving stack is left out, since kubefal's runner image brings its own;
a pip option is refused) and a ``fal.ContainerImage`` to build in the cluster.

Why a module of its own: the SDK's environment definitions are a concern apart from the app's
source (:mod:`kubefal_controlplane.deploy`) and from the FalApp spec they end up in
(:mod:`kubefal_controlplane.deploy_spec`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any, Final

import isolate_proto
from google.protobuf import json_format

from kubefal_api import v1alpha1
from kubefal_controlplane import errors

FAL_SERVE_REQUIREMENTS: Final = frozenset(
    {"uvicorn", "starlette_exporter", "packaging", "structlog", "tomli", "tomli-w", "httpx>=0.20"}
)
"""What fal's SDK appends to every app's requirements (``fal.api.api.SERVE_REQUIREMENTS``),
besides the pinned ``fastapi``, ``pydantic`` and ``tblib`` matched by prefix below."""
FAL_PINNED_PREFIXES: Final = ("fastapi==", "pydantic==", "tblib==")


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
            if len(layer) > v1alpha1.MAX_LAYER_REQUIREMENTS:
                # Refused before the entries are looked at: the list is the caller's, as long
                # as a message allows.
                raise errors.invalid_argument(
                    "environments",
                    f"requirements: {len(layer)} in one layer of {field}; kubefal keeps at "
                    f"most {v1alpha1.MAX_LAYER_REQUIREMENTS}",
                )
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


def requirements(environments: Sequence[isolate_proto.EnvironmentDefinition]) -> list[str]:
    """Every requirement of every layer, in order (what the runner ends up with)."""
    return [item for layer in requirement_layers(environments) for item in layer]


def requirement_fields(layers: Sequence[Sequence[str]]) -> dict[str, Any]:
    """FalApp spec fields for ``layers``: one layer stays the flat ``requirements``;
    several become ``requirementLayers``, installed in order."""
    if len(layers) <= 1:
        return {"requirements": list(layers[0]) if layers else []}
    return {"requirementLayers": [list(layer) for layer in layers]}
