"""Byte encodings of jobs, results and log lines shared by the queue store backends.

Both backends keep the immutable part of a job and of a result as one compact orjson blob (plus the
raw body as a separate blob), so a store row is written once and decoded in one call. Keys are one
letter: these blobs are written and read once per request on the hot path.
"""

from __future__ import annotations

import typing
from typing import Any

import orjson

from kubefal_gateway import queueing

# Enum lookups by value through a dict: calling the enum class costs microseconds per call.
_PRIORITIES = {int(priority): priority for priority in queueing.Priority}
_OUTCOMES = {outcome.value: outcome for outcome in queueing.Outcome}


def encode_job_meta(job: queueing.Job) -> bytes:
    """Everything of ``job`` except its body, attempts and request id."""
    return orjson.dumps(
        {
            "a": job.app_id,
            "p": job.path,
            "m": job.method,
            "h": job.headers,
            "q": int(job.priority),
            "s": job.submitted_at,
            "d": job.start_deadline,
            "w": job.webhook_url,
            "r": job.runner_hint,
            "o": job.owner,
        }
    )


def decode_job(request_id: str, meta: bytes, body: bytes, attempts: int) -> queueing.Job:
    fields: dict[str, Any] = orjson.loads(meta)
    return queueing.Job(
        request_id=request_id,
        app_id=fields["a"],
        path=fields["p"],
        method=fields["m"],
        headers=_headers(fields["h"]),
        body=body,
        priority=_PRIORITIES[fields["q"]],
        submitted_at=fields["s"],
        start_deadline=fields["d"],
        webhook_url=fields["w"],
        runner_hint=fields["r"],
        attempts=attempts,
        owner=_owner(fields),
    )


def _owner(fields: dict[str, Any]) -> str | None:
    """A job's ``o``; a job stored before owners were has none, its caller header names it."""
    owner: str | None = fields.get("o")
    return owner if owner is not None else _legacy_caller(fields["h"])


LEGACY_CALLER_HEADER = "x-kubefal-caller"
"""The header in which gateways before `queueing.Job.owner` stored the submitter's key id."""


def stored_caller(meta: bytes) -> str | None:
    """The submitter's key id of a job stored before `queueing.Job.owner` existed (from the
    caller header in its meta), None if it has none (submitted without a key)."""
    fields: dict[str, Any] = orjson.loads(meta)
    return _legacy_caller(fields["h"])


def _legacy_caller(headers: list[list[str]]) -> str | None:
    for name, value in headers:
        if name == LEGACY_CALLER_HEADER:
            return str(value)
    return None


def encode_result_meta(result: queueing.Result) -> bytes:
    """Everything of ``result`` except its body."""
    return orjson.dumps(
        {
            "s": result.status_code,
            "h": result.headers,
            "o": result.outcome.value,
            "e": result.error,
            "t": result.error_type,
            "m": dict(result.metrics),
            "c": result.completed_at,
        }
    )


def decode_result(meta: bytes, body: bytes) -> queueing.Result:
    fields: dict[str, Any] = orjson.loads(meta)
    return queueing.Result(
        status_code=fields["s"],
        headers=_headers(fields["h"]),
        body=body,
        outcome=_OUTCOMES[fields["o"]],
        error=fields["e"],
        error_type=fields["t"],
        metrics=fields["m"],
        completed_at=fields["c"],
    )


def encode_log_line(line: queueing.LogLine) -> bytes:
    return orjson.dumps([line.message, line.level, line.source, line.timestamp])


def decode_log_line(blob: bytes) -> queueing.LogLine:
    message, level, source, timestamp = orjson.loads(blob)
    return queueing.LogLine(message=message, level=level, source=source, timestamp=timestamp)


def _headers(pairs: list[list[str]]) -> queueing.Headers:
    return typing.cast(queueing.Headers, tuple(map(tuple, pairs)))
