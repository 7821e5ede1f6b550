"""``fal runners logs``: a runner pod's log, as fal's logs REST API shapes it (pure functions).

fal's CLI reads a runner's log over REST, not gRPC (``fal/cli/runners.py``): ``POST
/logs/history?job_id=<runner>&since=&until=&page_size=&search=`` answers ``{"items": [...],
"next_until": <timestamp or null>}`` with the newest lines first, and the CLI pages backwards
by sending ``until=next_until`` until ``next_until`` is null; ``--follow`` reads ``POST
/logs/stream`` as server-sent events, one JSON line each. Each line is ``{"timestamp",
"level", "message", "source"}``; the CLI parses ``timestamp`` with ``datetime.fromisoformat``.

kubefal's runners are pods, so a runner's log is its runner container's log, read through
the Kubernetes API with ``timestamps=true`` (``<RFC 3339 nano> <line>``). This module parses
those lines and cuts pages; reading them is :mod:`kubefal_controlplane.rest`'s business.
Timestamps are kept at microseconds (what ``datetime`` and the CLI's cursor carry), so a page
boundary never falls inside a microsecond: a page is cut after the last line of its oldest
microsecond, however many lines share it.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping
from typing import Any

MAX_MESSAGE_CHARS = 64 * 1024
"""A longer log line is cut (the rest is dropped, marked with an ellipsis)."""
MAX_LINE_BYTES = MAX_MESSAGE_CHARS * 4
"""A log streamed without a newline for this many bytes (a line of MAX_MESSAGE_CHARS
characters of up to four UTF-8 bytes each) is passed on in pieces of about this size."""
MAX_PAGE_SIZE = 10_000
MAX_SEARCH_CHARS = 1000


class BadQuery(ValueError):
    """A query parameter the caller sent is malformed; the message names it."""


@dataclasses.dataclass(frozen=True)
class Line:
    at: datetime.datetime
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "timestamp": self.at.isoformat(),
            "level": "INFO",
            "message": self.message,
            "source": "USER",
        }


def parse_time(raw: str, *, field: str) -> datetime.datetime:
    """An ISO 8601 / RFC 3339 time (``Z`` or an offset; naive means UTC), at microseconds."""
    text = raw.strip()
    if not text or len(text) > 64:
        raise BadQuery(f"{field}: expected an ISO 8601 time, e.g. 2026-01-31T12:00:00Z")
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    date, sep, rest = text.partition("T")
    if sep and "." in rest:
        # RFC 3339 nano (Kubernetes): datetime takes at most six fraction digits.
        clock, _, tail = rest.partition(".")
        digits = len(tail) - len(tail.lstrip("0123456789"))
        if digits > 6:
            rest = f"{clock}.{tail[:6]}{tail[digits:]}"
        text = f"{date}T{rest}"
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise BadQuery(f"{field}: expected an ISO 8601 time, e.g. 2026-01-31T12:00:00Z") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    try:
        return parsed.astimezone(datetime.UTC)
    except OverflowError:  # year 1 or 9999 with an offset that leaves datetime's range
        raise BadQuery(f"{field}: the time is out of range") from None


def parse_page_size(raw: str | None, default: int) -> int:
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 6:
        raise BadQuery(f"page_size: expected an integer 1-{MAX_PAGE_SIZE}")
    value = int(raw)
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise BadQuery(f"page_size: expected an integer 1-{MAX_PAGE_SIZE}")
    return value


def parse_search(raw: str | None) -> str | None:
    if raw is None or raw == "":
        return None
    if len(raw) > MAX_SEARCH_CHARS:
        raise BadQuery(f"search: at most {MAX_SEARCH_CHARS} characters")
    return raw


def parse_line(raw: str) -> Line | None:
    """``<timestamp> <message>`` as Kubernetes writes it with ``timestamps=true``; a line
    without a readable timestamp (a cut first line of a byte-limited read) is skipped."""
    stamp, _, message = raw.partition(" ")
    try:
        at = parse_time(stamp, field="timestamp")
    except BadQuery:
        return None
    message = message.rstrip("\r")
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "…"
    return Line(at=at, message=message)


def split_lines(pending: bytes) -> tuple[list[bytes], bytes]:
    """The complete lines of a log stream's unread bytes, and the rest to keep for the next
    chunk; a rest over :data:`MAX_LINE_BYTES` is passed on as a line of its own, so a log
    that never ends its line (a runner's or a build's: the tenant's output) cannot grow the
    reader's buffer without bound."""
    *complete, rest = pending.split(b"\n")
    if len(rest) > MAX_LINE_BYTES:
        complete.append(rest)
        rest = b""
    return complete, rest


def parse_lines(text: str) -> list[Line]:
    return [line for raw in text.split("\n") if raw and (line := parse_line(raw)) is not None]


def selected(
    lines: Iterable[Line],
    *,
    since: datetime.datetime | None,
    until: datetime.datetime | None,
    search: str | None,
) -> list[Line]:
    """Lines with ``since <= at < until`` containing ``search``, oldest first."""
    return [
        line
        for line in lines
        if (since is None or line.at >= since)
        and (until is None or line.at < until)
        and (search is None or search in line.message)
    ]


def page(lines: list[Line], page_size: int) -> dict[str, Any]:
    """The newest ``page_size`` of ``lines`` (oldest first in, newest first out) and the
    cursor to the rest. The page is extended to the whole of its oldest microsecond, so that
    ``until=next_until`` (exclusive) loses no line."""
    newest_first = sorted(lines, key=lambda line: line.at, reverse=True)
    if len(newest_first) <= page_size:
        return {"items": [line.to_json() for line in newest_first], "next_until": None}
    cut = page_size
    oldest = newest_first[cut - 1].at
    while cut < len(newest_first) and newest_first[cut].at == oldest:
        cut += 1
    chosen = newest_first[:cut]
    more = cut < len(newest_first)
    return {
        "items": [line.to_json() for line in chosen],
        "next_until": oldest.isoformat() if more else None,
    }


def runner_times(pod: Mapping[str, Any], container: str) -> dict[str, Any]:
    """``GET /runners/<id>``: when the runner (its container) started and, once it is gone or
    going, when it ended; the CLI clamps its log window to them."""
    status = pod.get("status") or {}
    meta = pod.get("metadata") or {}
    started: str | None = status.get("startTime")
    ended: str | None = None
    for state in status.get("containerStatuses") or []:
        if state.get("name") != container:
            continue
        running = (state.get("state") or {}).get("running") or {}
        terminated = (state.get("state") or {}).get("terminated") or {}
        started = running.get("startedAt") or terminated.get("startedAt") or started
        ended = terminated.get("finishedAt")
    phase = status.get("phase")
    return {
        "runner_id": meta.get("name"),
        "namespace": meta.get("namespace"),
        "phase": phase,
        "started_at": _iso(started),
        "ended_at": _iso(ended) if phase in ("Succeeded", "Failed") else None,
    }


def _iso(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_time(value, field="time").isoformat()
    except BadQuery:
        return None
