"""Which runners a scale-down removes: deletion costs from the gateway's runner view."""

from __future__ import annotations

from typing import Any

from kubefal_api import naming
from kubefal_operator import signals
from kubefal_operator.render import scaledown


def _pod(name: str, ip: str, *, cost: str | None = None, going: bool = False) -> dict[str, Any]:
    annotations = {} if cost is None else {naming.ANNOTATION_POD_DELETION_COST: cost}
    return {
        "metadata": {
            "name": name,
            "annotations": annotations,
            "deletionTimestamp": "2026-11-25T12:00:00Z" if going else None,
        },
        "status": {"podIP": ip},
    }


def _signal(*details: tuple[str, str, int, float]) -> signals.ScalingSignal:
    return signals.parse_signal(
        {
            "app": "ns/app",
            "desiredRunners": 1,
            "runnerDetails": [
                {"id": name, "ip": ip, "inFlight": in_flight, "idleSeconds": idle, "ready": True}
                for name, ip, in_flight, idle in details
            ],
        }
    )


def test_idle_runners_cost_less_than_busy_ones_and_the_longest_idle_least() -> None:
    pods = [_pod("busy", "10.0.0.1"), _pod("fresh-idle", "10.0.0.2"), _pod("old-idle", "10.0.0.3")]
    signal = _signal(
        ("busy", "10.0.0.1", 1, 0.0),
        ("fresh-idle", "10.0.0.2", 0, 2.0),
        ("old-idle", "10.0.0.3", 0, 75.4),
    )
    costs = scaledown.deletion_costs(pods, signal=signal)
    assert sorted(costs, key=costs.__getitem__) == ["old-idle", "fresh-idle", "busy"]
    assert costs["busy"] > 0 > costs["fresh-idle"]


def test_busier_runners_go_last() -> None:
    pods = [_pod("one", "10.0.0.1"), _pod("three", "10.0.0.2")]
    signal = _signal(("one", "10.0.0.1", 1, 0.0), ("three", "10.0.0.2", 3, 0.0))
    costs = scaledown.deletion_costs(pods, signal=signal)
    assert costs["one"] < costs["three"]


def test_runners_the_gateway_does_not_list_count_as_idle_matched_by_ip_otherwise() -> None:
    pods = [_pod("unlisted", "10.0.0.9"), _pod("by-ip", "10.0.0.1")]
    signal = _signal(("", "10.0.0.1", 2, 0.0))
    costs = scaledown.deletion_costs(pods, signal=signal)
    assert costs["unlisted"] < 0 < costs["by-ip"]


def test_without_runner_details_every_runner_counts_as_idle() -> None:
    pods = [_pod("a", "10.0.0.1"), _pod("b", "10.0.0.2")]
    signal = signals.parse_signal({"app": "ns/app", "desiredRunners": 1, "idleRunners": 1})
    assert set(scaledown.deletion_costs(pods, signal=signal).values()) == {-1}


def test_only_changed_costs_are_written_and_terminating_pods_are_skipped() -> None:
    signal = _signal(("a", "10.0.0.1", 0, 4.0), ("b", "10.0.0.2", 1, 0.0))
    pods = [
        _pod("a", "10.0.0.1", cost="-5"),
        _pod("b", "10.0.0.2", cost="-1"),
        _pod("c", "10.0.0.3", going=True),
    ]
    assert scaledown.annotations_to_write(pods, signal=signal) == {"b": "1000"}


def test_written_costs_are_visible_once_every_remaining_pod_shows_them() -> None:
    written = {"a": "-5", "b": "1000", "gone": "-1"}
    pods = [_pod("a", "10.0.0.1", cost="-5"), _pod("b", "10.0.0.2", cost="-1")]
    assert not scaledown.costs_visible(pods, costs=written)
    pods[1] = _pod("b", "10.0.0.2", cost="1000")
    assert scaledown.costs_visible(pods, costs=written)
    assert scaledown.costs_visible([_pod("a", "10.0.0.1", going=True)], costs=written)
