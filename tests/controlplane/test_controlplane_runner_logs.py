"""The pure half of ``fal runners logs``: Kubernetes log lines parsed, selected and paged."""

from __future__ import annotations

import datetime

import pytest

from kubefal_controlplane import runner_logs

UTC = datetime.UTC


def _at(second: int, micro: int = 0) -> datetime.datetime:
    return datetime.datetime(2026, 1, 31, 12, 0, second, micro, tzinfo=UTC)


def test_kubernetes_timestamps_are_parsed_to_microseconds() -> None:
    line = runner_logs.parse_line("2026-01-31T12:00:05.123456789Z hello world\r")

    assert line == runner_logs.Line(at=_at(5, 123456), message="hello world")
    assert runner_logs.parse_line("garbage without a time") is None
    assert runner_logs.parse_line("") is None
    # The CLI's own cursor format (offset, microseconds) and a naive time (UTC).
    assert runner_logs.parse_time("2026-01-31T12:00:05.123456+00:00", field="x") == _at(5, 123456)
    assert runner_logs.parse_time("2026-01-31T13:00:05+01:00", field="x") == _at(5)
    assert runner_logs.parse_time("2026-01-31T12:00:05", field="x") == _at(5)


@pytest.mark.parametrize("raw", ["yesterday", "", "2026-13-01T00:00:00Z", "x" * 100, "\x00"])
def test_a_bad_time_names_its_field(raw: str) -> None:
    with pytest.raises(runner_logs.BadQuery, match="since"):
        runner_logs.parse_time(raw, field="since")


@pytest.mark.parametrize("raw", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_time_out_of_range_in_utc_names_its_field(raw: str) -> None:
    # fromisoformat takes these; converting them to UTC overflows (was a 500 on the REST side).
    with pytest.raises(runner_logs.BadQuery, match="since"):
        runner_logs.parse_time(raw, field="since")


@pytest.mark.parametrize("raw", ["0", "-1", "abc", "10001", "1e3", "²"])
def test_a_bad_page_size_is_refused(raw: str) -> None:
    with pytest.raises(runner_logs.BadQuery, match="page_size"):
        runner_logs.parse_page_size(raw, 1000)


def test_selection_is_since_inclusive_until_exclusive_and_searched() -> None:
    lines = [runner_logs.Line(_at(s), f"line {s}") for s in range(5)]

    chosen = runner_logs.selected(lines, since=_at(1), until=_at(4), search=None)
    assert [line.message for line in chosen] == ["line 1", "line 2", "line 3"]
    assert runner_logs.selected(lines, since=None, until=None, search="line 3") == [lines[3]]


def test_pages_run_newest_first_and_never_split_a_microsecond() -> None:
    lines = [
        runner_logs.Line(_at(1), "a"),
        runner_logs.Line(_at(2), "b1"),
        runner_logs.Line(_at(2), "b2"),
        runner_logs.Line(_at(3), "c"),
    ]

    first = runner_logs.page(lines, 2)
    # The page would end inside second 2; it takes all of that microsecond instead.
    assert [item["message"] for item in first["items"]] == ["c", "b1", "b2"]
    assert first["next_until"] == _at(2).isoformat()
    cursor = runner_logs.parse_time(first["next_until"], field="until")
    rest = runner_logs.page(runner_logs.selected(lines, since=None, until=cursor, search=None), 2)
    assert [item["message"] for item in rest["items"]] == ["a"]
    assert rest["next_until"] is None
    assert first["items"][0]["timestamp"] == _at(3).isoformat()
    assert first["items"][0]["level"] == "INFO"


def test_runner_times_come_from_the_runner_container() -> None:
    pod = {
        "metadata": {"name": "app-1", "namespace": "team"},
        "status": {
            "phase": "Succeeded",
            "startTime": "2026-01-31T11:59:00Z",
            "containerStatuses": [
                {"name": "sidecar", "state": {"running": {"startedAt": "2026-01-31T11:00:00Z"}}},
                {
                    "name": "runner",
                    "state": {
                        "terminated": {
                            "startedAt": "2026-01-31T12:00:00Z",
                            "finishedAt": "2026-01-31T12:00:09Z",
                        }
                    },
                },
            ],
        },
    }

    times = runner_logs.runner_times(pod, "runner")

    assert times["started_at"] == _at(0).isoformat()
    assert times["ended_at"] == _at(9).isoformat()
    pod["status"]["phase"] = "Running"  # type: ignore[index]
    assert runner_logs.runner_times(pod, "runner")["ended_at"] is None
