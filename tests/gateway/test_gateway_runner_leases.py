"""The admin API's `/_kubefal/runners`: each runner's in-flight requests as leases (request id,
when sent, the caller's API key id), which the control plane shows in `fal runners list`.

Real processes: a gateway with an admin token and a probe runner; the caller's key id comes
from the gateway's own check of the key (a caller's `x-kubefal-caller` header is dropped, never
believed); the lease ends with the request."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kubefal_api import apikeys
from testkit import waiting
from tests.gateway import gwharness

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "leases-admin-token-0123456789"
APP = "team/probe"


class Stack:
    def __init__(self, workdir: pathlib.Path) -> None:
        self.key = apikeys.generate_key()
        self.exec_dir = workdir / "executions"
        self.exec_dir.mkdir()
        self.runner = gwharness.Runner(
            workdir=workdir, env={"GATEWAY_TEST_EXEC_DIR": str(self.exec_dir)}
        )
        self.gateway = gwharness.Gateway(
            workdir=workdir,
            tls=None,
            static_config={
                "apps": [{"id": APP, "auth": "private", "runners": [self.runner.url]}],
                "keys": [{"key": str(self.key), "namespaces": "team"}],
            },
            admin_token=ADMIN_TOKEN,
        )

    def runners(self, query: str = "") -> httpx.Response:
        return httpx.get(
            f"{self.gateway.admin_url}/_kubefal/runners{query}",
            headers=self.gateway.admin_headers(),
            timeout=30,
        )

    def leases(self) -> list[dict[str, Any]]:
        response = self.runners(f"?app={APP}")
        response.raise_for_status()
        ((runner,),) = [app["runners"] for app in response.json()["apps"]]
        return list(runner["leases"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("leases"))
    with gwharness.cleanup(stack.runner, stack.gateway):
        stack.runner.wait_ready()
        stack.gateway.wait_ready([APP])
        yield stack


def test_a_queued_request_is_a_lease_with_the_callers_key_id_until_it_ends(stack: Stack) -> None:
    assert stack.leases() == []
    with stack.gateway.http() as http:
        submitted = http.post(
            f"{stack.gateway.queue_url}/{APP}/async-sleep",
            json={"tag": "held", "sleep": 120},
            headers={"Authorization": f"Key {stack.key}", "x-kubefal-caller": "kf-forged"},
        )
        assert submitted.status_code == 200, submitted.text
        request_id = submitted.json()["request_id"]
        waiting.wait_for(lambda: len(stack.leases()) == 1, timeout=60, description="the job to run")
        (lease,) = stack.leases()
        assert lease["requestId"] == request_id
        assert lease["callerId"] == stack.key.id
        assert isinstance(lease["leasedAtEpoch"], float)
        (app,) = stack.runners().json()["apps"]
        assert app["app"] == APP and app["runners"][0]["inFlight"] == 1
        cancelled = http.put(
            f"{stack.gateway.queue_url}/{APP}/requests/{request_id}/cancel",
            headers={"Authorization": f"Key {stack.key}"},
        )
        assert cancelled.status_code in (200, 202), cancelled.text
    waiting.wait_for(lambda: stack.leases() == [], timeout=60, description="the lease to end")
    assert (stack.exec_dir / "cancelled-held").exists()


def test_bad_queries_are_4xx_with_a_detail_and_the_admin_token_is_required(stack: Stack) -> None:
    by_namespace = stack.runners("?namespaces=team,other")
    assert by_namespace.status_code == 200
    assert [app["app"] for app in by_namespace.json()["apps"]] == [APP]
    assert stack.runners("?namespaces=other").json() == {"apps": []}
    bad = stack.runners("?namespaces=Not%20A%20Namespace")
    assert bad.status_code == 400 and "namespaces" in bad.json()["detail"]
    missing = stack.runners("?app=team/nope")
    assert missing.status_code == 404 and "team/nope" in missing.json()["detail"]
    anonymous = httpx.get(f"{stack.gateway.admin_url}/_kubefal/runners", timeout=30)
    assert anonymous.status_code == 401 and anonymous.json()["detail"]
