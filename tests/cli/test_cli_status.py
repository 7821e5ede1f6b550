"""`kubefal apps` and `kubefal runners`: rows a person can read, from raw API objects."""

from __future__ import annotations

from typing import Any

import pytest

from kubefal_cli.commands import deploy, inspect


def _pod(
    *,
    phase: str = "Running",
    ready: bool = False,
    waiting: dict[str, str] | None = None,
    unschedulable: str | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    conditions: list[dict[str, str]] = [{"type": "Ready", "status": str(ready)}]
    if unschedulable is not None:
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": unschedulable,
            }
        )
    container_state = {"waiting": waiting} if waiting else {"running": {}}
    metadata: dict[str, Any] = {"name": "runner-1"}
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": metadata,
        "status": {
            "phase": phase,
            "conditions": conditions,
            "containerStatuses": [] if unschedulable else [{"state": container_state}],
        },
    }


@pytest.mark.parametrize(
    ("pod", "state"),
    [
        (_pod(ready=True), "Ready"),
        (_pod(ready=False), "Setup"),
        (_pod(deleting=True, ready=True), "Draining"),
        (
            _pod(phase="Pending", unschedulable="0/5 nodes have free nvidia.com/gpu"),
            "Pending: Unschedulable 0/5 nodes have free nvidia.com/gpu",
        ),
        (
            _pod(waiting={"reason": "CrashLoopBackOff", "message": "back-off 10s"}),
            "CrashLoopBackOff: back-off 10s",
        ),
        (_pod(phase="Pending", waiting={"reason": "ContainerCreating"}), "ContainerCreating"),
    ],
)
def test_a_runner_pod_is_summarised_by_what_it_is_waiting_for(
    pod: dict[str, Any], state: str
) -> None:
    assert inspect.pod_state(pod) == state


def test_an_app_row_shows_gpus_only_for_gpu_machines_and_status_counts() -> None:
    gpu_app = {
        "metadata": {"name": "sdxl", "namespace": "team-a"},
        "spec": {
            "machineTypes": ["GPU-H100", "GPU-A100"],
            "numGpus": 2,
            "auth": "shared",
            "scaling": {"minConcurrency": 1, "maxConcurrency": 8},
        },
        "status": {"machineType": "GPU-A100", "replicas": 3, "readyReplicas": 2, "phase": "Ready"},
    }
    cpu_app = {"metadata": {"name": "echo", "namespace": "team-a"}, "spec": {}}

    assert inspect.falapp_row(gpu_app) == (
        "team-a/sdxl",
        "GPU-A100",
        "2",
        "1/8",
        "3",
        "2",
        "shared",
        "Ready",
    )
    assert inspect.falapp_row(cpu_app) == (
        "team-a/echo",
        "S",
        "-",
        "0/10",
        "0",
        "0",
        "private",
        "Pending",
    )


def _falapp(
    *, observed: int, phase: str, scheduled_reason: str = "RunnersScheduled"
) -> dict[str, Any]:
    return {
        "metadata": {"name": "app", "generation": 2},
        "status": {
            "observedGeneration": observed,
            "phase": phase,
            "conditions": [{"type": "Scheduled", "status": "False", "reason": scheduled_reason}],
        },
    }


@pytest.mark.parametrize(
    ("falapp", "outcome"),
    [
        (_falapp(observed=1, phase="Ready"), deploy.Outcome.WAITING),
        (_falapp(observed=2, phase="Ready"), deploy.Outcome.READY),
        (_falapp(observed=2, phase="ScaledToZero"), deploy.Outcome.READY),
        (_falapp(observed=2, phase="Progressing"), deploy.Outcome.WAITING),
        (
            _falapp(
                observed=2, phase="WaitingForCapacity", scheduled_reason="WaitingForGPUCapacity"
            ),
            deploy.Outcome.WAITING_FOR_CAPACITY,
        ),
        (_falapp(observed=2, phase="Degraded"), deploy.Outcome.DEGRADED),
        (_falapp(observed=2, phase="WaitingForCapacity"), deploy.Outcome.WAITING_FOR_CAPACITY),
        ({"metadata": {"name": "app"}}, deploy.Outcome.WAITING),
    ],
)
def test_deploy_waits_until_the_status_of_this_generation_says_ready_short_or_broken(
    falapp: dict[str, Any], outcome: deploy.Outcome
) -> None:
    assert deploy.rollout_outcome(falapp, generation=2) is outcome
