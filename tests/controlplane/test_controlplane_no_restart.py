"""``fal apps scale`` of scaling-only fields must not restart runners.

The control plane writes ``apps scale`` into the FalApp spec; runners restart exactly when the
operator's rendered pod template changes. This renders the runner Deployment with the
operator's own code before and after each patch the control plane would write.
"""

from __future__ import annotations

from typing import Any

import isolate_proto
import pytest

from kubefal_api import machines, v1alpha1
from kubefal_controlplane import mapping
from kubefal_operator.render import common, deployment

BASE_SPEC: dict[str, Any] = {
    "app": "app.py::App",
    "machineTypes": ["GPU-H100"],
    "scaling": {"minConcurrency": 0, "maxConcurrency": 4, "keepAlive": 60},
}


def _template(spec: dict[str, Any]) -> dict[str, Any]:
    app = v1alpha1.FalApp.from_kube(
        {
            "apiVersion": v1alpha1.API_VERSION,
            "kind": v1alpha1.KIND,
            "metadata": {"name": "demo", "namespace": "team-a", "uid": "u-1", "generation": 1},
            "spec": spec,
        }
    )
    rendered = deployment.deployment(
        app, catalogue=machines.default_catalogue(), settings=common.RenderSettings()
    )
    template: dict[str, Any] = rendered["spec"]["template"]
    return template


def _scaled(fields: dict[str, Any]) -> dict[str, Any]:
    request = isolate_proto.UpdateApplicationRequest(application_name="demo", **fields)
    return mapping._merge(dict(BASE_SPEC), mapping.scale_patch(request, BASE_SPEC))


@pytest.mark.parametrize(
    "fields",
    [
        {"keep_alive": 5},
        {"max_concurrency": 9},
        {"min_concurrency": 2},
        {"concurrency_buffer": 3},
        {"concurrency_buffer_perc": 50},
        {"scaling_delay_seconds": 7},
        {
            "keep_alive": 1,
            "max_concurrency": 20,
            "min_concurrency": 1,
            "concurrency_buffer": 1,
            "concurrency_buffer_perc": 10,
            "scaling_delay_seconds": 2,
        },
    ],
)
def test_a_scaling_only_change_leaves_the_runner_pod_template_as_it_is(
    fields: dict[str, Any],
) -> None:
    assert _template(_scaled(fields)) == _template(BASE_SPEC)


def test_a_change_that_reaches_the_runner_is_a_new_pod_template() -> None:
    """The counter-check: max_multiplexing is runner configuration, so runners are replaced."""
    assert _template(_scaled({"max_multiplexing": 4})) != _template(BASE_SPEC)
