"""Whether a process still runs, and stopping one, for the harnesses, tests and benches.

``alive`` serves harnesses that hold pids across processes (claim files): the local control
plane, the real node and the pod-range claims record the pid of whoever holds a resource; a
claim whose holder is gone is taken over. The check is the one ``kubefal run``'s files use
(`kubefal_api.localrun.process_alive`): a zombie counts as gone, and so do pids 0 and below.
``stop`` is the one way they end a child: SIGTERM, then SIGKILL if it does not go.
"""

from __future__ import annotations

import subprocess
from typing import Any

from kubefal_api import localrun


def alive(pid: int) -> bool:
    """True while ``pid`` runs."""
    return localrun.process_alive(pid)


def stop(process: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    """SIGTERM ``process`` and reap it; SIGKILL it if it is still running after ``timeout``."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)
