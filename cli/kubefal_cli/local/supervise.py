"""Supervision and output of a ``kubefal run`` once its processes are started: waiting until
each is ready (with a progress line), stopping on SIGINT or SIGTERM, following the runner's log,
replacing a runner the control plane stopped (as a Deployment replaces a deleted pod), and
ending the run with a process's log tail when any other one dies.

Why a module of its own: it is the long-running part of the command, with its own failure modes
(:class:`StopRequested`, a child that exits), apart from the plan that starts the processes.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import threading
import time
import types
from collections.abc import Iterator, Sequence

import httpx
import rich.markup
import rich.progress

from kubefal_api import localrun
from kubefal_cli import errors, processes, ui
from kubefal_cli.local.plan import LocalRun

READY_POLL_SECONDS = 0.25
_INTERNAL_PATH = " /_kubefal/"


class StopRequested(Exception):
    """SIGINT or SIGTERM arrived."""


def _is_ready(client: httpx.Client, url: str) -> bool:
    if url.startswith("tcp://"):
        host, _, port = url.removeprefix("tcp://").rpartition(":")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(2.0)
            return probe.connect_ex((host, int(port))) == 0
    try:
        return client.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def _failure(child: processes.Child, *, what: str, hint: str) -> errors.CliError:
    return errors.CliError(
        f"the {child.name} {what}",
        hint=f"{hint} (full log: {child.log_path})",
        details=f"last lines of the {child.name} log:\n{child.log_tail()}",
    )


def wait_until_ready(
    *,
    checks: Sequence[tuple[processes.Child, str, str]],
    timeout_seconds: float,
    stop: threading.Event,
) -> None:
    """Poll each ``(child, ready_url, description)`` with a progress line until all are ready."""
    deadline = time.monotonic() + timeout_seconds
    with (
        httpx.Client(timeout=httpx.Timeout(2.0), trust_env=False) as client,
        rich.progress.Progress(
            rich.progress.SpinnerColumn(finished_text="[green]✓"),
            rich.progress.TextColumn("{task.description}"),
            rich.progress.TimeElapsedColumn(),
            console=ui.stderr,
            transient=False,
        ) as progress,
    ):
        pending = {
            child.name: (child, url, progress.add_task(description, total=1))
            for child, url, description in checks
        }
        while pending:
            for name, (child, url, task) in list(pending.items()):
                if not child.running():
                    raise _failure(
                        child,
                        what=f"exited with code {child.process.returncode} before it was ready",
                        hint="fix the error in the log above and run again",
                    )
                if _is_ready(client, url):
                    progress.update(task, completed=1)
                    del pending[name]
            if pending and time.monotonic() > deadline:
                child = next(iter(pending.values()))[0]
                raise _failure(
                    child,
                    what=f"was not ready after {timeout_seconds:.0f} s",
                    hint="if setup() is slow (model downloads), pass a larger --timeout",
                )
            if stop.wait(READY_POLL_SECONDS):
                raise StopRequested


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop``; the main loop notices and shuts down in order."""

    def request_stop(signum: int, frame: types.FrameType | None) -> None:
        stop.set()

    previous = {
        signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def readable_log_line(line: str) -> str | None:
    """A runner log line as a person wants it: None for the access log of the gateway's probes
    and log polls, ``[LEVEL] message`` for the structured lines of the app's own output."""
    if _INTERNAL_PATH in line:
        return None
    if line.startswith("{"):
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and "message" in record:
                return f"[{record.get('level', 'INFO')}] {record['message']}"
    return line


def _show_app_log_line(line: str) -> None:
    readable = readable_log_line(line)
    if readable is not None:
        ui.stderr.print(rich.markup.escape(readable), soft_wrap=True, style="dim")


def _watch(plan: LocalRun, children: list[processes.Child], stop: threading.Event) -> None:
    """Until ``stop``: a runner the control plane stopped is replaced (on the same port, so
    the gateway's probe finds it); any other exit ends the run with that process's log."""
    while not stop.wait(READY_POLL_SECONDS):
        for index, child in enumerate(children):
            if child.running():
                continue
            if child.name == "runner" and plan.restart_requested(child):
                children[index] = plan.spawn_runner()
                with contextlib.suppress(OSError):
                    (plan.run_dir / localrun.RUNNER_RESTART).unlink()
                ui.note(f"Runner {child.pid} was stopped; started {children[index].pid}.")
                continue
            raise _failure(
                child,
                what=f"exited unexpectedly with code {child.process.returncode}",
                hint="fix the error in the log above and run again",
            )


def serve_until_stopped(
    *,
    plan: LocalRun,
    children: list[processes.Child],
    runner: processes.Child,
    stop: threading.Event,
    follow_logs: bool,
) -> None:
    """Follow the runner's log until a signal arrives; a child that dies ends it with an error."""
    follower = processes.LogFollower(child=runner, emit=_show_app_log_line)
    if follow_logs:
        follower.start()
    try:
        _watch(plan, children, stop)
    finally:
        if follow_logs:
            follower.stop()
