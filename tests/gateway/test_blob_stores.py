"""Both object stores pass the same contract: the embedded store (local disk) and the S3 backend
against a real S3-compatible server (s3proxy, started on 127.0.0.1 by the tests). Then the
storage core over each, and what a full disk or an unreachable store does."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pathlib
import resource
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from kubefal_api import apikeys
from kubefal_gateway.storage import app_files, blobs, core, local, signing
from tests.gateway import gwharness, s3server

pytestmark = pytest.mark.slow  # starts real processes; `make unit` leaves it out

BUCKET = "kubefal-contract"


@pytest.fixture(scope="module")
def s3proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[s3server.S3Proxy]:
    server = s3server.S3Proxy(tmp_path_factory.mktemp("s3proxy")).start()
    try:
        server.create_bucket(BUCKET)
        yield server
    finally:
        server.stop()


def _s3_store(
    server: s3server.S3Proxy, monkeypatch: pytest.MonkeyPatch, endpoint: str | None = None
) -> blobs.BlobStore:
    from kubefal_gateway.storage import s3

    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    prefix = uuid.uuid4().hex
    return s3.S3BlobStore.from_url(
        f"s3://{BUCKET}/{prefix}?endpoint={endpoint or server.endpoint}&region=us-east-1"
    )


@pytest.fixture(params=["local", "s3"])
async def store(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[blobs.BlobStore]:
    if request.param == "local":
        opened: blobs.BlobStore = local.LocalBlobStore(tmp_path / "store")
    else:
        opened = _s3_store(request.getfixturevalue("s3proxy"), monkeypatch)
    yield opened
    await opened.close()


async def _chunks(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _read(store: blobs.BlobStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.read(key)])


# ---- the BlobStore contract ------------------------------------------------------------------
async def test_write_stat_read_delete(store: blobs.BlobStore) -> None:
    size = await store.write(
        "ns/id1/a.txt", _chunks(b"hello"), limit=100, meta={"type": "text/plain", "expires": "0"}
    )
    assert size == 5
    info = await store.stat("ns/id1/a.txt")
    assert info.size == 5
    assert info.meta["type"] == "text/plain" and info.meta["expires"] == "0"
    assert await _read(store, "ns/id1/a.txt") == b"hello"
    await store.write("ns/id1/a.txt", _chunks(b"again!"), limit=100, meta={"type": "x/y"})
    assert await _read(store, "ns/id1/a.txt") == b"again!"
    await store.delete("ns/id1/a.txt")
    with pytest.raises(blobs.BlobNotFound):
        await store.stat("ns/id1/a.txt")
    await store.delete("ns/id1/a.txt")  # absent: fine


async def test_20_mb_round_trip(store: blobs.BlobStore) -> None:
    # No repeating pattern: blocks or parts written out of order would change the bytes.
    data = os.urandom(20 * 1024 * 1024) + b"tail"
    assert await store.write("ns/big/w.bin", _chunks(data), limit=len(data), meta={}) == len(data)
    assert (await store.stat("ns/big/w.bin")).size == len(data)
    assert (
        hashlib.sha256(await _read(store, "ns/big/w.bin")).digest() == hashlib.sha256(data).digest()
    )
    # A reader that stops early (a client gone mid-download) leaves the store usable.
    reader = store.read("ns/big/w.bin")
    first = await reader.__anext__()
    assert first == data[: len(first)]
    await reader.aclose()
    assert (await store.stat("ns/big/w.bin")).size == len(data)


async def test_a_trickled_body_is_gathered_in_bounded_lists(
    store: blobs.BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client decides how its body is cut: 20,000 pieces of 3 bytes arrive as as many
    chunks. The bytes round-trip, and the local store hands each write at most a block's worth
    of MIN_CHUNK_BYTES pieces (a list of every piece made `_write_all` quadratic and held a
    view per piece)."""
    data = os.urandom(60_000)
    largest: list[int] = []
    if isinstance(store, local.LocalBlobStore):
        write_all = local._write_all

        def counting(descriptor: int, chunks: list[bytes], sync: bool = False) -> None:
            largest.append(len(chunks))
            write_all(descriptor, chunks, sync)

        monkeypatch.setattr(local, "_write_all", counting)
    written = await store.write("ns/trickle/t.bin", _chunks(data, 3), limit=len(data), meta={})
    assert written == len(data)
    assert await _read(store, "ns/trickle/t.bin") == data
    if isinstance(store, local.LocalBlobStore):
        assert largest and max(largest) <= local.WRITE_BLOCK_BYTES // blobs.MIN_CHUNK_BYTES + 1


