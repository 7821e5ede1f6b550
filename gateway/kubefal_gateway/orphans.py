"""Queued jobs of an app that no longer exists complete with an error instead of waiting forever.

Why it exists: the queue outlives the apps. When a FalApp is deleted (or an app leaves the static
config), nothing would ever lease its queued jobs, so their clients would poll until the results
expired and their webhooks would never fire. The reaper compares the apps with queued work
(`QueueStore.apps`) against the gateway's app registry; an app missing from the registry for
`grace` seconds, continuously, has its queued jobs completed with `queueing.app_gone_result` (404
`app_not_found`; their webhooks fire). The grace covers discovery catching up after a gateway
start and an app being re-created. In-progress jobs are left to their dispatch (their runners
are gone, so they fail and complete by themselves). Several gateways may reap the same app: the
store completes each job once.
"""

from __future__ import annotations

import asyncio
import logging
import time

from kubefal_gateway import apps, queueing

LOGGER = logging.getLogger(__name__)


class OrphanReaper:
    """Completes the queued jobs of apps gone from the registry for longer than `grace` s."""

    def __init__(
        self, *, store: queueing.QueueStore, registry: apps.AppRegistry, grace: float
    ) -> None:
        self.store = store
        self.registry = registry
        self.grace = grace
        self.missing_since: dict[str, float] = {}

    async def check(self, *, now: float | None = None) -> int:
        """One pass; returns the number of jobs completed."""
        now = time.time() if now is None else now
        queued_apps = await self.store.apps()
        missing = {app_id for app_id in queued_apps if self.registry.get(app_id) is None}
        for app_id in list(self.missing_since):
            if app_id not in missing:
                del self.missing_since[app_id]
        completed = 0
        for app_id in missing:
            since = self.missing_since.setdefault(app_id, now)
            if now - since < self.grace:
                continue
            result = queueing.app_gone_result(app_id, grace=self.grace, now=now)
            count = await self.store.fail_queued(app_id, result, now=now)
            if count:
                LOGGER.warning("completed %d queued jobs of removed app %s", count, app_id)
            completed += count
        return completed

    async def run(self) -> None:
        interval = min(max(self.grace / 10, 1.0), 30.0)
        while True:
            try:
                await self.check()
            except queueing.QueueError as error:
                LOGGER.warning("removed-app check failed: %s", error)
            await asyncio.sleep(interval)
