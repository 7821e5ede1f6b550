"""The forwarding path against hostile and careless callers, with real processes.

One gateway (plain HTTP) in front of two runners: `echo` (uvicorn serving apps/echo_asgi.py, which
answers with what it received on the wire, behind three apps of two namespaces) and `probe` (the
kubefal runner serving apps/probe_app.py, for timeouts, cancels and streams). Checked: no caller
can inject a request into a pooled runner connection or reach the runner's `/_kubefal/*`
endpoints; a sync run is sent once and a hung-up client's work is cancelled on the runner; queued
retries stay within `--retry-budget` and honour `x-fal-no-retry`; result, URL, header and wait
limits hold; a submit keeps its query string.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import pathlib
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import gwharness
import httpx
import pytest

from kubefal_api import apikeys
from testkit import waiting

pytestmark = pytest.mark.slow

RESULT_LIMIT = 200_000


class Stack:
    def __init__(self, workdir: pathlib.Path) -> None:
        self.exec_dir = workdir / "executions"
        self.exec_dir.mkdir()
        self.key_fwd = str(apikeys.generate_key())
        self.key_other = str(apikeys.generate_key())
        echo_port = gwharness.free_port()
        self.echo = gwharness.Process(
            name="echo-runner",
            command=[
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                str(gwharness.APPS_DIR),
                "echo_asgi:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(echo_port),
                "--http",
                "httptools",
                "--timeout-keep-alive",
                "300",
                "--log-level",
                "warning",
            ],
            workdir=workdir,
            env={"ECHO_LOG": str(workdir / "echo.log")},
        )
        self.echo_log = workdir / "echo.log"
        echo_url = f"http://127.0.0.1:{echo_port}"
        self.probe = gwharness.Runner(
            workdir=workdir, env={"GATEWAY_TEST_EXEC_DIR": str(self.exec_dir)}, max_multiplexing=8
        )
        self.single = gwharness.Runner(
            workdir=workdir, env={"GATEWAY_TEST_EXEC_DIR": str(self.exec_dir)}, max_multiplexing=1
        )
        dead_url = f"http://127.0.0.1:{gwharness.free_port()}"
        static = {
            "apps": [
                *(
                    {"id": app_id, "auth": auth, "runners": [echo_url], "maxMultiplexing": 8}
                    for app_id, auth in [
                        ("fwd/echo-a", "public"),
                        ("fwd/echo-b", "private"),
                        ("other/echo-c", "private"),
                    ]
                ),
                {
                    "id": "fwd/slow",
                    "auth": "public",
                    "runners": [self.probe.url],
                    "maxMultiplexing": 4,
                    "requestTimeout": 1,
                },
                {"id": "fwd/hangup", "auth": "public", "runners": [self.probe.url]},
                {"id": "fwd/stream", "auth": "public", "runners": [self.probe.url]},
                {"id": "fwd/nowhere", "auth": "public", "runners": [dead_url]},
                {"id": "fwd/single", "auth": "public", "runners": [self.single.url]},
                {
                    "id": "fwd/echo-slow",
                    "auth": "public",
                    "runners": [echo_url],
                    "requestTimeout": 1,
                },
            ],
            "keys": [
                {"key": self.key_fwd, "namespaces": "fwd"},
                {"key": self.key_other, "namespaces": "other"},
            ],
        }
        self.gateway = gwharness.Gateway(
            workdir=workdir,
            static_config=static,
            tls=None,
            extra_args=[
                "--max-result-bytes",
                str(RESULT_LIMIT),
                "--run-start-timeout",
                "2",
                "--retry-budget",
                "1.5",
                "--max-job-header-bytes",
                "2000",
                "--max-request-bytes",
                "20000",
                "--max-url-bytes",
                "2048",
            ],
        )
        self.processes: list[gwharness.Process] = [
            self.gateway,
            self.echo,
            self.probe,
            self.single,
        ]

    def start(self) -> None:
        self.probe.wait_ready()
        self.single.wait_ready()
        self.gateway.wait_ready(["fwd/echo-a", "fwd/slow"])

    def echo_requests(self) -> list[dict[str, str]]:
        if not self.echo_log.exists():
            return []
        return [json.loads(line) for line in self.echo_log.read_text().splitlines() if line]

    def files(self, prefix: str) -> list[pathlib.Path]:
        return [path for path in self.exec_dir.iterdir() if path.name.startswith(prefix)]

    def executions(self, tag: str) -> list[pathlib.Path]:
        return self.files(tag + ".")

    def wait_completed(self, client: httpx.Client, app: str, request_id: str) -> httpx.Response:
        base = f"{self.gateway.queue_url}/{app}/requests/{request_id}"
        status: dict[str, Any] = {}

        def completed() -> bool:
            status.update(client.get(base + "/status").json())
            return status.get("status") == "COMPLETED"

        waiting.wait_for(completed, timeout=120, description=f"{request_id} completed")
        return client.get(base)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    built = Stack(tmp_path_factory.mktemp("gateway-forwarding"))
    with gwharness.cleanup(*built.processes):
        built.start()
        yield built


def _is_json_4xx(status: int, content_type: str, body: bytes) -> bool:
    if not 400 <= status < 500 or not content_type.startswith("application/json"):
        return False
    parsed = json.loads(body)
    return isinstance(parsed, dict) and bool(parsed.get("detail"))


# ---- item 1: request smuggling ---------------------------------------------------------------
HOSTILE_SUBPATHS = [
    # a second request smuggled into the runner connection, as a decoded CR LF would write it
    "/echo%20HTTP/1.1%0d%0ahost:%20x%0d%0acontent-length:%200%0d%0a%0d%0a"
    "GET%20/echo/smuggled%20HTTP/1.1%0d%0ax-a:%20",
    "/echo%0d%0ax-fal-request-id:%20spoofed",
    "/echo%0a%0a",
    "/echo%20with%20spaces",
    "/echo%00nul",
    "/echo/%C3%A9t%C3%A9",
    "/echo/%7f",
    "/echo/" + "a" * 3000,
    "/echo|pipe",
    "/echo^caret",
]


def _legit_client(stack: Stack, app: str, key: str | None, rounds: int) -> list[str]:
    """Send `rounds` requests with fresh nonces; return a description of every wrong answer."""
    wrong: list[str] = []
    headers = {} if key is None else {"authorization": f"Key {key}"}
    with httpx.Client(timeout=60) as client:
        for _ in range(rounds):
            nonce = uuid.uuid4().hex
            response = client.post(
                f"{stack.gateway.run_url}/{app}/echo/{nonce}?n={nonce}",
                json={"nonce": nonce},
                headers={**headers, "x-nonce": nonce},
            )
            if response.status_code != 200:
                wrong.append(f"{app} {nonce}: {response.status_code} {response.text[:200]}")
                continue
            answer = response.json()
            seen = dict(answer["headers"])
            if (
                answer["raw_path"] != f"/echo/{nonce}"
                or answer["query"] != f"n={nonce}"
                or json.loads(answer["body"]) != {"nonce": nonce}
                or seen.get("x-nonce") != nonce
                or seen.get("x-fal-endpoint") != f"{app}/echo/{nonce}"
            ):
                wrong.append(f"{app} {nonce}: got {answer}")
    return wrong


def _hostile_client(stack: Stack, app: str, rounds: int) -> list[str]:
    """Send hostile paths over one keep-alive connection (http.client sends them verbatim)."""
    wrong: list[str] = []
    connection = http.client.HTTPConnection("127.0.0.1", stack.gateway.run_port, timeout=60)
    try:
        for index in range(rounds):
            subpath = HOSTILE_SUBPATHS[index % len(HOSTILE_SUBPATHS)]
            connection.request(
                "POST",
                f"/{app}{subpath}",
                body=b"{}",
                headers={"content-type": "application/json"},
            )
            response = connection.getresponse()
            body = response.read()
            if not _is_json_4xx(response.status, response.getheader("content-type", ""), body):
                wrong.append(f"{subpath[:60]!r}: {response.status} {body[:200]!r}")
            if response.getheader("connection", "").lower() == "close":
                connection.close()
                connection = http.client.HTTPConnection(
                    "127.0.0.1", stack.gateway.run_port, timeout=60
                )
    finally:
        connection.close()
    return wrong


def test_concurrent_clients_get_their_own_answers_while_others_send_hostile_paths(
    stack: Stack,
) -> None:
    legit = [
        ("fwd/echo-a", None),
        ("fwd/echo-b", stack.key_fwd),
        ("other/echo-c", stack.key_other),
    ]
    with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
        futures = [
            pool.submit(_legit_client, stack, app, key, 15) for _ in range(5) for app, key in legit
        ]
        futures += [pool.submit(_hostile_client, stack, "fwd/echo-a", 30) for _ in range(9)]
        problems = [problem for future in futures for problem in future.result()]
    assert problems == []


def test_an_overlong_url_is_414_and_a_malformed_escape_400(stack: Stack) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", stack.gateway.run_port, timeout=30)
    try:
        for path, status in [
            ("/fwd/echo-a/echo/" + "a" * 3000, 414),
            ("/fwd/echo-a/echo?q=" + "a" * 3000, 414),
            ("/fwd/echo-a/echo%zz", 400),
            ("/fwd/echo-a/echo%", 400),
            ("/fwd/echo-a/echo?q=%zz", 400),
            ("/fwd/echo-a/echo?q=a|b", 400),
        ]:
            connection.request("POST", path, body=b"{}")
            response = connection.getresponse()
            body = response.read()
            assert response.status == status, (path, body)
            assert json.loads(body)["detail"]
    finally:
        connection.close()


# ---- item 2: the runner's internals ------------------------------------------------------------
RESERVED_SUBPATHS = [
    "/_kubefal/ready",
    "/_kubefal/logs/some-id",
    "/_kubefal/cancel/some-id",
    "//_kubefal/ready",
    "/%5Fkubefal/ready",
    "/%5fkubefal/ready",
    "/./_kubefal/ready",
    "/a/../_kubefal/ready",
    "/a/%2e%2e/_kubefal/ready",
    "/_KUBEFAL/ready",
    "/%255Fkubefal/ready",
    "/%2F_kubefal%2Flogs%2Fx",
    "/%5C_kubefal/ready",
    "/_kubefal",
]


@pytest.mark.parametrize("subpath", RESERVED_SUBPATHS)
def test_runner_internals_are_404_through_the_run_and_queue_apis(
    stack: Stack, subpath: str
) -> None:
    listeners = [(stack.gateway.run_port, ("GET", "POST")), (stack.gateway.queue_port, ("POST",))]
    for port, methods in listeners:
        connection = http.client.HTTPConnection("127.0.0.1", port)
        try:
            for method in methods:
                connection.request(method, f"/fwd/echo-a{subpath}", body=b"{}")
                response = connection.getresponse()
                body = json.loads(response.read())
                # the echo runner answers 200 to everything: a 404 comes from the gateway
                assert response.status == 404, (port, method, body)
                assert body["error_type"] == "not_found"
        finally:
            connection.close()


# ---- item 7: retries and abandoned work ------------------------------------------------------
def test_a_sync_run_that_times_out_is_sent_once_and_answered_504(stack: Stack) -> None:
    tag = f"sync-timeout-{uuid.uuid4().hex[:8]}"
    response = httpx.post(
        f"{stack.gateway.run_url}/fwd/slow", json={"tag": tag, "sleep": 3}, timeout=120
    )
    assert response.status_code == 504
    assert response.headers["x-fal-request-timeout-type"] == "app"
    assert response.json()["error_type"] == "request_timeout"
    assert len(stack.executions(tag)) == 1


def test_a_timed_out_attempt_is_cancelled_on_the_runner_on_both_apis(stack: Stack) -> None:
    def attempts_and_cancels(marker: str) -> tuple[list[str], list[str]]:
        requests = stack.echo_requests()
        ids = [r["request_id"] for r in requests if r["raw_path"] == f"/echo/{marker}"]
        cancels = [
            r["raw_path"].rsplit("/", 1)[1]
            for r in requests
            if r["method"] == "POST" and r["raw_path"].startswith("/_kubefal/cancel/")
        ]
        return ids, [cancel for cancel in cancels if cancel in ids]

    sync_marker = uuid.uuid4().hex
    response = httpx.post(
        f"{stack.gateway.run_url}/fwd/echo-slow/echo/{sync_marker}", json={"sleep": 3}, timeout=60
    )
    assert response.status_code == 504
    waiting.wait_for(
        lambda: len(attempts_and_cancels(sync_marker)[1]) == 1,
        timeout=20,
        description="sync cancel",
    )
    assert len(attempts_and_cancels(sync_marker)[0]) == 1

    queue_marker = uuid.uuid4().hex
    with httpx.Client(timeout=60) as client:
        submitted = client.post(
            f"{stack.gateway.queue_url}/fwd/echo-slow/echo/{queue_marker}", json={"sleep": 3}
        )
        result = stack.wait_completed(client, "fwd/echo-slow", submitted.json()["request_id"])
    assert result.status_code == 504
    ids, _ = attempts_and_cancels(queue_marker)
    assert len(ids) in (1, 2)  # within --retry-budget
    # every attempt carries the job's id, and each timed-out one was told to stop
    waiting.wait_for(
        lambda: len(attempts_and_cancels(queue_marker)[1]) == len(ids),
        timeout=20,
        description="queue cancels",
    )


def test_a_client_that_hangs_up_gets_its_work_cancelled_and_its_slot_back(stack: Stack) -> None:
    tag = f"hangup-{uuid.uuid4().hex[:8]}"
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{stack.gateway.run_url}/fwd/hangup/async-sleep",
            json={"tag": tag, "sleep": 60},
            timeout=httpx.Timeout(30, read=1.5),
        )
    waiting.wait_for(
        lambda: stack.files(f"cancelled-{tag}"), timeout=20, description="the runner cancelled it"
    )
    assert stack.files(f"done-{tag}") == []
    # fwd/hangup has one slot: it is free again
    response = httpx.post(
        f"{stack.gateway.run_url}/fwd/hangup",
        json={"text": "next"},
        headers={"x-fal-request-timeout": "20"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["text"] == "next"


def test_an_abandoned_stream_stops_on_the_runner_and_frees_its_slot(stack: Stack) -> None:
    tag = f"stream-{uuid.uuid4().hex[:8]}"
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST",
            f"{stack.gateway.run_url}/fwd/stream/forever",
            json={"tag": tag},
            headers={"accept": "text/event-stream"},
        ) as response,
    ):
        assert response.status_code == 200
        first = next(response.iter_lines())
        assert json.loads(first.removeprefix("data: "))["tag"] == tag
    waiting.wait_for(
        lambda: stack.files(f"stream-stopped-{tag}"), timeout=20, description="the stream stopped"
    )
    response = httpx.post(
        f"{stack.gateway.run_url}/fwd/stream",
        json={"text": "after"},
        headers={"x-fal-request-timeout": "20"},
        timeout=60,
    )
    assert response.status_code == 200, response.text


def test_a_queued_job_with_x_fal_no_retry_runs_once(stack: Stack) -> None:
    tag = f"no-retry-{uuid.uuid4().hex[:8]}"
    with httpx.Client(timeout=60) as client:
        submitted = client.post(
            f"{stack.gateway.queue_url}/fwd/slow",
            json={"tag": tag, "sleep": 3},
            headers={"x-fal-no-retry": "1"},
        )
        assert submitted.status_code == 200
        result = stack.wait_completed(client, "fwd/slow", submitted.json()["request_id"])
    assert result.status_code == 504
    assert result.headers["x-fal-request-timeout-type"] == "app"
    assert len(stack.executions(tag)) == 1


def test_queued_retries_stay_within_the_retry_budget(stack: Stack) -> None:
    # requestTimeout 1 s, --retry-budget 1.5 s: a retry may start only in the first 1.5 s, so at
    # most two attempts run (fal's 10 attempts without the bound).
    tag = f"budget-{uuid.uuid4().hex[:8]}"
    with httpx.Client(timeout=60) as client:
        submitted = client.post(
            f"{stack.gateway.queue_url}/fwd/slow", json={"tag": tag, "sleep": 3}
        )
        result = stack.wait_completed(client, "fwd/slow", submitted.json()["request_id"])
    assert result.status_code == 504
    assert len(stack.executions(tag)) in (1, 2)


def test_a_queued_job_refused_as_busy_is_asked_again_beyond_the_retry_budget(
    stack: Stack,
) -> None:
    # The runner's only slot is taken from outside this gateway (as another gateway replica
    # would) for longer than --retry-budget: a refusal is not a retry, the job waits and runs.
    tag = f"busy-{uuid.uuid4().hex[:8]}"
    with (
        concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool,
        httpx.Client(timeout=60) as client,
    ):
        direct = pool.submit(
            httpx.post,
            f"{stack.single.url}/async-sleep",
            json={"tag": f"{tag}-direct", "sleep": 4},
            timeout=60,
        )
        waiting.wait_for(
            lambda: stack.executions(f"{tag}-direct"), timeout=30, description="slot taken"
        )
        submitted = client.post(
            f"{stack.gateway.queue_url}/fwd/single", json={"tag": tag, "text": "after"}
        )
        result = stack.wait_completed(client, "fwd/single", submitted.json()["request_id"])
        assert direct.result().status_code == 200
    assert result.status_code == 200, result.text
    assert result.json()["text"] == "after"
    assert len(stack.executions(tag)) == 1


# ---- item 12 and 3 (parts): limits and the query string ---------------------------------------
@pytest.mark.parametrize("chunked", [False, True])
def test_a_sync_answer_over_the_result_limit_is_413(stack: Stack, chunked: bool) -> None:
    url = f"{stack.gateway.run_url}/fwd/echo-a/echo"
    small = httpx.post(url, json={"size": 1000, "chunked": chunked}, timeout=60)
    assert small.status_code == 200
    big = httpx.post(url, json={"size": RESULT_LIMIT + 1, "chunked": chunked}, timeout=60)
    assert big.status_code == 413
    assert big.json()["error_type"] == "result_too_large"


def test_a_queued_answer_over_the_result_limit_completes_with_413(stack: Stack) -> None:
    with httpx.Client(timeout=60) as client:
        submitted = client.post(
            f"{stack.gateway.queue_url}/fwd/echo-a/echo",
            json={"size": RESULT_LIMIT + 1, "chunked": True},
        )
        result = stack.wait_completed(client, "fwd/echo-a", submitted.json()["request_id"])
    assert result.status_code == 413
    assert result.json()["error_type"] == "result_too_large"


def test_a_run_to_an_app_without_runners_ends_at_the_run_start_timeout(stack: Stack) -> None:
    response = httpx.post(f"{stack.gateway.run_url}/fwd/nowhere", json={}, timeout=60)
    assert response.status_code == 504
    assert response.json()["error_type"] == "request_timeout"
    assert "x-fal-request-timeout-type" in response.headers


def test_a_queued_request_keeps_its_query_string(stack: Stack) -> None:
    with httpx.Client(timeout=60) as client:
        submitted = client.post(
            f"{stack.gateway.queue_url}/fwd/echo-a/echo?x=1&y=a%20b%0D%0A", json={"q": 1}
        )
        assert submitted.status_code == 200, submitted.text
        result = stack.wait_completed(client, "fwd/echo-a", submitted.json()["request_id"])
    answer = result.json()
    assert answer["raw_path"] == "/echo"
    assert answer["query"] == "x=1&y=a%20b%0D%0A"
    assert dict(answer["headers"])["x-fal-endpoint"] == "fwd/echo-a/echo"


def test_stored_headers_count_against_the_request_limits(stack: Stack) -> None:
    url = f"{stack.gateway.queue_url}/fwd/echo-a"
    with httpx.Client(timeout=60) as client:
        too_many = client.post(url, json={}, headers={"x-big": "a" * 2500})
        assert too_many.status_code == 431
        assert too_many.json()["detail"]
        # 1500 bytes of headers plus a 19000-byte body exceed --max-request-bytes 20000
        together = client.post(url, content=b"x" * 19000, headers={"x-big": "a" * 1500})
        assert together.status_code == 413
        assert together.json()["detail"]
        alone = client.post(url, content=b"x" * 19000)
        assert alone.status_code == 200


def test_a_running_jobs_status_is_in_progress_only_under_its_own_app(stack: Stack) -> None:
    """The status of a job this gateway runs is answered without a store read: the same
    answer the store gives, only under the job's own app, with logs when asked for."""
    key = {"authorization": f"Key {stack.key_fwd}"}
    with httpx.Client(timeout=60) as client:
        submitted = client.post(f"{stack.gateway.queue_url}/fwd/echo-a/", json={"sleep": 2})
        request_id = submitted.json()["request_id"]
        base = f"{stack.gateway.queue_url}/fwd/echo-a/requests/{request_id}"
        seen: list[httpx.Response] = []

        def running() -> bool:
            seen.append(client.get(base + "/status"))
            return seen[-1].json()["status"] == "IN_PROGRESS"

        waiting.wait_for(running, timeout=20, description="the job running")
        with_logs = client.get(base + "/status", params={"logs": "1"})
        elsewhere = client.get(
            f"{stack.gateway.queue_url}/fwd/echo-b/requests/{request_id}/status", headers=key
        )
        done = stack.wait_completed(client, "fwd/echo-a", request_id)

    assert (seen[-1].status_code, seen[-1].json()) == (
        202,
        {"status": "IN_PROGRESS", "logs": None},
    )
    assert (with_logs.status_code, with_logs.json()["status"]) in (
        (202, "IN_PROGRESS"),
        (200, "COMPLETED"),
    )
    assert isinstance(with_logs.json()["logs"], list)
    assert elsewhere.status_code == 404
    assert elsewhere.json()["detail"]
    assert done.status_code == 200
