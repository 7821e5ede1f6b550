"""The chart runs the images ``make images`` builds, under the names and tags it gives them.

By default every server container uses the kubefal image and runners the kubefal-runner image,
both tagged with the chart's appVersion, exactly the references ``images/build.sh`` tags in the
local store and writes into dist/images/*.oci.tar; repository, tag and pull policy come from
values. Rendering only (the testbin's helm); no cluster needed.
"""

from __future__ import annotations

from typing import Any

import pytest

from e2e import cluster as local_cluster
from e2e import images
from tests.charthelm import Helm


@pytest.fixture(scope="module")
def helm() -> Helm:
    return Helm(binary=local_cluster.testbin_dir() / "helm")


def _containers(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Containers of every Deployment, by their component label."""
    found = {}
    for item in objects:
        if item["kind"] == "Deployment":
            component = item["metadata"]["labels"]["app.kubernetes.io/component"]
            (container,) = item["spec"]["template"]["spec"]["containers"]
            found[component] = container
    return found


def _runner_image(containers: dict[str, dict[str, Any]]) -> str:
    env = {e["name"]: e.get("value") for e in containers["operator"]["env"]}
    return str(env["KUBEFAL_RUNNER_IMAGE"])


def test_by_default_the_chart_runs_the_images_make_images_tags(helm: Helm) -> None:
    containers = _containers(helm.template({}))
    assert {"operator", "gateway", "webhook"} <= set(containers)
    for component, container in containers.items():
        assert container["image"] == images.image_ref("kubefal"), component
        assert container["imagePullPolicy"] == "IfNotPresent", component
    assert _runner_image(containers) == images.image_ref("kubefal-runner")
    assert images.image_ref("kubefal").endswith(f":{images.chart_app_version()}")


def test_repository_tag_and_pull_policy_come_from_values(helm: Helm) -> None:
    image = {"repository": "registry.example:5000/team/kubefal", "tag": "1.2.3"}
    values = {
        "operator": {"image": {**image, "pullPolicy": "Always"}},
        "gateway": {
            "image": {"repository": "registry.example:5000/team/gw", "pullPolicy": "Never"}
        },
        "runner": {"image": {"repository": "registry.example:5000/team/runner", "tag": "r9"}},
    }
    containers = _containers(helm.template(values))
    assert containers["operator"]["image"] == "registry.example:5000/team/kubefal:1.2.3"
    assert containers["operator"]["imagePullPolicy"] == "Always"
    gateway_tag = images.chart_app_version()
    assert containers["gateway"]["image"] == f"registry.example:5000/team/gw:{gateway_tag}"
    assert containers["gateway"]["imagePullPolicy"] == "Never"
    # The webhook runs the operator's (control-plane) image unless given its own.
    assert containers["webhook"]["image"] == "registry.example:5000/team/kubefal:1.2.3"
    assert _runner_image(containers) == "registry.example:5000/team/runner:r9"
