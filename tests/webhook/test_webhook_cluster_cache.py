"""The webhook's TTL cache: the catalogue and node capacity are reused, then refreshed."""

from __future__ import annotations

import pytest

from kubefal_webhook import cluster


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Loader:
    """Returns 1, 2, 3, ... per call, or raises ClusterStateError while ``failing``."""

    def __init__(self) -> None:
        self.calls = 0
        self.failing = False

    def __call__(self) -> int:
        if self.failing:
            raise cluster.ClusterStateError("API server unreachable")
        self.calls += 1
        return self.calls


def test_a_value_is_reused_until_its_ttl_passes_then_read_again() -> None:
    clock, load = Clock(), Loader()
    cache: cluster.TtlCache[int] = cluster.TtlCache(30.0, clock=clock)
    assert cache.get("catalogue", load) == 1
    clock.now += 29.9
    assert cache.get("catalogue", load) == 1
    clock.now += 0.2
    assert cache.get("catalogue", load) == 2
    assert load.calls == 2


def test_keys_are_cached_separately() -> None:
    clock, load = Clock(), Loader()
    cache: cluster.TtlCache[int] = cache_of(clock)
    assert (cache.get("a", load), cache.get("b", load), cache.get("a", load)) == (1, 2, 1)


def test_a_failed_refresh_falls_back_to_the_last_value() -> None:
    clock, load = Clock(), Loader()
    cache = cache_of(clock)
    assert cache.get("catalogue", load) == 1
    clock.now += 60
    load.failing = True
    assert cache.get("catalogue", load) == 1
    load.failing = False
    assert cache.get("catalogue", load) == 2


def test_a_failed_first_read_raises() -> None:
    load = Loader()
    load.failing = True
    with pytest.raises(cluster.ClusterStateError, match="unreachable"):
        cache_of(Clock()).get("catalogue", load)


def test_a_zero_ttl_reads_every_time() -> None:
    clock, load = Clock(), Loader()
    cache: cluster.TtlCache[int] = cluster.TtlCache(0.0, clock=clock)
    assert [cache.get("k", load) for _ in range(3)] == [1, 2, 3]


def cache_of(clock: Clock) -> cluster.TtlCache[int]:
    return cluster.TtlCache(30.0, clock=clock)
