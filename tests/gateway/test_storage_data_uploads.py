"""Multipart `/data` uploads have limits: open uploads per namespace (429 beyond), an expiry
after which the sweep removes an abandoned upload, and a configurable highest part number.

`DataFiles` on a real directory for the rules, and one real gateway process over TLS for what a
caller of `fal files upload` sees (status, JSON detail, the sweep running by itself)."""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import time
from collections.abc import Iterator

import httpx
import pytest

from kubefal_api import apikeys
from kubefal_gateway.storage import datafiles
from testkit import waiting
from tests.gateway import gwharness


def _files(tmp_path: pathlib.Path, **limits: float) -> datafiles.DataFiles:
    return datafiles.DataFiles(tmp_path / "data", datafiles.Limits(**limits))  # type: ignore[arg-type]


def _age(path: pathlib.Path, seconds: float) -> None:
    moment = time.time() - seconds
    os.utime(path, (moment, moment))


def test_open_uploads_per_namespace_are_limited(tmp_path: pathlib.Path) -> None:
    files = _files(tmp_path, max_open_uploads=2)
    first = files.begin("team", "/data/a.bin")
    files.begin("team", "/data/b.bin")
    with pytest.raises(datafiles.DataBusy, match="2 multipart uploads"):
        files.begin("team", "/data/c.bin")
    # another namespace has its own allowance
    files.begin("other", "/data/a.bin")
    files.cancel("team", "/data/a.bin", first)
    files.begin("team", "/data/c.bin")
    assert files.open_uploads("team") == 2


def test_sweep_removes_abandoned_uploads_and_leftovers_only(tmp_path: pathlib.Path) -> None:
    files = _files(tmp_path, upload_ttl=3600)
    abandoned = files.begin("team", "/data/old.bin")
    files.part("team", "/data/old.bin", abandoned, 1, io.BytesIO(b"x" * 10), 10)
    active = files.begin("team", "/data/new.bin")
    base = files.base("team")
    _age(base / f"{datafiles.HIDDEN_PREFIX}upload-{abandoned}", 7200)
    _age(base / f"{datafiles.HIDDEN_PREFIX}upload-{active}", 7200)
    # a part touches its upload: an old upload that is still receiving parts is kept
    files.part("team", "/data/new.bin", active, 1, io.BytesIO(b"y" * 10), 10)
    leftover = base / f"{datafiles.HIDDEN_PREFIX}tmp-crashed"
    leftover.write_bytes(b"partial")
    _age(leftover, 7200)
    (base / "kept.txt").write_text("a user's file, however old")
    _age(base / "kept.txt", 10**6)

    assert files.sweep() == 2

    assert not leftover.exists() and (base / "kept.txt").exists()
    with pytest.raises(datafiles.DataNotFound):
        files.part("team", "/data/old.bin", abandoned, 2, io.BytesIO(b"x"), 1)
    assert files.complete("team", "/data/new.bin", active, [(1, "")])
    assert (base / "new.bin").read_bytes() == b"y" * 10


def test_highest_part_number_is_a_setting(tmp_path: pathlib.Path) -> None:
    files = _files(tmp_path, max_parts=3)
    upload = files.begin("team", "/data/x.bin")
    files.part("team", "/data/x.bin", upload, 3, io.BytesIO(b"3"), 1)
    with pytest.raises(datafiles.DataInvalid, match="1 to 3"):
        files.part("team", "/data/x.bin", upload, 4, io.BytesIO(b"4"), 1)
    wide = _files(tmp_path / "wide", max_parts=20_000)
    upload = wide.begin("team", "/data/y.bin")
    wide.part("team", "/data/y.bin", upload, 2, io.BytesIO(b"b"), 1)
    wide.part("team", "/data/y.bin", upload, 12_000, io.BytesIO(b"c"), 1)
    wide.complete("team", "/data/y.bin", upload, [(12_000, ""), (2, "")])
    assert (wide.base("team") / "y.bin").read_bytes() == b"bc"