async def test_coalesce_joins_small_chunks_and_passes_large_ones() -> None:
    big = b"b" * blobs.MIN_CHUNK_BYTES

    async def source() -> AsyncIterator[bytes]:
        for chunk in (big, b"x" * 10, b"y" * (blobs.MIN_CHUNK_BYTES - 10), big, b"z"):
            yield chunk

    out = [chunk async for chunk in blobs.coalesce(source())]
    assert out[0] is big  # passed as it is
    assert [len(chunk) for chunk in out] == [blobs.MIN_CHUNK_BYTES] * 3 + [1]
    assert b"".join(out) == b"".join([chunk async for chunk in source()])


async def test_ranged_reads(store: blobs.BlobStore) -> None:
    """`read(start=, length=)` gives exactly that slice, across block boundaries (the file
    responses' Range support reads through it)."""
    data = os.urandom(3 * 1024 * 1024 + 17)
    await store.write("ns/rng/r.bin", _chunks(data), limit=len(data), meta={})

    async def slice_of(start: int, length: int | None, chunk_size: int = 64 * 1024) -> bytes:
        reader = store.read("ns/rng/r.bin", chunk_size=chunk_size, start=start, length=length)
        return b"".join([chunk async for chunk in reader])

    assert await slice_of(0, 10) == data[:10]
    assert await slice_of(100, 1) == data[100:101]
    assert await slice_of(65_530, 200_000) == data[65_530:265_530]  # over chunk boundaries
    assert await slice_of(len(data) - 5, None) == data[-5:]
    assert await slice_of(1_000_000, None, chunk_size=1024 * 1024) == data[1_000_000:]
    assert await slice_of(7, 0) == b""
    assert await slice_of(0, len(data)) == data


async def test_over_the_limit_or_a_broken_stream_leaves_nothing(store: blobs.BlobStore) -> None:
    data = b"z" * (9 * 1024 * 1024)  # past one S3 part, so a multipart upload is aborted
    with pytest.raises(blobs.BlobTooLarge):
        await store.write("ns/big/x.bin", _chunks(data), limit=len(data) - 1, meta={})

    async def broken() -> AsyncIterator[bytes]:
        yield b"a" * (9 * 1024 * 1024)
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store.write("ns/big/y.bin", broken(), limit=1 << 30, meta={})
    for key in ("ns/big/x.bin", "ns/big/y.bin"):
        with pytest.raises(blobs.BlobNotFound):
            await store.stat(key)
    assert [key async for key in store.list("ns/")] == []


async def test_missing_objects(store: blobs.BlobStore) -> None:
    with pytest.raises(blobs.BlobNotFound):
        await store.stat("ns/none/x")
    with pytest.raises(blobs.BlobNotFound):
        await _read(store, "ns/none/x")


async def test_list_by_prefix(store: blobs.BlobStore) -> None:
    for key in ("a/1/x", "a/2/y", "b/1/z"):
        await store.write(key, _chunks(b"."), limit=10, meta={})
    assert sorted([key async for key in store.list("a/")]) == ["a/1/x", "a/2/y"]
    assert sorted([key async for key in store.list("")]) == ["a/1/x", "a/2/y", "b/1/z"]


@pytest.mark.parametrize("key", ["../x", "a//b", "/a", ".hidden", "a/../../b", "a/b c", ""])
async def test_unsafe_keys_are_refused(store: blobs.BlobStore, key: str) -> None:
    with pytest.raises(ValueError):
        await store.write(key, _chunks(b"x"), limit=10, meta={})


# ---- the storage core over each store ----------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _storage(store: blobs.BlobStore, clock: Clock, **limits: float) -> core.Storage:
    return core.Storage(
        store,
        signing.Signer(b"contract-signing-key-0123456789"),
        core.Limits(**limits),  # type: ignore[arg-type]
        clock=clock,
    )


