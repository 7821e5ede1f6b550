"""When the operator writes a Deployment's ``spec.replicas``, and to what.

Replicas belong to the app's scaler (``spec.scaler``): re-rendering them on every reconcile
would undo its work and, with GitOps, make every sync scale the app. The rule:

1. ``keda`` and ``hpa``: KEDA's or the HPA controller's. The operator writes them only when
   it creates the Deployment (``minConcurrency``) and when they are outside the bounds
   (an HPA never acts on a Deployment at zero, so switching an idle app to ``hpa`` must
   raise it to ``minConcurrency``).
2. ``builtin`` with a signal from the gateway: the gateway's desired runner count, clamped
   into ``[minConcurrency, maxConcurrency]`` (the gateway clamps too, but the FalApp's
   bounds are the contract and are never taken on trust).
3. ``builtin`` without a signal: no Deployment yet gives ``minConcurrency``; replicas outside
   the bounds are clamped (how a bounds edit takes effect); when no actuator runs (the
   operator has no gateway URL) and no one but the operator ever set replicas, they follow
   ``minConcurrency``. With an actuator that has not heard of the app yet, they are left
   alone: an operator restart must not scale busy runners down before the gateway speaks.
4. Otherwise: left alone (returns None).

A builtin-scaled Deployment is created in one apply that carries replicas, so the main
field manager owns them, and every later main apply carries the live count (leaving out a
field a manager owns makes server-side apply drop it). Every other replicas write goes
through its own field manager (``kube.REPLICAS_FIELD_MANAGER``), which takes the field
over; from then on the main apply leaves replicas out. A Deployment of another scaler gets
its replicas from that manager from the start.

:func:`scale_event` words the Event posted for each change the builtin actuator makes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from kubefal_api import v1alpha1
from kubefal_operator import signals


def replicas_owners(deployment: Mapping[str, Any]) -> set[str]:
    """Field managers that own ``spec.replicas`` (from ``metadata.managedFields``)."""
    owners: set[str] = set()
    for entry in deployment.get("metadata", {}).get("managedFields") or []:
        fields = entry.get("fieldsV1") or {}
        if "f:replicas" in (fields.get("f:spec") or {}):
            owners.add(str(entry.get("manager", "")))
    return owners


def scaled_by_others(deployment: Mapping[str, Any], *, own_managers: Collection[str]) -> bool:
    """True when a manager other than the operator's own set ``spec.replicas``."""
    return bool(replicas_owners(deployment) - set(own_managers))


def clamp(count: int, *, spec: v1alpha1.FalAppSpec) -> int:
    """``count`` within the app's ``[minConcurrency, maxConcurrency]``."""
    scaling = spec.scaling
    return min(max(count, scaling.min_concurrency), scaling.max_concurrency)


def desired_replicas(
    spec: v1alpha1.FalAppSpec,
    *,
    live: Mapping[str, Any] | None,
    own_managers: Collection[str],
    signalled: int | None = None,
    actuated: bool = False,
) -> int | None:
    """The replicas to write now, or None to leave them to the scaler.

    ``signalled`` is the gateway's desired runner count for the app when known;
    ``actuated`` says the builtin actuator runs (the operator follows a gateway).
    """
    low = spec.scaling.min_concurrency
    builtin = spec.scaler is v1alpha1.Scaler.BUILTIN
    if live is None:
        return clamp(signalled, spec=spec) if builtin and signalled is not None else low
    current = int(live.get("spec", {}).get("replicas", 1))
    if not builtin:
        return clamp(current, spec=spec) if clamp(current, spec=spec) != current else None
    if signalled is not None:
        target = clamp(signalled, spec=spec)
        return target if target != current else None
    clamped = clamp(current, spec=spec)
    if clamped != current:
        return clamped
    if actuated:
        return None
    if not scaled_by_others(live, own_managers=own_managers) and current != low:
        return low
    return None


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def scale_event(
    *,
    before: int,
    after: int,
    spec: v1alpha1.FalAppSpec,
    signal: signals.ScalingSignal | None,
) -> tuple[str, str]:
    """Reason and message of the Event for a replicas change ``before`` → ``after``."""
    scaling = spec.scaling
    reason = "ScaledUp" if after > before else "ScaledDown"
    why: list[str] = []
    if signal is None:
        why.append(f"bounds {scaling.min_concurrency}..{scaling.max_concurrency}")
    elif after > before:
        demand = []
        if signal.queued:
            demand.append(f"{_plural(signal.queued, 'queued request')}")
        if signal.in_flight:
            demand.append(f"{signal.in_flight} in flight")
        why.append(", ".join(demand) if demand else "buffer runners")
        if signal.desired_runners > after == scaling.max_concurrency:
            why.append(f"capped at maxConcurrency {scaling.max_concurrency}")
        elif after == scaling.min_concurrency and signal.desired_runners < after:
            why.append(f"minConcurrency {scaling.min_concurrency}")
    else:
        if signal.desired_runners < after == scaling.min_concurrency:
            why.append(f"kept at minConcurrency {scaling.min_concurrency}")
        elif after == scaling.max_concurrency and signal.desired_runners > after:
            why.append(f"maxConcurrency lowered to {scaling.max_concurrency}")
        else:
            why.append(f"idle for keepAlive {scaling.keep_alive}s")
        why.append(
            f"{_plural(signal.queued, 'queued request')}, {signal.in_flight} in flight, "
            f"{signal.idle_runners} idle"
        )
    return reason, f"{before} → {after} runners: " + "; ".join(why)
