"""fal's file storage and realtime tokens on kubefal, with real processes over TLS: a gateway
with its REST listener (embedded store), a runner serving a real fal.App that uploads through
`fal.toolkit`, and the real, unmodified fal_client beside the kubefal hosts hook."""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import ssl
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets.exceptions
import websockets.sync.client

from kubefal_api import apikeys
from kubefal_gateway.storage import signing
from tests.gateway import gwharness, storage_harness

pytestmark = pytest.mark.slow

MAX_FILE = 24 * 1024 * 1024
SIGNING_KEY = "test-signing-key-0123456789abcdef"


class Stack:
    def __init__(self, workdir: pathlib.Path) -> None:
        self.workdir = workdir
        self.tls = gwharness.Tls(workdir)
        self.key = apikeys.generate_key()
        self.other_key = apikeys.generate_key()
        # What the operator gives a runner (operator/kubefal_operator/runner_keys.py): storage
        # only, the app's namespace only.
        self.runner_key = apikeys.generate_key()
        self.rest_port = gwharness.free_port()
        self.files_dir = workdir / "files"
        self.data_dir = workdir / "data"
        self.runners = [
            gwharness.Runner(
                workdir=workdir,
                app_ref=storage_harness.FILES_APP,
                env={
                    "FAL_REST_HOST": f"127.0.0.1:{self.rest_port}",
                    "FAL_KEY": str(self.runner_key),
                    "SSL_CERT_FILE": str(self.tls.ca_path),
                },
            )
            for _ in range(2)
        ]
        self.gateway = gwharness.Gateway(
            workdir=workdir,
            tls=self.tls,
            static_config={
                "apps": [
                    {
                        "id": "team/files",
                        "auth": "private",
                        "runners": [r.url for r in self.runners],
                    }
                ],
                "keys": [
                    {"key": str(self.key), "namespaces": "team"},
                    {"key": str(self.other_key), "namespaces": "other"},
                    {"key": str(self.runner_key), "namespaces": "team", "scopes": "storage"},
                ],
            },
            extra_args=[
                "--rest-port",
                str(self.rest_port),
                "--storage",
                str(self.files_dir),
                "--storage-max-file-bytes",
                str(MAX_FILE),
                "--storage-signing-key",
                SIGNING_KEY,
                "--data-root",
                str(self.data_dir),
            ],
        )
        self.rest_url = f"https://127.0.0.1:{self.rest_port}"

    def client_env(self, key: apikeys.ApiKey | None = None) -> dict[str, str]:
        return {
            **self.gateway.client_env(str(key or self.key)),
            "KUBEFAL_REST_HOST": f"127.0.0.1:{self.rest_port}",
        }

    def fal_env(self, key: apikeys.ApiKey | None = None) -> dict[str, str]:
        """The fal SDK and CLI (fal files, fal.sync_dir) call REST at their gRPC host."""
        return {
            "FAL_GRPC_HOST": f"127.0.0.1:{self.rest_port}",
            "FAL_KEY": str(key or self.key),
            "SSL_CERT_FILE": str(self.tls.ca_path),
        }

    def http(self) -> httpx.Client:
        return httpx.Client(verify=str(self.tls.ca_path), timeout=60)

    def auth(self, key: apikeys.ApiKey | None = None) -> dict[str, str]:
        return {"Authorization": f"Key {key or self.key}"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("storage"))
    with gwharness.cleanup(*stack.runners, stack.gateway):
        for runner in stack.runners:
            runner.wait_ready()
        stack.gateway.wait_ready(["team/files"])
        yield stack


