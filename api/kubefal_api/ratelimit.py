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
