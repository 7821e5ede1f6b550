"""fal's file storage and realtime tokens on kubefal, with real processes over TLS: a gateway
with its REST listener (embedded store), a runner serving a real fal.App that uploads through
`fal.toolkit`, and the real, unmodified fal_client beside the kubefal hosts hook."""

from __future__ import annotations

import hashlib
import io
import pathlib
import ssl
import time
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
        self.rest_port = gwharness.free_port()
        self.files_dir = workdir / "files"
        self.runner = gwharness.Runner(
            workdir=workdir,
            app_ref=storage_harness.FILES_APP,
            env={
                "FAL_REST_HOST": f"127.0.0.1:{self.rest_port}",
                "FAL_KEY": str(self.key),
                "SSL_CERT_FILE": str(self.tls.ca_path),
            },
        )
        self.gateway = gwharness.Gateway(
            workdir=workdir,
            tls=self.tls,
            static_config={
                "apps": [{"id": "team/files", "auth": "private", "runners": [self.runner.url]}],
                "keys": [
                    {"key": str(self.key), "namespaces": "team"},
                    {"key": str(self.other_key), "namespaces": "other"},
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
            ],
        )
        self.rest_url = f"https://127.0.0.1:{self.rest_port}"

    def client_env(self, key: apikeys.ApiKey | None = None) -> dict[str, str]:
        return {
            **self.gateway.client_env(str(key or self.key)),
            "KUBEFAL_REST_HOST": f"127.0.0.1:{self.rest_port}",
        }

    def http(self) -> httpx.Client:
        return httpx.Client(verify=str(self.tls.ca_path), timeout=60)

    def auth(self, key: apikeys.ApiKey | None = None) -> dict[str, str]:
        return {"Authorization": f"Key {key or self.key}"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("storage"))
    with gwharness.cleanup(stack.runner, stack.gateway):
        stack.runner.wait_ready()
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
        assert moved.status_code == 403 and refused.json()["detail"]
        renamed = http.get(f"{stack.rest_url}/files/team/{object_id}/{token}/x{name}")
        assert renamed.status_code == 403


def test_expired_url_is_403(stack: Stack) -> None:
    url = _upload(stack, b"old", name="old.txt").json()["access_url"]
    _, _, namespace, object_id, _, name = url.removeprefix(stack.rest_url).split("/")
    signer = signing.Signer(SIGNING_KEY.encode())
    past = signer.file_token(namespace, object_id, name, expires=int(time.time()) - 5)
    with stack.http() as http:
        response = http.get(f"{stack.rest_url}/files/{namespace}/{object_id}/{past}/{name}")
    assert response.status_code == 403
    assert response.json()["detail"] == "This file URL has expired"


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
