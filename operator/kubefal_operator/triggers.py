"""Every trigger of a reconcile, as the kopf handlers hand them over: a FalApp's own events
(`falapp_changed`, with background retries on transient failures), a child's change or deletion
(`child_changed`: put back what drifted), a runner pod's change (`pods_changed`: the status) and a
machine catalogue change (`catalogue_changed`: re-render the apps that use a changed type).

Why a module of its own: deciding *whether* and *what* to reconcile (echo suppression, the
FalApp read after a child deletion, retries with backoff) is separate from *how*
(`reconcile`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import aiohttp

from kubefal_api import naming
from kubefal_operator import (
    kube,
    livestate,
    reconcile,
    runtime,
)

logger = logging.getLogger(__name__)


async def falapp_changed(
    op: runtime.Operator, *, body: Mapping[str, Any], indexes: livestate.Indexes, attempt: int = 0
) -> None:
    """A FalApp's watch event (the listing after a start included): reconcile it when its
    uid or generation is new to this process.

    The operator's own status writes change neither, so they cost no render; an operator
    restart renders every app once and writes nothing when nothing drifted. A transient
    failure is tried again in the background with backoff (:data:`RETRY_DELAYS_SECONDS`,
    then every 30 s) on the newest copy of the app in the index; a newer event replaces the
    pending retry. A permanent failure (reported as Degraded) waits for the next edit.
    """
    key = livestate.app_key(body)
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return
    essence = (str(meta.get("uid", "")), int(meta.get("generation") or 0))
    if attempt == 0:
        op.cancel_retry(key)
        if op.handled.get(key) == essence:
            return
    try:
        await reconcile.reconcile_app(op, body=body, live=indexes.live(key))
    except Exception as error:  # anything else is retried too, as kopf's handlers were
        if isinstance(error, runtime.ReconcileError) and not error.retry:
            logger.warning("%s/%s: %s", *key, error)
            op.handled[key] = essence
            return
        delay = RETRY_DELAYS_SECONDS[min(attempt, len(RETRY_DELAYS_SECONDS) - 1)]
        logger.warning(
            "reconciling %s/%s failed, retrying in %.0f s: %s",
            *key,
            delay,
            error,
            exc_info=not isinstance(error, runtime.ReconcileError),
        )
        op.handled.pop(key, None)
        op.retries[key] = asyncio.create_task(
            _retry_falapp(op, key=key, indexes=indexes, attempt=attempt + 1, delay=delay)
        )
        return
    op.handled[key] = essence


async def _retry_falapp(
    op: runtime.Operator,
    *,
    key: livestate.Key,
    indexes: livestate.Indexes,
    attempt: int,
    delay: float,
) -> None:
    await asyncio.sleep(delay)
    if op.retries.get(key) is asyncio.current_task():
        del op.retries[key]
    body = indexes.app(key)
    if body is None:
        return  # deleted meanwhile
    await falapp_changed(op, body=body, indexes=indexes, attempt=attempt)


RETRY_DELAYS_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Backoff of event-driven work after a transient error (FalApp edges keep retrying at the
last delay, see :func:`falapp_changed`)."""


async def _retrying(attempt: Callable[[], Awaitable[None]], *, what: str) -> None:
    for delay in (*RETRY_DELAYS_SECONDS, None):
        try:
            await attempt()
            return
        except runtime.ReconcileError as error:
            if not error.retry or delay is None:
                raise
            logger.warning("%s failed, retrying in %.0f s: %s", what, delay, error)
            await asyncio.sleep(delay)


async def child_changed(
    op: runtime.Operator,
    *,
    kind: str,
    event_type: str | None,
    child: Mapping[str, Any],
    indexes: livestate.Indexes,
) -> None:
    """A child changed or vanished: put back whatever drifted from the FalApp."""
    key = livestate.owner_key(child)
    if key is None:
        return
    body = indexes.app(key)
    if body is None:
        return  # an orphan: the garbage collector removes it
    if event_type != "DELETED" and 0 < livestate.resource_version(child) <= op.versions.get(
        livestate.child_key({**child, "kind": kind}), 0
    ):
        return  # the echo of an apply this process made (or older): nothing new to check
    live = indexes.live(key).replace(kind, None if event_type == "DELETED" else child)
    if event_type == "DELETED":
        op.dropped({**child, "kind": kind})
        # The FalApp may be going away (children are deleted after it): ask the API.
        try:
            fresh = await op.kube.get(kube.FALAPPS, namespace=key[0], name=key[1])
        except (kube.ApiError, aiohttp.ClientError, TimeoutError) as error:
            raise runtime.classify(error, doing="reading the FalApp") from error
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return
        if fresh["metadata"].get("uid") != body["metadata"].get("uid"):
            return
        body = fresh
    app_body = body

    async def attempt() -> None:
        await reconcile.reconcile_app(
            op,
            body=app_body,
            live=live,
            trigger=kind,
            kinds=(kind,),
            seen=None if event_type == "DELETED" else child,
        )

    await _retrying(attempt, what=f"repairing {kind} of {key[0]}/{key[1]}")


async def pods_changed(
    op: runtime.Operator, *, pod: Mapping[str, Any], indexes: livestate.Indexes
) -> None:
    """A runner pod changed: the status may tell something new."""
    key = livestate.owner_key(pod)
    if key is None:
        return
    body = indexes.app(key)
    if body is None:
        return
    app_body = body

    async def attempt() -> None:
        with op.instruments.reconciling("Pod"):
            try:
                await reconcile.refresh_status(op, body=app_body, live=indexes.live(key))
            except (kube.ApiError, aiohttp.ClientError, TimeoutError) as error:
                raise runtime.classify(error, doing="writing the status") from error

    await _retrying(attempt, what=f"updating the status of {key[0]}/{key[1]}")


async def catalogue_changed(
    op: runtime.Operator, *, config_map: Mapping[str, Any] | None, indexes: livestate.Indexes
) -> None:
    """Install a new catalogue and re-render every app that uses a changed machine type."""
    config = op.config
    where = f"{config.catalogue_namespace}/{config.catalogue_name}"
    catalogue, source = livestate.parse_catalogue(config_map, where=where)
    changed = op.catalogue.replace(catalogue, source=source)
    if not changed:
        return
    default = [naming.DEFAULT_MACHINE_TYPE]
    affected = [
        body
        for body in indexes.apps()
        if changed & set((body.get("spec") or {}).get("machineTypes") or default)
    ]
    logger.info(
        "machine catalogue from %s changed (%s): re-rendering %d app(s)",
        source,
        ", ".join(sorted(changed)),
        len(affected),
    )
    await _reconcile_many(op, bodies=affected, indexes=indexes, trigger="ConfigMap")


async def _reconcile_many(
    op: runtime.Operator,
    *,
    bodies: Iterable[Mapping[str, Any]],
    indexes: livestate.Indexes,
    trigger: str,
) -> None:
    gate = asyncio.Semaphore(op.config.catalogue_rollout_concurrency)

    async def one(body: Mapping[str, Any]) -> None:
        async with gate:
            try:
                await reconcile.reconcile_app(
                    op, body=body, live=indexes.live(livestate.app_key(body)), trigger=trigger
                )
            except runtime.ReconcileError as error:
                logger.warning("re-rendering %s/%s failed: %s", *livestate.app_key(body), error)

    await asyncio.gather(*(one(body) for body in bodies))
