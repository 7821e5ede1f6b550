"""Level-based reconciliation of FalApps: render, compare with the live children, apply.

Every trigger (`triggers`: a FalApp edge, a child event, a runner pod event, a catalogue change)
ends in one of two functions, and the builtin actuator (`actuation`) in the status writer:

* `reconcile_app` renders every child, applies only those that are missing or drifted (a local
  comparison, so an unchanged app costs no API call), deletes children it no longer wants, sets
  replicas by the rule of ``render.replicas``, posts an Event saying what it did, and writes
  the status;
* `refresh_status` recomputes the status from the Deployment and pods and writes it when it
  changed (`write_status`, shared with the actuator).

Both hold a per-app lock (`runtime.Operator.lock`), so events for one app never interleave. The
live objects come from the in-memory stores of ``cache`` (passed in as plain mappings, see
`livestate.Indexes`), not from API reads. Errors surface as `runtime.ReconcileError` with
``retry`` telling the caller whether trying again can help.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

import aiohttp

from kubefal_api import conditions, machines, v1alpha1
from kubefal_operator import build, kube, livestate, metrics, runtime, status
from kubefal_operator.render import children as render_children
from kubefal_operator.render import drift, replicas, scalers

logger = logging.getLogger(__name__)


OWN_MANAGERS = frozenset({kube.FIELD_MANAGER, kube.REPLICAS_FIELD_MANAGER})


EVENT_REASONS = {
    "FalApp": ("Applied", ""),
    "ConfigMap": ("CatalogueChanged", "the machine catalogue changed: "),
}
"""Event reason and message preamble by trigger; a child kind means drift was repaired."""


async def reconcile_app(
    op: runtime.Operator,
    *,
    body: Mapping[str, Any],
    live: livestate.LiveState,
    trigger: str = "FalApp",
    kinds: Collection[str] | None = None,
    seen: Mapping[str, Any] | None = None,
) -> None:
    """Bring the children of one FalApp (or only those of ``kinds``) in line with its spec,
    then write its status. ``seen`` is the child whose event triggered this call."""
    key = livestate.app_key(body)
    async with op.lock(key):
        if seen is not None:  # under the lock: our own apply responses are recorded first
            op.saw(seen)
        live = op.freshen(live, key=key)
        op.claim_signal(body)
        with op.instruments.reconciling(trigger) as result:
            app = runtime.parse_app(body)
            if app.spec.container_image is not None:
                built = await build.prepare(op.kube, op.config.build, app=app, body=body)
                if built is None:
                    return  # being built, or failed (status.build says which)
                app = built
            if op.runner_key_store is not None:
                try:
                    app = await op.runner_key_store.with_key(app)
                except (kube.ApiError, aiohttp.ClientError, TimeoutError) as error:
                    if isinstance(error, kube.ApiError) and error.namespace_terminating:
                        return
                    raise runtime.classify(error, doing="providing the runner's API key") from error
            try:
                rendered = render_children.children(
                    app, catalogue=op.catalogue.catalogue, settings=op.config.render
                )
            except machines.UnknownMachineTypeError as error:
                problem = status.Problem(
                    reason=conditions.Reason.UNKNOWN_MACHINE_TYPE, message=str(error)
                )
                await _report_problem(op, app=app, body=body, live=live, problem=problem)
                return
            try:
                done, live = await _apply_children(
                    op, app=app, rendered=rendered, live=live, kinds=kinds
                )
            except runtime.MissingApiError as missing:
                problem = status.Problem(
                    reason=conditions.Reason.RECONCILE_FAILED, message=str(missing)
                )
                await _report_problem(op, app=app, body=body, live=live, problem=problem)
                raise
            except (kube.ApiError, aiohttp.ClientError, TimeoutError) as error:
                if isinstance(error, kube.ApiError) and error.namespace_terminating:
                    logger.debug("%s/%s: namespace is being deleted, nothing to do", *key)
                    return
                failure = runtime.classify(error, doing="applying the children")
                if not failure.retry:
                    problem = status.Problem(
                        reason=conditions.Reason.RECONCILE_FAILED, message=str(failure)
                    )
                    await _report_problem(op, app=app, body=body, live=live, problem=problem)
                raise failure from error
            if done:
                result.append(metrics.RESULT_CHANGED)
                reason, preamble = EVENT_REASONS.get(trigger, ("Restored", "put back: "))
                await op.kube.post_event(
                    involved=body,
                    event_type="Normal",
                    reason=reason,
                    message=preamble + "; ".join(done),
                    now=runtime.now(),
                )
            if not done and kinds is not None and "Deployment" not in kinds:
                return  # the status reads only the Deployment and pods: nothing changed there
            try:
                await write_status(
                    op,
                    app=app,
                    body=body,
                    live=live,
                    observed_generation=app.metadata.generation,
                    problem=None,
                )
            except (kube.ApiError, aiohttp.ClientError, TimeoutError) as error:
                if isinstance(error, kube.ApiError) and error.namespace_terminating:
                    return
                raise runtime.classify(error, doing="writing the status") from error


async def _apply_children(
    op: runtime.Operator,
    *,
    app: v1alpha1.FalApp,
    rendered: render_children.Children,
    live: livestate.LiveState,
    kinds: Collection[str] | None,
) -> tuple[list[str], livestate.LiveState]:
    """Apply missing or drifted children, delete unwanted ones; returns what was done.

    ``kinds`` restricts the work to some kinds (a child event checks only that child: the
    indexes of the others may lag behind a create that is still in flight).
    """
    done: list[str] = []
    for manifest in rendered.wanted:
        kind = str(manifest["kind"])
        if kinds is not None and kind not in kinds:
            continue
        current = live.children.get(kind)
        if current is not None and not drift.drifted(manifest, current):
            continue
        if kind == "Deployment" and current is None:
            # Create with the replicas rule's start value. With the builtin scaler only the
            # operator writes replicas (under its lock), so the main manager keeps owning
            # them and every later main apply carries them (below): one write per create.
            # Another scaler takes replicas over, so they go to the replicas manager, and
            # the next main apply (which leaves them out) keeps them.
            count = replicas.desired_replicas(
                app.spec,
                live=None,
                own_managers=OWN_MANAGERS,
                signalled=signalled(op, app),
                actuated=op.config.actuated,
            )
            assert count is not None  # the rule always starts a new Deployment somewhere
            applied, changed = await apply(
                op, {**manifest, "spec": {**manifest["spec"], "replicas": count}}
            )
            if app.spec.scaler is not v1alpha1.Scaler.BUILTIN:
                applied, _ = await apply(
                    op,
                    replicas_patch(manifest, count),
                    field_manager=kube.REPLICAS_FIELD_MANAGER,
                )
            description = f"created Deployment {manifest['metadata']['name']} ({count} runner(s))"
        elif (
            kind == "Deployment"
            and current is not None
            and kube.FIELD_MANAGER in replicas.replicas_owners(current)
        ):
            # The main manager owns replicas (created them): leaving them out would make
            # server-side apply drop the field, so carry the live count.
            count = int(current.get("spec", {}).get("replicas", 0))
            applied, changed = await apply(
                op, {**manifest, "spec": {**manifest["spec"], "replicas": count}}
            )
            description = _describe_apply(manifest, current)
        else:
            try:
                applied, changed = await apply(op, manifest)
            except kube.ApiError as error:
                if error.status == 404 and kind in scalers.SCALER_KINDS_BY_KIND:
                    raise runtime.MissingApiError(
                        f"spec.scaler needs {kind} ({manifest['apiVersion']}), which the API "
                        "server does not serve: install its CRDs (KEDA) or pick another scaler"
                    ) from error
                raise
            description = _describe_apply(manifest, current)
        if changed:
            done.append(description)
        live = live.replace(kind, applied)
    deployment = live.deployment
    if deployment is not None and (kinds is None or "Deployment" in kinds):
        target = replicas.desired_replicas(
            app.spec,
            live=deployment,
            own_managers=OWN_MANAGERS,
            signalled=signalled(op, app),
            actuated=op.config.actuated,
        )
        if target is not None:
            before = deployment.get("spec", {}).get("replicas")
            # Clamping another scaler's count must not erase that it scales the app.
            manager = (
                kube.BOUNDS_FIELD_MANAGER
                if replicas.scaled_by_others(deployment, own_managers=OWN_MANAGERS)
                else kube.REPLICAS_FIELD_MANAGER
            )
            applied, changed = await apply(
                op, replicas_patch(rendered.deployment, target), field_manager=manager
            )
            live = live.replace("Deployment", applied)
            scaling = app.spec.scaling
            if changed:
                done.append(
                    f"set replicas {before} -> {target} (bounds {scaling.min_concurrency}.."
                    f"{scaling.max_concurrency})"
                )
    for api_version, kind in rendered.unwanted:
        current = live.children.get(kind)
        if current is None or (kinds is not None and kind not in kinds):
            continue
        meta = current["metadata"]
        deleted = await op.kube.delete(
            kube.KINDS[(api_version, kind)],
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta.get("uid"),
        )
        live = live.replace(kind, None)
        op.dropped(current)
        if deleted:
            done.append(f"deleted {kind} {meta['name']} (no longer wanted by the spec)")
    return done, live


def signalled(op: runtime.Operator, app: v1alpha1.FalApp) -> int | None:
    """The gateway's desired runner count for ``app`` as the actuator last applied it."""
    key = (app.metadata.namespace or "", app.metadata.name or "")
    signal = op.signal(key, uid=app.metadata.uid)
    return None if signal is None else signal.desired_runners


