"""The operator's orchestration over a fake API (tests/operator/fakekube.py): what it writes, in
which order, and what status results, on the paths the e2e suite reaches only by luck: 409
conflicts on an apply or a status write, a child deleted mid-reconcile, a signal for an app
that is gone, and the freshness cache that stands in for indexes lagging behind our own writes.

The real triggers, reconcile and actuation code run unchanged; only `kube.KubeClient` is
replaced (the e2e suite runs the same code against a real kube-apiserver).
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Iterator
from typing import Any, cast

import pytest

from kubefal_api import machines, naming, v1alpha1
from kubefal_operator import (
    actuation,
    cache,
    kube,
    livestate,
    metrics,
    runtime,
    signals,
    triggers,
)
from kubefal_operator import config as operator_config
from tests.operator.fakekube import FakeKube

NAMESPACE = "team-a"
NAME = "demo"
KEY = (NAMESPACE, NAME)
TIMEOUT = 30.0


def falapp(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {"app": "app.py::Demo", **spec},
    }


def operator(fake: FakeKube, *, actuated: bool = False) -> runtime.Operator:
    config = operator_config.OperatorConfig(
        gateway_admin_url="http://127.0.0.1:9/" if actuated else None
    )
    return runtime.Operator(
        config=config,
        kube=cast(kube.KubeClient, fake),
        instruments=metrics.Metrics.create(),
        catalogue=livestate.CatalogueState(
            catalogue=machines.default_catalogue(), source="built-in defaults"
        ),
    )


@pytest.fixture
def stores() -> cache.Cache:
    return cache.Cache()


@pytest.fixture
def fake(stores: cache.Cache) -> FakeKube:
    return FakeKube(stores)


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Retries after 10 ms instead of 1 s and more: the order of events stays the same."""
    monkeypatch.setattr(triggers, "RETRY_DELAYS_SECONDS", (0.01, 0.01, 0.01, 0.01, 0.01))
    yield


def status_writes(fake: FakeKube) -> list[dict[str, Any]]:
    return [dict(write.detail) for write in fake.writes if write.verb == "patch_status"]


def events(fake: FakeKube) -> list[tuple[str, str]]:
    return [
        (str(write.detail["reason"]), str(write.detail["message"]))
        for write in fake.writes
        if write.verb == "event"
    ]


def applied_kinds(fake: FakeKube) -> list[str]:
    return [write.kind for write in fake.writes if write.verb == "apply"]


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(item for item in status["conditions"] if item["type"] == kind)


async def settle(op: runtime.Operator) -> None:
    """Wait until no background retry is pending."""
    async with asyncio.timeout(TIMEOUT):
        while op.retries:
            await asyncio.gather(*op.retries.values(), return_exceptions=True)


async def reconciled(
    fake: FakeKube, stores: cache.Cache, *, actuated: bool = False, **spec: Any
) -> runtime.Operator:
    """A new operator that has reconciled a new FalApp with ``spec`` once."""
    body = fake.create(falapp(**spec))
    op = operator(fake, actuated=actuated)
    await triggers.falapp_changed(op, body=body, indexes=stores.indexes)
    return op


async def modified(
    op: runtime.Operator, stores: cache.Cache, kind: str, child: dict[str, Any]
) -> None:
    """The watch event of a changed child of the app."""
    await triggers.child_changed(
        op,
        kind=kind,
        event_type="MODIFIED",
        child=livestate.object_view(child),
        indexes=stores.indexes,
    )


