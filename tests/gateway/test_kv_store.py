"""fal.toolkit's KV store on both queue backends: SQLite (a file next to the queue's) and a
real redis-server; the same contract, then an unreachable Redis."""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import AsyncIterator

import pytest

from kubefal_gateway.storage import kv
from tests.gateway import gwharness


@pytest.fixture(params=["sqlite", "redis"])
async def store(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> AsyncIterator[kv.KvStore]:
    if request.param == "sqlite":
        opened = kv.open_kv(f"sqlite:///{tmp_path / 'queue.db'}")
    else:
        url = request.getfixturevalue("redis_url")
        opened = kv.open_kv(f"{url}?prefix=kv-{uuid.uuid4().hex}")
    yield opened
    await opened.close()


async def test_set_get_delete_and_scopes(store: kv.KvStore) -> None:
    assert await store.get("team/db", "k") is None
    await store.set("team/db", "k", b"v1", ttl=60)
    await store.set("team/db", "k", b"v2", ttl=60)
    assert await store.get("team/db", "k") == b"v2"
    assert await store.get("other/db", "k") is None
    assert await store.get("team/db2", "k") is None
    await store.delete("team/db", "k")
    await store.delete("team/db", "k")
    assert await store.get("team/db", "k") is None


async def test_the_sqlite_kv_lives_beside_the_queue_file(tmp_path: pathlib.Path) -> None:
    store = kv.open_kv(f"sqlite:///{tmp_path / 'queue.db'}")
    await store.set("a/b", "k", b"v", ttl=60)
    await store.close()
    assert (tmp_path / "queue.db.kv").exists() and not (tmp_path / "queue.db").exists()
    reopened = kv.open_kv(f"sqlite:///{tmp_path / 'queue.db'}")
    assert await reopened.get("a/b", "k") == b"v"
    await reopened.close()


@pytest.mark.parametrize(
    ("check", "value"),
    [(kv.check_db, "a b"), (kv.check_db, ""), (kv.check_key, "a b"), (kv.check_key, "x" * 513)],
)
def test_bad_names_are_refused(check: object, value: str) -> None:
    with pytest.raises(ValueError):
        check(value)  # type: ignore[operator]


@pytest.mark.parametrize("ttl", ["59", "2592001", "-1", "x"])
def test_bad_ttls_are_refused(ttl: str) -> None:
    with pytest.raises(ValueError):
        kv.parse_ttl(ttl)


async def test_an_unreachable_redis_is_kv_unavailable() -> None:
    store = kv.open_kv(f"redis://127.0.0.1:{gwharness.free_port()}/0")
    with pytest.raises(kv.KvUnavailable):
        await store.get("a/b", "k")
    with pytest.raises(kv.KvUnavailable):
        await store.set("a/b", "k", b"v", ttl=60)
    await store.close()
