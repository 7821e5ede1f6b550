"""The operator's runtime: the `Operator` object every reconcile is handed, its start and stop,
and the errors a reconcile reports.

`Operator` holds the connections (API client, metrics), the per-app locks and the freshness
cache (`Operator.saw` / `Operator.freshen`: the newest copy seen of each child, from apply
responses and watch events, while it is ahead of the indexes). Errors surface as
`ReconcileError` with ``retry`` telling the caller whether trying again can help.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
from collections.abc import Mapping
from typing import Any

import pydantic

from kubefal_api import v1alpha1
from kubefal_operator import actuator as builtin_actuator
from kubefal_operator import config as operator_config
from kubefal_operator import kube, livestate, metrics, runner_keys, signals

logger = logging.getLogger(__name__)


class ReconcileError(Exception):
    """A reconcile failed; ``retry`` is False when trying again cannot help."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class MissingApiError(ReconcileError):
    """A child's kind is not served (KEDA's CRDs not installed): reported, retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry=True)


@dataclasses.dataclass
class Operator:
    """Everything a reconcile needs; built once at startup and passed to every call."""

    config: operator_config.OperatorConfig
    kube: kube.KubeClient
    instruments: metrics.Metrics
    catalogue: livestate.CatalogueState
    metrics_server: metrics.MetricsServer | None = None
    actuator: builtin_actuator.Actuator | None = None
    """The builtin actuator, when the operator follows a gateway."""
    locks: dict[livestate.Key, asyncio.Lock] = dataclasses.field(default_factory=dict)
    written_status: dict[livestate.Key, tuple[str, dict[str, Any]]] = dataclasses.field(
        default_factory=dict
    )
    """Last status written per app (with the app's uid), newer than the index can be."""
    computed_status: dict[livestate.Key, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Last status computed per app, written or not (the metrics' StatusCollector reads it)."""

    newest: dict[tuple[str, str, str], tuple[int, Mapping[str, Any]]] = dataclasses.field(
        default_factory=dict
    )
    """Newest copy seen of each child (kind, namespace, name) from apply responses and
    watch events while it is ahead of the stores (dropped once they catch up)."""
    versions: dict[tuple[str, str, str], int] = dataclasses.field(default_factory=dict)
    """Newest resourceVersion seen of each child (kept: a few bytes per child)."""
    scaling_signals: dict[livestate.Key, signals.ScalingSignal] = dataclasses.field(
        default_factory=dict
    )
    """The gateway's latest scaling signal per app (builtin actuator)."""
    handled: dict[livestate.Key, tuple[str, int]] = dataclasses.field(default_factory=dict)
    """(uid, generation) of each FalApp last reconciled from its own events: a later event
    with the same pair (a status write, a label edit) needs no render."""
    retries: dict[livestate.Key, asyncio.Task[None]] = dataclasses.field(default_factory=dict)
    """The pending retry of each FalApp whose last reconcile failed transiently."""
    runner_key_store: runner_keys.RunnerKeys | None = None
    """Provides each runner's storage-only FAL_KEY (KUBEFAL_RUNNER_KEYS); None: off."""

    def saw(self, obj: Mapping[str, Any]) -> bool:
        """Remember ``obj`` if it is the newest version seen; True when it is.

        resourceVersions are opaque by contract, but etcd's are increasing integers; they
        are compared only to prefer the fresher of two copies of one object and to decide
        whether an apply changed anything (for Events), never to decide what to apply.
        """
        key = livestate.child_key(obj)
        version = livestate.resource_version(obj)
        if self.versions.get(key, 0) >= version:
            return False
        self.versions[key] = version
        self.newest[key] = (version, livestate.object_view(obj))
        return True

    def dropped(self, obj: Mapping[str, Any]) -> None:
        """A child was deleted: forget its newest version."""
        self.newest.pop(livestate.child_key(obj), None)
        self.versions.pop(livestate.child_key(obj), None)

    def freshen(self, live: livestate.LiveState, *, key: livestate.Key) -> livestate.LiveState:
        """``live`` with each child of app ``key`` replaced by a newer copy seen meanwhile
        (including children the indexes do not show yet; deleted ones were dropped)."""
        namespace, app_name = key
        children = dict(live.children)
        for kind, child_name in livestate.CHILD_NAMES.items():
            cache_key = (kind, namespace, child_name(app_name))
            known = self.newest.get(cache_key)
            current = children.get(kind)
            if known is None:
                continue
            if current is None or known[0] > livestate.resource_version(current):
                children[kind] = known[1]
            else:  # the index caught up: no need to hold a copy
                del self.newest[cache_key]
        return dataclasses.replace(live, children=children)

    def cancel_retry(self, key: livestate.Key) -> None:
        pending = self.retries.pop(key, None)
        if pending is not None and pending is not asyncio.current_task():
            pending.cancel()

    def lock(self, key: livestate.Key) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    def forget(self, key: livestate.Key) -> None:
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
    catalogue, source = livestate.parse_catalogue(
        config_map, where=f"{config.catalogue_namespace}/{config.catalogue_name}"
    )
    instruments = metrics.Metrics.create()
    op = Operator(
        config=config,
        kube=client,
        instruments=instruments,
        catalogue=livestate.CatalogueState(catalogue=catalogue, source=source),
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


def now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


def parse_app(body: Mapping[str, Any]) -> v1alpha1.FalApp:
    try:
        return v1alpha1.FalApp.from_kube(body)
    except pydantic.ValidationError as error:
        raise ReconcileError(f"the FalApp does not parse: {error}", retry=False) from error


def classify(error: Exception, *, doing: str) -> ReconcileError:
    if isinstance(error, kube.ApiError):
        permanent = error.status in {400, 403, 422}
        return ReconcileError(f"{doing}: {error}", retry=not permanent)
    return ReconcileError(f"{doing}: {error}", retry=True)
