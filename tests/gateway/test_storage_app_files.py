"""fal deploy's app_files upload against the real gateway, with the fal SDK's own FileSync.

The SDK uploads app files by content hash (`POST /files/missing_hashes`, `/files/app/
multipart/<hash>/...`) before `RegisterApplication`; the gateway keeps them per namespace,
and the control plane reads them back (`GET /files/app/<hash>`) with the deploying key.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from collections.abc import Iterator

import httpx
import pytest

from kubefal_api import apikeys
from kubefal_gateway.storage import app_files
from tests.gateway import gwharness, storage_harness

pytestmark = pytest.mark.slow


class Stack(storage_harness.FileGateway):
    def __init__(self, workdir: pathlib.Path) -> None:
        self.ca = gwharness.Tls(workdir)
        super().__init__(workdir, tls=self.ca)

    def http(self, key: apikeys.ApiKey | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.rest_url,
            verify=str(self.ca.ca_path),
            timeout=60,
            headers={"Authorization": f"Key {key}"} if key is not None else {},
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("app-files"))
    with gwharness.cleanup(stack.gateway):
        stack.gateway.wait_ready([])
        yield stack


@pytest.fixture(scope="module")
def python(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return storage_harness.hooked_python(tmp_path_factory.mktemp("client"))


def _fal_hash(path: pathlib.Path) -> str:
    digest = hashlib.sha256(path.read_bytes())
    digest.update(str(os.stat(path).st_mode).encode())
    return digest.hexdigest()


def _sync(stack: Stack, python: pathlib.Path, app_dir: pathlib.Path, entries: list[str]) -> object:
    return storage_harness.run_python(
        python,
        f"""
        from fal.file_sync import FileSync
        sync = FileSync({str(app_dir / "app.py")!r})
        files, errors = sync.sync_files({entries!r}, files_context_dir={str(app_dir)!r})
        emit({{
            "files": sorted((f.relative_path, f.hash) for f in files),
            "errors": [str(e) for e in errors],
            "missing_after": sync.check_hashes_on_server([f.hash for f in files]),
        }})
        """,
        env={
            "FAL_REST_HOST": f"127.0.0.1:{stack.rest_port}",
            "FAL_KEY": str(stack.key),
            "SSL_CERT_FILE": str(stack.ca.ca_path),
        },
    )


def test_fal_sdk_uploads_app_files_by_hash_and_they_read_back(
    stack: Stack, python: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    (tmp_path / "app.py").write_text("x = 1\n")
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "prompt.txt").write_text(f"hello {tmp_path.name}\n")
    (tmp_path / "assets" / "blob.bin").write_bytes(bytes(range(256)) * 40 + os.urandom(16))

    result = _sync(stack, python, tmp_path, ["assets"])

    assert result["errors"] == []  # type: ignore[index]
    assert result["missing_after"] == []  # type: ignore[index]
    hashes = dict(result["files"])  # type: ignore[index]
    assert set(hashes) == {"assets/prompt.txt", "assets/blob.bin"}
    for relative, file_hash in hashes.items():
        assert file_hash == _fal_hash(tmp_path / relative)
        with stack.http(stack.key) as http:
            response = http.get(f"/files/app/{file_hash}")
        assert response.status_code == 200, response.text
        assert response.content == (tmp_path / relative).read_bytes()
        # Another namespace's key never sees the file.
        with stack.http(stack.other_key) as http:
            assert http.get(f"/files/app/{file_hash}").status_code == 404
    # A second sync uploads nothing (the SDK skips hashes the server holds).
    again = _sync(stack, python, tmp_path, ["assets"])
    assert again["files"] == result["files"]  # type: ignore[index]


def _form(data: bytes) -> tuple[bytes, str]:
    boundary = "kubefal-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file_upload"; '
            'filename="chunk"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def test_app_file_uploads_refuse_bad_input_with_json_detail(stack: Stack) -> None:
    data = b"the real bytes\n"
    digest = hashlib.sha256(data)
    digest.update(b"33188")
    file_hash = digest.hexdigest()
    with stack.http() as anonymous:
        refused = anonymous.post("/files/missing_hashes", json={"hashes": [file_hash]})
        assert refused.status_code == 401 and refused.json()["detail"]
    with stack.http(stack.key) as http:
        cases = [
            http.post("/files/missing_hashes", json={"hashes": ["../etc"]}),
            http.post("/files/missing_hashes", json={"hashes": "x"}),
            http.post("/files/missing_hashes", content=b"{not json"),
            http.get("/files/app/NOTAHASH"),
            http.post(f"/files/app/multipart/{file_hash}/initiate", json={"mode": "rwx"}),
        ]
        for response in cases:
            assert response.status_code == 400, response.text
            assert response.json()["detail"]
        too_big = http.post(
            f"/files/app/multipart/{file_hash}/initiate",
            json={"mode": "33188", "size": str(50 * 1024 * 1024)},
        )
        assert too_big.status_code == 413
        assert "/data" in too_big.json()["detail"]
        unknown = http.put(f"/files/app/multipart/{file_hash}/{'0' * 32}/1", content=b"x")
        assert unknown.status_code == 404, unknown.text

        # Bytes that do not hash to the announced hash are refused and never stored.
        upload_id = http.post(
            f"/files/app/multipart/{file_hash}/initiate", json={"mode": "33188", "size": "15"}
        ).json()["upload_id"]
        body, content_type = _form(b"tampered bytes\n")
        part = http.put(
            f"/files/app/multipart/{file_hash}/{upload_id}/1",
            content=body,
            headers={"Content-Type": content_type},
        )
        assert part.status_code == 200, part.text
        complete = http.post(
            f"/files/app/multipart/{file_hash}/{upload_id}/complete",
            json={"parts": [part.json()], "metadata": {"mode": "33188"}},
        )
        assert complete.status_code == 400
        assert "hash" in complete.json()["detail"]
        assert http.get(f"/files/app/{file_hash}").status_code == 404
        assert http.post("/files/missing_hashes", json={"hashes": [file_hash]}).json() == [
            file_hash
        ]


def test_app_file_limits_and_hostile_numbers_are_4xx_with_detail(stack: Stack) -> None:
    """Every limit of the app-files API answers 4xx with a JSON detail, never 500: non-ASCII
    digits in the metadata, too many hashes, a part number past MAX_PARTS, a part or a whole
    file over MAX_APP_FILE_BYTES, too many parts listed on complete."""
    data = b"limits\n"
    digest = hashlib.sha256(data)
    digest.update(b"33188")
    file_hash = digest.hexdigest()
    limit = app_files.MAX_APP_FILE_BYTES
    with stack.http(stack.key) as http:
        initiate = f"/files/app/multipart/{file_hash}/initiate"
        # "²" is str.isdigit() but no int(): a 400 naming the field, not a 500.
        for metadata, field in (
            ({"mode": "²"}, "metadata.mode"),
            ({"mode": "33188", "size": "²"}, "metadata.size"),
        ):
            refused = http.post(initiate, json=metadata)
            assert refused.status_code == 400, refused.text
            assert field in refused.json()["detail"]
        many = http.post(
            "/files/missing_hashes", json={"hashes": [file_hash] * (app_files.MAX_HASHES + 1)}
        )
        assert many.status_code == 400 and str(app_files.MAX_HASHES) in many.json()["detail"]

        upload_id = http.post(initiate, json={"mode": "33188"}).json()["upload_id"]
        parts = f"/files/app/multipart/{file_hash}/{upload_id}"
        body, content_type = _form(b"x")
        past = http.put(
            f"{parts}/{app_files.MAX_PARTS + 1}",
            content=body,
            headers={"Content-Type": content_type},
        )
        assert past.status_code == 413 and "/data" in past.json()["detail"]
        zero = http.put(f"{parts}/0", content=body, headers={"Content-Type": content_type})
        assert zero.status_code == 400 and "start at 1" in zero.json()["detail"]
        body, content_type = _form(b"x" * (limit + 1))
        one_too_big = http.put(f"{parts}/1", content=body, headers={"Content-Type": content_type})
        assert one_too_big.status_code == 413 and "/data" in one_too_big.json()["detail"]
        huge = http.put(f"{parts}/1", content=b"x" * (limit + app_files.FORM_OVERHEAD + 1))
        assert huge.status_code == 413 and huge.json()["detail"]

        # Two parts each within the limit, together over it: refused on complete.
        listed = []
        for number in (1, 2):
            body, content_type = _form(b"y" * (limit // 2 + 1))
            part = http.put(
                f"{parts}/{number}", content=body, headers={"Content-Type": content_type}
            )
            assert part.status_code == 200, part.text
            listed.append(part.json())
        together = http.post(f"{parts}/complete", json={"parts": listed})
        assert together.status_code == 413 and "/data" in together.json()["detail"]
        too_many = http.post(
            f"{parts}/complete",
            json={"parts": [{"part_number": 1}] * (app_files.MAX_PARTS + 1)},
        )
        assert too_many.status_code == 400 and too_many.json()["detail"]
        not_sent = http.post(f"{parts}/complete", json={"parts": [{"part_number": 3}]})
        assert not_sent.status_code == 400 and "3" in not_sent.json()["detail"]
        assert http.get(f"/files/app/{file_hash}").status_code == 404


def test_another_namespaces_key_cannot_see_or_touch_an_app_file_upload(stack: Stack) -> None:
    """A key of another namespace that knows the hash and upload id of an app-file upload in
    `team` gets for its part, complete and cancel exactly the answers of an upload id nobody
    issued, is told the held file is missing, and changes nothing: the owner completes the
    upload and reads back its own bytes."""
    data = b"team's app file\n"
    digest = hashlib.sha256(data)
    digest.update(b"33188")
    file_hash = digest.hexdigest()
    body, content_type = _form(data)
    form = {"Content-Type": content_type}
    with stack.http(stack.key) as owner, stack.http(stack.other_key) as other:
        upload_id = owner.post(
            f"/files/app/multipart/{file_hash}/initiate", json={"mode": "33188"}
        ).json()["upload_id"]

        def attempts(target_id: str) -> list[tuple[int, object]]:
            base = f"/files/app/multipart/{file_hash}/{target_id}"
            answers = [
                other.put(f"{base}/1", content=body, headers=form),
                other.post(
                    f"{base}/complete",
                    json={"parts": [{"part_number": 1}], "metadata": {"mode": "33188"}},
                ),
                other.post(f"{base}/cancel", json={}),
                other.put(
                    f"{base}/1", content=body, headers={**form, "X-Kubefal-Namespace": "team"}
                ),
            ]
            return [(answer.status_code, answer.json()) for answer in answers]

        existing = attempts(upload_id)
        assert existing == attempts("f" * 32)
        assert [status for status, _ in existing] == [404, 404, 200, 403]
        part = owner.put(
            f"/files/app/multipart/{file_hash}/{upload_id}/1", content=body, headers=form
        )
        assert part.status_code == 200, part.text
        done = owner.post(
            f"/files/app/multipart/{file_hash}/{upload_id}/complete",
            json={"parts": [part.json()], "metadata": {"mode": "33188"}},
        )
        assert done.status_code == 200, done.text
        assert owner.get(f"/files/app/{file_hash}").content == data
        assert other.post("/files/missing_hashes", json={"hashes": [file_hash]}).json() == [
            file_hash
        ]
        unknown_hash = "0" * 64
        held = other.get(f"/files/app/{file_hash}")
        unknown = other.get(f"/files/app/{unknown_hash}")
        assert held.status_code == 404
        assert (held.status_code, held.text.replace(file_hash, "<hash>")) == (
            unknown.status_code,
            unknown.text.replace(unknown_hash, "<hash>"),
        )