def runner_pod(name: str, ip: str) -> dict[str, Any]:
    """A running runner pod of the app."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": naming.runner_selector(NAME)},
        "spec": {"nodeName": "node-1"},
        "status": {"phase": "Running", "podIP": ip},
    }


async def send(
    op: runtime.Operator, stores: cache.Cache, fields: dict[str, Any], *, app: str = NAME
) -> None:
    """The gateway's scaling signal for ``app`` (the builtin actuator's input)."""
    signal = signals.parse_signal({"app": f"{NAMESPACE}/{app}", **fields})
    await actuation.actuate(op, signal=signal, indexes=stores.indexes)


# --- a new app, and an app that did not change ---------------------------------------------


async def test_a_new_app_gets_its_children_then_one_event_then_its_status(
    fake: FakeKube, stores: cache.Cache
) -> None:
    body = fake.create(falapp(scaling={"minConcurrency": 2, "maxConcurrency": 4}))
    op = operator(fake)

    await triggers.falapp_changed(op, body=body, indexes=stores.indexes)

    verbs = [write.verb for write in fake.writes]
    assert verbs[-2:] == ["event", "patch_status"]
    assert set(verbs[:-2]) == {"apply"}
    kinds = applied_kinds(fake)
    assert sorted(kinds) == sorted(set(kinds))  # each child written once
    assert {"Deployment", "Service", "NetworkPolicy", "PodDisruptionBudget"} <= set(kinds)
    deployment = fake.live("Deployment", NAMESPACE, NAME)
    assert deployment is not None and deployment["spec"]["replicas"] == 2
    [(reason, message)] = events(fake)
    assert reason == "Applied" and "created Deployment demo (2 runner(s))" in message
    [status] = status_writes(fake)
    assert status["observedGeneration"] == 1
    assert fake.live("FalApp", NAMESPACE, NAME)["status"]["observedGeneration"] == 1  # type: ignore[index]


async def test_the_echo_of_our_own_status_write_renders_nothing(
    fake: FakeKube, stores: cache.Cache
) -> None:
    op = await reconciled(fake, stores)
    written = len(fake.writes)

    echo = fake.live("FalApp", NAMESPACE, NAME)  # the status write's watch event: same generation
    assert echo is not None
    await triggers.falapp_changed(op, body=echo, indexes=stores.indexes)

    assert len(fake.writes) == written


# --- the freshness cache -------------------------------------------------------------------


async def test_indexes_lagging_behind_our_applies_cause_no_second_create(
    fake: FakeKube, stores: cache.Cache
) -> None:
    """The watch has not delivered the children yet: the apply responses stand in for them, so
    a second reconcile (a catalogue change, a retry) neither re-creates nor re-reports them."""
    body = fake.create(falapp())
    fake.watching = False  # nothing the operator writes reaches its stores
    op = operator(fake)
    await triggers.falapp_changed(op, body=body, indexes=stores.indexes)
    assert stores.indexes.live(KEY).children == {}
    written = len(fake.writes)

    op.handled.clear()  # as after a build finished: the same generation is reconciled again
    await triggers.falapp_changed(op, body=body, indexes=stores.indexes)

    assert fake.writes[written:] == []
    assert {kind for kind, _, _ in op.newest} >= {"Deployment", "Service"}

    fake.deliver()  # the watch catches up: the copies held for it are dropped
    op.handled.clear()
    await triggers.falapp_changed(op, body=body, indexes=stores.indexes)
    assert fake.writes[written:] == []
    assert op.newest == {}


async def test_a_stale_child_event_is_ignored_and_a_newer_drifted_one_is_put_back(
    fake: FakeKube, stores: cache.Cache
) -> None:
    body = fake.create(falapp())
    fake.watching = False
    op = operator(fake)
    await triggers.falapp_changed(op, body=body, indexes=stores.indexes)
    service = fake.live("Service", NAMESPACE, NAME)
    assert service is not None
    written = len(fake.writes)

    # The watch delivers an event older than our apply response (our own create's echo).
    stale = {**service, "metadata": {**service["metadata"], "resourceVersion": "1"}}
    await modified(op, stores, "Service", stale)
    assert fake.writes[written:] == []

    # Someone edits the Service by hand: a newer version that drifted.
    edited = fake.edit(
        "Service", NAMESPACE, NAME, {"spec": {"ports": [{"name": "http", "port": 1}]}}
    )
    fake.deliver()
    await modified(op, stores, "Service", edited)

    assert [(w.verb, w.kind) for w in fake.writes[written:]] == [
        ("apply", "Service"),
        ("event", "FalApp"),
    ]  # a Service tells nothing the status reads: no status write
    assert fake.live("Service", NAMESPACE, NAME) == {
        **fake.live("Service", NAMESPACE, NAME),  # type: ignore[dict-item]
        "spec": service["spec"],
    }
    assert events(fake)[-1] == ("Restored", "put back: updated Service demo")


# --- 409 conflicts -------------------------------------------------------------------------


async def test_a_conflict_on_an_apply_retries_with_the_newest_app_and_reports_no_failure(
    fake: FakeKube, stores: cache.Cache
) -> None:
    body = fake.create(falapp(scaling={"minConcurrency": 1, "maxConcurrency": 4}))
    fake.fail("apply", kind="Deployment", status=409)
    op = operator(fake)

    await triggers.falapp_changed(op, body=body, indexes=stores.indexes)

    # No status, no Event: a transient error is not reported as Degraded.
    assert {write.verb for write in fake.writes} <= {"apply"}
    assert KEY in op.retries and KEY not in op.handled
    # The user edits the app before the retry runs: the retry reconciles the newest copy.
    fake.edit("FalApp", NAMESPACE, NAME, {"spec": {"scaling": {"minConcurrency": 3}}})
    await settle(op)

    deployment = fake.live("Deployment", NAMESPACE, NAME)
    assert deployment is not None and deployment["spec"]["replicas"] == 3
    [status] = status_writes(fake)
    assert status["observedGeneration"] == 2
    assert condition(status, "Degraded")["status"] == "False"
    assert op.handled[KEY] == (body["metadata"]["uid"], 2)


async def test_a_conflict_on_the_status_write_retries_only_the_status(
    fake: FakeKube, stores: cache.Cache
) -> None:
    body = fake.create(falapp())
    fake.watching = False  # the retry must rely on the apply responses it holds
    fake.fail("patch_status", kind="FalApp", status=409)
    op = operator(fake)

    await triggers.falapp_changed(op, body=body, indexes=stores.indexes)
    applied = applied_kinds(fake)
    assert status_writes(fake) == [] and KEY in op.retries
    await settle(op)

    assert applied_kinds(fake) == applied  # children were not applied twice
    [status] = status_writes(fake)
    assert status["observedGeneration"] == 1
    assert [reason for reason, _ in events(fake)] == ["Applied"]  # one Event for one change
    assert op.handled[KEY] == (body["metadata"]["uid"], 1)


async def test_a_permanent_error_is_reported_once_as_degraded_and_not_retried(
    fake: FakeKube, stores: cache.Cache
) -> None:
    body = fake.create(falapp())
    fake.fail("apply", kind="Service", status=422, reason="Invalid", times=100)
    op = operator(fake)

    await triggers.falapp_changed(op, body=body, indexes=stores.indexes)

    assert op.retries == {}
    [status] = status_writes(fake)
    degraded = condition(status, "Degraded")
    assert degraded["status"] == "True" and "422" in degraded["message"]
    assert [reason for reason, _ in events(fake)] == [degraded["reason"]]


async def test_a_conflict_on_the_actuators_replicas_write_claims_no_scale_and_is_retried(
    fake: FakeKube, stores: cache.Cache
) -> None:
    op = await reconciled(
        fake, stores, actuated=True, scaling={"minConcurrency": 0, "maxConcurrency": 5}
    )
    written = len(fake.writes)
    signal = signals.parse_signal({"app": f"{NAMESPACE}/{NAME}", "desiredRunners": 2, "queued": 4})

    fake.fail("apply", kind="Deployment", status=409)
    with pytest.raises(runtime.ReconcileError) as raised:
        await actuation.actuate(op, signal=signal, indexes=stores.indexes)
    assert raised.value.retry  # the coalescer tries again
    assert fake.writes[written:] == []

    await actuation.actuate(op, signal=signal, indexes=stores.indexes)
    assert fake.live("Deployment", NAMESPACE, NAME)["spec"]["replicas"] == 2  # type: ignore[index]
    assert [reason for reason, _ in events(fake)][-1] == "ScaledUp"
    assert status_writes(fake)[-1]["desiredRunners"] == 2


# --- a child deleted mid-reconcile ---------------------------------------------------------


async def test_a_deleted_child_is_put_back_after_reading_the_app_from_the_api(
    fake: FakeKube, stores: cache.Cache
) -> None:
    op = await reconciled(fake, stores)
    written = len(fake.writes)

    gone = fake.remove("NetworkPolicy", NAMESPACE, NAME)
    await triggers.child_changed(
        op, kind="NetworkPolicy", event_type="DELETED", child=gone, indexes=stores.indexes
    )

    assert fake.live("NetworkPolicy", NAMESPACE, NAME) is not None
    assert [(w.verb, w.kind) for w in fake.writes[written:]] == [
        ("apply", "NetworkPolicy"),
        ("event", "FalApp"),
    ]
    assert events(fake)[-1] == ("Restored", "put back: created NetworkPolicy demo")


async def test_children_deleted_with_their_app_are_not_put_back(
    fake: FakeKube, stores: cache.Cache
) -> None:
    """The garbage collector deletes children after their FalApp: the index may still show the
    app, the API does not."""
    op = await reconciled(fake, stores)
    written = len(fake.writes)
    fake.watching = False  # the FalApp's DELETED event has not arrived yet
    fake.remove("FalApp", NAMESPACE, NAME)

    gone = fake.remove("Deployment", NAMESPACE, NAME)
    await triggers.child_changed(
        op, kind="Deployment", event_type="DELETED", child=gone, indexes=stores.indexes
    )

    assert fake.writes[written:] == []
    assert ("Deployment", NAMESPACE, NAME) not in op.versions


async def test_a_child_of_a_new_app_with_the_same_name_is_left_to_that_apps_own_event(
    fake: FakeKube, stores: cache.Cache
) -> None:
    op = await reconciled(fake, stores)
    written = len(fake.writes)
    fake.watching = False
    fake.remove("FalApp", NAMESPACE, NAME)
    fake.create(falapp())  # deleted and created again: another uid

    gone = fake.remove("Service", NAMESPACE, NAME)
    await triggers.child_changed(
        op, kind="Service", event_type="DELETED", child=gone, indexes=stores.indexes
    )

    assert fake.writes[written:] == []


async def test_an_unwanted_child_already_gone_is_no_error_and_not_reported_as_deleted(
    fake: FakeKube, stores: cache.Cache
) -> None:
    op = await reconciled(fake, stores, scaling={"minConcurrency": 2, "maxConcurrency": 4})
    assert fake.live("PodDisruptionBudget", NAMESPACE, NAME) is not None
    written = len(fake.writes)

    # The budget is no longer wanted (one runner), and vanishes before the reconcile deletes it:
    # the stores still show it.
    fake.watching = False
    fake.remove("PodDisruptionBudget", NAMESPACE, NAME)
    fake.watching = True
    edited = fake.edit("FalApp", NAMESPACE, NAME, {"spec": {"scaling": {"minConcurrency": 1}}})
    assert stores.indexes.live(KEY).children.get("PodDisruptionBudget") is not None
    await triggers.falapp_changed(op, body=edited, indexes=stores.indexes)

    new = fake.writes[written:]
    assert "delete" not in [write.verb for write in new]
    assert not any("deleted PodDisruptionBudget" in message for _, message in events(fake))
    assert op.retries == {}
    assert status_writes(fake)[-1]["observedGeneration"] == 2
    assert fake.live("Deployment", NAMESPACE, NAME)["spec"]["replicas"] == 1  # type: ignore[index]


async def test_a_status_write_for_an_app_deleted_meanwhile_is_dropped_quietly(
    fake: FakeKube, stores: cache.Cache
) -> None:
    body = fake.create(falapp())
    fake.watching = False
    fake.remove("FalApp", NAMESPACE, NAME)  # gone in the API, still in the stores
    stores.falapp(None, body)
    op = operator(fake)

    await triggers.falapp_changed(op, body=body, indexes=stores.indexes)

    assert status_writes(fake) == [] and op.retries == {}
    assert KEY not in op.written_status  # nothing cached as written: a new app starts clean


# --- the builtin actuator's signals --------------------------------------------------------


async def test_a_signal_for_an_app_that_is_gone_writes_nothing(
    fake: FakeKube, stores: cache.Cache
) -> None:
    op = await reconciled(fake, stores, actuated=True)
    written = len(fake.writes)
    # The FalApp is deleted: its DELETED event drops it from the stores and the operator.
    gone = fake.remove("FalApp", NAMESPACE, NAME)
    op.forget(livestate.app_key(gone))
    for kind in ("Deployment", "Service", "NetworkPolicy"):
        fake.remove(kind, NAMESPACE, NAME)

    await send(op, stores, {"desiredRunners": 3})
    await send(op, stores, {"desiredRunners": 1}, app="never-existed")

    assert fake.writes[written:] == []
    assert fake.objects == {}


async def test_a_scale_down_marks_idle_runners_before_it_lowers_replicas(
    fake: FakeKube, stores: cache.Cache
) -> None:
    body = fake.create(falapp(scaling={"minConcurrency": 0, "maxConcurrency": 5}))
    op = operator(fake, actuated=True)
    up = signals.parse_signal({"app": f"{NAMESPACE}/{NAME}", "desiredRunners": 3})
    op.scaling_signals[KEY] = (str(body["metadata"]["uid"]), up)
    await triggers.falapp_changed(op, body=body, indexes=stores.indexes)
    assert fake.live("Deployment", NAMESPACE, NAME)["spec"]["replicas"] == 3  # type: ignore[index]
    for index, name in enumerate(("busy", "idle-long", "idle-short")):
        fake.create(runner_pod(name, f"10.0.0.{index + 1}"))
    written = len(fake.writes)
    fake.watch_delay = 0.2  # the pod watch shows the new deletion costs 0.2 s after the writes
    costs_seen: list[dict[str, str]] = []

    def look(manifest: Any) -> None:
        if manifest["kind"] == "Deployment":
            costs_seen.append(
                {
                    pod["metadata"]["name"]: pod["metadata"]["annotations"].get(
                        naming.ANNOTATION_POD_DELETION_COST, ""
                    )
                    for pod in stores.indexes.live(KEY).pods
                }
            )

    fake.before_apply.append(look)

    down = signals.parse_signal(
        {
            "app": f"{NAMESPACE}/{NAME}",
            "desiredRunners": 1,
            "runnerDetails": [
                {"id": "busy", "ip": "10.0.0.1", "inFlight": 1, "idleSeconds": 0, "ready": True},
                {"id": "idle-long", "ip": "10.0.0.2", "inFlight": 0, "idleSeconds": 90},
                {"id": "idle-short", "ip": "10.0.0.3", "inFlight": 0, "idleSeconds": 5},
            ],
        }
    )
    await actuation.actuate(op, signal=down, indexes=stores.indexes)

    new = fake.writes[written:]
    marked = [write for write in new if write.verb == "annotate"]
    assert {write.name for write in marked} == {"busy", "idle-long", "idle-short"}
    costs = {write.name: int(write.detail[naming.ANNOTATION_POD_DELETION_COST]) for write in marked}
    assert costs["idle-long"] < costs["idle-short"] < costs["busy"]
    replicas_write = next(i for i, write in enumerate(new) if write.verb == "apply")
    assert all(new.index(write) < replicas_write for write in marked)
    assert new[replicas_write].detail["spec"] == {"replicas": 1}
    # ... and not before the operator's own pod watch shows them (the ReplicaSet controller
    # ranks pods from its own watch, which cannot be ahead of it).
    assert costs_seen == [{name: str(cost) for name, cost in costs.items()}]
    assert [write.verb for write in new[replicas_write:]] == ["apply", "event", "patch_status"]
    assert events(fake)[-1][0] == "ScaledDown"


# --- replicas belong to the actuator: drift detection never 'restores' them ---------------


async def _until(predicate: Any, description: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not predicate():
            await asyncio.sleep(0.005)
    assert predicate(), description


async def test_a_deployment_event_during_a_scale_down_leaves_replicas_to_the_actuator(
    fake: FakeKube, stores: cache.Cache
) -> None:
    """The actuator marks runners before a scale-down and waits for the pod watch; a
    Deployment event then (its status moving, as pods come and go) re-reconciles the app.
    That drift check must not apply the gateway's new count itself: it would scale down
    before the marks are visible and report the actuator's own write as 'Restored'."""
    op = await reconciled(
        fake, stores, actuated=True, scaling={"minConcurrency": 0, "maxConcurrency": 5}
    )
    await send(op, stores, {"desiredRunners": 1, "queued": 1})
    assert fake.live("Deployment", NAMESPACE, NAME)["spec"]["replicas"] == 1  # type: ignore[index]
    fake.create(runner_pod("runner-1", "10.0.0.1"))
    written = len(fake.writes)

    fake.watch_delay = 0.3  # the pod watch shows the deletion cost 0.3 s after its write
    scaling_down = asyncio.create_task(send(op, stores, {"desiredRunners": 0}))
    await _until(
        lambda: any(write.verb == "annotate" for write in fake.writes[written:]),
        "the actuator marked the runner",
    )
    # Meanwhile the Deployment's status moves (the runner became ready): a child event.
    moved = fake.edit("Deployment", NAMESPACE, NAME, {"status": {"readyReplicas": 1}})
    await modified(op, stores, "Deployment", moved)
    await scaling_down

    assert fake.live("Deployment", NAMESPACE, NAME)["spec"]["replicas"] == 0  # type: ignore[index]
    new = fake.writes[written:]
    replicas_writes = [write for write in new if write.verb == "apply"]
    assert [write.detail["spec"] for write in replicas_writes] == [{"replicas": 0}]
    assert [write.detail["manager"] for write in replicas_writes] == [kube.REPLICAS_FIELD_MANAGER]
    reasons = [str(write.detail["reason"]) for write in new if write.verb == "event"]
    assert reasons == ["ScaledDown"]


