"""Bounds of the per-request log store (pure logic, no processes).

We test these aspects: entries come back in fal's shape and order; a request keeps only its newest
lines beyond the per-request limit; the oldest requests are forgotten beyond the request and the
character limits; every entry is also written to the sink as a JSON line with its request id; the
capturing stream ends lines at ``\n``, ``\r\n`` and ``\r`` and holds a bounded unfinished line
however much output arrives without a line break.
"""

from __future__ import annotations

import io
import itertools
import json
import tracemalloc

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


class _DiscardingSink(io.StringIO):
    def write(self, text: str) -> int:
        return len(text)


def _capturing_stream(
    **bounds: int,
) -> tuple[request_logs.RequestCapturingStream, request_logs.RequestLogStore]:
    # The sink is the process's stdout in the runner; here it discards, so memory is the store's.
    store = request_logs.RequestLogStore(sink=_DiscardingSink(), **bounds)
    stream = request_logs.RequestCapturingStream(
        original=io.StringIO(), level="STDERR", store=store
    )
    return stream, store


def _write_in_request(
    stream: request_logs.RequestCapturingStream, request_id: str, *texts: str
) -> None:
    token = request_logs.CURRENT_REQUEST_ID.set(request_id)
    try:
        for text in texts:
            stream.write(text)
    finally:
        request_logs.CURRENT_REQUEST_ID.reset(token)


def test_carriage_returns_end_lines_and_a_split_crlf_ends_one() -> None:
    stream, store = _capturing_stream()

    _write_in_request(stream, "r1", "\r 10%", "\r 20%", "\r 30%\n", "a\r", "\nb\r\n", "tail")
    stream.finish_request("r1")

    assert [entry["message"] for entry in store.entries("r1")] == [
        " 10%",
        " 20%",
        " 30%",
        "a",
        "b",
        "tail",
    ]


def test_output_without_line_breaks_is_kept_in_bounded_pieces() -> None:
    """16 MiB without a newline: never more than one message limit held, nothing lost."""
    limit = 1000
    stream, store = _capturing_stream(max_message_chars=limit, max_entries_per_request=100_000)
    chunk = "x" * (64 * 1024)
    writes = 256  # 16 MiB in all
    token = request_logs.CURRENT_REQUEST_ID.set("r1")
    try:
        most_pending = 0
        for _ in range(writes):
            stream.write(chunk)
            most_pending = max(most_pending, stream.pending_chars("r1"))
    finally:
        request_logs.CURRENT_REQUEST_ID.reset(token)
    stream.finish_request("r1")

    assert most_pending <= limit
    messages = [entry["message"] for entry in store.entries("r1")]
    assert sum(len(message) for message in messages) == writes * len(chunk)
    assert {len(message) for message in messages[:-1]} == {limit}


def test_sixteen_mebibytes_of_progress_redraws_hold_bounded_memory() -> None:
    """Peak memory while 16 MiB of ``\\r`` redraws are captured stays far below their size."""
    stream, store = _capturing_stream()
    redraw = "\r" + "#" * 1023
    batch = redraw * 64  # written as a progress bar library would, many redraws per write
    batches = 16 * 1024 * 1024 // len(batch)

    tracemalloc.start()
    try:
        _write_in_request(stream, "r1", *itertools.repeat(batch, batches))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 2 * 1024 * 1024
    assert stream.pending_chars("r1") == 1023
    assert store.count("r1") == request_logs.DEFAULT_MAX_ENTRIES_PER_REQUEST
