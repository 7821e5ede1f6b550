"""Bounds of the per-request log store (pure logic, no processes).

We test these aspects: entries come back in fal's shape and order; a request keeps only its newest
lines beyond the per-request limit; the oldest requests are forgotten beyond the request and the
character limits; every entry is also written to the sink as a JSON line with its request id.
"""

from __future__ import annotations

import io
import json

from kubefal_runner import request_logs


def _store(**bounds: int) -> tuple[request_logs.RequestLogStore, io.StringIO]:
    sink = io.StringIO()
    return request_logs.RequestLogStore(sink=sink, **bounds), sink


def test_entries_keep_fal_shape_order_and_reach_the_sink() -> None:
    store, sink = _store()

    store.append(request_id="r1", level="STDOUT", message="first")
    store.append(request_id="r1", level="WARNING", message="second")

    entries = store.entries("r1")
    assert [(entry["level"], entry["message"]) for entry in entries] == [
        ("STDOUT", "first"),
        ("WARNING", "second"),
    ]
    assert {entry["source"] for entry in entries} == {"USER"}
    written = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert [(line["request_id"], line["message"]) for line in written] == [
        ("r1", "first"),
        ("r1", "second"),
    ]


def test_a_request_keeps_its_newest_lines() -> None:
    store, _ = _store(max_entries_per_request=2)

    for index in range(5):
        store.append(request_id="r1", level="STDOUT", message=f"line {index}")

    assert [entry["message"] for entry in store.entries("r1")] == ["line 3", "line 4"]


def test_the_oldest_requests_are_forgotten_beyond_the_request_limit() -> None:
    store, _ = _store(max_requests=2)

    for request_id in ("r1", "r2", "r3"):
        store.append(request_id=request_id, level="STDOUT", message=request_id)

    assert store.entries("r1") == []
    assert [entry["message"] for entry in store.entries("r3")] == ["r3"]


def test_the_oldest_requests_are_forgotten_beyond_the_character_limit() -> None:
    store, _ = _store(max_total_chars=10)

    store.append(request_id="old", level="STDOUT", message="x" * 6)
    store.append(request_id="new", level="STDOUT", message="y" * 6)

    assert store.entries("old") == []
    assert store.entries("new")[0]["message"] == "y" * 6
