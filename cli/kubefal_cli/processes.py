"""Child processes of ``kubefal run``: start each in its own process group, stop them all.

Every child gets its own session (so a terminal's Ctrl-C reaches only ``kubefal``, which then
stops the children in order) and, on Linux, a parent-death signal, so even a ``kill -9`` of
``kubefal`` leaves nothing running. Output goes to a log file per child; the last lines are shown
when a child fails.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import dataclasses
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the parent dies (Linux only)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    libc = ctypes.CDLL(libc_name, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclasses.dataclass
class Child:
    """One supervised process and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: pathlib.Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        try:
            with self.log_path.open("r", encoding="utf-8", errors="replace") as file:
                return "".join(collections.deque(file, maxlen=lines))
        except OSError:
            return ""


def spawn(
    *,
    name: str,
    argv: Sequence[str],
    log_path: pathlib.Path,
    env: Mapping[str, str],
    cwd: pathlib.Path | None = None,
) -> Child:
    """Start ``argv`` in a new session with stdout and stderr going to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    return Child(name=name, process=process, log_path=log_path)


def _signal_group(child: Child, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signum)


def stop_all(children: Sequence[Child], *, grace_seconds: float) -> None:
    """SIGTERM every child's process group, wait up to ``grace_seconds``, then SIGKILL."""
    for child in children:
        _signal_group(child, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
    for child in children:
        # The group may outlive its leader (a grandchild); kill whatever is left.
        _signal_group(child, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(timeout=5)


class LogFollower:
    """Copies new lines of a child's log to a callback from a background thread."""

    def __init__(self, *, child: Child, emit: Callable[[str], None]) -> None:
        self._child = child
        self._emit = emit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"follow-{child.name}")
        self._offset = child.log_path.stat().st_size if child.log_path.exists() else 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _follow(self) -> None:
        with self._child.log_path.open("r", encoding="utf-8", errors="replace") as file:
            file.seek(self._offset)
            pending = ""
            while True:
                chunk = file.read()
                if chunk:
                    pending += chunk
                    *lines, pending = pending.split("\n")
                    for line in lines:
                        self._emit(line)
                elif self._stop.wait(0.2):
                    return
