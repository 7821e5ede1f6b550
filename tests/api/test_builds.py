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
