"""Level-based reconciliation of FalApps: render, compare with the live children, apply.

Every trigger (a FalApp edge, a child event, a runner pod event, a catalogue change) ends
in one of two functions:

* :func:`reconcile_app` renders every child, applies only those that are missing or
  drifted (a local comparison, so an unchanged app costs no API call), deletes children it
  no longer wants, sets replicas by the rule of ``render.replicas``, posts an Event saying
  what it did, and writes the status;
* :func:`refresh_status` recomputes the status from the Deployment and pods and writes it
  when it changed;
* :func:`actuate` (the builtin actuator, on each coalesced scaling signal of the gateway)
  marks which runners a scale-down removes, sets replicas, posts a ScaledUp/ScaledDown
  Event and writes the status.

Both hold a per-app lock, so events for one app never interleave. The live objects come
from the in-memory stores of ``cache`` (passed in as plain mappings, see :class:`Indexes`), not from
API reads. Errors surface as :class:`ReconcileError` with ``retry`` telling the handler
whether kopf should try again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import aiohttp
import pydantic

from kubefal_api import conditions, machines, naming, v1alpha1
from kubefal_operator import actuator as builtin_actuator
from kubefal_operator import build, kube, metrics, runner_keys, signals, status
from kubefal_operator import config as operator_config
from kubefal_operator.render import children as render_children
from kubefal_operator.render import drift, replicas, scaledown, scalers

Manifest = dict[str, Any]
Key = tuple[str, str]
"""(namespace, FalApp name)."""
IndexView = Mapping[Key, Collection[Mapping[str, Any]]]
"""A store of ``cache`` as the reconciler sees it: values grouped by key."""

logger = logging.getLogger(__name__)

CHILD_NAMES: Mapping[str, Callable[[str], str]] = {
    "Deployment": naming.deployment_name,
    "Service": naming.service_name,
    "NetworkPolicy": naming.network_policy_name,
    "PodDisruptionBudget": naming.pod_disruption_budget_name,
    scalers.SCALED_OBJECT: naming.scaled_object_name,
    scalers.HORIZONTAL_POD_AUTOSCALER: naming.horizontal_pod_autoscaler_name,
}
"""How each child kind is named after its FalApp."""
OWN_MANAGERS = frozenset({kube.FIELD_MANAGER, kube.REPLICAS_FIELD_MANAGER})
EVENT_REASONS = {
    "FalApp": ("Applied", ""),
    "ConfigMap": ("CatalogueChanged", "the machine catalogue changed: "),
}
"""Event reason and message preamble by trigger; a child kind means drift was repaired."""


class ReconcileError(Exception):
    """A reconcile failed; ``retry`` is False when trying again cannot help."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class MissingApiError(ReconcileError):
    """A child's kind is not served (KEDA's CRDs not installed): reported, retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry=True)


# --- what the reconciler knows about the cluster --------------------------------------


@dataclasses.dataclass(frozen=True)
class LiveState:
    """The live children and runner pods of one FalApp."""

    children: Mapping[str, Mapping[str, Any]]
    """Live child by kind."""
    pods: Sequence[Mapping[str, Any]]
    node_labels: Mapping[str, Mapping[str, str]]

    @property
    def deployment(self) -> Mapping[str, Any] | None:
        return self.children.get("Deployment")

    def replace(self, kind: str, child: Mapping[str, Any] | None) -> LiveState:
        """This state with the live ``kind`` child replaced (None: it is gone)."""
        updated = {k: v for k, v in self.children.items() if k != kind}
        if child is not None:
            updated[kind] = child
        return dataclasses.replace(self, children=updated)


@dataclasses.dataclass(frozen=True)
class Indexes:
    """The in-memory stores of FalApps, children, runner pods and nodes."""

    falapps: IndexView
    deployments: IndexView
    services: IndexView
    network_policies: IndexView
    disruption_budgets: IndexView
    pods: IndexView
    nodes: Mapping[str, Collection[Mapping[str, str]]]
    scaled_objects: IndexView = dataclasses.field(default_factory=dict)
    autoscalers: IndexView = dataclasses.field(default_factory=dict)

    def app(self, key: Key) -> Mapping[str, Any] | None:
        return next(iter(self.falapps.get(key, ())), None)

    def apps(self) -> list[Mapping[str, Any]]:
        return [body for store in self.falapps.values() for body in store]

    def live(self, key: Key) -> LiveState:
        by_kind = {
            "Deployment": self.deployments,
            "Service": self.services,
            "NetworkPolicy": self.network_policies,
            "PodDisruptionBudget": self.disruption_budgets,
            scalers.SCALED_OBJECT: self.scaled_objects,
            scalers.HORIZONTAL_POD_AUTOSCALER: self.autoscalers,
        }
        found = {
            kind: child
            for kind, index in by_kind.items()
            if (child := next(iter(index.get(key, ())), None)) is not None
        }
        node_labels = {
            name: labels for name, store in self.nodes.items() for labels in list(store)[:1]
        }
        return LiveState(children=found, pods=list(self.pods.get(key, ())), node_labels=node_labels)


def pod_view(pod: Mapping[str, Any]) -> Manifest:
    """The parts of a runner pod the status and the actuator need (what the pod index keeps
    in memory): its state, its IP (how the gateway knows it) and its deletion cost."""
    meta = pod.get("metadata", {})
    pod_status = pod.get("status", {})
    cost = (meta.get("annotations") or {}).get(naming.ANNOTATION_POD_DELETION_COST)
    return {
        "metadata": {
            "name": meta.get("name"),
            "deletionTimestamp": meta.get("deletionTimestamp"),
            "annotations": {} if cost is None else {naming.ANNOTATION_POD_DELETION_COST: cost},
        },
        "spec": {"nodeName": pod.get("spec", {}).get("nodeName")},
        "status": {
            "phase": pod_status.get("phase"),
            "podIP": pod_status.get("podIP"),
            "conditions": list(pod_status.get("conditions") or []),
            "containerStatuses": list(pod_status.get("containerStatuses") or []),
        },
    }


LAST_APPLIED_ANNOTATION = "kubectl.kubernetes.io/last-applied-configuration"


def object_view(obj: Mapping[str, Any]) -> Manifest:
    """An object as the reconciler keeps it in memory: without the bulky bookkeeping.

    ``managedFields`` is reduced to the managers that own ``spec.replicas`` (all the
    replicas rule reads) and kubectl's last-applied copy is dropped: together they are
    most of an object's size, and every FalApp, child and cached apply response is held.
    """
    meta = dict(obj.get("metadata") or {})
    managed = meta.pop("managedFields", None)
    if managed:
        owners = replicas.replicas_owners({"metadata": {"managedFields": managed}})
        if owners:
            meta["managedFields"] = [
                {"manager": owner, "fieldsV1": {"f:spec": {"f:replicas": {}}}}
                for owner in sorted(owners)
            ]
    annotations = meta.get("annotations")
    if annotations and LAST_APPLIED_ANNOTATION in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED_ANNOTATION}
    return {**obj, "metadata": meta}


def app_key(body: Mapping[str, Any]) -> Key:
    meta = body["metadata"]
    return (str(meta["namespace"]), str(meta["name"]))


def owner_key(child: Mapping[str, Any]) -> Key | None:
    """The FalApp a child or runner pod belongs to, by its ``kubefal.io/app`` label."""
    meta = child.get("metadata", {})
    name = (meta.get("labels") or {}).get(naming.LABEL_APP)
    namespace = meta.get("namespace")
    return (str(namespace), str(name)) if name and namespace else None


# --- the catalogue ----------------------------------------------------------------------


@dataclasses.dataclass
class CatalogueState:
    """The machine catalogue in force and where it came from."""

    catalogue: machines.MachineCatalogue
    source: str

    def replace(self, catalogue: machines.MachineCatalogue, *, source: str) -> set[str]:
        """Install ``catalogue``; returns the names of the types that changed."""
        old, new = self.catalogue.machine_types, catalogue.machine_types
        changed = {name for name in old.keys() | new.keys() if old.get(name) != new.get(name)}
        if (self.catalogue.gpu_resource, self.catalogue.gpu_product_label) != (
            catalogue.gpu_resource,
            catalogue.gpu_product_label,
        ):
            changed = set(old.keys() | new.keys())
        self.catalogue, self.source = catalogue, source
        return changed


def parse_catalogue(
    config_map: Mapping[str, Any] | None, *, where: str
) -> tuple[machines.MachineCatalogue, str]:
    """The catalogue in a ConfigMap, or the built-in defaults when it is absent or invalid."""
    if config_map is None:
        logger.warning("machine catalogue ConfigMap %s not found: using built-in defaults", where)
        return machines.default_catalogue(), "built-in defaults"
    try:
        return machines.load_from_configmap_data(config_map.get("data") or {}), where
    except (KeyError, ValueError, pydantic.ValidationError) as error:
        logger.error("machine catalogue %s is invalid, using built-in defaults: %s", where, error)
        return machines.default_catalogue(), "built-in defaults"


# --- the operator's runtime -------------------------------------------------------------


@dataclasses.dataclass
class Operator:
    """Everything a reconcile needs; built once at startup and passed to every call."""

    config: operator_config.OperatorConfig
    kube: kube.KubeClient
    instruments: metrics.Metrics
    catalogue: CatalogueState
    metrics_server: metrics.MetricsServer | None = None
    actuator: builtin_actuator.Actuator | None = None
    """The builtin actuator, when the operator follows a gateway."""
    locks: dict[Key, asyncio.Lock] = dataclasses.field(default_factory=dict)
    written_status: dict[Key, tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=dict)
    """Last status written per app (with the app's uid), newer than the index can be."""
    computed_status: dict[Key, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Last status computed per app, written or not (the metrics' StatusCollector reads it)."""

    newest: dict[tuple[str, str, str], tuple[int, Mapping[str, Any]]] = dataclasses.field(
        default_factory=dict
    )
    """Newest copy seen of each child (kind, namespace, name) from apply responses and
    watch events while it is ahead of the stores (dropped once they catch up)."""
    versions: dict[tuple[str, str, str], int] = dataclasses.field(default_factory=dict)
    """Newest resourceVersion seen of each child (kept: a few bytes per child)."""
    scaling_signals: dict[Key, signals.ScalingSignal] = dataclasses.field(default_factory=dict)
    """The gateway's latest scaling signal per app (builtin actuator)."""
    handled: dict[Key, tuple[str, int]] = dataclasses.field(default_factory=dict)
    """(uid, generation) of each FalApp last reconciled from its own events: a later event
    with the same pair (a status write, a label edit) needs no render."""
    retries: dict[Key, asyncio.Task[None]] = dataclasses.field(default_factory=dict)
    """The pending retry of each FalApp whose last reconcile failed transiently."""
    runner_key_store: runner_keys.RunnerKeys | None = None
    """Provides each runner's storage-only FAL_KEY (KUBEFAL_RUNNER_KEYS); None: off."""

    def saw(self, obj: Mapping[str, Any]) -> bool:
        """Remember ``obj`` if it is the newest version seen; True when it is.

        resourceVersions are opaque by contract, but etcd's are increasing integers; they
        are compared only to prefer the fresher of two copies of one object and to decide
        whether an apply changed anything (for Events), never to decide what to apply.
        """
        key = _child_key(obj)
        version = _version(obj)
        if self.versions.get(key, 0) >= version:
            return False
        self.versions[key] = version
        self.newest[key] = (version, object_view(obj))
        return True

    def dropped(self, obj: Mapping[str, Any]) -> None:
        """A child was deleted: forget its newest version."""
        self.newest.pop(_child_key(obj), None)
        self.versions.pop(_child_key(obj), None)

    def freshen(self, live: LiveState, *, key: Key) -> LiveState:
        """``live`` with each child of app ``key`` replaced by a newer copy seen meanwhile
        (including children the indexes do not show yet; deleted ones were dropped)."""
        namespace, app_name = key
        children = dict(live.children)
        for kind, child_name in CHILD_NAMES.items():
            cache_key = (kind, namespace, child_name(app_name))
            known = self.newest.get(cache_key)
            current = children.get(kind)
            if known is None:
                continue
            if current is None or known[0] > _version(current):
                children[kind] = known[1]
            else:  # the index caught up: no need to hold a copy
                del self.newest[cache_key]
        return dataclasses.replace(live, children=children)

    def cancel_retry(self, key: Key) -> None:
        pending = self.retries.pop(key, None)
        if pending is not None and pending is not asyncio.current_task():
            pending.cancel()

    def lock(self, key: Key) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    def forget(self, key: Key) -> None:
        """Drop what is cached about a deleted FalApp."""
        self.locks.pop(key, None)
        self.written_status.pop(key, None)
        self.computed_status.pop(key, None)
        self.scaling_signals.pop(key, None)
        self.handled.pop(key, None)
        self.cancel_retry(key)
        if self.runner_key_store is not None:
            self.runner_key_store.forget(*key)
        for child in [child for child in self.versions if child[1:] == key]:
            self.versions.pop(child, None)
            self.newest.pop(child, None)


async def start(config: operator_config.OperatorConfig) -> Operator:
    """Connect, load the machine catalogue, serve metrics: the runtime of one operator."""
    client = kube.KubeClient.connect()
    try:
        config_map = await client.get(
            kube.CONFIG_MAPS, namespace=config.catalogue_namespace, name=config.catalogue_name
        )
    except BaseException:
        await client.close()
        raise
    catalogue, source = parse_catalogue(
        config_map, where=f"{config.catalogue_namespace}/{config.catalogue_name}"
    )
    instruments = metrics.Metrics.create()
    op = Operator(
        config=config,
        kube=client,
        instruments=instruments,
        catalogue=CatalogueState(catalogue=catalogue, source=source),
    )
    if config.runner_keys:
        op.runner_key_store = runner_keys.RunnerKeys(client, config.key_namespace)
    statuses = op.computed_status
    instruments.registry.register(
        metrics.StatusCollector(
            lambda: [(key[0], key[1], document) for key, document in list(statuses.items())]
        )
    )
    op.metrics_server = instruments.serve(host=config.metrics_host, port=config.metrics_port)
    return op


def start_actuator(op: Operator, *, indexes: Indexes) -> None:
    """Follow the gateway's scaling stream (when configured) for the operator's lifetime."""
    admin_url = op.config.gateway_admin_url
    if not admin_url:
        return

    async def on_signal(signal: signals.ScalingSignal) -> None:
        try:
            await actuate(op, signal=signal, indexes=indexes)
        except ReconcileError as error:
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


async def stop(op: Operator) -> None:
    for key in list(op.retries):
        op.cancel_retry(key)
    if op.actuator is not None:
        await op.actuator.stop()
    if op.runner_key_store is not None:
        await op.runner_key_store.close()
    await op.kube.close()
    if op.metrics_server is not None:
        op.metrics_server.shutdown()


def _child_key(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = obj.get("metadata", {})
    return (str(obj.get("kind", "")), str(meta.get("namespace")), str(meta.get("name")))


def _version(obj: Mapping[str, Any]) -> int:
    value = str(obj.get("metadata", {}).get("resourceVersion", "0"))
    return int(value) if value.isdigit() else 0


def _now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


def _parse(body: Mapping[str, Any]) -> v1alpha1.FalApp:
    try:
        return v1alpha1.FalApp.from_kube(body)
    except pydantic.ValidationError as error:
        raise ReconcileError(f"the FalApp does not parse: {error}", retry=False) from error


def _classify(error: Exception, *, doing: str) -> ReconcileError:
    if isinstance(error, kube.ApiError):
        permanent = error.status in {400, 403, 422}
        return ReconcileError(f"{doing}: {error}", retry=not permanent)
    return ReconcileError(f"{doing}: {error}", retry=True)


# --- reconcile ------------------------------------------------------------------------


async def falapp_changed(
    op: Operator, *, body: Mapping[str, Any], indexes: Indexes, attempt: int = 0
) -> None:
    """A FalApp's watch event (the listing after a start included): reconcile it when its
    uid or generation is new to this process.

    The operator's own status writes change neither, so they cost no render; an operator
    restart renders every app once and writes nothing when nothing drifted. A transient
    failure is tried again in the background with backoff (:data:`RETRY_DELAYS_SECONDS`,
    then every 30 s) on the newest copy of the app in the index; a newer event replaces the
    pending retry. A permanent failure (reported as Degraded) waits for the next edit.
    """
    key = app_key(body)
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return
    essence = (str(meta.get("uid", "")), int(meta.get("generation") or 0))
    if attempt == 0:
        op.cancel_retry(key)
        if op.handled.get(key) == essence:
            return
    try:
        await reconcile_app(op, body=body, live=indexes.live(key))
    except Exception as error:  # anything else is retried too, as kopf's handlers were
        if isinstance(error, ReconcileError) and not error.retry:
            logger.warning("%s/%s: %s", *key, error)
            op.handled[key] = essence
            return
        delay = RETRY_DELAYS_SECONDS[min(attempt, len(RETRY_DELAYS_SECONDS) - 1)]
        logger.warning(
            "reconciling %s/%s failed, retrying in %.0f s: %s",
            *key,
            delay,
            error,
            exc_info=not isinstance(error, ReconcileError),
        )
        op.handled.pop(key, None)
        op.retries[key] = asyncio.create_task(
            _retry_falapp(op, key=key, indexes=indexes, attempt=attempt + 1, delay=delay)
        )
        return
    op.handled[key] = essence


async def _retry_falapp(
    op: Operator, *, key: Key, indexes: Indexes, attempt: int, delay: float
) -> None:
    await asyncio.sleep(delay)
    if op.retries.get(key) is asyncio.current_task():
        del op.retries[key]
    body = indexes.app(key)
    if body is None:
        return  # deleted meanwhile
    await falapp_changed(op, body=body, indexes=indexes, attempt=attempt)


async def reconcile_app(
    op: Operator,
    *,
    body: Mapping[str, Any],
    live: LiveState,
    trigger: str = "FalApp",
    kinds: Collection[str] | None = None,
    seen: Mapping[str, Any] | None = None,
) -> None:
    """Bring the children of one FalApp (or only those of ``kinds``) in line with its spec,
    then write its status. ``seen`` is the child whose event triggered this call."""
    key = app_key(body)
    async with op.lock(key):
        if seen is not None:  # under the lock: our own apply responses are recorded first
            op.saw(seen)
        live = op.freshen(live, key=key)
        with op.instruments.reconciling(trigger) as result:
            app = _parse(body)
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
                    raise _classify(error, doing="providing the runner's API key") from error
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
            except MissingApiError as missing:
                problem = status.Problem(
                    reason=conditions.Reason.RECONCILE_FAILED, message=str(missing)
                )
                await _report_problem(op, app=app, body=body, live=live, problem=problem)
                raise
            except (kube.ApiError, aiohttp.ClientError, TimeoutError) as error:
                if isinstance(error, kube.ApiError) and error.namespace_terminating:
                    logger.debug("%s/%s: namespace is being deleted, nothing to do", *key)
                    return
                failure = _classify(error, doing="applying the children")
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
                    now=_now(),
                )
            if not done and kinds is not None and "Deployment" not in kinds:
                return  # the status reads only the Deployment and pods: nothing changed there
            try:
                await _write_status(
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
                raise _classify(error, doing="writing the status") from error


async def _apply_children(
    op: Operator,
    *,
    app: v1alpha1.FalApp,
    rendered: render_children.Children,
    live: LiveState,
    kinds: Collection[str] | None,
) -> tuple[list[str], LiveState]:
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
                signalled=_signalled(op, app),
                actuated=op.config.actuated,
            )
            assert count is not None  # the rule always starts a new Deployment somewhere
            applied, changed = await _apply(
                op, {**manifest, "spec": {**manifest["spec"], "replicas": count}}
            )
            if app.spec.scaler is not v1alpha1.Scaler.BUILTIN:
                applied, _ = await _apply(
                    op,
                    _replicas_patch(manifest, count),
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
            applied, changed = await _apply(
                op, {**manifest, "spec": {**manifest["spec"], "replicas": count}}
            )
            description = _describe_apply(manifest, current)
        else:
            try:
                applied, changed = await _apply(op, manifest)
            except kube.ApiError as error:
                if error.status == 404 and kind in scalers.SCALER_KINDS_BY_KIND:
                    raise MissingApiError(
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
            signalled=_signalled(op, app),
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
            applied, changed = await _apply(
                op, _replicas_patch(rendered.deployment, target), field_manager=manager
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


def _signalled(op: Operator, app: v1alpha1.FalApp) -> int | None:
    """The gateway's desired runner count for ``app``, when the actuator has one."""
    signal = op.scaling_signals.get((app.metadata.namespace or "", app.metadata.name or ""))
    return None if signal is None else signal.desired_runners


async def _apply(
    op: Operator, manifest: Mapping[str, Any], *, field_manager: str = kube.FIELD_MANAGER
) -> tuple[Manifest, bool]:
    """Apply; also tell whether the object changed (an apply that changes nothing leaves
    the resourceVersion as the newest one seen), so Events report real changes only."""
    applied = await op.kube.apply(manifest, field_manager=field_manager)
    return applied, op.saw(applied)


def _replicas_patch(deployment: Mapping[str, Any], count: int) -> Manifest:
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
    op: Operator,
    *,
    app: v1alpha1.FalApp,
    body: Mapping[str, Any],
    live: LiveState,
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
            now=_now(),
        )
    await _write_status(
        op,
        app=app,
        body=body,
        live=live,
        observed_generation=app.metadata.generation,
        problem=problem,
    )


async def refresh_status(op: Operator, *, body: Mapping[str, Any], live: LiveState) -> None:
    """Recompute the status after a Deployment or pod event (no generation advance)."""
    key = app_key(body)
    async with op.lock(key):
        live = op.freshen(live, key=key)
        app = _parse(body)
        previous = _previous_status(op, app=app, key=key)
        observed = previous.observed_generation if previous else None
        if observed is None:
            observed = status.applied_generation(live.deployment)
        await _write_status(
            op,
            app=app,
            body=body,
            live=live,
            observed_generation=observed,
            problem=status.carried_problem(previous),
        )


def _previous_status(
    op: Operator, *, app: v1alpha1.FalApp, key: Key
) -> v1alpha1.FalAppStatus | None:
    cached = op.written_status.get(key)
    if cached is not None and cached[0] == app.metadata.uid:
        return v1alpha1.FalAppStatus.model_validate(cached[1])
    return app.status


async def _write_status(
    op: Operator,
    *,
    app: v1alpha1.FalApp,
    body: Mapping[str, Any],
    live: LiveState,
    observed_generation: int | None,
    problem: status.Problem | None,
) -> None:
    key = app_key(body)
    previous = _previous_status(op, app=app, key=key)
    app = app.model_copy(update={"status": previous})
    computed = status.compute(
        app,
        deployment=live.deployment,
        pods=live.pods,
        observed_generation=observed_generation,
        problem=problem,
        gateway=op.config.gateway,
        now=_now(),
        node_labels=live.node_labels,
        catalogue=op.catalogue.catalogue,
        signal=op.scaling_signals.get(key),
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
    op: Operator,
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
        involved=body, event_type="Warning", reason=new.reason, message=new.message, now=_now()
    )


# --- the builtin actuator ----------------------------------------------------------------


async def actuate(op: Operator, *, signal: signals.ScalingSignal, indexes: Indexes) -> None:
    """Act on the gateway's latest signal for one app: replicas (builtin scaler only, and
    the idle runners marked to go first before a scale-down), an Event, the status."""
    key = signal.key
    op.scaling_signals[key] = signal
    body = indexes.app(key)
    if body is None:
        return  # not an app this operator serves (or not known yet: its create will read it)
    try:
        await _prepare_scale_down(op, body=body, signal=signal, indexes=indexes)
    except (kube.ApiError, aiohttp.ClientError, TimeoutError) as error:
        raise _classify(error, doing="marking runners for a scale-down") from error
    async with op.lock(key):
        live = op.freshen(indexes.live(key), key=key)
        app = _parse(body)
        try:
            live = await _scale(op, app=app, body=body, live=live, signal=signal)
            previous = _previous_status(op, app=app, key=key)
            observed = previous.observed_generation if previous else None
            if observed is None:
                observed = status.applied_generation(live.deployment)
            await _write_status(
                op,
                app=app,
                body=body,
                live=live,
                observed_generation=observed,
                problem=status.carried_problem(previous),
            )
        except (kube.ApiError, aiohttp.ClientError, TimeoutError) as error:
            if isinstance(error, kube.ApiError) and error.namespace_terminating:
                return
            raise _classify(error, doing="scaling") from error


async def _scale(
    op: Operator,
    *,
    app: v1alpha1.FalApp,
    body: Mapping[str, Any],
    live: LiveState,
    signal: signals.ScalingSignal,
) -> LiveState:
    deployment = live.deployment
    if deployment is None or not op.config.actuated:
        return live
    target = replicas.desired_replicas(
        app.spec,
        live=deployment,
        own_managers=OWN_MANAGERS,
        signalled=signal.desired_runners,
        actuated=True,
    )
    if target is None:
        return live
    before = int(deployment.get("spec", {}).get("replicas", 0))
    if target < before:
        await _mark_deletion_costs(op, pods=live.pods, signal=signal)
    applied, changed = await _apply(
        op, _replicas_patch(deployment, target), field_manager=kube.REPLICAS_FIELD_MANAGER
    )
    if changed:
        reason, message = replicas.scale_event(
            before=before, after=target, spec=app.spec, signal=signal
        )
        op.instruments.replica_changes.labels(direction=reason).inc()
        logger.info("%s/%s %s: %s", signal.namespace, signal.name, reason, message)
        await op.kube.post_event(
            involved=body, event_type="Normal", reason=reason, message=message, now=_now()
        )
    return live.replace("Deployment", applied)


COSTS_VISIBLE_TIMEOUT_SECONDS = 2.0
"""How long a scale-down waits for the operator's own pod watch to show the new deletion
costs (a proxy for the ReplicaSet controller's informer, which must see them first)."""


async def _prepare_scale_down(
    op: Operator, *, body: Mapping[str, Any], signal: signals.ScalingSignal, indexes: Indexes
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
        _parse(body).spec,
        live=deployment,
        own_managers=OWN_MANAGERS,
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
    op: Operator, *, pods: Sequence[Mapping[str, Any]], signal: signals.ScalingSignal
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


# --- triggers other than the FalApp itself --------------------------------------------


RETRY_DELAYS_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Backoff of event-driven work after a transient error (FalApp edges keep retrying at the
last delay, see :func:`falapp_changed`)."""


async def _retrying(attempt: Callable[[], Awaitable[None]], *, what: str) -> None:
    for delay in (*RETRY_DELAYS_SECONDS, None):
        try:
            await attempt()
            return
        except ReconcileError as error:
            if not error.retry or delay is None:
                raise
            logger.warning("%s failed, retrying in %.0f s: %s", what, delay, error)
            await asyncio.sleep(delay)


async def child_changed(
    op: Operator,
    *,
    kind: str,
    event_type: str | None,
    child: Mapping[str, Any],
    indexes: Indexes,
) -> None:
    """A child changed or vanished: put back whatever drifted from the FalApp."""
    key = owner_key(child)
    if key is None:
        return
    body = indexes.app(key)
    if body is None:
        return  # an orphan: the garbage collector removes it
    if event_type != "DELETED" and 0 < _version(child) <= op.versions.get(
        _child_key({**child, "kind": kind}), 0
    ):
        return  # the echo of an apply this process made (or older): nothing new to check
    live = indexes.live(key).replace(kind, None if event_type == "DELETED" else child)
    if event_type == "DELETED":
        op.dropped({**child, "kind": kind})
        # The FalApp may be going away (children are deleted after it): ask the API.
        try:
            fresh = await op.kube.get(kube.FALAPPS, namespace=key[0], name=key[1])
        except (kube.ApiError, aiohttp.ClientError, TimeoutError) as error:
            raise _classify(error, doing="reading the FalApp") from error
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return
        if fresh["metadata"].get("uid") != body["metadata"].get("uid"):
            return
        body = fresh
    app_body = body

    async def attempt() -> None:
        await reconcile_app(
            op,
            body=app_body,
            live=live,
            trigger=kind,
            kinds=(kind,),
            seen=None if event_type == "DELETED" else child,
        )

    await _retrying(attempt, what=f"repairing {kind} of {key[0]}/{key[1]}")


async def pods_changed(op: Operator, *, pod: Mapping[str, Any], indexes: Indexes) -> None:
    """A runner pod changed: the status may tell something new."""
    key = owner_key(pod)
    if key is None:
        return
    body = indexes.app(key)
    if body is None:
        return
    app_body = body

    async def attempt() -> None:
        with op.instruments.reconciling("Pod"):
            try:
                await refresh_status(op, body=app_body, live=indexes.live(key))
            except (kube.ApiError, aiohttp.ClientError, TimeoutError) as error:
                raise _classify(error, doing="writing the status") from error

    await _retrying(attempt, what=f"updating the status of {key[0]}/{key[1]}")


async def catalogue_changed(
    op: Operator, *, config_map: Mapping[str, Any] | None, indexes: Indexes
) -> None:
    """Install a new catalogue and re-render every app that uses a changed machine type."""
    config = op.config
    where = f"{config.catalogue_namespace}/{config.catalogue_name}"
    catalogue, source = parse_catalogue(config_map, where=where)
    changed = op.catalogue.replace(catalogue, source=source)
    if not changed:
        return
    affected = [
        body
        for body in indexes.apps()
        if changed & set((body.get("spec") or {}).get("machineTypes") or ["S"])
    ]
    logger.info(
        "machine catalogue from %s changed (%s): re-rendering %d app(s)",
        source,
        ", ".join(sorted(changed)),
        len(affected),
    )
    await _reconcile_many(op, bodies=affected, indexes=indexes, trigger="ConfigMap")


async def _reconcile_many(
    op: Operator, *, bodies: Iterable[Mapping[str, Any]], indexes: Indexes, trigger: str
) -> None:
    gate = asyncio.Semaphore(op.config.catalogue_rollout_concurrency)

    async def one(body: Mapping[str, Any]) -> None:
        async with gate:
            try:
                await reconcile_app(
                    op, body=body, live=indexes.live(app_key(body)), trigger=trigger
                )
            except ReconcileError as error:
                logger.warning("re-rendering %s/%s failed: %s", *app_key(body), error)

    await asyncio.gather(*(one(body) for body in bodies))
