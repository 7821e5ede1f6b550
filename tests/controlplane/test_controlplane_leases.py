"""Pure logic of runner leases: the gateway's ``/_kubefal/runners`` answer parsed, and the
``external_metadata`` the fal CLI reads (``leases``, ``present_in_group``)."""

from __future__ import annotations

import datetime
from typing import Any

from google.protobuf import json_format

from kubefal_controlplane import mapping
from tests.controlplane import runner_pods

NOW = datetime.datetime(2026, 12, 5, 12, 0, tzinfo=datetime.UTC)


_pod = runner_pods.runner_pod


def test_the_gateway_answer_is_parsed_by_app_and_pod_and_bad_leases_are_skipped() -> None:
    parsed = mapping.parse_runners(
        {
            "apps": [
                {
                    "app": "team-a/demo",
                    "runners": [
                        {
                            "id": "demo-abc",
                            "inFlight": 2,
                            "idleSeconds": 0,
                            "leases": [
                                {"requestId": "r1", "leasedAtEpoch": 1.5, "callerId": "kf01"},
                                {"requestId": "r2", "leasedAtEpoch": 2, "callerId": None},
                                {"requestId": "", "leasedAtEpoch": 1},
                                {"requestId": "r3", "leasedAtEpoch": "soon"},
                                {"requestId": "r4", "leasedAtEpoch": 1, "callerId": 7},
                                "junk",
                            ],
                        }
                    ],
                },
                {"app": 5, "runners": []},
                "junk",
            ]
        }
    )

    assert parsed == {
        "team-a/demo": {
            "demo-abc": mapping.RunnerDetail(
                in_flight=2,
                idle_seconds=0.0,
                leases=(
                    mapping.Lease(request_id="r1", leased_at_epoch=1.5, caller_id="kf01"),
                    mapping.Lease(request_id="r2", leased_at_epoch=2.0, caller_id=None),
                ),
            )
        }
    }
    assert mapping.parse_runners(["not", "a", "mapping"]) == {}


def test_leases_reach_the_external_metadata_the_fal_cli_reads() -> None:
    detail = mapping.RunnerDetail(
        in_flight=1,
        idle_seconds=0,
        leases=(mapping.Lease(request_id="r1", leased_at_epoch=1.5, caller_id="kf01"),),
    )

    info = mapping.runner_info(_pod(), None, detail, now=NOW, no_gateway=False)

    metadata = json_format.MessageToDict(info.external_metadata)
    assert metadata["leases"] == [
        {"request_id": "r1", "leased_at_epoch": 1.5, "caller_user_id": "kf01"}
    ]
    assert metadata["present_in_group"] is True
    assert info.in_flight_requests == 1


def test_present_in_group_is_false_for_a_ready_pod_the_answering_gateway_does_not_know() -> None:
    def present(pod: dict[str, Any], detail: Any, *, no_gateway: bool) -> bool:
        info = mapping.runner_info(pod, None, detail, now=NOW, no_gateway=no_gateway)
        return bool(info.external_metadata["present_in_group"])

    known = mapping.RunnerDetail(in_flight=0, idle_seconds=1)
    assert present(_pod(), known, no_gateway=False)
    assert not present(_pod(), None, no_gateway=False)  # lost: Ready, not routed to
    assert present(_pod(ready=False), None, no_gateway=False)  # still starting
    assert present(_pod(), None, no_gateway=True)  # the gateway's view is unknown
    assert not present(_pod(deleting=True), known, no_gateway=False)
