"""testkit.processes.alive against real processes: running, zombie, reaped, and pid 0."""

from __future__ import annotations

import os
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
