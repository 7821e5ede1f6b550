"""A runner pod of the FalApp team-a/demo as the API returns it, for the control plane's pure
tests (runner states, presence, leases): started 2026-12-05 11:00 UTC on node cpu-0."""

from __future__ import annotations

from typing import Any

from kubefal_api import naming


def runner_pod(
    *,
    node: str | None = "cpu-0",
    phase: str = "Running",
    ready: bool = True,
    deleting: bool = False,
    waiting: str | None = None,
) -> dict[str, Any]:
    """``deleting``: a deletionTimestamp is set; ``waiting``: the container waits with that
    reason (ImagePullBackOff, CrashLoopBackOff, ...)."""
    meta: dict[str, Any] = {
        "name": "demo-abc",
        "namespace": "team-a",
        "labels": naming.child_labels("demo"),
        "creationTimestamp": "2026-12-05T11:00:00Z",
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-12-05T11:59:00Z"
    status: dict[str, Any] = {
        "phase": phase,
        "startTime": "2026-12-05T11:00:00Z",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if waiting:
        status["containerStatuses"] = [{"state": {"waiting": {"reason": waiting}}}]
    return {"metadata": meta, "spec": {"nodeName": node}, "status": status}