@pytest.fixture(scope="module")
def python(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return storage_harness.hooked_python(tmp_path_factory.mktemp("client"))


def _upload(stack: Stack, data: bytes, name: str = "a.bin", **headers: str) -> httpx.Response:
    token = stack.http().post(
        f"{stack.rest_url}/storage/auth/token?storage_type=fal-cdn-v3",
        headers=stack.auth(),
        json={},
    )
    token.raise_for_status()
    body = token.json()
    return stack.http().post(
        f"{stack.rest_url}/files/upload",
        content=data,
        headers={
            "Authorization": f"{body['token_type']} {body['token']}",
            "Content-Type": "application/octet-stream",
            "X-Fal-File-Name": name,
            **headers,
        },
    )


# ---- the toolkit inside a runner ---------------------------------------------------------------
def test_app_returns_image_from_pil_and_file_from_bytes(stack: Stack) -> None:
    result = gwharness.run_client(
        """
        import fal_client
        emit(fal_client.run("team/files", {"text": "hello files", "size": 24}))
        """,
        env=stack.client_env(),
    )
    image_url, file_url = result["image"]["url"], result["file"]["url"]
    assert image_url.startswith(f"{stack.rest_url}/files/team/")
    assert file_url.startswith(f"{stack.rest_url}/files/team/")
    # The URLs are capabilities: fetched without any credentials.
    with stack.http() as http:
        text = http.get(file_url)
        picture = http.get(image_url)
    assert text.status_code == 200 and text.content == b"hello files"
    assert text.headers["content-type"].startswith("text/plain")
    from PIL import Image

    assert picture.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(picture.content)).size == (24, 24)


