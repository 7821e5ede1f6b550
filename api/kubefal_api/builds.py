"""What the clients of an in-cluster image build (``spec.containerImage``) know about it.

The operator builds the image in a Job; ``kubefal deploy`` (``kubefal_cli``) and ``fal deploy``
through the control plane (``kubefal_controlplane``) both wait for the Job's pod and follow its
log as the build log, and both read the FalApp's ``status.build`` the same way. Components may
not import each other (.importlinter), so those rules are here, in the shared leaf.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Final

BUILD_POD_WAIT_SECONDS: Final = 300.0
"""How long a deploy waits for a build Job's pod to start before it stops waiting for its log
(the first pull of the builder image takes a while)."""


@dataclasses.dataclass(frozen=True)
class Build:
    """A FalApp's ``status.build``, as a deploy waiting for it reads it."""

    phase: str
    """A `kubefal_api.v1alpha1.BuildPhase` value (Building, Built, Cached, Failed)."""
    job: str
    """The build Job's name ("" when none ran)."""
    message: str
    image: str | None


def build_of(status: Mapping[str, Any], generation: int) -> Build | None:
    """``status.build`` once it is about ``generation`` (or a newer one); None while the
    operator has not looked at that generation's image, or when the app builds none."""
    build = status.get("build") or {}
    if not build or int(build.get("observedGeneration") or 0) < generation:
        return None
    image = build.get("image")
    return Build(
        phase=str(build.get("phase") or ""),
        job=str(build.get("job") or ""),
        message=str(build.get("message", "")),
        image=None if image is None else str(image),
    )


def log_readable(pod: Mapping[str, Any]) -> bool:
    """A build pod's container runs or ran (a pod as a dict): its log can be read."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        state = status.get("state") or {}
        if state.get("running") or state.get("terminated"):
            return True
    return False
