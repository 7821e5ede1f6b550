"""Every example's falapp.yaml parses and says what its app.py's fal.App says."""

from __future__ import annotations

import json
import pathlib
import runpy
from typing import Any

import fal
import fal.app
import httpx
import pytest
import yaml

from kubefal_api import fal_options, v1alpha1

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_DIRS = sorted(path.parent for path in EXAMPLES.glob("*/falapp.yaml"))


def load_manifest(directory: pathlib.Path) -> v1alpha1.FalApp:
    document = yaml.safe_load((directory / "falapp.yaml").read_text(encoding="utf-8"))
    return v1alpha1.FalApp.model_validate(document)


def load_app_class(directory: pathlib.Path, reference: str) -> type[fal.App]:
    filename, _, class_name = reference.partition("::")
    namespace: dict[str, Any] = runpy.run_path(str(directory / filename))
    app_class = namespace[class_name]
    assert isinstance(app_class, type)
    assert issubclass(app_class, fal.App)
    return app_class


def test_the_three_required_examples_exist() -> None:
    manifests = [load_manifest(directory) for directory in EXAMPLE_DIRS]
    machine_lists = [app.spec.machine_types for app in manifests]
    assert any(not app.spec.uses_gpu for app in manifests)
    assert any(
        app.spec.machine_types == ["GPU-H100"] and app.spec.num_gpus == 2 for app in manifests
    )
    assert ["GPU-H100", "GPU-H200"] in machine_lists


@pytest.mark.parametrize("directory", EXAMPLE_DIRS, ids=lambda path: path.name)
def test_manifest_mirrors_the_fal_app(directory: pathlib.Path) -> None:
    manifest = load_manifest(directory)
    app_class = load_app_class(directory, manifest.spec.app)
    wrapped = fal.app.wrap_app(app_class)
    from_code = fal_options.spec_from_fal_options(
        app=manifest.spec.app,
        host=wrapped.options.host,
        app_auth=wrapped.app_auth,
        requirements=app_class.requirements,
    )
    # Deployment wiring (where the files come from) is not a fal.App attribute.
    from_yaml = manifest.spec.model_copy(update={"source": None, "image": None})
    assert from_yaml == from_code
    assert manifest.metadata.name == wrapped.app_name
    assert manifest.metadata.name == directory.name


EXPECTED_RESPONSES: dict[str, dict[str, Any]] = {
    # request.json: "The cat and the hat sat on the mat", top 1
    "text-stats": {"words": 9, "distinct_words": 7, "top_words": [["the", 3]]},
    # trace(A @ B) of the 2x2 matrices: [[0,1],[2,3]]@[[0,2],[1,3]] -> 14, and with seed 1
    # [[1,2],[3,4]]@[[1,3],[2,4]] -> 30
    "h100-pair": {"trace": 44.0, "shards": 2, "visible_devices": ""},
    "gpu-fallback": {"probabilities": [0.5, 0.5], "visible_devices": ""},
}


@pytest.mark.parametrize("directory", EXAMPLE_DIRS, ids=lambda path: path.name)
async def test_example_app_answers_its_sample_request_without_a_gpu(
    directory: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NVIDIA_VISIBLE_DEVICES", raising=False)
    manifest = load_manifest(directory)
    app_class = load_app_class(directory, manifest.spec.app)
    asgi = app_class(_allow_init=True)._build_app()
    request = json.loads((directory / "request.json").read_text(encoding="utf-8"))
    transport = httpx.ASGITransport(app=asgi)
    async with (
        asgi.router.lifespan_context(asgi),
        httpx.AsyncClient(transport=transport, base_url="http://runner") as client,
    ):
        response = await client.post("/", json=request)
    assert response.status_code == 200, response.text
    assert response.json() == EXPECTED_RESPONSES[directory.name]
