"""The runner log of a ``kubefal run`` as ``fal runners logs`` reads it: timestamped lines.

Why it exists apart from :mod:`kubefal_controlplane.local`: the runner process writes plain
lines to ``runner.log`` (JSON lines with a ``timestamp``, Python log lines with an
``asctime``, anything else); the Kubernetes API hands ``pods/log`` lines prefixed with an
RFC 3339 time. :class:`LogStamper` gives every line a time the way the kubelet would, and
:class:`LogTail` follows the file like ``pods/log?follow=true`` until the process exits.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import time
from collections.abc import Iterator

from kubefal_api import localrun
from kubefal_controlplane import runner_logs

_ASCTIME = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}),(\d{3}) ")
FOLLOW_POLL_SECONDS = 0.2


def timestamp(text: str) -> datetime.datetime:
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.datetime.now(tz=datetime.UTC)


def rfc3339(at: datetime.datetime) -> str:
    return at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LogStamper:
    """The time of each runner log line: the one it carries (the runner's JSON lines have a
    ``timestamp``, its Python log lines start with a local ``asctime``), else the previous
    line's (the first: when the process started)."""

    def __init__(self, start: datetime.datetime) -> None:
        self.last = start

    def time_of(self, line: str) -> datetime.datetime | None:
        if line.startswith("{"):
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                value = json.loads(line).get("timestamp")
                if isinstance(value, str):
                    at = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
                    return at if at.tzinfo else at.replace(tzinfo=datetime.UTC)
        match = _ASCTIME.match(line)
        if match is not None:
            with contextlib.suppress(ValueError):
                local = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")
                at = local.replace(microsecond=int(match.group(2)) * 1000).astimezone()
                return at.astimezone(datetime.UTC)
        return None

    def stamp(self, lines: list[str]) -> list[tuple[datetime.datetime, str]]:
        stamped = []
        for line in lines:
            self.last = max(self.last, self.time_of(line) or self.last)
            stamped.append((self.last, line))
        return stamped


class LogTail:
    """``.stream()`` over a runner's log file: the history, then lines as they are written
    (time-less ones stamped when read), until the runner exits. Yields an empty chunk every
    poll, so the reader can stop between chunks."""

    def __init__(self, runner: localrun.RunnerProcess, history: bytes) -> None:
        self.runner = runner
        self.history = history

    def stream(self, amount: int, decode_content: bool = True) -> Iterator[bytes]:
        yield self.history
        try:
            file = open(self.runner.log, "rb")  # noqa: SIM115 - closed below
        except OSError:
            return
        with file:
            file.seek(0, os.SEEK_END)
            pending = b""
            while True:
                chunk = file.read(amount)
                if chunk:
                    complete, pending = runner_logs.split_lines(pending + chunk)
                    now = datetime.datetime.now(tz=datetime.UTC)
                    stamper = LogStamper(now)
                    yield b"".join(
                        f"{rfc3339(at)} {line}\n".encode()
                        for at, line in stamper.stamp(
                            [raw.decode("utf-8", "replace") for raw in complete if raw]
                        )
                    )
                    continue
                if not localrun.process_alive(self.runner.pid):
                    return
                time.sleep(FOLLOW_POLL_SECONDS)
                yield b""

    def close(self) -> None:
        """Nothing held between reads."""

    def shutdown(self) -> None:
        """Nothing to interrupt: :meth:`stream` yields at every poll, so its reader can stop."""

    def release_conn(self) -> None:
        """As the Kubernetes client's response has it."""
