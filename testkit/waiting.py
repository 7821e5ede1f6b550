"""Waiting for a condition with a deadline, instead of sleeping and hoping.

Tests wait on processes and on the cluster (a server answering, a pod scheduled, a status
written, a child put back); on a loaded 2-core machine the time that takes varies a lot, so
they poll a predicate until it holds or a generous timeout passes, and fail with what they
saw last. One copy for ``tests/``, ``e2e/`` and ``bench/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class GiveUp(Exception):
    """Raised by a predicate to stop waiting at once (the awaited thing can no longer happen,
    e.g. the process exited); ``wait_for`` lets it through instead of polling on."""


class ConditionTimeout(AssertionError):
    """The awaited condition did not hold in time; the message says what was last seen."""


def wait_for(
    predicate: Callable[[], T | None],
    *,
    timeout: float = 60.0,
    interval: float = 0.2,
    description: str = "condition",
    describe_last: Callable[[], str] | None = None,
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
        except GiveUp:
            raise
        except Exception as error:  # the API may be briefly unavailable; keep polling
            last_error = error
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            seen = describe_last() if describe_last else ""
            raise ConditionTimeout(
                f"timed out after {timeout:.0f}s waiting for {description}"
                + (f"; last error: {last_error!r}" if last_error else "")
                + (f"\n{seen}" if seen else "")
            )
        time.sleep(interval)
