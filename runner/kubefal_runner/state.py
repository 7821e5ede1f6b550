"""The runner's lifecycle and admission state, free of HTTP: what probes and the guard consult.

A runner goes ``setup`` → ``ready`` → ``draining`` → ``stopped`` (or ``setup`` → ``failed``), and
from ``ready`` to ``unhealthy`` when the app's health check failed (for good: Kubernetes restarts
it). It admits a request only while ready and below ``max_multiplexing``, which the SDK never
enforces. All methods run on the event loop thread, so plain integers are enough.
"""

from __future__ import annotations

import asyncio
import enum


class Phase(enum.StrEnum):
    """Where the runner is in its life."""

    SETUP = "setup"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"
    UNHEALTHY = "unhealthy"
    """The app's health check failed: no new requests, probes fail until the pod restarts."""


class Rejection(enum.StrEnum):
    """Why a request was not admitted; every reason means "try another runner"."""

    NOT_READY = "not-ready"
    DRAINING = "draining"
    BUSY = "busy"
    UNHEALTHY = "unhealthy"


_PHASE_REJECTIONS = {Phase.DRAINING: Rejection.DRAINING, Phase.UNHEALTHY: Rejection.UNHEALTHY}


class RunnerState:
    """Lifecycle phase plus the count of admitted requests and WebSocket sessions."""

    def __init__(self, *, max_multiplexing: int) -> None:
        if max_multiplexing < 1:
            raise ValueError(f"max_multiplexing must be at least 1, got {max_multiplexing}")
        self.max_multiplexing = max_multiplexing
        self.phase = Phase.SETUP
        self.in_flight = 0
        self.admitted_total = 0
        self.rejected_total: dict[Rejection, int] = dict.fromkeys(Rejection, 0)
        self._idle: asyncio.Event | None = None

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    def try_admit(self) -> Rejection | None:
        """Take a slot and return None, or return why no slot is given."""
        if self.phase is not Phase.READY:
            rejection = _PHASE_REJECTIONS.get(self.phase, Rejection.NOT_READY)
        elif self.in_flight >= self.max_multiplexing:
            rejection = Rejection.BUSY
        else:
            self.in_flight += 1
            self.admitted_total += 1
            return None
        self.rejected_total[rejection] += 1
        return rejection

    def release(self) -> None:
        """Give back a slot taken by `try_admit`."""
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    def mark_ready(self) -> None:
        """setup() finished: admit requests (unless a drain already began)."""
        if self.phase is Phase.SETUP:
            self.phase = Phase.READY

    def mark_unhealthy(self) -> None:
        """The health check failed: stop admitting; requests already admitted carry on."""
        if self.phase is Phase.READY:
            self.phase = Phase.UNHEALTHY

    def mark_failed(self) -> None:
        self.phase = Phase.FAILED

    def mark_stopped(self) -> None:
        self.phase = Phase.STOPPED

    def begin_drain(self) -> None:
        """Stop admitting; requests already admitted carry on."""
        if self.phase in (Phase.SETUP, Phase.READY, Phase.UNHEALTHY):
            self.phase = Phase.DRAINING

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is in flight; False when ``timeout`` seconds passed first."""
        if self.in_flight == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout)
        except TimeoutError:
            return False
        finally:
            self._idle = None
        return True
