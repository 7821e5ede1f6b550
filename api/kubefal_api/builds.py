"""What the clients of an in-cluster image build (``spec.containerImage``) know about it.

The operator builds the image in a Job; ``kubefal deploy`` (``kubefal_cli``) and ``fal deploy``
through the control plane (``kubefal_controlplane``) both wait for the Job's pod and follow its
log as the build log. Components may not import each other (.importlinter), so the one rule for
when that log can be read, and how long to wait for it, is here, in the shared leaf.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

BUILD_POD_WAIT_SECONDS: Final = 300.0
"""How long a deploy waits for a build Job's pod to start before it stops waiting for its log
(the first pull of the builder image takes a while)."""


def log_readable(pod: Mapping[str, Any]) -> bool:
    """A build pod's container runs or ran (a pod as a dict): its log can be read."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        state = status.get("state") or {}
        if state.get("running") or state.get("terminated"):
            return True
    return False