async def test_core_uploads_and_retention(store: blobs.BlobStore) -> None:
    clock = Clock()
    storage = _storage(store, clock, retention=100.0, max_file_bytes=1 << 20)
    ref, path, size = await storage.put(
        "team",
        file_name="../../a b.txt",
        content_type="text/plain",
        chunks=_chunks(b"1"),
        lifetime=None,
    )
    assert ref.name == "a_b.txt" and size == 1 and path.startswith("/files/team/")
    storage.check_url(ref, path.split("/")[4])
    info, chunks = await storage.open(ref)
    assert info.meta["type"] == "text/plain" and b"".join([c async for c in chunks]) == b"1"

    upload, _ = await storage.begin(
        "team", file_name="p.bin", content_type="x/y", lifetime=10.0, kind="multipart"
    )
    first = await storage.put_part(upload.ref, upload.upload_id, 1, _chunks(b"ab"))
    second = await storage.put_part(upload.ref, upload.upload_id, 2, _chunks(b"cd"))
    with pytest.raises(core.Invalid):
        await storage.complete(upload.ref, upload.upload_id, [(1, first), (2, "wrong")])
    _, size = await storage.complete(upload.ref, upload.upload_id, [(2, second), (1, first)])
    assert size == 4
    _, chunks = await storage.open(upload.ref)
    assert b"".join([c async for c in chunks]) == b"abcd"
    assert [key async for key in store.list(core.PARTS_PREFIX)] == []
    with pytest.raises(core.NotFound):  # the upload is over
        await storage.put_part(upload.ref, upload.upload_id, 3, _chunks(b"e"))

    abandoned, _ = await storage.begin(
        "team", file_name="q", content_type="x/y", lifetime=None, kind="put"
    )
    clock.now += 50  # the multipart file asked for 10 s: gone; the first file (100 s) stays
    with pytest.raises(core.NotFound):
        await storage.open(upload.ref)
    await storage.open(ref)
    clock.now += 24 * 3600
    assert await storage.sweep() == 4  # both files, the abandoned upload and its open marker
    assert [key async for key in store.list("")] == []
    with pytest.raises(core.NotFound):
        await storage.put_upload(abandoned.ref, abandoned.upload_id, _chunks(b"late"))


async def test_many_missing_hashes_cost_one_listing_not_a_request_each(
    store: blobs.BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fal deploy's `POST /files/missing_hashes` takes up to MAX_HASHES hashes: past
    STAT_EACH_UP_TO the namespace's app files are listed once and only held hashes are
    stat'ed (was: one stat, an S3 request, per hash); the answer is the same."""
    clock = Clock()
    files = app_files.AppFiles(_storage(store, clock))
    held = hashlib.sha256(b"held").hexdigest()
    expired = hashlib.sha256(b"expired").hexdigest()
    await store.write(app_files.file_key("team", held), _chunks(b"x"), limit=10, meta={})
    await store.write(
        app_files.file_key("team", expired),
        _chunks(b"x"),
        limit=10,
        meta={"expires": repr(clock.now - 1)},
    )
    await store.write(app_files.file_key("other", held), _chunks(b"x"), limit=10, meta={})
    unknown = [hashlib.sha256(str(n).encode()).hexdigest() for n in range(500)]
    stats: list[str] = []
    real_stat = store.stat

    async def counting(key: str) -> blobs.BlobInfo:
        stats.append(key)
        return await real_stat(key)

    monkeypatch.setattr(store, "stat", counting)
    for wanted in ([held, expired, *unknown], [held, expired, unknown[0]]):
        stats.clear()
        body = json.dumps({"hashes": wanted}).encode()
        sent: list[dict[str, object]] = []

        async def receive(body: bytes = body) -> dict[str, object]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, object], sent: list[dict[str, object]] = sent) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/files/missing_hashes", "headers": []}
        await files.handle(scope, receive, send, "team")
        assert sent[0]["status"] == 200
        assert json.loads(sent[1]["body"]) == wanted[1:]  # type: ignore[arg-type]
        assert len(stats) <= 3


async def test_open_uploads_per_namespace_are_limited(store: blobs.BlobStore) -> None:
    clock = Clock()
    storage = _storage(store, clock, max_open_uploads=2)

    async def begin(namespace: str, kind: str = "put") -> core.Upload:
        upload, _ = await storage.begin(
            namespace, file_name="f", content_type="x/y", lifetime=None, kind=kind
        )
        return upload

    first = await begin("team")
    second = await begin("team", kind="multipart")
    with pytest.raises(core.TooManyUploads, match="2 uploads are already open in 'team'"):
        await begin("team")
    await begin("other")  # each namespace has its own allowance
    # finishing an upload (a presigned PUT, or completing a multipart one) frees its place
    await storage.put_upload(first.ref, first.upload_id, _chunks(b"done"))
    third = await begin("team")
    etag = await storage.put_part(second.ref, second.upload_id, 1, _chunks(b"p"))
    await storage.complete(second.ref, second.upload_id, [(1, etag)])
    await begin("team")
    with pytest.raises(core.TooManyUploads):
        await begin("team")
    # abandoned ones count until they expire and the sweep removes them
    clock.now += 24 * 3600 + 1
    await storage.sweep()
    assert [key async for key in store.list(core.OPEN_PREFIX)] == []
    await begin("team")
    with pytest.raises(core.NotFound):
        await storage.put_upload(third.ref, third.upload_id, _chunks(b"late"))


