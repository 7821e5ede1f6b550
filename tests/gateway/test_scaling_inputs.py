"""The inputs of the countStarting scaling policy as the gateway gathers them.

Starting runners and cold-start times come from the runner table, fed by the Pod watch
(discovery); the mean request time from the app's slots. The policy itself is pure and tested
in test_scaling.py; here, that pod events and answered requests reach its inputs.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest

from kubefal_gateway import dispatch, runners, upstream
from tests.gateway.test_gateway_units import _REPLICA_SET, _discovery, _pod

APP = "team/gen"


def pod(
    name: str,
    *,
    ready: bool = False,
    node: str | None = "gpu-1",
    phase: str = "Running",
    ip: str | None = "127.0.0.77",  # loopback: the probe of a Ready pod stays local
    restarts: int = 0,
    waiting: str | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    """A runner pod of the app "team/gen", at some point of its start."""
    body: dict[str, Any] = copy.deepcopy(_pod(name, ip=ip, ready=ready, deleting=deleting))
    if node is not None:
        body["spec"] = {"nodeName": node}
    status = body["status"]
    status["phase"] = phase
    state = {"waiting": {"reason": waiting}} if waiting else {"running": {}}
    status["containerStatuses"] = [{"name": "runner", "restartCount": restarts, "state": state}]
    return body


@pytest.fixture
def table() -> Any:
    created = runners.RunnerTable(client=upstream.UpstreamClient(), probe_interval=60)
    yield created
    created.close()


def ages(table: runners.RunnerTable) -> tuple[int, int]:
    """(timed, untimed) starting runners of the app."""
    timed, untimed = table.starting_ages(APP, time.monotonic())
    return len(timed), untimed


async def test_a_pod_is_starting_from_first_sight_until_ready_and_its_cold_start_is_kept(
    table: runners.RunnerTable,
) -> None:
    watcher = _discovery(table)
    watcher._on_replica_set("ADDED", _REPLICA_SET)

    watcher._on_pod("ADDED", pod("gen-1", node=None, phase="Pending", ip=None))
    unscheduled = ages(table)
    watcher._on_pod("MODIFIED", pod("gen-1"))
    scheduled = ages(table)
    watcher._on_pod("MODIFIED", pod("gen-1", ready=True))  # kwok: Ready before the port answers
    probing = ages(table)
    watcher.announce("127.0.0.77", pod_name="gen-1")
    after_ready = ages(table)
    cold_start = table.cold_start_seconds(APP)
    watcher._on_pod("MODIFIED", pod("gen-1", ready=False))  # unready later: no new start
    unready_later = ages(table)

    assert unscheduled == (0, 1)  # counts as capacity, no head start: it may wait for GPUs
    assert scheduled == (1, 0)
    assert probing == (1, 0)
    assert after_ready == (0, 0)
    assert cold_start is not None and cold_start >= 0
    assert unready_later == (0, 0)


@pytest.mark.parametrize(
    "stuck",
    [
        pod("gen-2", restarts=1),
        pod("gen-2", phase="Pending", waiting="ImagePullBackOff"),
        pod("gen-2", waiting="CrashLoopBackOff"),
    ],
    ids=["restarted", "image-pull-back-off", "crash-loop"],
)
async def test_a_restarted_or_backing_off_pod_gets_no_head_start(
    table: runners.RunnerTable, stuck: dict[str, Any]
) -> None:
    watcher = _discovery(table)
    watcher._on_replica_set("ADDED", _REPLICA_SET)

    watcher._on_pod("ADDED", stuck)

    assert ages(table) == (0, 1)


async def test_deleted_terminating_and_unlisted_pods_are_no_longer_starting(
    table: runners.RunnerTable,
) -> None:
    watcher = _discovery(table)
    watcher._on_replica_set("ADDED", _REPLICA_SET)
    for name in ("gen-1", "gen-2", "gen-3"):
        watcher._on_pod("ADDED", pod(name))
    three = ages(table)

    watcher._on_pod("DELETED", pod("gen-1"))
    watcher._on_pod("MODIFIED", pod("gen-2", deleting=True))
    one = ages(table)
    watcher._relist_pods([])

    assert three == (3, 0)
    assert one == (1, 0)
    assert ages(table) == (0, 0)
    assert table.starting == {} and table.ever_ready == {}


async def test_a_pod_first_seen_in_a_relist_is_starting_but_its_start_is_not_timed(
    table: runners.RunnerTable,
) -> None:
    watcher = _discovery(table)
    watcher._on_replica_set("ADDED", _REPLICA_SET)

    watcher._relist_pods([pod("gen-1")])  # e.g. the gateway restarted while it started
    listed = ages(table)
    watcher.announce("127.0.0.77", pod_name="gen-1")

    assert listed == (1, 0)
    assert table.cold_start_seconds(APP) is None  # how long it really took is unknown


def test_the_mean_cold_start_weighs_recent_starts_most() -> None:
    mean = runners.Mean(0.5)
    mean.add(4.0)
    first = mean.value
    mean.add(2.0)

    assert (first, mean.value) == (4.0, 3.0)


async def test_an_answered_request_feeds_its_apps_mean_request_time() -> None:
    table = runners.RunnerTable(client=upstream.UpstreamClient(), probe_interval=60)
    runner = runners.Runner(runner_id="r", app_id=APP, host="127.0.0.1", port=1, ready=True)
    table.by_app[APP] = {"r": runner}
    slots = dispatch.AppSlots(table=table, app_id=APP, max_multiplexing=1)
    taken = slots.try_acquire()
    assert taken is runner
    before = slots.request_seconds.value

    answered = dispatch.ForwardResult(
        response=None,  # type: ignore[arg-type]  # release() does not read it
        runner=runner,
        slots=slots,
        attempts=1,
        started=time.monotonic() - 0.5,
    )
    answered.release()
    answered.release()  # a second release changes nothing

    assert before is None
    assert slots.request_seconds.value is not None
    assert 0.5 <= slots.request_seconds.value < 5.0
    assert runner.in_flight == 0
