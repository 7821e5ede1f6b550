"""kopf handlers: decorators only, each delegating to ``triggers`` (or ``runtime``, ``actuation``).

What is watched, and why:

* FalApps: every watch event (the initial listing after a start included) renders and
  applies when the app's uid or generation is new to this process; the DELETED event drops
  cached state. A raw event handler, not kopf's create/update/resume: those keep their
  progress and a copy of the last handled spec in annotations, one extra API write per
  app and per spec edit, while the reconcile is level-based and needs neither. Transient
  failures are retried by ``triggers`` with backoff until they succeed or a newer event
  supersedes them. Children go with the garbage collector through their owner references,
  so there is no finalizer: a FalApp can be deleted even while the operator is down.
  (That is also why there is no kopf timer as a safety net: kopf puts a finalizer on
  objects with timers. Watches are re-listed on every reconnect and on restart.)
* Deployments, Services, NetworkPolicies, PodDisruptionBudgets, KEDA ScaledObjects and
  HorizontalPodAutoscalers labelled ``kubefal.io/app``: any change re-reconciles the owner,
  which puts back what drifted (kopf watches ScaledObjects once KEDA's CRD exists).
* Runner pods: any change recomputes the owner's status (Scheduled, Ready, runners).
* Nodes: their labels tell which machine type a runner landed on.
* The machine catalogue ConfigMap: a change re-renders the apps using changed types.
* The gateway's scaling stream (not a Kubernetes watch): with a gateway admin URL the
  startup handler starts the builtin actuator, the cleanup handler stops it.

Every watch of children, pods and the ConfigMap is filtered on the server (label and field
selectors set at startup), so the operator never lists unrelated objects. The live objects
are kept in memory by ``cache`` (filled by one LIST per kind at start-up, then by these
handlers; not kopf indexes, whose start-up wait is quadratic in the objects); reconciles
read them instead of the API. Every handler is a coroutine: kopf runs plain functions in a
thread pool, a thread hop per event.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import aiohttp
import kopf

from kubefal_api import naming, v1alpha1
from kubefal_operator import actuation, build, cache, kube, livestate, runtime, triggers
from kubefal_operator import config as operator_config

CHILD_LABELS = {naming.LABEL_APP: kopf.PRESENT}
REGISTRY = kopf.OperatorRegistry()
"""The operator's handlers (kept out of kopf's global default registry)."""


class _NoDiffBase(kopf.DiffBaseStorage):
    """kopf deep-copies every object on every watch event to diff it for change handlers
    (create/update/resume); the operator registers none, so the copy is never read. Skipping
    it was a fifth of the operator's CPU on a restart with 300 apps."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def _operator(memo: kopf.Memo) -> runtime.Operator:
    operator: runtime.Operator = memo["operator"]
    return operator


def _cache(memo: kopf.Memo) -> cache.Cache:
    stores: cache.Cache = memo["cache"]
    return stores


# --- lifecycle ----------------------------------------------------------------------------


@kopf.on.startup(registry=REGISTRY)
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """All kopf settings in one place, then the runtime: API client, metrics, catalogue,
    and the builtin actuator when a gateway is configured."""
    config: operator_config.OperatorConfig = (
        memo.get("config") or operator_config.OperatorConfig.from_environment()
    )
    # No handler needs a finalizer today; should one ever, it carries kubefal's name.
    settings.persistence.finalizer = naming.FINALIZER
    # Only raw event handlers are registered, so kopf never writes progress annotations (the
    # prefix stays kubefal's should a stateful handler ever come back) and needs no diff base.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=v1alpha1.GROUP)
    settings.persistence.diffbase_storage = _NoDiffBase()
    # kopf's own Events ("Handler succeeded") would drown ours: post only its warnings.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = kube.EVENT_SOURCE
    settings.posting.event_name_prefix = "kubefal-"
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    selector = naming.LABEL_APP
    for kind in (*kube.CHILDREN.values(), kube.PODS):
        settings.watching.label_selectors[kind.selector] = selector
    settings.watching.label_selectors[kube.JOBS.selector] = build.LABEL_BUILD_OF
    settings.watching.field_selectors[kube.CONFIG_MAPS.selector] = (
        f"metadata.name={config.catalogue_name},metadata.namespace={config.catalogue_namespace}"
    )
    operator = await runtime.start(config)
    memo["operator"] = operator
    stores = memo["cache"] = cache.Cache()
    await stores.prefill(operator.kube, namespaces=memo.get("namespaces") or ())
    if operator.runner_key_store is not None:
        # Records of FalApps deleted while no operator ran (runner_keys.py).
        with contextlib.suppress(kube.ApiError, aiohttp.ClientError, TimeoutError):
            await operator.runner_key_store.sweep(
                stores.indexes.apps(), memo.get("namespaces") or ()
            )
    actuation.start_actuator(operator, indexes=stores.indexes)


