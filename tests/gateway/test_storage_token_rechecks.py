"""A CDN upload token is checked against its API key's current record on every use, as a
realtime token is: a key taken out of a namespace stops storing files and KV entries there at
once, though the token it fetched before names that namespace and has not expired.

A real gateway (REST listener, embedded file store, TLS) whose static config is rewritten and
re-read on SIGHUP, as `fal keys` and the key Secrets' watch change a key while it runs.
"""

from __future__ import annotations

import pathlib
import signal
from collections.abc import Iterator

import httpx
import pytest
import yaml

from kubefal_api import apikeys
from testkit import waiting
from tests.gateway import gwharness

pytestmark = pytest.mark.slow


class Stack:
    def __init__(self, workdir: pathlib.Path) -> None:
        self.tls = gwharness.Tls(workdir)
        self.key = apikeys.generate_key()
        self.rest_port = gwharness.free_port()
        self.gateway = gwharness.Gateway(
            workdir=workdir,
            tls=self.tls,
            static_config=self.config("team,other"),
            extra_args=[
                "--rest-port",
                str(self.rest_port),
                "--storage",
                str(workdir / "files"),
            ],
        )
        self.rest_url = f"https://127.0.0.1:{self.rest_port}"

    def config(self, namespaces: str) -> dict[str, object]:
        return {"apps": [], "keys": [{"key": str(self.key), "namespaces": namespaces}]}

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.rest_url, verify=str(self.tls.ca_path), timeout=60)


@pytest.fixture
def stack(tmp_path: pathlib.Path) -> Iterator[Stack]:
    built = Stack(tmp_path)
    with gwharness.cleanup(built.gateway):
        built.gateway.wait_ready([])
        yield built


def test_a_cdn_token_stops_working_in_a_namespace_its_key_lost(stack: Stack) -> None:
    key = {"Authorization": f"Key {stack.key}"}
    in_team = {**key, "X-Kubefal-Namespace": "team"}
    with stack.http() as http:
        issued = http.post("/storage/auth/token?storage_type=fal-cdn-v3", headers=in_team, json={})
        assert issued.status_code == 200, issued.text
        bearer = {"Authorization": f"Bearer {issued.json()['token']}"}
        before = http.post("/files/upload", content=b"before", headers=bearer)
        assert before.status_code == 200 and "/files/team/" in before.json()["access_url"]

        stack.gateway.config_path.write_text(yaml.safe_dump(stack.config("other")))
        stack.gateway.popen.send_signal(signal.SIGHUP)
        waiting.wait_for(
            lambda: http.get("/kv/get/db/k", headers=in_team).status_code == 403,
            timeout=60,
            description="the key taken out of team",
        )

        upload = http.post("/files/upload", content=b"after", headers=bearer)
        assert upload.status_code == 403, upload.text
        assert "team" in upload.json()["detail"]
        kv_set = http.put("/kv/set/db/k", content=b"after", headers=bearer)
        assert kv_set.status_code == 403 and kv_set.json()["detail"]
        multipart = http.post("/files/upload/multipart", headers=bearer)
        assert multipart.status_code == 403 and multipart.json()["detail"]
        # The key itself still stores files in the namespace it keeps.
        assert http.post("/files/upload", content=b"x", headers=key).status_code == 200