# ---- the client outside, through the hosts hook ------------------------------------------------
def test_upload_file_20mb_downloaded_and_hashed_by_the_app(
    stack: Stack, python: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "weights.bin"
    data = hashlib.sha256(b"seed").digest() * (20 * 1024 * 1024 // 32)
    path.write_bytes(data)
    result = storage_harness.run_python(
        python,
        f"""
        import fal_client
        url = fal_client.upload_file({str(path)!r})
        emit({{"url": url, "hash": fal_client.run("team/files", {{"url": url}}, path="/hash")}})
        """,
        env=stack.client_env(),
    )
    assert result["url"].startswith(f"{stack.rest_url}/files/team/")
    assert result["url"].endswith("/weights.bin")
    assert result["hash"] == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def test_upload_upload_image_and_the_storage_fallback(stack: Stack, python: pathlib.Path) -> None:
    result = storage_harness.run_python(
        python,
        """
        import fal_client, httpx, os
        from PIL import Image
        urls = {
            "upload": fal_client.upload(b"raw bytes", "text/plain", file_name="note.txt"),
            "image": fal_client.upload_image(Image.new("RGB", (8, 4)), format="png"),
            # the initiate + presigned PUT flow (fal_client's fallback repository)
            "storage": fal_client.upload(b"via storage", "text/plain", repository="fal"),
        }
        with httpx.Client(verify=os.environ["SSL_CERT_FILE"]) as http:
            emit({name: [url, http.get(url).content.decode("latin-1")]
                  for name, url in urls.items()})
        """,
        env=stack.client_env(),
    )
    assert result["upload"][1] == "raw bytes"
    assert result["upload"][0].endswith("/note.txt")
    assert result["image"][1].startswith("\x89PNG")
    assert result["storage"][1] == "via storage"
    assert all(url.startswith(f"{stack.rest_url}/files/team/") for url, _ in result.values())


def test_multipart_uploads_of_fal_client_and_the_fal_sdk(
    stack: Stack, python: pathlib.Path
) -> None:
    data_expr = "bytes(range(256)) * (3 * 1024 * 1024 // 256 + 7)"
    client = storage_harness.run_python(
        python,
        f"""
        import fal_client, fal_client.client as c, httpx, os
        c.MULTIPART_THRESHOLD = 1024 * 1024     # exercise multipart without 100 MB
        c.MULTIPART_CHUNK_SIZE = 1024 * 1024
        data = {data_expr}
        url = fal_client.upload(data, "application/octet-stream", file_name="big.bin")
        with httpx.Client(verify=os.environ["SSL_CERT_FILE"]) as http:
            emit([url, http.get(url).content == data])
        """,
        env=stack.client_env(),
    )
    assert client[1] is True and client[0].endswith("/big.bin")
    sdk = storage_harness.run_python(
        python,
        f"""
        import urllib.request
        from fal.toolkit.file.providers.fal import FalFileRepositoryV3
        from fal.toolkit.file.types import FileData
        data = {data_expr}
        url = FalFileRepositoryV3().save(
            FileData(data, "application/octet-stream", "sdk.bin"),
            multipart=True, multipart_chunk_size=1024 * 1024,
        )
        emit([url, urllib.request.urlopen(url).read() == data])
        """,
        env={
            "FAL_REST_HOST": f"127.0.0.1:{stack.rest_port}",
            "FAL_KEY": str(stack.key),
            "SSL_CERT_FILE": str(stack.tls.ca_path),
        },
    )
    assert sdk[1] is True and "/files/team/" in sdk[0]


def test_realtime_with_default_arguments(stack: Stack, python: pathlib.Path) -> None:
    result = storage_harness.run_python(
        python,
        """
        import fal_client
        with fal_client.realtime("team/files") as connection:
            connection.send({"text": "abc"})
            emit(connection.recv())
        """,
        env=stack.client_env(),
    )
    assert result == {"sha256": hashlib.sha256(b"abc").hexdigest(), "size": 3}


# ---- fal.toolkit's KV store -------------------------------------------------------------------
def test_kv_store_is_shared_by_two_runners_and_scoped_to_the_namespace(stack: Stack) -> None:
    first, second = stack.runners
    with httpx.Client(timeout=60) as http:
        written = http.post(
            first.url + "/kv", json={"op": "set", "key": "model/rev", "value": "v1"}
        ).json()
        read = http.post(second.url + "/kv", json={"op": "get", "key": "model/rev"}).json()
        deleted = http.post(second.url + "/kv", json={"op": "delete", "key": "model/rev"}).json()
        gone = http.post(first.url + "/kv", json={"op": "get", "key": "model/rev"}).json()
    assert written["value"] == "v1" and read["value"] == "v1"
    assert written["pid"] != read["pid"]
    assert deleted["value"] is None and gone["value"] is None
    with stack.http() as http:
        base = f"{stack.rest_url}/kv"
        put = http.put(f"{base}/set/shared-db/k", content=b"team value", headers=stack.auth())
        assert put.status_code == 200
        assert http.get(f"{base}/get/shared-db/k", headers=stack.auth()).json() == {
            "value": "team value"
        }
        other = http.get(f"{base}/get/shared-db/k", headers=stack.auth(stack.other_key))
        assert other.status_code == 404
        assert http.get(f"{base}/get/shared-db/k").status_code == 401
        bad = http.get(f"{base}/get/bad db/k", headers=stack.auth())
        assert bad.status_code == 400 and bad.json()["detail"]
        bad_ttl = http.put(f"{base}/set/shared-db/k?ttl=5", content=b"x", headers=stack.auth())
        assert bad_ttl.status_code == 400 and "ttl" in bad_ttl.json()["detail"]
        too_big = http.put(
            f"{base}/set/shared-db/k", content=b"x" * (1024 * 1024 + 1), headers=stack.auth()
        )
        assert too_big.status_code == 413


def test_another_namespaces_kv_calls_never_see_nor_change_a_namespaces_entries(
    stack: Stack,
) -> None:
    """A key of another namespace reading team's KV key gets the answer of a key nobody set,
    and its set and delete of the same db and key change only its own namespace's entry; a
    request naming team with `X-Kubefal-Namespace` is 403, for a stored key as for a missing
    one. The storage-only key of team (a runner's) shares team's entries."""
    base = f"{stack.rest_url}/kv"
    team, other = stack.auth(), stack.auth(stack.other_key)
    with stack.http() as http:
        assert http.put(f"{base}/set/iso-db/k", content=b"team", headers=team).status_code == 200
        seen = http.get(f"{base}/get/iso-db/k", headers=other)
        never_set = http.get(f"{base}/get/iso-db/k2", headers=other)
        assert seen.status_code == 404
        assert seen.json() == {**never_set.json(), "detail": "Key 'k' not found"}
        assert never_set.json()["detail"] == "Key 'k2' not found"
        assert http.put(f"{base}/set/iso-db/k", content=b"other", headers=other).status_code == 200
        assert http.get(f"{base}/get/iso-db/k", headers=team).json() == {"value": "team"}
        assert http.get(f"{base}/get/iso-db/k", headers=other).json() == {"value": "other"}
        assert http.delete(f"{base}/delete/iso-db/k", headers=other).status_code == 200
        assert http.get(f"{base}/get/iso-db/k", headers=team).json() == {"value": "team"}
        runner = http.get(f"{base}/get/iso-db/k", headers=stack.auth(stack.runner_key))
        assert runner.json() == {"value": "team"}
        named = {**other, "X-Kubefal-Namespace": "team"}
        stored = http.get(f"{base}/get/iso-db/k", headers=named)
        missing = http.get(f"{base}/get/iso-db/k2", headers=named)
        assert stored.status_code == 403
        assert (stored.status_code, stored.json()) == (missing.status_code, missing.json())
        assert http.delete(f"{base}/delete/iso-db/k", headers=named).status_code == 403
        assert http.get(f"{base}/get/iso-db/k", headers=team).json() == {"value": "team"}


# ---- /data: fal.sync_dir and fal files ----------------------------------------------------------
def _fal_cli(stack: Stack, *arguments: str) -> subprocess.CompletedProcess[str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("FAL_", "KUBEFAL_")) and key != "SSL_CERT_FILE"
    }
    return subprocess.run(
        [str(pathlib.Path(sys.executable).with_name("fal")), *arguments],
        env={**environment, **stack.fal_env()},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_sync_dir_and_fal_files_list_upload_download(stack: Stack, tmp_path: pathlib.Path) -> None:
    local = tmp_path / "weights"
    (local / "sub").mkdir(parents=True)
    (local / "sub" / "a.bin").write_bytes(b"A" * 1000)
    (local / "config.json").write_text('{"layers": 2}')
    script = f"""
        import fal
        first = fal.sync_dir({str(local)!r}, "/data/models/w")
        second = fal.sync_dir({str(local)!r}, "/data/models/w")
        emit([first, second])
    """
    result = gwharness.run_client(script, env=stack.fal_env())
    assert result == ["models/w", "models/w"]
    team = stack.data_dir / "team"
    assert (team / "models" / "w" / "sub" / "a.bin").read_bytes() == b"A" * 1000
    assert (team / "models" / "w" / "config.json").read_text() == '{"layers": 2}'

    listed = _fal_cli(stack, "files", "list", "/data/models/w")
    assert listed.returncode == 0, listed.stderr
    assert {"sub", "config.json", ".fal_hash"} <= set(listed.stdout.split())

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * 1024 * 1024))  # over fal's 10 MB: multipart
    small = tmp_path / "small.txt"
    small.write_text("small")
    for source in (big, small):
        uploaded = _fal_cli(stack, "files", "upload", str(source), f"/data/in/{source.name}")
        assert uploaded.returncode == 0, uploaded.stderr
        assert (team / "in" / source.name).read_bytes() == source.read_bytes()
    target = tmp_path / "back.bin"
    downloaded = _fal_cli(stack, "files", "download", "/data/in/big.bin", str(target))
    assert downloaded.returncode == 0, downloaded.stderr
    assert target.read_bytes() == big.read_bytes()
    assert not [p for p in team.rglob("*") if p.name.startswith(".kubefal-")]


