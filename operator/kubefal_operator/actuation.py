"""The builtin actuator's action: on each coalesced scaling signal of the gateway
(``actuator.Actuator`` follows the stream), mark which runners a scale-down removes, set
replicas, post a ScaledUp/ScaledDown Event and write the status.

Why a module of its own: this is the one path where the gateway, not the FalApp, drives a
change; it shares the per-app lock and the status writer with `reconcile`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from kubefal_api import naming, v1alpha1
from kubefal_operator import actuator as builtin_actuator
from kubefal_operator import (
    kube,
    livestate,
    reconcile,
    runtime,
    signals,
)
from kubefal_operator.render import replicas, scaledown

logger = logging.getLogger(__name__)


def start_actuator(op: runtime.Operator, *, indexes: livestate.Indexes) -> None:
    """Follow the gateway's scaling stream (when configured) for the operator's lifetime."""
    admin_url = op.config.gateway_admin_url
    if not admin_url:
        return

    async def on_signal(signal: signals.ScalingSignal) -> None:
        try:
            await actuate(op, signal=signal, indexes=indexes)
        except runtime.ReconcileError as error:
            if error.retry:
                raise  # the coalescer tries again unless a newer signal came
            logger.warning("scaling %s/%s: %s", signal.namespace, signal.name, error)

    op.actuator = builtin_actuator.Actuator(
        admin_url=admin_url,
        on_signal=on_signal,
        instruments=op.instruments,
        interval=op.config.actuator_interval_seconds,
        admin_token=op.config.gateway_admin_token,
    )
    op.actuator.start()


async def actuate(
    op: runtime.Operator, *, signal: signals.ScalingSignal, indexes: livestate.Indexes
) -> None:
    """Act on the gateway's latest signal for one app: replicas (builtin scaler only, and
    the idle runners marked to go first before a scale-down), an Event, the status."""
    key = signal.key
    body = indexes.app(key)
    if body is None:
        # Not an app this operator serves, or not known yet: its create may read it
        # (bounded, and never by an app created after it arrived: runtime.UnclaimedSignals).
        op.unclaimed_signals.put(signal)
        return
    try:
        await _prepare_scale_down(op, body=body, signal=signal, indexes=indexes)
    except (kube.ApiError, aiohttp.ClientError, TimeoutError) as error:
        raise runtime.classify(error, doing="marking runners for a scale-down") from error
    async with op.lock(key):
        body = indexes.app(key)  # the newest spec (bounds), read under the lock
        if body is None:
            return  # deleted meanwhile
        op.unclaimed_signals.drop(key)
        live = op.freshen(indexes.live(key), key=key)
        app = runtime.parse_app(body)
        try:
            live = await _scale(op, app=app, body=body, live=live, signal=signal)
            # Only now, under the lock, does the reconcile see this count: a drift check
            # must never apply a signal the actuator has not (it would scale down before
            # the runners are marked, and report the actuator's write as 'Restored').
            op.scaling_signals[key] = (str(app.metadata.uid or ""), signal)
            await reconcile.rewrite_status(op, app=app, body=body, live=live, key=key)
        except (kube.ApiError, aiohttp.ClientError, TimeoutError) as error:
            if isinstance(error, kube.ApiError) and error.namespace_terminating:
                return
            raise runtime.classify(error, doing="scaling") from error


async def _scale(
    op: runtime.Operator,
    *,
    app: v1alpha1.FalApp,
    body: Mapping[str, Any],
    live: livestate.LiveState,
    signal: signals.ScalingSignal,
) -> livestate.LiveState:
    deployment = live.deployment
    if deployment is None or not op.config.actuated:
        return live
    target = replicas.desired_replicas(
        app.spec,
        live=deployment,
        own_managers=reconcile.OWN_MANAGERS,
        signalled=signal.desired_runners,
        actuated=True,
    )
    if target is None:
        return live
    before = int(deployment.get("spec", {}).get("replicas", 0))
    if target < before:
        await _mark_deletion_costs(op, pods=live.pods, signal=signal)
    applied, changed = await reconcile.apply(
        op, reconcile.replicas_patch(deployment, target), field_manager=kube.REPLICAS_FIELD_MANAGER
    )
    if changed:
        reason, message = replicas.scale_event(
            before=before, after=target, spec=app.spec, signal=signal
        )
        op.instruments.replica_changes.labels(direction=reason).inc()
        logger.info("%s/%s %s: %s", signal.namespace, signal.name, reason, message)
        await op.kube.post_event(
            involved=body, event_type="Normal", reason=reason, message=message, now=runtime.now()
        )
    return live.replace("Deployment", applied)


COSTS_VISIBLE_TIMEOUT_SECONDS = 2.0
"""How long a scale-down waits for the operator's own pod watch to show the new deletion
costs (a proxy for the ReplicaSet controller's informer, which must see them first)."""


async def _prepare_scale_down(
    op: runtime.Operator,
    *,
    body: Mapping[str, Any],
    signal: signals.ScalingSignal,
    indexes: livestate.Indexes,
) -> None:
    """Before replicas go down, annotate the runners' deletion costs and wait (bounded) until
    the pod watch shows them: the ReplicaSet controller ranks pods from its own watch cache,
    and a cost it has not seen yet cannot protect a busy runner.

    Runs outside the app's lock: pod events wait on that lock, and kopf feeds an object's
    events to its index one at a time, so waiting under the lock could only time out."""
    if not op.config.actuated:
        return
    key = signal.key
    live = op.freshen(indexes.live(key), key=key)
    deployment = live.deployment
    if deployment is None:
        return
    target = replicas.desired_replicas(
        runtime.parse_app(body).spec,
        live=deployment,
        own_managers=reconcile.OWN_MANAGERS,
        signalled=signal.desired_runners,
        actuated=True,
    )
    if target is None or target >= int(deployment.get("spec", {}).get("replicas", 0)):
        return
    written = await _mark_deletion_costs(op, pods=live.pods, signal=signal)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + COSTS_VISIBLE_TIMEOUT_SECONDS
    while written and not scaledown.costs_visible(indexes.live(key).pods, costs=written):
        if loop.time() >= deadline:
            logger.warning(
                "%s/%s: the pod watch does not show the new deletion costs yet; scaling down",
                *key,
            )
            return
        await asyncio.sleep(0.02)


async def _mark_deletion_costs(
    op: runtime.Operator, *, pods: Sequence[Mapping[str, Any]], signal: signals.ScalingSignal
) -> dict[str, str]:
    """Annotate runners with their deletion cost (idle lowest) before replicas go down;
    returns the costs written, by pod name."""
    changes = scaledown.annotations_to_write(pods, signal=signal)
    if not changes:
        return changes

    async def annotate(pod_name: str, cost: str) -> None:
        await op.kube.annotate(
            kube.PODS,
            namespace=signal.namespace,
            name=pod_name,
            annotations={naming.ANNOTATION_POD_DELETION_COST: cost},
        )

    await asyncio.gather(*(annotate(name, cost) for name, cost in changes.items()))
    op.instruments.deletion_cost_writes.inc(len(changes))
    return changes
