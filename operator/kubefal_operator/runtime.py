"""The operator's runtime: the `Operator` object every reconcile is handed, its start and stop,
and the errors a reconcile reports.

`Operator` holds the connections (API client, metrics), the per-app locks and the freshness
cache (`Operator.saw` / `Operator.freshen`: the newest copy seen of each child, from apply
responses and watch events, while it is ahead of the indexes). Errors surface as
`ReconcileError` with ``retry`` telling the caller whether trying again can help.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

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


UNCLAIMED_SIGNALS_LIMIT: Final = operator_config.OperatorConfig.unclaimed_signals_limit
"""Default of :attr:`UnclaimedSignals.limit`: signals held for apps not known yet."""
UNCLAIMED_SIGNAL_SECONDS: Final = operator_config.OperatorConfig.unclaimed_signal_seconds
"""Default of :attr:`UnclaimedSignals.max_age_seconds`: how long such a signal is kept."""


def now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


def created_at(body: Mapping[str, Any]) -> datetime.datetime | None:
    """A FalApp's ``metadata.creationTimestamp`` (whole seconds), None when absent."""
    stamp = (body.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


_Held = tuple[datetime.datetime, signals.ScalingSignal]


@dataclasses.dataclass
class UnclaimedSignals:
    """The gateway's signals for apps this operator does not know (yet): the gateway may see
    a new FalApp before the operator does, and the app's create then starts at the count the
    gateway already wants. Bounded in number (the oldest goes first) and in age, dropped
    when an app of that name is deleted, and never handed to an app created after the
    signal arrived: a late signal for a deleted app must not size a new app of that name.
    """

    limit: int = UNCLAIMED_SIGNALS_LIMIT
    max_age_seconds: float = UNCLAIMED_SIGNAL_SECONDS
    clock: Callable[[], datetime.datetime] = now
    held: collections.OrderedDict[livestate.Key, _Held] = dataclasses.field(
        default_factory=collections.OrderedDict
    )
    """Per app: when the signal arrived, and the signal (oldest first)."""

    def put(self, signal: signals.ScalingSignal) -> None:
        self.held.pop(signal.key, None)
        self.held[signal.key] = (self.clock(), signal)
        while len(self.held) > max(self.limit, 0):
            self.held.popitem(last=False)

    def drop(self, key: livestate.Key) -> None:
        self.held.pop(key, None)

    def claim(
        self, key: livestate.Key, *, created: datetime.datetime | None
    ) -> signals.ScalingSignal | None:
        """The held signal for the app ``key`` created at ``created`` (taken out), or None
        when there is none, it is older than the bound, or it arrived before the app existed
        (creation timestamps have whole seconds: a signal within the creation second counts
        as the new app's, which the gateway can only have seen after its creation)."""
        entry = self.held.pop(key, None)
        if entry is None:
            return None
        received, signal = entry
        age = (self.clock() - received).total_seconds()
        if age > self.max_age_seconds:
            return None
        if created is not None and received < created:
            return None
        return signal


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
    scaling_signals: dict[livestate.Key, tuple[str, signals.ScalingSignal]] = dataclasses.field(
        default_factory=dict
    )
    """Per app, with the app's uid: the gateway's signal the actuator last acted on (stored
    under the app's lock once its replicas are written, so a reconcile never sees a count
    the actuator has not applied yet: replicas are the actuator's, and drift detection puts
    back only what someone else changed). Read through :meth:`signal`."""
    unclaimed_signals: UnclaimedSignals = dataclasses.field(default_factory=UnclaimedSignals)
    """Signals for apps not known yet (bounded)."""
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

    def signal(self, key: livestate.Key, *, uid: str | None) -> signals.ScalingSignal | None:
        """The signal acted on for app ``key`` with that ``uid`` (a new app of the same name
        never reads an old app's, even when the old one's DELETED event was missed)."""
        held = self.scaling_signals.get(key)
        return held[1] if held is not None and held[0] == (uid or "") else None

    def claim_signal(self, body: Mapping[str, Any]) -> None:
        """Give a known app the signal that arrived while it was unknown (if it is its)."""
        key = livestate.app_key(body)
        pending = self.unclaimed_signals.claim(key, created=created_at(body))
        uid = str((body.get("metadata") or {}).get("uid") or "")
        if pending is not None and self.signal(key, uid=uid) is None:
            self.scaling_signals[key] = (uid, pending)

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
        self.unclaimed_signals.drop(key)
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
        unclaimed_signals=UnclaimedSignals(
            limit=config.unclaimed_signals_limit,
            max_age_seconds=config.unclaimed_signal_seconds,
        ),
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