async def apply(
    op: runtime.Operator, manifest: Mapping[str, Any], *, field_manager: str = kube.FIELD_MANAGER
) -> tuple[livestate.Manifest, bool]:
    """Apply; also tell whether the object changed (an apply that changes nothing leaves
    the resourceVersion as the newest one seen), so Events report real changes only."""
    applied = await op.kube.apply(manifest, field_manager=field_manager)
    return applied, op.saw(applied)


def replicas_patch(deployment: Mapping[str, Any], count: int) -> livestate.Manifest:
    meta = deployment["metadata"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
        "spec": {"replicas": count},
    }


def _describe_apply(manifest: Mapping[str, Any], current: Mapping[str, Any] | None) -> str:
    kind, name = manifest["kind"], manifest["metadata"]["name"]
    if current is None:
        return f"created {kind} {name}"
    if kind == "Deployment":
        template = manifest["spec"]["template"]
        if not drift.is_subset(template, current.get("spec", {}).get("template")):
            return f"updated Deployment {name}: runner pod template changed, rolling out"
        return f"updated Deployment {name} (runners keep running)"
    return f"updated {kind} {name}"


async def _report_problem(
    op: runtime.Operator,
    *,
    app: v1alpha1.FalApp,
    body: Mapping[str, Any],
    live: livestate.LiveState,
    problem: status.Problem,
) -> None:
    """Degraded status plus a Warning Event, the Event only when the problem is new."""
    previous = status.carried_problem(app.status)
    if previous != problem:
        await op.kube.post_event(
            involved=body,
            event_type="Warning",
            reason=problem.reason.value,
            message=problem.message,
            now=runtime.now(),
        )
    await write_status(
        op,
        app=app,
        body=body,
        live=live,
        observed_generation=app.metadata.generation,
        problem=problem,
    )