def test_the_gateways_own_names_are_refused_so_the_sweep_never_removes_a_users_file(
    tmp_path: pathlib.Path,
) -> None:
    """The sweep removes old `.kubefal-*` entries (the gateway's uploads and temporary files):
    a caller may not name a file or directory so, at any depth (400), or it would be swept."""
    files = _files(tmp_path)
    for raw in ("/data/.kubefal-mine.txt", "/data/.kubefal-upload-x/a.txt", "/data/d/.kubefal-t"):
        with pytest.raises(datafiles.DataInvalid, match="reserved"):
            files.place("team", raw, io.BytesIO(b"mine"), 4)
    files.place("team", "/data/kept.txt", io.BytesIO(b"mine"), 4)
    with pytest.raises(datafiles.DataInvalid, match="reserved"):
        files.rename("team", "/data/kept.txt", "/data/.kubefal-kept.txt")
    assert (files.base("team") / "kept.txt").read_bytes() == b"mine"


def test_complete_refuses_a_part_listed_twice(tmp_path: pathlib.Path) -> None:
    """A part listed twice would be joined twice (a file the caller never sent): 400, as the
    file store's multipart complete answers; the upload stays open for a right listing."""
    files = _files(tmp_path)
    upload = files.begin("team", "/data/twice.bin")
    files.part("team", "/data/twice.bin", upload, 1, io.BytesIO(b"once"), 4)
    with pytest.raises(datafiles.DataInvalid, match="part 1 is listed twice"):
        files.complete("team", "/data/twice.bin", upload, [(1, ""), (1, "")])
    assert not (files.base("team") / "twice.bin").exists()
    files.complete("team", "/data/twice.bin", upload, [(1, "")])
    assert (files.base("team") / "twice.bin").read_bytes() == b"once"


# ---- through a gateway -------------------------------------------------------------------------
class Stack:
    def __init__(self, workdir: pathlib.Path) -> None:
        self.tls = gwharness.Tls(workdir)
        self.key = apikeys.generate_key()
        self.rest_port = gwharness.free_port()
        self.data_dir = workdir / "data"
        self.gateway = gwharness.Gateway(
            workdir=workdir,
            tls=self.tls,
            static_config={"apps": [], "keys": [{"key": str(self.key), "namespaces": "team"}]},
            extra_args=[
                "--rest-port",
                str(self.rest_port),
                "--storage",
                str(workdir / "files"),
                "--data-root",
                str(self.data_dir),
                "--data-max-open-uploads",
                "2",
                "--data-upload-ttl",
                "2",
                "--data-max-parts",
                "100000",
                "--storage-sweep-interval",
                "0.5",
                "--storage-max-open-uploads",
                "2",
            ],
        )
        self.base = f"https://127.0.0.1:{self.rest_port}/files/file/multipart//data"
        self.rest = f"https://127.0.0.1:{self.rest_port}"

    def http(self) -> httpx.Client:
        return httpx.Client(
            verify=str(self.tls.ca_path),
            timeout=60,
            headers={"Authorization": f"Key {self.key}"},
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("data-uploads"))
    with gwharness.cleanup(stack.gateway):
        stack.gateway.wait_ready()
        yield stack


@pytest.mark.slow
def test_gateway_limits_open_uploads_and_sweeps_abandoned_ones(stack: Stack) -> None:
    with stack.http() as http:
        first = http.post(f"{stack.base}/a.bin/initiate")
        assert first.status_code == 200, first.text
        upload_id = first.json()["upload_id"]
        assert http.post(f"{stack.base}/b.bin/initiate").status_code == 200
        refused = http.post(f"{stack.base}/c.bin/initiate")
        assert refused.status_code == 429
        assert "2 multipart uploads" in refused.json()["detail"]
        assert refused.headers["retry-after"]
        # part numbers above 10000 are allowed by --data-max-parts 100000
        part = http.put(
            f"{stack.base}/a.bin/{upload_id}/54321", files={"file_upload": ("p", b"late")}
        )
        assert part.status_code == 200 and part.json()["part_number"] == 54321
        # nobody completes them: the sweeper removes both once untouched for 2 s
        namespace = stack.data_dir / "team"
        waiting.wait_for(
            lambda: (
                not any(
                    entry.name.startswith(f"{datafiles.HIDDEN_PREFIX}upload-")
                    for entry in namespace.iterdir()
                )
            ),
            timeout=120,
            description="abandoned uploads swept",
            interval=0.2,
        )
        gone = http.put(f"{stack.base}/a.bin/{upload_id}/1", files={"file_upload": ("p", b"x")})
        assert gone.status_code == 404 and gone.json()["detail"]
        assert http.post(f"{stack.base}/c.bin/initiate").status_code == 200


