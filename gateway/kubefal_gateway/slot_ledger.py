"""Runner slots shared by gateway replicas on one Redis, so `maxMultiplexing` holds across them.

Why it exists: each gateway hands out a runner's slots from its own count (dispatch.AppSlots), so
two replicas on one Redis would each send up to `maxMultiplexing` requests to the same runner.
With a Redis store, a slot taken locally is also claimed in Redis (one auto-pipelined script,
``claim_slot`` in stores/redis_scripts.py): per runner, a hash of holder -> slots held, checked and
incremented atomically against the other gateways' counts. A refused claim gives the local slot
back and marks the runner as full (`runners.Runner.elsewhere`) until a gateway frees one of its
slots (a ``SLOT_FREED`` message, published only when the runner was full) or the next heartbeat.

Failure handling: a gateway's counts are counted only while its heartbeat key lives (refreshed
every `HEARTBEAT_SECONDS`, expiring after `HOLDER_TTL_SECONDS`), so the slots of a gateway that
dies are free again after the TTL. The heartbeat also overwrites the gateway's own counts with its
local, exact ones, repairing any release lost to a Redis fault. If Redis cannot be reached, a
claim is granted (the queue is down anyway; the runner's own 503 busy answer still bounds it).

The heartbeat also reports each app's sync requests per gateway, so every replica's scaling signal
counts all gateways' requests once (signals.py), whichever replica the operator or KEDA asks.
SQLite has no ledger: one gateway per database file, its local count is the whole truth.

Limits: after a gateway dies, its slots are free again after `HOLDER_TTL_SECONDS`; requests the
runner still works on for it after that are not counted (the runner's own 503 busy answer, which
the forwarder retries without using up an attempt, still holds the line). Claims add one Redis
round trip (auto-pipelined) to each dispatch of a Redis-backed gateway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from kubefal_gateway import dispatch, queueing, runners

if TYPE_CHECKING:
    from kubefal_gateway.stores import redis_store

LOGGER = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0
HOLDER_TTL_SECONDS = 5.0
"""A gateway that has not refreshed its heartbeat for this long no longer holds any slot."""


class RedisSlotLedger:
    """`dispatch.SlotLedger` on the Redis store (module docstring)."""

    def __init__(
        self,
        store: redis_store.RedisQueueStore,
        *,
        table: runners.RunnerTable,
        forwarder: dispatch.Forwarder,
        holder: str,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.table = table
        self.forwarder = forwarder
        self.holder = holder
        self.on_change = on_change
        self.limits: dict[str, int] = {}
        self.others_sync: dict[str, int] = {}
        """Sync requests of each app on the other gateways (at the last heartbeat)."""
        store.slot_listeners.append(self._freed)

    async def claim(self, runner: runners.Runner, limit: int) -> bool:
        self.limits[runner.app_id] = limit
        try:
            claimed, elsewhere = await self.store.claim_slot(
                runner.runner_id, holder=self.holder, limit=limit, ttl=HOLDER_TTL_SECONDS
            )
        except queueing.QueueError as error:
            LOGGER.debug("slot claim on %s not shared (%s)", runner.runner_id, error)
            return True
        if claimed:
            runner.elsewhere = elsewhere
            return True
        # Full across gateways: skip it until a slot frees (after our local slot is given back).
        runner.elsewhere = max(elsewhere, limit - (runner.in_flight - 1))
        return False

    def release(self, runner: runners.Runner) -> None:
        limit = self.limits.get(runner.app_id, 1)
        self.store.release_slot(runner.runner_id, runner.app_id, holder=self.holder, limit=limit)

    def _freed(self, app_id: str, runner_id: str) -> None:
        runner = self.table.runners(app_id).get(runner_id)
        if runner is not None and runner.elsewhere > 0:
            runner.elsewhere -= 1
            self.forwarder.runners_changed(app_id)

    async def beat(self) -> None:
        """Refresh this gateway's liveness and counts; learn the other gateways' counts."""
        known = [runner for app in self.table.by_app.values() for runner in app.values()]
        # Every app with runners or slots here, so the signal of an app this gateway serves no
        # request of still counts the other gateways' sync requests.
        app_ids = list(dict.fromkeys([*self.table.by_app, *self.forwarder.slots]))
        own_sync = {app_id: slots.sync_requests for app_id, slots in self.forwarder.slots.items()}
        runner_totals, app_totals = await self.store.slot_heartbeat(
            holder=self.holder,
            ttl=HOLDER_TTL_SECONDS,
            runner_slots=[(runner.runner_id, max(0, runner.in_flight)) for runner in known],
            app_sync=[(app_id, max(0, own_sync.get(app_id, 0))) for app_id in app_ids],
        )
        changed: set[str] = set()
        for runner, elsewhere in zip(known, runner_totals, strict=True):
            if runner.elsewhere != elsewhere:
                runner.elsewhere = elsewhere
                changed.add(runner.app_id)
        for app_id, elsewhere in zip(app_ids, app_totals, strict=True):
            if self.others_sync.get(app_id, 0) != elsewhere:
                changed.add(app_id)
            self.others_sync[app_id] = elsewhere
        for app_id in changed:
            self.forwarder.runners_changed(app_id)
            if self.on_change is not None:
                self.on_change(app_id)

    async def run(self) -> None:
        while True:
            try:
                await self.beat()
            except queueing.QueueError as error:
                LOGGER.warning("shared slot heartbeat failed: %s", error)
            await asyncio.sleep(HEARTBEAT_SECONDS)


def for_store(
    store: queueing.QueueStore,
    *,
    table: runners.RunnerTable,
    forwarder: dispatch.Forwarder,
    holder: str,
    on_change: Callable[[str], None] | None = None,
) -> RedisSlotLedger | None:
    """The shared ledger for a Redis store; None for SQLite (one gateway per database)."""
    from kubefal_gateway.stores import redis_store

    if not isinstance(store, redis_store.RedisQueueStore):
        return None
    return RedisSlotLedger(
        store, table=table, forwarder=forwarder, holder=holder, on_change=on_change
    )
