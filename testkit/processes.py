"""Whether a process still runs, for harnesses that hold pids across processes (claim files).

The local control plane, the real node and the pod-range claims record the pid of whoever holds
a resource; a claim whose holder is gone is taken over. A zombie (exited, not yet reaped by its
parent) counts as gone, and so do pids 0 and below (``kill(0, 0)`` would signal our own process
group and always succeed).
"""

from __future__ import annotations

import contextlib
import os
import pathlib


def alive(pid: int) -> bool:
    """True while ``pid`` runs."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    return True
