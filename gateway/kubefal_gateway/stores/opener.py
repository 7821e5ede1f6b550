"""Open a queue store backend from its URL (the gateway's ``--store``).

Why a module of its own: it is the one place that knows every backend, so it sits above them;
the interface (`kubefal_gateway.queueing`) and the backends never import it. Each backend is
imported only when its URL is used, so a SQLite gateway never loads the Redis client.
"""

from __future__ import annotations

import urllib.parse

from kubefal_gateway import queueing


async def open_store(
    url: str,
    *,
    result_ttl: float = 3600.0,
    max_logs_per_job: int = 1000,
    housekeeping_interval: float | None = 1.0,
    max_attempts: int = queueing.DEFAULT_MAX_ATTEMPTS,
    redis_timeout: float = 2.0,
) -> queueing.QueueStore:
    """Open a backend from a URL; with ``housekeeping_interval`` it calls `expire` that often.

    ``max_attempts`` bounds the dispatches of a job, lost leases included (see "Poison jobs" in
    `queueing`).
    ``redis_timeout`` bounds Redis connects and replies (`redis_connection`).

    * ``sqlite:///abs/path/queue.db`` or ``sqlite://relative.db`` (``sqlite://:memory:`` for tests);
    * ``redis://[user:pass@]host:port/db?prefix=kubefal`` (also ``rediss://`` and ``unix://``);
    * ``redis+sentinel://[user:pass@]host:port[,host:port...]/service[/db]?prefix=kubefal``: the
      master of ``service`` as the Sentinels name it, followed across failovers.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "sqlite":
        from kubefal_gateway.stores import sqlite_store

        path = parsed.netloc + parsed.path
        return await sqlite_store.SqliteQueueStore.open(
            path,
            result_ttl=result_ttl,
            max_logs_per_job=max_logs_per_job,
            housekeeping_interval=housekeeping_interval,
            max_attempts=max_attempts,
        )
    if parsed.scheme in {"redis", "rediss", "unix", "redis+sentinel"}:
        from kubefal_gateway.stores import redis_store

        query = urllib.parse.parse_qs(parsed.query)
        prefix = query.pop("prefix", ["kubefal"])[0]
        remaining = urllib.parse.urlencode({key: values[-1] for key, values in query.items()})
        redis_url = urllib.parse.urlunsplit(parsed._replace(query=remaining))
        return await redis_store.RedisQueueStore.open(
            redis_url,
            prefix=prefix,
            result_ttl=result_ttl,
            max_logs_per_job=max_logs_per_job,
            housekeeping_interval=housekeeping_interval,
            max_attempts=max_attempts,
            command_timeout=redis_timeout,
        )
    raise ValueError(f"unsupported queue store URL {url!r}: use sqlite:// or redis://")
