"""Whether a process still runs, for harnesses that hold pids across processes (claim files).

The local control plane, the real node and the pod-range claims record the pid of whoever holds
a resource; a claim whose holder is gone is taken over. The check is the one ``kubefal run``'s
files use (`kubefal_api.localrun.process_alive`): a zombie counts as gone, and so do pids 0 and
below.
"""

from __future__ import annotations

from kubefal_api import localrun


def alive(pid: int) -> bool:
    """True while ``pid`` runs."""
    return localrun.process_alive(pid)