async def refresh_status(
    op: runtime.Operator, *, body: Mapping[str, Any], live: livestate.LiveState
) -> None:
    """Recompute the status after a Deployment or pod event (no generation advance)."""
    key = livestate.app_key(body)
    async with op.lock(key):
        live = op.freshen(live, key=key)
        await rewrite_status(op, app=runtime.parse_app(body), body=body, live=live, key=key)


async def rewrite_status(
    op: runtime.Operator,
    *,
    app: v1alpha1.FalApp,
    body: Mapping[str, Any],
    live: livestate.LiveState,
    key: livestate.Key,
) -> None:
    """Recompute the status from ``live`` without a reconcile: the observed generation and the
    problem the last status carried stay (a child's event, an actuator's write)."""
    previous = previous_status(op, app=app, key=key)
    observed = previous.observed_generation if previous else None
    if observed is None:
        observed = status.applied_generation(live.deployment)
    await write_status(
        op,
        app=app,
        body=body,
        live=live,
        observed_generation=observed,
        problem=status.carried_problem(previous),
    )


def previous_status(
    op: runtime.Operator, *, app: v1alpha1.FalApp, key: livestate.Key
) -> v1alpha1.FalAppStatus | None:
    cached = op.written_status.get(key)
    if cached is not None and cached[0] == app.metadata.uid:
        return v1alpha1.FalAppStatus.model_validate(cached[1])
    return app.status


async def write_status(
    op: runtime.Operator,
    *,
    app: v1alpha1.FalApp,
    body: Mapping[str, Any],
    live: livestate.LiveState,
    observed_generation: int | None,
    problem: status.Problem | None,
) -> None:
    key = livestate.app_key(body)
    previous = previous_status(op, app=app, key=key)
    app = app.model_copy(update={"status": previous})
    computed = status.compute(
        app,
        deployment=live.deployment,
        pods=live.pods,
        observed_generation=observed_generation,
        problem=problem,
        gateway=op.config.gateway,
        now=runtime.now(),
        node_labels=live.node_labels,
        catalogue=op.catalogue.catalogue,
        signal=op.signal(key, uid=app.metadata.uid),
    )
    document = status.status_document(computed)
    op.computed_status[key] = document
    if previous is not None and status.status_document(previous) == document:
        return
    meta = body["metadata"]
    written = await op.kube.patch_status(
        kube.FALAPPS, namespace=meta["namespace"], name=meta["name"], status=document
    )
    if written is not None:
        op.instruments.status_writes.inc()
        op.written_status[key] = (str(meta.get("uid", "")), document)
    if previous is not None:
        await _post_transition_events(op, body=body, before=previous, after=computed)


async def _post_transition_events(
    op: runtime.Operator,
    *,
    body: Mapping[str, Any],
    before: v1alpha1.FalAppStatus,
    after: v1alpha1.FalAppStatus,
) -> None:
    """Warn when runners start waiting for capacity; the Event carries the scheduler's why."""
    old = before.condition(v1alpha1.ConditionType.SCHEDULED)
    new = after.condition(v1alpha1.ConditionType.SCHEDULED)
    if new is None or new.status != v1alpha1.ConditionStatus.FALSE:
        return
    if old is not None and old.status == new.status and old.reason == new.reason:
        return
    await op.kube.post_event(
        involved=body,
        event_type="Warning",
        reason=new.reason,
        message=new.message,
        now=runtime.now(),
    )
