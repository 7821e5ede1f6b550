"""The failed-verification budgets the gateway and the control plane share
(`kubefal_api.ratelimit.FailureThrottle`): pure logic on a fake clock."""

from __future__ import annotations

from kubefal_api import ratelimit


def _throttle(per_key: int, per_ip: int) -> tuple[ratelimit.FailureThrottle, list[float]]:
    now = [0.0]
    return ratelimit.FailureThrottle(per_key=per_key, per_ip=per_ip, clock=lambda: now[0]), now


def test_a_key_ids_budget_runs_out_and_refills_while_other_ids_go_on() -> None:
    throttle, now = _throttle(per_key=2, per_ip=0)

    assert throttle.take("kfa", "192.0.2.1") is None
    assert throttle.take("kfa", "192.0.2.2") is None
    assert throttle.take("kfa", "192.0.2.3") == ("key", 30)  # 2 a minute: one back in 30 s
    assert throttle.take("kfb", "192.0.2.1") is None
    now[0] += 30.0
    assert throttle.take("kfa", "192.0.2.1") is None


def test_an_address_budget_runs_out_across_key_ids() -> None:
    throttle, _ = _throttle(per_key=0, per_ip=2)

    assert throttle.take("kfa", "192.0.2.1") is None
    assert throttle.take("kfb", "192.0.2.1") is None
    assert throttle.take("kfc", "192.0.2.1") == ("ip", 30)
    assert throttle.take("kfc", "192.0.2.2") is None
    assert throttle.take("kfc", None) is None  # no address known: only the id's budget


def test_a_right_key_gives_its_tokens_back() -> None:
    throttle, _ = _throttle(per_key=1, per_ip=1)

    for _ in range(5):
        assert throttle.take("kfa", "192.0.2.1") is None
        throttle.refund("kfa", "192.0.2.1")


def test_a_refusal_by_the_key_ids_budget_does_not_charge_the_address() -> None:
    throttle, _ = _throttle(per_key=1, per_ip=2)

    assert throttle.take("kfa", "192.0.2.1") is None
    assert throttle.take("kfa", "192.0.2.1") == ("key", 60)
    # the refused call took no address token: one is left for another id
    assert throttle.take("kfb", "192.0.2.1") is None
    assert throttle.take("kfc", "192.0.2.1") == ("ip", 30)


def test_zero_turns_a_budget_off_and_the_tables_are_counted() -> None:
    throttle, _ = _throttle(per_key=0, per_ip=0)

    for number in range(100):
        assert throttle.take("kfa", f"192.0.2.{number}") is None
    assert throttle.tracked() == (0, 0)
    limited, _ = _throttle(per_key=5, per_ip=5)
    limited.take("kfa", "192.0.2.1")
    limited.take("kfb", "192.0.2.1")
    assert limited.tracked() == (2, 1)
