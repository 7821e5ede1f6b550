"""testkit.processes against real processes: alive (running, zombie, reaped, pid 0) and stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from testkit import processes, waiting


def test_a_running_process_is_alive_and_a_zombie_or_reaped_one_is_not() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=-1)
    try:
        assert processes.alive(os.getpid())
        assert processes.alive(child.pid)
        assert child.stdin is not None
        child.stdin.close()  # the child exits; unreaped, it is a zombie
        waiting.wait_for(
            lambda: not processes.alive(child.pid), timeout=30, description="the zombie gone"
        )
    finally:
        child.wait(timeout=30)
    assert not processes.alive(child.pid)


def test_pid_zero_is_not_a_live_holder() -> None:
    """An empty claim file reads as pid 0; kill(0, 0) signals our own group and succeeds."""
    assert not processes.alive(0)
    assert not processes.alive(-1)


def test_stop_ends_a_child_with_sigterm_and_kills_one_that_ignores_it() -> None:
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            " print('ignoring', flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ignoring\n"
        processes.stop(polite)
        processes.stop(stubborn, timeout=1.0)
    finally:
        for child in (polite, stubborn):
            if child.poll() is None:
                child.kill()
                child.wait(timeout=30)
    assert polite.returncode == -signal.SIGTERM
    assert stubborn.returncode == -signal.SIGKILL
