"""When the operator writes a Deployment's ``spec.replicas``, and to what.

The scaler owns replicas (the builtin one later, or KEDA/HPA): re-rendering them on every
reconcile would undo its work and, with GitOps, make every sync scale the app. The rule:

1. No Deployment yet: ``minConcurrency`` (the scaler raises it from there).
2. Replicas outside ``[minConcurrency, maxConcurrency]``: clamped into the bounds (the
   FalApp's bounds win over any scaler; this is how a bounds edit takes effect).
3. No one but the operator ever set replicas (no scaler acted yet): they follow
   ``minConcurrency``.
4. Otherwise: left alone (returns None).

Replicas are written by their own field manager (``kube.REPLICAS_FIELD_MANAGER``), never in
the main apply, so omitting them there does not make server-side apply drop the field.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from kubefal_api import v1alpha1


def replicas_owners(deployment: Mapping[str, Any]) -> set[str]:
    """Field managers that own ``spec.replicas`` (from ``metadata.managedFields``)."""
    owners: set[str] = set()
    for entry in deployment.get("metadata", {}).get("managedFields") or []:
        fields = entry.get("fieldsV1") or {}
        if "f:replicas" in (fields.get("f:spec") or {}):
            owners.add(str(entry.get("manager", "")))
    return owners


def desired_replicas(
    spec: v1alpha1.FalAppSpec,
    *,
    live: Mapping[str, Any] | None,
    own_managers: Collection[str],
) -> int | None:
    """The replicas to write now, or None to leave them to the scaler."""
    low, high = spec.scaling.min_concurrency, spec.scaling.max_concurrency
    if live is None:
        return low
    current = int(live.get("spec", {}).get("replicas", 1))
    clamped = min(max(current, low), high)
    if clamped != current:
        return clamped
    scaled_by_others = replicas_owners(live) - set(own_managers)
    if not scaled_by_others and current != low:
        return low
    return None
