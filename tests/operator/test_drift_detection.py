"""Drift: a rendered field missing or changed in the live object, and nothing else."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from kubefal_api import machines, v1alpha1
from kubefal_operator.render import common, deployment, drift

MakeApp = Callable[..., v1alpha1.FalApp]
"""The ``make_app`` fixture (tests/operator/conftest.py)."""


def _live_copy(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the API server would hand back: the manifest plus defaults and status."""
    live = copy.deepcopy(manifest)
    live["metadata"]["resourceVersion"] = "42"
    live["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "1"
    container = live["spec"]["template"]["spec"]["containers"][0]
    container["terminationMessagePath"] = "/dev/termination-log"
    container["startupProbe"]["successThreshold"] = 1
    container["resources"]["requests"]["cpu"] = "12000m"
    live["spec"]["progressDeadlineSeconds"] = manifest["spec"]["progressDeadlineSeconds"]
    live["spec"]["replicas"] = 3
    live["status"] = {"replicas": 3}
    return live


def _manifest(make_app: MakeApp) -> dict[str, Any]:
    return deployment.deployment(
        make_app(machineTypes=["GPU-H100"]),
        catalogue=machines.default_catalogue(),
        settings=common.RenderSettings(),
    )


def test_server_defaults_and_normalised_quantities_are_not_drift(make_app: MakeApp) -> None:
    manifest = _manifest(make_app)
    assert not drift.drifted(manifest, _live_copy(manifest))


def test_a_changed_image_is_drift(make_app: MakeApp) -> None:
    manifest = _manifest(make_app)
    live = _live_copy(manifest)
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "someone/else:1"
    assert drift.drifted(manifest, live)


def test_changed_resources_are_drift(make_app: MakeApp) -> None:
    manifest = _manifest(make_app)
    live = _live_copy(manifest)
    live["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "4"
    assert drift.drifted(manifest, live)


def test_an_added_env_var_is_drift(make_app: MakeApp) -> None:
    manifest = _manifest(make_app)
    live = _live_copy(manifest)
    live["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "X", "value": "1"})
    assert drift.drifted(manifest, live)


def test_a_removed_label_is_drift(make_app: MakeApp) -> None:
    manifest = _manifest(make_app)
    live = _live_copy(manifest)
    del live["metadata"]["labels"]["kubefal.io/app"]
    assert drift.drifted(manifest, live)


def test_an_omitted_empty_map_is_not_drift() -> None:
    desired: dict[str, Any] = {
        "spec": {"ingress": [{"from": [{"namespaceSelector": {}}]}], "extra": []}
    }
    live: dict[str, Any] = {"spec": {"ingress": [{"from": [{"namespaceSelector": {}}]}]}}
    assert drift.is_subset(desired, live)
    assert not drift.is_subset({"spec": {"value": "x"}}, {"spec": {}})