# ---- failures ----------------------------------------------------------------------------------
async def test_local_full_disk_is_store_full_and_leaves_nothing(tmp_path: pathlib.Path) -> None:
    store = local.LocalBlobStore(tmp_path / "store")
    await store.write("ns/ok/a", _chunks(b"kept"), limit=10, meta={})
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # A file-size limit makes write() fail with EFBIG (Python ignores SIGXFSZ), as a full disk
    # fails with ENOSPC: both are "full" for the store.
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 1024 * 1024, hard))
    try:
        with pytest.raises(blobs.StoreFull):
            await store.write(
                "ns/full/b", _chunks(b"x" * (4 * 1024 * 1024)), limit=1 << 30, meta={}
            )
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert {errno.ENOSPC, errno.EFBIG} <= local.FULL_ERRNOS
    assert list((tmp_path / "store" / "tmp").iterdir()) == []
    with pytest.raises(blobs.BlobNotFound):
        await store.stat("ns/full/b")
    assert await _read(store, "ns/ok/a") == b"kept"


async def test_local_write_is_on_disk_before_it_returns_and_a_late_failure_fails_it(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A volume that reports its failure only when flushed (NFS: ENOSPC at fsync) fails the
    write with StoreFull and keeps nothing; an acknowledged write was flushed."""
    store = local.LocalBlobStore(tmp_path / "store")
    flushed: list[int] = []
    real_fsync = os.fsync

    def counting(descriptor: int) -> None:
        flushed.append(descriptor)
        real_fsync(descriptor)

    monkeypatch.setattr(local.os, "fsync", counting)
    await store.write("ns/ok/a", _chunks(b"kept" * 1000), limit=1 << 20, meta={})
    assert len(flushed) >= 3  # the data, the metadata, the directories renamed into

    def full(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local.os, "fsync", full)
    with pytest.raises(blobs.StoreFull):
        await store.write("ns/late/b", _chunks(b"y" * (5 * 1024 * 1024)), limit=1 << 30, meta={})
    monkeypatch.setattr(local.os, "fsync", real_fsync)
    assert list((tmp_path / "store" / "tmp").iterdir()) == []
    with pytest.raises(blobs.BlobNotFound):
        await store.stat("ns/late/b")
    assert await _read(store, "ns/ok/a") == b"kept" * 1000


async def test_unreachable_s3_is_store_unavailable(
    s3proxy: s3server.S3Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _s3_store(s3proxy, monkeypatch, endpoint=f"http://127.0.0.1:{gwharness.free_port()}")
    with pytest.raises(blobs.StoreUnavailable):
        await store.write("ns/x/y", _chunks(b"data"), limit=100, meta={})
    with pytest.raises(blobs.StoreUnavailable):
        await store.stat("ns/x/y")
    await store.close()


# ---- the gateway on S3 ---------------------------------------------------------------------------
def test_gateway_on_s3_and_an_s3_outage(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = s3server.S3Proxy(tmp_path).start()
    try:
        server.create_bucket("gateway-files")
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        key = apikeys.generate_key()
        tls = gwharness.Tls(tmp_path)
        rest_port = gwharness.free_port()
        gateway = gwharness.Gateway(
            workdir=tmp_path,
            tls=tls,
            static_config={"apps": [], "keys": [{"key": str(key), "namespaces": "team"}]},
            extra_args=[
                "--rest-port",
                str(rest_port),
                "--storage",
                f"s3://gateway-files/kubefal?endpoint={server.endpoint}",
            ],
        )
        with gwharness.cleanup(gateway):
            gateway.wait_ready()
            base = f"https://127.0.0.1:{rest_port}"
            auth = {"Authorization": f"Key {key}"}
            with httpx.Client(verify=str(tls.ca_path), timeout=60) as http:
                url = http.post(f"{base}/files/upload", content=b"on s3", headers=auth).json()[
                    "access_url"
                ]
                assert http.get(url).content == b"on s3"
                server.stop()
                down = http.post(f"{base}/files/upload", content=b"lost?", headers=auth)
                assert down.status_code == 503
                assert down.json()["error_type"] == "storage_unavailable"
                assert http.get(url).status_code == 503
                assert httpx.get(gateway.admin_url + "/healthz").status_code == 200
                server.start()  # same port, same data: nothing was lost
                assert http.get(url).content == b"on s3"
                again = http.post(f"{base}/files/upload", content=b"back", headers=auth)
                assert http.get(again.json()["access_url"]).content == b"back"
    finally:
        server.stop()