@kopf.on.login(registry=REGISTRY)
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's watches use the same credentials as ``kube`` (KUBECONFIG or service account)."""
    info: kopf.ConnectionInfo | None = kopf.login_via_client(**kwargs)
    return info


@kopf.on.cleanup(registry=REGISTRY)
async def stop(memo: kopf.Memo, **_: Any) -> None:
    await runtime.stop(_operator(memo))


@kopf.on.probe(id="catalogue", registry=REGISTRY)
def catalogue_source(memo: kopf.Memo, **_: Any) -> str:
    """The liveness endpoint reports where the machine catalogue came from."""
    return _operator(memo).catalogue.source


# --- FalApps ------------------------------------------------------------------------------


@kopf.on.event(*kube.FALAPPS.selector, registry=REGISTRY)
async def falapp_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    stores = _cache(memo)
    stores.falapp(event["type"], body)
    if event["type"] == "DELETED":
        _operator(memo).forget(livestate.app_key(body))
        return
    await triggers.falapp_changed(_operator(memo), body=body, indexes=stores.indexes)


@kopf.on.event(*kube.JOBS.selector, labels={build.LABEL_BUILD_OF: kopf.PRESENT}, registry=REGISTRY)
async def build_job_changed(
    event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """A finished build Job (spec.containerImage) reconciles its FalApp: the image exists
    now, or the failure goes into status.build (kubefal_operator.build). So does the deletion
    of the Job of a build still Building or Failed: it builds again (status.build.message
    tells users to delete a failed Job for that)."""
    if event["type"] != "DELETED" and build.job_outcome(body)[0] is None:
        return
    stores = _cache(memo)
    key = (
        str(body["metadata"]["namespace"]),
        str(body["metadata"]["labels"][build.LABEL_BUILD_OF]),
    )
    app = stores.indexes.app(key)
    if app is None:
        return
    if event["type"] == "DELETED":
        current = (app.get("status") or {}).get("build") or {}
        if current.get("job") != body["metadata"]["name"] or current.get("phase") not in (
            v1alpha1.BuildPhase.BUILDING,
            v1alpha1.BuildPhase.FAILED,
        ):
            return  # a finished build's Job expired: its image stays
    operator = _operator(memo)
    operator.handled.pop(key, None)  # same generation, new outcome: reconcile anyway
    await triggers.falapp_changed(operator, body=app, indexes=stores.indexes)


# --- children, pods, catalogue ------------------------------------------------------------


async def child_changed(
    event: kopf.RawEvent,
    body: kopf.Body,
    resource: kopf.Resource,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    stores = _cache(memo)
    stores.child(str(resource.kind), event["type"], body)
    await triggers.child_changed(
        _operator(memo),
        kind=str(resource.kind),
        event_type=event["type"],
        child=livestate.object_view(body),
        indexes=stores.indexes,
    )


# One handler for every child kind (kube.CHILDREN, the one table of them).
for _kind in kube.CHILDREN.values():
    kopf.on.event(*_kind.selector, labels=CHILD_LABELS, registry=REGISTRY)(child_changed)


@kopf.on.event(*kube.PODS.selector, labels=CHILD_LABELS, registry=REGISTRY)
async def runner_pod_changed(
    event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    stores = _cache(memo)
    stores.pod(event["type"], body)
    await triggers.pods_changed(_operator(memo), pod=dict(body), indexes=stores.indexes)


@kopf.on.event(*kube.NODES.selector, registry=REGISTRY)
async def node_changed(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Node labels tell which machine type a runner landed on (read by the status)."""
    _cache(memo).node(event["type"], body)


def _is_catalogue(**kwargs: Any) -> bool:
    """Only the configured catalogue ConfigMap (the server-side field selector says so too)."""
    config = _operator(kwargs["memo"]).config
    return bool(
        kwargs["name"] == config.catalogue_name
        and kwargs["namespace"] == config.catalogue_namespace
    )


@kopf.on.event(*kube.CONFIG_MAPS.selector, when=_is_catalogue, registry=REGISTRY)
async def catalogue_changed(
    event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    await triggers.catalogue_changed(
        _operator(memo),
        config_map=None if event["type"] == "DELETED" else dict(body),
        indexes=_cache(memo).indexes,
    )