@pytest.mark.slow
def test_app_file_uploads_count_against_open_uploads(stack: Stack) -> None:
    """fal deploy's app-file uploads (`/files/app/multipart/<hash>/initiate`) count against
    --storage-max-open-uploads 2 like fal's other initiated uploads; complete and cancel free
    their place (this test leaves none open)."""
    data = b"an app file\n"
    digest = hashlib.sha256(data)
    digest.update(b"33188")
    initiate = f"{stack.rest}/files/app/multipart/{digest.hexdigest()}/initiate"
    form = {"file_upload": ("chunk", data)}
    with stack.http() as http:
        first, second = (http.post(initiate, json={"mode": "33188"}) for _ in range(2))
        assert first.status_code == 200 and second.status_code == 200, second.text
        refused = http.post(initiate, json={"mode": "33188"})
        assert refused.status_code == 429, refused.text
        assert "2 uploads are already open" in refused.json()["detail"]
        assert refused.headers["retry-after"]
        parts = initiate.removesuffix("initiate") + first.json()["upload_id"]
        part = http.put(f"{parts}/1", files=form)
        assert part.status_code == 200, part.text
        done = http.post(f"{parts}/complete", json={"parts": [part.json()]})
        assert done.status_code == 200, done.text
        # the completed upload's place is free; the file is now held, so initiate says 409
        assert http.post(initiate, json={"mode": "33188"}).status_code == 409
        other = hashlib.sha256(b"another").hexdigest()
        third = http.post(
            f"{stack.rest}/files/app/multipart/{other}/initiate", json={"mode": "33188"}
        )
        assert third.status_code == 200, third.text
        for upload, file_hash in ((second, digest.hexdigest()), (third, other)):
            upload_id = upload.json()["upload_id"]
            cancel = f"{stack.rest}/files/app/multipart/{file_hash}/{upload_id}/cancel"
            assert http.post(cancel).status_code == 200
        again = http.post(
            f"{stack.rest}/files/app/multipart/{other}/initiate", json={"mode": "33188"}
        )
        assert again.status_code == 200, again.text
        cancel = f"{stack.rest}/files/app/multipart/{other}/{again.json()['upload_id']}/cancel"
        assert http.post(cancel).status_code == 200


@pytest.mark.slow
def test_gateway_limits_open_initiated_uploads_per_namespace(stack: Stack) -> None:
    """fal's initiate (presigned PUT) and multipart flows: --storage-max-open-uploads 2."""
    body = {"file_name": "a.bin", "content_type": "x/y"}
    with stack.http() as http:
        first = http.post(
            f"{stack.rest}/storage/upload/initiate?storage_type=fal-cdn-v3", json=body
        )
        assert first.status_code == 200, first.text
        second = http.post(
            f"{stack.rest}/storage/upload/initiate-multipart?storage_type=fal-cdn-v3", json=body
        )
        assert second.status_code == 200, second.text
        refused = http.post(
            f"{stack.rest}/storage/upload/initiate?storage_type=fal-cdn-v3", json=body
        )
        assert refused.status_code == 429
        assert "2 uploads are already open" in refused.json()["detail"]
        # the presigned PUT finishes the first upload: its place is free again
        put = http.put(
            first.json()["upload_url"], content=b"bytes", headers={"Content-Type": "x/y"}
        )
        assert put.status_code == 200, put.text
        assert http.get(first.json()["file_url"]).content == b"bytes"
        again = http.post(
            f"{stack.rest}/storage/upload/initiate?storage_type=fal-cdn-v3", json=body
        )
        assert again.status_code == 200, again.text