def test_data_is_per_namespace_and_paths_stay_inside(stack: Stack) -> None:
    with stack.http() as http:
        base = stack.rest_url
        put = http.post(
            f"{base}/files/file/local//data/private/x.txt",
            files={"file_upload": ("x.txt", b"team only")},
            headers=stack.auth(),
        )
        assert put.status_code == 200
        other = http.get(
            f"{base}/files/file//data/private/x.txt", headers=stack.auth(stack.other_key)
        )
        assert other.status_code == 404
        assert (stack.data_dir / "other").is_dir()
        # %2e%2e: httpx would remove a literal ".." segment before sending
        for path in ("/files/list//data/%2e%2e", "/files/file//data/a/%2e%2e/%2e%2e/team/x.txt"):
            refused = http.get(base + path, headers=stack.auth(stack.other_key))
            assert refused.status_code == 400 and refused.json()["detail"]
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as zipped:
            zipped.writestr("fine.txt", "ok")
            zipped.writestr("../../escape.txt", "no")
        slip = http.post(
            f"{base}/files/file/local/unzipped?unzip=true",
            files={"file_upload": ("d.zip", archive.getvalue())},
            headers=stack.auth(),
        )
        assert slip.status_code == 400 and "." in slip.json()["detail"]
        assert not list(stack.data_dir.rglob("escape.txt"))
        assert not (stack.data_dir / "team" / "unzipped" / "fine.txt").exists()
        assert http.get(f"{base}/files/list//data", headers={}).status_code == 401
        fetch = http.post(
            f"{base}/files/file/url//data/x",
            json={"url": "http://169.254.169.254/"},
            headers=stack.auth(),
        )
        assert fetch.status_code == 400
        # "²" (%C2%B2) is a digit to str.isdigit but not to int(): a 404, not a 500
        part = http.put(
            f"{base}/files/file/multipart//data/x/{'a' * 22}/%C2%B2",
            files={"file_upload": ("x", b"x")},
            headers=stack.auth(),
        )
        assert part.status_code == 404 and part.json()["detail"]