async def test_hand_edited_replicas_are_put_back_to_the_actuators_count(
    fake: FakeKube, stores: cache.Cache
) -> None:
    op = await reconciled(
        fake, stores, actuated=True, scaling={"minConcurrency": 0, "maxConcurrency": 5}
    )
    await send(op, stores, {"desiredRunners": 2, "queued": 2})
    edited = fake.edit("Deployment", NAMESPACE, NAME, {"spec": {"replicas": 4}})
    await modified(op, stores, "Deployment", edited)
    assert fake.live("Deployment", NAMESPACE, NAME)["spec"]["replicas"] == 2  # type: ignore[index]
    assert events(fake)[-1] == ("Restored", "put back: set replicas 4 -> 2 (bounds 0..5)")


# --- signals for apps the operator does not know -------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = datetime.datetime(2026, 1, 1, 12, 0, 0, 500000, tzinfo=datetime.UTC)

    def __call__(self) -> datetime.datetime:
        return self.now


def _stamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_a_new_app_never_starts_from_a_late_signal_of_a_deleted_app_of_that_name(
    fake: FakeKube, stores: cache.Cache
) -> None:
    clock = Clock()
    op = operator(fake, actuated=True)
    op.unclaimed_signals.clock = clock
    old = fake.create(falapp(scaling={"minConcurrency": 0, "maxConcurrency": 5}))
    await triggers.falapp_changed(op, body=old, indexes=stores.indexes)
    fake.remove("FalApp", NAMESPACE, NAME)
    op.forget(KEY)
    fake.remove("Deployment", NAMESPACE, NAME)
    # The gateway had not seen the delete yet: a late signal for the old app.
    await send(op, stores, {"desiredRunners": 4, "queued": 4})

    clock.now += datetime.timedelta(seconds=5)  # a new app of that name, well within the bound
    manifest = falapp(scaling={"minConcurrency": 0, "maxConcurrency": 5})
    manifest["metadata"]["creationTimestamp"] = _stamp(clock.now)
    new = fake.create(manifest)
    await triggers.falapp_changed(op, body=new, indexes=stores.indexes)

    assert fake.live("Deployment", NAMESPACE, NAME)["spec"]["replicas"] == 0  # type: ignore[index]
    assert op.signal(KEY, uid=new["metadata"]["uid"]) is None
    assert len(op.unclaimed_signals.held) == 0


