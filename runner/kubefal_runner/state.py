"""The runner's lifecycle and admission state, free of HTTP: what probes and the guard consult.

A runner goes ``setup`` → ``ready`` → ``draining`` → ``stopped`` (or ``setup`` → ``failed``), and
from ``ready`` to ``unhealthy`` when the app's health check failed (for good: Kubernetes restarts
it). It admits a request only while ready and below ``max_multiplexing``, which the SDK never
enforces. All methods run on the event loop thread, so plain integers are enough.

A request's slot is free again as soon as its response is complete (`answered`), as fal counts a
runner's requests and as the gateway frees its own slot when the answer arrives: a client (or the
gateway) that sends the next request right after an answer must not be refused as busy because the
ASGI call is still unwinding (middleware, Starlette background tasks). What the app still does after
its answer keeps a drain waiting (`finishing`) until the ASGI call returns.
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
        """Admitted requests and sessions not answered yet: what ``max_multiplexing`` limits."""
        self.finishing = 0
        """Answered requests whose ASGI call has not returned yet (work after the answer)."""
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

    def answered(self) -> None:
        """An admitted request's response is complete: its slot admits the next request; the
        request stays `finishing` until `release(answered=True)`."""
        self.in_flight -= 1
        self.finishing += 1

    def release(self, *, answered: bool = False) -> None:
        """The ASGI call of a request admitted by `try_admit` returned (``answered``: after
        `answered` gave its slot back already)."""
        if answered:
            self.finishing -= 1
        else:
            self.in_flight -= 1
        if self.busy == 0 and self._idle is not None:
            self._idle.set()

    @property
    def busy(self) -> int:
        """Requests a drain waits for: in flight, or answered with work still running."""
        return self.in_flight + self.finishing

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
        """Wait until nothing is in flight or finishing; False when ``timeout`` seconds passed
        first."""
        if self.busy == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout)
        except TimeoutError:
            return False
        finally:
            self._idle = None
        return True
