"""set_condition keeps lastTransitionTime unless the status changes (meta.SetStatusCondition)."""

from __future__ import annotations

import datetime

from kubefal_api import conditions, v1alpha1

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
T1 = T0 + datetime.timedelta(minutes=5)


def scheduled(
    existing: list[v1alpha1.Condition],
    status: v1alpha1.ConditionStatus,
    reason: conditions.Reason,
    now: datetime.datetime,
) -> list[v1alpha1.Condition]:
    return conditions.set_condition(
        existing,
        condition_type=v1alpha1.ConditionType.SCHEDULED,
        status=status,
        reason=reason,
        message=f"{reason}",
        observed_generation=3,
        now=now,
    )


def test_a_new_condition_is_appended_with_now() -> None:
    ready = scheduled([], v1alpha1.ConditionStatus.TRUE, conditions.Reason.RUNNERS_SCHEDULED, T0)
    assert len(ready) == 1
    assert ready[0].last_transition_time == T0
    assert ready[0].observed_generation == 3


def test_same_status_keeps_the_transition_time_but_updates_reason_and_message() -> None:
    first = scheduled(
        [], v1alpha1.ConditionStatus.FALSE, conditions.Reason.WAITING_FOR_CAPACITY, T0
    )
    second = scheduled(
        first, v1alpha1.ConditionStatus.FALSE, conditions.Reason.WAITING_FOR_GPU_CAPACITY, T1
    )
    assert second[0].last_transition_time == T0
    assert second[0].reason == "WaitingForGPUCapacity"


def test_a_status_change_moves_the_transition_time() -> None:
    first = scheduled(
        [], v1alpha1.ConditionStatus.FALSE, conditions.Reason.WAITING_FOR_GPU_CAPACITY, T0
    )
    second = scheduled(
        first, v1alpha1.ConditionStatus.TRUE, conditions.Reason.RUNNERS_SCHEDULED, T1
    )
    assert second[0].last_transition_time == T1
    assert second[0].status is v1alpha1.ConditionStatus.TRUE


def test_other_conditions_keep_their_place_and_the_input_is_not_modified() -> None:
    ready = v1alpha1.Condition(
        type=v1alpha1.ConditionType.READY,
        status=v1alpha1.ConditionStatus.TRUE,
        reason=conditions.Reason.RUNNERS_READY,
        last_transition_time=T0,
    )
    existing = [
        ready,
        *scheduled([], v1alpha1.ConditionStatus.TRUE, conditions.Reason.RUNNERS_SCHEDULED, T0),
    ]
    updated = scheduled(
        existing, v1alpha1.ConditionStatus.FALSE, conditions.Reason.UNSCHEDULABLE, T1
    )
    assert [c.type for c in updated] == [
        v1alpha1.ConditionType.READY,
        v1alpha1.ConditionType.SCHEDULED,
    ]
    assert updated[0] is ready
    assert existing[1].status is v1alpha1.ConditionStatus.TRUE


def test_every_reason_is_a_valid_kubernetes_reason() -> None:
    for reason in conditions.Reason:
        v1alpha1.Condition(
            type=v1alpha1.ConditionType.DEGRADED,
            status=v1alpha1.ConditionStatus.UNKNOWN,
            reason=reason,
            last_transition_time=T0,
        )
