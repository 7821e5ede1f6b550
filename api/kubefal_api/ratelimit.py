"""Token buckets keyed by a string (an API key id, a client IP), with bounded memory.

Why it exists (here, in the shared leaf): the gateway and the control plane both throttle
failed API-key verifications per key id and per client IP, and the gateway rate-limits requests
per API key; all three are "N per period, with a burst" per key, and an
attacker controls how many distinct keys it presents, so the table must not grow without bound.
A bucket holds at most ``burst`` tokens and gains ``rate`` tokens per second. When the table
reaches ``max_keys``, buckets that have refilled completely are dropped (a full bucket is the
same as no bucket); if every bucket is still in use, the oldest half is dropped, which errs on
the side of admitting callers rather than growing memory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal


class TokenBuckets:
    """``take(key)`` admits or says how long to wait; ``refund(key)`` gives a token back."""

    def __init__(
        self,
        *,
        rate: float,
        burst: float,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self._clock = clock
        # key -> (tokens at `stamp`, stamp)
        self._buckets: dict[str, tuple[float, float]] = {}

    def _level(self, key: str, now: float) -> float:
        entry = self._buckets.get(key)
        if entry is None:
            return self.burst
        tokens, stamp = entry
        return min(self.burst, tokens + (now - stamp) * self.rate)

    def take(self, key: str, cost: float = 1.0) -> float:
        """Take ``cost`` tokens: 0.0 when admitted, else the seconds until they would be there."""
        now = self._clock()
        level = self._level(key, now)
        if level >= cost:
            if key not in self._buckets and len(self._buckets) >= self.max_keys:
                self._prune(now)
            self._buckets[key] = (level - cost, now)
            return 0.0
        return (cost - level) / self.rate

    def refund(self, key: str, amount: float = 1.0) -> None:
        """Give ``amount`` tokens back (e.g. the attempt succeeded after all)."""
        if key not in self._buckets:
            return
        now = self._clock()
        self._buckets[key] = (min(self.burst, self._level(key, now) + amount), now)

    def retry_after(self, wait: float) -> int:
        """Whole seconds for a `Retry-After` header (at least 1)."""
        return max(1, math.ceil(wait))

    def __len__(self) -> int:
        return len(self._buckets)

    def _prune(self, now: float) -> None:
        full = [key for key in self._buckets if self._level(key, now) >= self.burst]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self.max_keys:
            oldest = sorted(self._buckets, key=lambda key: self._buckets[key][1])
            for key in oldest[: len(oldest) // 2 + 1]:
                del self._buckets[key]


class FailureThrottle:
    """Failed API-key verifications, budgeted per client address and per key id.

    A caller takes a token from both budgets before it computes a key's hash (``take``) and
    gives them back when the key was right (``refund``), so only failures use the budgets up.
    ``per_minute`` of 0 turns that budget off. ``take`` answers None (go on and verify) or the
    budget that ran out and the whole seconds to wait; the address budget is then not charged
    for a refusal the key id's budget made.
    """

    def __init__(
        self,
        *,
        per_key: int,
        per_ip: int,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._per_key = self._buckets(per_key, max_keys, clock)
        self._per_ip = self._buckets(per_ip, max_keys, clock)

    @staticmethod
    def _buckets(per_minute: int, max_keys: int, clock: Callable[[], float]) -> TokenBuckets | None:
        if per_minute <= 0:
            return None
        return TokenBuckets(
            rate=per_minute / 60.0, burst=per_minute, max_keys=max_keys, clock=clock
        )

    def take(self, key_id: str, client: str | None) -> tuple[Literal["ip", "key"], int] | None:
        if self._per_ip is not None and client:
            wait = self._per_ip.take(client)
            if wait:
                return "ip", self._per_ip.retry_after(wait)
        if self._per_key is not None:
            wait = self._per_key.take(key_id)
            if wait:
                if self._per_ip is not None and client:
                    self._per_ip.refund(client)
                return "key", self._per_key.retry_after(wait)
        return None

    def refund(self, key_id: str, client: str | None) -> None:
        if self._per_ip is not None and client:
            self._per_ip.refund(client)
        if self._per_key is not None:
            self._per_key.refund(key_id)

    def tracked(self) -> tuple[int, int]:
        """(key ids, client addresses) held in the tables."""
        return (
            0 if self._per_key is None else len(self._per_key),
            0 if self._per_ip is None else len(self._per_ip),
        )