def test_another_namespaces_data_calls_answer_as_for_paths_and_uploads_that_do_not_exist(
    stack: Stack,
) -> None:
    """A key of another namespace naming team's /data file and multipart upload id (read,
    list, delete, rename, part, complete, cancel) gets exactly the answers of a path and an
    upload id that do not exist, and changes nothing: team's file keeps its bytes and team's
    upload completes."""
    base = f"{stack.rest_url}/files"
    team, other = stack.auth(), stack.auth(stack.other_key)
    with stack.http() as http:
        stored = http.post(
            f"{base}/file/local//data/iso/a.txt",
            files={"file_upload": ("a.txt", b"team's data")},
            headers=team,
        )
        assert stored.status_code == 200, stored.text
        upload_id = http.post(
            f"{base}/file/multipart//data/iso/m.bin/initiate", headers=team
        ).json()["upload_id"]

        def attempts(directory: str, name: str, target_id: str) -> list[tuple[int, str]]:
            multipart = f"{base}/file/multipart//data/{directory}/m.bin/{target_id}"
            answers = [
                http.get(f"{base}/file//data/{directory}/{name}", headers=other),
                http.get(f"{base}/list//data/{directory}", headers=other),
                http.delete(f"{base}/file//data/{directory}/{name}", headers=other),
                http.post(
                    f"{base}/rename//data/{directory}/{name}",
                    json={"destination": f"/data/{directory}/moved.txt"},
                    headers=other,
                ),
                http.put(
                    f"{multipart}/1", files={"file_upload": ("p", b"B's part")}, headers=other
                ),
                http.post(
                    f"{multipart}/complete",
                    json={"parts": [{"part_number": 1, "etag": "x"}]},
                    headers=other,
                ),
                http.post(f"{multipart}/cancel", headers=other),
            ]
            return [
                (
                    answer.status_code,
                    answer.text.replace(directory, "<dir>")
                    .replace(name, "<name>")
                    .replace(target_id, "<id>"),
                )
                for answer in answers
            ]

        existing = attempts("iso", "a.txt", upload_id)
        assert existing == attempts("nowhere", "none.txt", "f" * 22)
        assert [status for status, _ in existing] == [404, 200, 404, 400, 404, 404, 404]
        assert existing[1] == (200, "[]")  # a listing shows none of team's files
        assert http.get(f"{base}/file//data/iso/a.txt", headers=team).content == b"team's data"
        part = http.put(
            f"{base}/file/multipart//data/iso/m.bin/{upload_id}/1",
            files={"file_upload": ("p", b"team's part")},
            headers=team,
        )
        assert part.status_code == 200, part.text
        done = http.post(
            f"{base}/file/multipart//data/iso/m.bin/{upload_id}/complete",
            json={"parts": [part.json()]},
            headers=team,
        )
        assert done.status_code == 200, done.text
        assert http.get(f"{base}/file//data/iso/m.bin", headers=team).content == b"team's part"


