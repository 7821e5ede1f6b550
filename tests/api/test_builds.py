"""kubefal_api.builds: when a build pod's log can be read (kubefal deploy and fal deploy both
follow it)."""

from __future__ import annotations

from typing import Any

import pytest

from kubefal_api import builds


@pytest.mark.parametrize(
    ("pod", "readable"),
    [
        ({}, False),
        ({"status": None}, False),
        ({"status": {"phase": "Pending"}}, False),
        ({"status": {"containerStatuses": [{"state": {"waiting": {"reason": "Pull"}}}]}}, False),
        ({"status": {"containerStatuses": [{"state": {"running": {"startedAt": "t"}}}]}}, True),
        ({"status": {"containerStatuses": [{"state": {"terminated": {"exitCode": 1}}}]}}, True),
        (
            {
                "status": {
                    "containerStatuses": [
                        {"state": {"waiting": {}}},
                        {"state": {"running": {"startedAt": "now"}}},
                    ]
                }
            },
            True,
        ),
    ],
)
def test_a_build_pods_log_is_readable_once_its_container_runs_or_ran(
    pod: dict[str, Any], readable: bool
) -> None:
    assert builds.log_readable(pod) is readable


def test_the_build_status_counts_once_it_is_about_the_deployed_generation() -> None:
    status = {
        "build": {
            "observedGeneration": 3,
            "phase": "Failed",
            "job": "demo-build-3",
            "message": "no registry",
        }
    }

    assert builds.build_of(status, 4) is None  # the operator has not looked at generation 4
    assert builds.build_of({}, 1) is None  # no image to build
    assert builds.build_of({"build": None}, 1) is None
    assert builds.build_of(status, 3) == builds.Build(
        phase="Failed", job="demo-build-3", message="no registry", image=None
    )
    cached = builds.build_of(
        {"build": {"observedGeneration": 5, "phase": "Cached", "image": "r/i:1"}}, 2
    )
    assert cached == builds.Build(phase="Cached", job="", message="", image="r/i:1")
