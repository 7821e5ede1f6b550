"""The gateway's scaling signals as the operator decodes them from the event stream."""

from __future__ import annotations

import json

import pytest

from kubefal_operator import signals


def _stream(parser: signals.EventStreamParser, text: str) -> list[signals.ServerSentEvent]:
    events = []
    for line in text.split("\n"):
        event = parser.feed(line)
        if event is not None:
            events.append(event)
    return events


def test_events_are_dispatched_on_blank_lines_and_comments_are_skipped() -> None:
    parser = signals.EventStreamParser()
    text = (
        ": keep-alive\n\n"
        'event: scaling\ndata: {"app": "a/b",\ndata: "queued": 1}\n\n'
        "data: plain\n\n"
    )
    events = _stream(parser, text)
    assert events == [
        signals.ServerSentEvent(event="scaling", data='{"app": "a/b",\n"queued": 1}'),
        signals.ServerSentEvent(event="message", data="plain"),
    ]


def test_a_signal_carries_the_gateway_counts_and_the_app_key() -> None:
    signal = signals.parse_signal(
        json.dumps(
            {
                "app": "team-a/demo",
                "queued": 3,
                "inFlight": 2,
                "readyRunners": 2,
                "idleRunners": 0,
                "runners": 2,
                "desiredRunners": 5,
            }
        )
    )
    assert signal.key == ("team-a", "demo")
    assert (signal.queued, signal.in_flight, signal.desired_runners) == (3, 2, 5)
    assert signal.runner_details is None


def test_runner_details_match_pods_by_name_or_ip() -> None:
    signal = signals.parse_signal(
        {
            "app": "ns/app",
            "desiredRunners": 1,
            "runnerDetails": [
                {"id": "app-1", "ip": "10.0.0.1", "inFlight": 2, "idleSeconds": 0, "ready": True},
                {"id": "", "ip": "10.0.0.2", "inFlight": 0, "idleSeconds": 12.5, "ready": True},
            ],
        }
    )
    busy = signal.detail_of(pod_name="app-1", pod_ip=None)
    assert busy is not None and busy.busy
    idle = signal.detail_of(pod_name="app-2", pod_ip="10.0.0.2")
    assert idle is not None and not idle.busy and idle.idle_seconds == 12.5
    assert signal.detail_of(pod_name="app-3", pod_ip="10.0.0.3") is None


@pytest.mark.parametrize(
    "data",
    [
        "not json",
        "[1, 2]",
        '{"app": "no-namespace", "desiredRunners": 1}',
        '{"app": "a/b", "desiredRunners": -1}',
        '{"app": "a/b", "desiredRunners": "3"}',
        '{"app": "a/b", "runnerDetails": {"id": "x"}}',
    ],
)
def test_malformed_signals_are_rejected(data: str) -> None:
    with pytest.raises(signals.SignalError):
        signals.parse_signal(data)
