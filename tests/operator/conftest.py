"""Builders shared by the operator's unit tests: FalApps as the API server would hand them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kubefal_api import machines, v1alpha1
from kubefal_operator.render import common

MakeApp = Callable[..., v1alpha1.FalApp]


def build_app(
    name: str = "demo",
    namespace: str = "team-a",
    generation: int = 1,
    status: dict[str, Any] | None = None,
    **spec: Any,
) -> v1alpha1.FalApp:
    """A FalApp with metadata filled in; ``spec`` takes camelCase or snake_case fields."""
    body: dict[str, Any] = {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "generation": generation,
        },
        "spec": {"app": "app.py::Demo", **spec},
    }
    if status is not None:
        body["status"] = status
    return v1alpha1.FalApp.from_kube(body)


@pytest.fixture
def make_app() -> MakeApp:
    return build_app


@pytest.fixture
def catalogue() -> machines.MachineCatalogue:
    return machines.default_catalogue()


@pytest.fixture
def settings() -> common.RenderSettings:
    return common.RenderSettings()