# ---- bad input ---------------------------------------------------------------------------------
def test_upload_over_the_limit_is_413_and_nothing_is_kept(stack: Stack) -> None:
    before = sorted(p.name for p in (stack.files_dir / "data").rglob("*") if p.is_file())
    response = _upload(stack, b"x" * (MAX_FILE + 1))
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: cut off while streaming
        for _ in range(MAX_FILE // (1024 * 1024) + 2):
            yield b"y" * (1024 * 1024)

    streamed = _upload(stack, chunks())  # type: ignore[arg-type]
    assert streamed.status_code == 413 and streamed.json()["detail"]
    after = sorted(p.name for p in (stack.files_dir / "data").rglob("*") if p.is_file())
    assert after == before
    assert list((stack.files_dir / "tmp").iterdir()) == []
    assert _upload(stack, b"small").status_code == 200  # the store still works


def test_another_namespace_and_a_tampered_url_are_refused(stack: Stack) -> None:
    url = _upload(stack, b"secret", name="s.txt").json()["access_url"]
    path = url.removeprefix(stack.rest_url)
    _, _, namespace, object_id, token, name = path.split("/")
    with stack.http() as http:
        assert http.get(url).content == b"secret"
        unsigned = f"{stack.rest_url}/files/{namespace}/{object_id}/-/{name}"
        assert http.get(unsigned, headers=stack.auth()).content == b"secret"
        refused = http.get(unsigned, headers=stack.auth(stack.other_key))
        assert refused.status_code == 403 and "team" in refused.json()["detail"]
        assert http.get(unsigned).status_code == 401
        moved = http.get(f"{stack.rest_url}/files/other/{object_id}/{token}/{name}")
        assert moved.status_code == 403 and moved.json()["detail"]
        renamed = http.get(f"{stack.rest_url}/files/team/{object_id}/{token}/x{name}")
        assert renamed.status_code == 403 and renamed.json()["detail"]
        assert http.get(url).content == b"secret"  # nothing else affected


def test_another_callers_upload_id_gets_the_answer_of_an_id_nobody_issued(stack: Stack) -> None:
    """A key of another namespace that knows the upload ids of team's presigned and multipart
    uploads (not their signed URLs) gets, on its own signed URLs or on team's files with `-`,
    exactly the answers of an upload id nobody issued; the owner then finishes both uploads
    and reads back its own bytes."""
    rest = stack.rest_url
    with stack.http() as http:

        def begin(key: apikeys.ApiKey, path: str) -> dict[str, str]:
            answer = http.post(
                f"{rest}{path}",
                headers=stack.auth(key),
                json={"file_name": "up.bin", "content_type": "application/octet-stream"},
            )
            assert answer.status_code == 200, answer.text
            return dict(answer.json())

        put = begin(stack.key, "/storage/upload/initiate")
        multi = begin(stack.key, "/storage/upload/initiate-multipart?storage_type=fal-cdn-v3")
        own_put = begin(stack.other_key, "/storage/upload/initiate")["file_url"]
        own_multi = begin(
            stack.other_key, "/storage/upload/initiate-multipart?storage_type=fal-cdn-v3"
        )["file_url"]
        put_id = put["upload_url"].rsplit("/", 1)[1]
        multi_id = multi["upload_url"].rsplit("/", 1)[1]

        def unsigned(file_url: str) -> str:
            _, _, namespace, object_id, _, name = file_url.removeprefix(rest).split("/")
            return f"{rest}/files/{namespace}/{object_id}/-/{name}"

        def attempts(put_target: str, multi_target: str) -> list[tuple[int, object]]:
            other = stack.auth(stack.other_key)
            answers = [
                http.put(f"{own_put}/upload/{put_target}", content=b"B's bytes"),
                http.put(f"{own_multi}/multipart/{multi_target}/1", content=b"B's bytes"),
                http.post(
                    f"{own_multi}/multipart/{multi_target}/complete",
                    json={"parts": [{"partNumber": 1, "etag": "x"}]},
                ),
                http.put(
                    f"{unsigned(put['file_url'])}/upload/{put_target}",
                    content=b"B's bytes",
                    headers=other,
                ),
                http.put(
                    f"{unsigned(multi['file_url'])}/multipart/{multi_target}/1",
                    content=b"B's bytes",
                    headers=other,
                ),
                http.post(
                    f"{unsigned(multi['file_url'])}/multipart/{multi_target}/complete",
                    json={"parts": [{"partNumber": 1, "etag": "x"}]},
                    headers=other,
                ),
            ]
            return [(answer.status_code, answer.json()) for answer in answers]

        existing = attempts(put_id, multi_id)
        assert existing == attempts("f" * 22, "g" * 22)
        assert [status for status, _ in existing] == [404, 404, 404, 403, 403, 403]

        assert http.put(put["upload_url"], content=b"team's bytes").status_code == 200
        part = http.put(f"{multi['upload_url']}/1", content=b"team's parts")
        assert part.status_code == 200, part.text
        done = http.post(
            f"{multi['upload_url']}/complete",
            json={"parts": [{"partNumber": 1, "etag": part.json()["etag"]}]},
        )
        assert done.status_code == 200, done.text
        assert http.get(put["file_url"]).content == b"team's bytes"
        assert http.get(multi["file_url"]).content == b"team's parts"


def test_expired_url_is_403(stack: Stack) -> None:
    url = _upload(stack, b"old", name="old.txt").json()["access_url"]
    _, _, namespace, object_id, _, name = url.removeprefix(stack.rest_url).split("/")
    signer = signing.Signer(SIGNING_KEY.encode())
    past = signer.file_token(namespace, object_id, name, expires=int(time.time()) - 5)
    with stack.http() as http:
        response = http.get(f"{stack.rest_url}/files/{namespace}/{object_id}/{past}/{name}")
    assert response.status_code == 403
    assert response.json()["detail"] == "This file URL has expired"
    with stack.http() as http:
        assert http.get(url).content == b"old"  # the file and its unexpired URL are untouched


def test_path_traversal_in_a_file_name_stays_inside_the_store(stack: Stack) -> None:
    response = _upload(stack, b"nope", name="../../../../tmp/evil.sh")
    assert response.status_code == 200
    url = response.json()["access_url"]
    assert url.endswith("/evil.sh")
    stored = list(stack.files_dir.rglob("evil.sh"))
    assert stored and all(p.resolve().is_relative_to(stack.files_dir.resolve()) for p in stored)
    assert not pathlib.Path("/tmp/evil.sh").exists()
    with stack.http() as http:
        for path in ("/files/team/..%2F..%2Fetc/x/passwd", "/files/../../etc/passwd/a/b"):
            answer = http.get(stack.rest_url + path)
            assert answer.status_code == 404 and answer.json()["detail"]


def test_bad_credentials_and_bodies(stack: Stack) -> None:
    with stack.http() as http:
        no_key = http.post(f"{stack.rest_url}/files/upload", content=b"x")
        assert no_key.status_code == 401 and no_key.json()["detail"]
        forged = http.post(
            f"{stack.rest_url}/files/upload",
            content=b"x",
            headers={"Authorization": "Bearer kfcdn.kfabc.team.99999999999.forged"},
        )
        assert forged.status_code == 401 and forged.json()["detail"] == "Invalid upload token"
        bad_json = http.post(
            f"{stack.rest_url}/storage/upload/initiate", content=b"{", headers=stack.auth()
        )
        assert bad_json.status_code == 400 and bad_json.json()["detail"]
        bad_lifecycle = _upload(stack, b"x", **{"X-Fal-Object-Lifecycle": "[1]"})
        assert bad_lifecycle.status_code == 400
        bad_apps = http.post(
            f"{stack.rest_url}/tokens/", headers=stack.auth(), json={"allowed_apps": ["../x"]}
        )
        assert bad_apps.status_code == 400 and bad_apps.json()["detail"]


def _ws(stack: Stack, token: str) -> Any:
    context = ssl.create_default_context(cafile=str(stack.tls.ca_path))
    return websockets.sync.client.connect(
        f"wss://127.0.0.1:{stack.gateway.run_port}/team/files/realtime?fal_jwt_token={token}",
        ssl=context,
        open_timeout=30,
    )


def test_realtime_tokens_are_scoped_and_expire(stack: Stack) -> None:
    with stack.http() as http:
        other_app = http.post(
            f"{stack.rest_url}/tokens/",
            headers=stack.auth(),
            json={"allowed_apps": ["another"], "token_expiration": 60},
        ).json()
        other_namespace = http.post(
            f"{stack.rest_url}/tokens/",
            headers=stack.auth(stack.other_key),
            json={"allowed_apps": ["files"], "token_expiration": 60},
        ).json()
    assert isinstance(other_app, str) and other_app.startswith("kfrt.")
    signer = signing.Signer(SIGNING_KEY.encode())
    expired = signer.realtime_token(stack.key.id, ("files",), expires=int(time.time()) - 1)
    for token, status in ((other_app, 403), (other_namespace, 403), (expired, 401)):
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            _ws(stack, token)
        assert refused.value.response.status_code == status


def test_storage_only_key_stores_files_but_calls_no_app(stack: Stack) -> None:
    """The runners above upload with a storage-only key (the operator's runner key): it gets
    upload tokens, stores and reads its namespace's files, KV and /data, but every app call,
    realtime token and realtime WebSocket with it is 403; a full key still calls the app."""
    runner = stack.auth(stack.runner_key)
    with stack.http() as http:
        token = http.post(
            f"{stack.rest_url}/storage/auth/token?storage_type=fal-cdn-v3", headers=runner, json={}
        )
        assert token.status_code == 200
        stored = http.post(
            f"{stack.rest_url}/files/upload",
            content=b"from a runner",
            headers={"Authorization": f"Bearer {token.json()['token']}", "Content-Type": "x/y"},
        )
        assert stored.status_code == 200 and stored.json()["access_url"].startswith(
            f"{stack.rest_url}/files/team/"
        )
        listed = http.get(f"{stack.rest_url}/files/list//data", headers=runner)
        assert listed.status_code == 200
        for url in (
            f"{stack.gateway.run_url}/team/files",
            f"{stack.gateway.queue_url}/team/files",
        ):
            refused = http.post(url, headers=runner, json={"text": "x"})
            assert refused.status_code == 403, (url, refused.text)
            assert "may not call apps" in refused.json()["detail"]
        minted = http.post(
            f"{stack.rest_url}/tokens/",
            headers=runner,
            json={"allowed_apps": ["files"], "token_expiration": 60},
        )
        assert minted.status_code == 403 and "'apps'" in minted.json()["detail"]
        allowed = http.post(
            f"{stack.gateway.run_url}/team/files", headers=stack.auth(), json={"text": "x"}
        )
        assert allowed.status_code == 200
    # A realtime token naming this key (as if minted before the scope was narrowed): refused.
    signer = signing.Signer(SIGNING_KEY.encode())
    forged = signer.realtime_token(stack.runner_key.id, ("files",), expires=int(time.time()) + 60)
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused_ws:
        _ws(stack, forged)
    assert refused_ws.value.response.status_code == 403
    # ... and the key itself in fal_jwt_token (an API key works there otherwise)
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused_key:
        _ws(stack, str(stack.runner_key))
    assert refused_key.value.response.status_code == 403


def test_store_down_is_503_and_recovers(stack: Stack) -> None:
    # The store's work area replaced by a plain file: every write fails with ENOTDIR, whatever
    # the user's privileges (chmod does not stop root).
    kept = _upload(stack, b"kept", name="kept.txt").json()["access_url"]
    tmp = stack.files_dir / "tmp"
    aside = stack.files_dir / "tmp-aside"
    tmp.rename(aside)
    tmp.write_bytes(b"")
    try:
        response = _upload(stack, b"while down")
        assert response.status_code == 503
        assert response.json()["error_type"] == "storage_unavailable"
        assert "unavailable" in response.json()["detail"]
        with stack.http() as http:  # stored files and the rest of the gateway are unaffected
            assert http.get(kept).content == b"kept"
            assert (
                http.get(f"{stack.rest_url}/storage/auth/token", headers=stack.auth()).status_code
                == 405
            )
    finally:
        tmp.unlink()
        aside.rename(tmp)
    assert _upload(stack, b"after").status_code == 200


def test_full_disk_is_507_and_nothing_else_is_lost(stack: Stack) -> None:
    kept = _upload(stack, b"kept", name="before-full.txt").json()["access_url"]
    pid = str(stack.gateway.popen.pid)
    # A file-size limit on the gateway process: write() fails with EFBIG past 2 MiB, as a full
    # disk fails with ENOSPC (both are "full" for the store).
    subprocess.run(["prlimit", "--pid", pid, "--fsize=2097152:"], check=True)
    try:
        full = _upload(stack, b"x" * (4 * 1024 * 1024), name="too-big-for-disk.bin")
        assert full.status_code == 507
        assert full.json()["error_type"] == "storage_full"
        assert "nothing was stored" in full.json()["detail"]
    finally:
        subprocess.run(["prlimit", "--pid", pid, "--fsize=unlimited:"], check=True)
    assert not list(stack.files_dir.rglob("too-big-for-disk.bin"))
    assert list((stack.files_dir / "tmp").iterdir()) == []
    with stack.http() as http:
        assert http.get(kept).content == b"kept"
    assert _upload(stack, b"x" * (4 * 1024 * 1024)).status_code == 200