async def test_a_signal_that_came_before_its_app_sizes_the_new_deployment(
    fake: FakeKube, stores: cache.Cache
) -> None:
    """What unknown-app signals are for: the gateway saw the new app first."""
    clock = Clock()
    op = operator(fake, actuated=True)
    op.unclaimed_signals.clock = clock
    manifest = falapp(scaling={"minConcurrency": 0, "maxConcurrency": 5})
    manifest["metadata"]["creationTimestamp"] = _stamp(clock.now)  # within the same second
    await send(op, stores, {"desiredRunners": 2, "queued": 2})
    body = fake.create(manifest)
    await triggers.falapp_changed(op, body=body, indexes=stores.indexes)
    assert fake.live("Deployment", NAMESPACE, NAME)["spec"]["replicas"] == 2  # type: ignore[index]


async def test_an_unknown_apps_signal_expires_and_a_deleted_apps_signal_is_dropped(
    fake: FakeKube, stores: cache.Cache
) -> None:
    clock = Clock()
    op = operator(fake, actuated=True)
    op.unclaimed_signals.clock = clock
    await send(op, stores, {"desiredRunners": 2})
    clock.now += datetime.timedelta(seconds=runtime.UNCLAIMED_SIGNAL_SECONDS + 1)
    body = fake.create(falapp(scaling={"minConcurrency": 0, "maxConcurrency": 5}))
    await triggers.falapp_changed(op, body=body, indexes=stores.indexes)
    assert fake.live("Deployment", NAMESPACE, NAME)["spec"]["replicas"] == 0  # type: ignore[index]

    await send(op, stores, {"desiredRunners": 1}, app="other")
    assert list(op.unclaimed_signals.held) == [(NAMESPACE, "other")]
    op.forget((NAMESPACE, "other"))  # its DELETED event
    assert len(op.unclaimed_signals.held) == 0


