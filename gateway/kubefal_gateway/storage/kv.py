"""fal.toolkit's KV store (`KVStore(db_name).get/set/delete`), kept in the queue's backend.

The SDK calls `https://kv.fal.media` (the runner redirects it to `https://$FAL_REST_HOST/kv`):
`GET /get/<db>/<key>` → `{"value"}` or 404, `PUT /set/<db>/<key>[?ttl=s]` with the value as the
body, `DELETE /delete/<db>/<key>`, each with the upload token of `POST /storage/auth/token` as
credentials. A value lives under (namespace of the caller's key, db name, key), so every runner
of every app in a namespace shares a db name, as fal's KV is shared by a user's apps; a key of
another namespace never sees it.

Backends follow `--store`: with `sqlite://path` a table in a SQLite file next to the queue's
(`<path>.kv`: its own file so KV writes never contend with the queue's group commits for the
database lock); with `redis://` the same Redis, under `<prefix>:kv:`, with Redis's own expiry
(so several gateway replicas share it).
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
import time
import urllib.parse
from typing import Protocol

MIN_TTL = 60
MAX_TTL = 30 * 86400
DEFAULT_TTL = MAX_TTL
MAX_VALUE_BYTES = 1024 * 1024
"""Largest value; larger `set`s get 413."""
MAX_KEY_CHARS = 512
_DB = re.compile(r"[A-Za-z0-9._-]{1,128}")
_KEY = re.compile(r"[\x21-\x7e]{1,512}")


class KvError(Exception):
    pass


class KvUnavailable(KvError):
    """The backend cannot be reached; nothing was changed."""


def check_db(name: str) -> str:
    if not _DB.fullmatch(name):
        raise ValueError("the KV db name must be 1-128 of [A-Za-z0-9._-]")
    return name


def check_key(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise ValueError(f"a KV key is 1-{MAX_KEY_CHARS} printable ASCII characters, no spaces")
    return key


def parse_ttl(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_TTL
    if not raw.isdigit() or not MIN_TTL <= int(raw) <= MAX_TTL:
        raise ValueError(f"ttl must be between {MIN_TTL} and {MAX_TTL} seconds")
    return int(raw)


class KvStore(Protocol):
    async def get(self, scope: str, key: str) -> bytes | None: ...

    async def set(self, scope: str, key: str, value: bytes, *, ttl: int) -> None: ...

    async def delete(self, scope: str, key: str) -> None: ...

    async def close(self) -> None: ...


class SqliteKv:
    """One connection used from the default thread pool under a lock (KV traffic is light)."""

    def __init__(self, path: str) -> None:
        self._connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA busy_timeout=5000")
        self._connection.execute(
            "CREATE TABLE IF NOT EXISTS kv (scope TEXT NOT NULL, key TEXT NOT NULL, "
            "value BLOB NOT NULL, expires REAL NOT NULL, PRIMARY KEY (scope, key))"
        )
        self._lock = threading.Lock()

    async def _run(self, sql: str, parameters: tuple[object, ...]) -> list[tuple[object, ...]]:
        def run() -> list[tuple[object, ...]]:
            with self._lock:
                return list(self._connection.execute(sql, parameters))

        try:
            return await asyncio.get_running_loop().run_in_executor(None, run)
        except sqlite3.Error as error:
            raise KvUnavailable(f"KV store error: {error}") from error

    async def get(self, scope: str, key: str) -> bytes | None:
        rows = await self._run(
            "SELECT value FROM kv WHERE scope = ? AND key = ? AND expires > ?",
            (scope, key, time.time()),
        )
        if not rows:
            return None
        value = rows[0][0]
        return value if isinstance(value, bytes) else str(value).encode()

    async def set(self, scope: str, key: str, value: bytes, *, ttl: int) -> None:
        now = time.time()
        await self._run(
            "INSERT INTO kv (scope, key, value, expires) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value, "
            "expires = excluded.expires",
            (scope, key, value, now + ttl),
        )
        # Expired rows go a few at a time with the writes, so the table stays bounded.
        await self._run(
            "DELETE FROM kv WHERE rowid IN (SELECT rowid FROM kv WHERE expires <= ? LIMIT 100)",
            (now,),
        )

    async def delete(self, scope: str, key: str) -> None:
        await self._run("DELETE FROM kv WHERE scope = ? AND key = ?", (scope, key))

    async def close(self) -> None:
        self._connection.close()


class RedisKv:
    def __init__(self, url: str, *, prefix: str, timeout: float = 2.0) -> None:
        import redis.asyncio

        self._redis = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._prefix = f"{prefix}:kv:"

    def _name(self, scope: str, key: str) -> str:
        return f"{self._prefix}{scope}\x00{key}"

    async def get(self, scope: str, key: str) -> bytes | None:
        import redis.exceptions

        try:
            value = await self._redis.get(self._name(scope, key))
        except (redis.exceptions.RedisError, OSError) as error:
            raise KvUnavailable(f"KV store unreachable: {error}") from error
        if value is None:
            return None
        return value if isinstance(value, bytes) else str(value).encode()

    async def set(self, scope: str, key: str, value: bytes, *, ttl: int) -> None:
        import redis.exceptions

        try:
            await self._redis.set(self._name(scope, key), value, ex=ttl)
        except (redis.exceptions.RedisError, OSError) as error:
            raise KvUnavailable(f"KV store unreachable: {error}") from error

    async def delete(self, scope: str, key: str) -> None:
        import redis.exceptions

        try:
            await self._redis.delete(self._name(scope, key))
        except (redis.exceptions.RedisError, OSError) as error:
            raise KvUnavailable(f"KV store unreachable: {error}") from error

    async def close(self) -> None:
        await self._redis.aclose()


def open_kv(store_url: str) -> KvStore:
    """The KV backend that goes with the queue's `--store` URL."""
    parsed = urllib.parse.urlsplit(store_url)
    if parsed.scheme == "sqlite":
        path = parsed.netloc + parsed.path
        return SqliteKv(":memory:" if path == ":memory:" else path + ".kv")
    if parsed.scheme in ("redis", "rediss", "unix"):
        query = urllib.parse.parse_qsl(parsed.query)
        prefix = dict(query).get("prefix", "kubefal")
        rest = urllib.parse.urlencode([(name, value) for name, value in query if name != "prefix"])
        return RedisKv(parsed._replace(query=rest).geturl(), prefix=prefix)
    raise ValueError(f"no KV backend for store {parsed.scheme!r}")