async def test_signals_of_unknown_apps_are_held_up_to_the_limit(
    fake: FakeKube, stores: cache.Cache
) -> None:
    op = operator(fake, actuated=True)
    op.unclaimed_signals.limit = 3
    for index in range(5):
        await send(op, stores, {"desiredRunners": 1}, app=f"app-{index}")
    assert list(op.unclaimed_signals.held) == [(NAMESPACE, f"app-{i}") for i in (2, 3, 4)]
    assert runtime.UnclaimedSignals().limit == runtime.UNCLAIMED_SIGNALS_LIMIT == 1000


async def test_a_signal_acted_on_for_an_app_is_not_read_by_a_new_app_of_that_name(
    fake: FakeKube, stores: cache.Cache
) -> None:
    """Keyed by uid: even when the old app's DELETED event was missed (a watch gap)."""
    op = await reconciled(
        fake, stores, actuated=True, scaling={"minConcurrency": 0, "maxConcurrency": 5}
    )
    await send(op, stores, {"desiredRunners": 3, "queued": 3})
    # The app and its children are deleted; the operator's handler misses the FalApp's
    # DELETED event (no op.forget), the children's events drop them as usual.
    for kind in ("FalApp", "Deployment", "Service", "NetworkPolicy"):
        op.dropped(fake.remove(kind, NAMESPACE, NAME))
    new = fake.create(falapp(scaling={"minConcurrency": 0, "maxConcurrency": 5}))
    await triggers.falapp_changed(op, body=new, indexes=stores.indexes)
    assert fake.live("Deployment", NAMESPACE, NAME)["spec"]["replicas"] == 0  # type: ignore[index]
    assert status_writes(fake)[-1].get("desiredRunners", 0) == 0


@pytest.mark.parametrize("scaler", ["keda", "hpa"])
async def test_replicas_another_scaler_writes_within_the_bounds_are_left_alone(
    fake: FakeKube, stores: cache.Cache, scaler: str
) -> None:
    op = await reconciled(
        fake,
        stores,
        actuated=True,
        scaler=scaler,
        scaling={"minConcurrency": 1, "maxConcurrency": 5},
    )
    await send(op, stores, {"desiredRunners": 2})
    written = len(fake.writes)
    scaled = fake.edit("Deployment", NAMESPACE, NAME, {"spec": {"replicas": 4}})  # its scaler
    await modified(op, stores, "Deployment", scaled)
    assert fake.live("Deployment", NAMESPACE, NAME)["spec"]["replicas"] == 4  # type: ignore[index]
    assert [write for write in fake.writes[written:] if write.verb in ("apply", "event")] == []
