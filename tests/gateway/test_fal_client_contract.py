"""The unmodified fal_client against a real gateway over TLS and real runners serving a fal.App.

One gateway and four runners serve the whole module (starting them is the slow part); each test
talks to its own app id so tests do not share slots:

* `team-a/probe` (private, 4 slots) and its `shared-`/`public-` twins on runner `main`;
* `team-a/serial` (one slot) on runner `serial`, for ordering, cancel and timeouts;
* `team-a/pair` (two runners `left`/`right`, one slot each), for retries and hints;
* `team-a/nowhere` (a runner URL nobody listens on), for queue-wait timeouts.
"""

from __future__ import annotations

import email.message
import json
import pathlib
from collections.abc import Iterator
from typing import Any

import gwharness
import httpx
import pytest

from kubefal_api import apikeys
from kubefal_gateway import webhooks
from testkit import waiting
from tests.gateway.webhook_harness import webhook_server

pytestmark = pytest.mark.slow


class Stack:
    def __init__(self, workdir: pathlib.Path) -> None:
        self.workdir = workdir
        self.exec_dir = workdir / "executions"
        self.exec_dir.mkdir()
        self.tls = gwharness.Tls(workdir)
        self.key_a = str(apikeys.generate_key())
        self.key_b = str(apikeys.generate_key())
        self.key_revoked = str(apikeys.generate_key())
        # A runner's key (docs/fal-storage.md): team-a's files, no app calls.
        self.key_storage = str(apikeys.generate_key())
        env = {"GATEWAY_TEST_EXEC_DIR": str(self.exec_dir)}
        self.main = gwharness.Runner(workdir=workdir, env=env, max_multiplexing=16)
        self.serial = gwharness.Runner(workdir=workdir, env=env, max_multiplexing=1)
        self.left = gwharness.Runner(
            workdir=workdir, env={**env, "GATEWAY_TEST_HINT": "left"}, max_multiplexing=1
        )
        self.right = gwharness.Runner(
            workdir=workdir, env={**env, "GATEWAY_TEST_HINT": "right"}, max_multiplexing=1
        )
        self.runners = [self.main, self.serial, self.left, self.right]
        dead_url = f"http://127.0.0.1:{gwharness.free_port()}"
        static = {
            "apps": [
                {
                    "id": "team-a/probe",
                    "auth": "private",
                    "runners": [self.main.url],
                    "maxMultiplexing": 4,
                },
                {
                    "id": "team-a/shared-probe",
                    "auth": "shared",
                    "runners": [self.main.url],
                    "maxMultiplexing": 4,
                },
                {
                    "id": "team-a/public-probe",
                    "auth": "public",
                    "runners": [self.main.url],
                    "maxMultiplexing": 4,
                },
                {"id": "team-a/serial", "auth": "private", "runners": [self.serial.url]},
                {
                    "id": "team-a/pair",
                    "auth": "private",
                    "runners": [self.left.url, self.right.url],
                },
                {"id": "team-a/nowhere", "auth": "private", "runners": [dead_url]},
            ],
            "keys": [
                {"key": self.key_a, "namespaces": "team-a"},
                {"key": self.key_b, "namespaces": ["team-b"]},
                {"key": self.key_revoked, "namespaces": "*", "revoked": True},
                {"key": self.key_storage, "namespaces": "team-a", "scopes": "storage"},
            ],
        }
        self.webhook_secret = "webhook-test-secret"
        self.gateway = gwharness.Gateway(
            workdir=workdir,
            static_config=static,
            tls=self.tls,
            extra_args=[
                "--webhook-secret",
                self.webhook_secret,
                "--max-request-bytes",
                "4096",
                # The webhook receiver listens on loopback, which only the allow-list admits.
                "--webhook-allow",
                "127.0.0.1/32",
            ],
        )

    def start(self) -> None:
        for runner in self.runners:
            runner.wait_ready()
        self.gateway.wait_ready(["team-a/probe", "team-a/serial", "team-a/pair"])
        waiting.wait_for(
            lambda: self.gateway.scaling("team-a/pair")["readyRunners"] == 2,
            timeout=60,
            description="both pair runners ready",
        )

    def client(self, script: str, *, key: str | None = None, timeout: float = 180) -> Any:
        return gwharness.run_client(
            script, env=self.gateway.client_env(key or self.key_a), timeout=timeout
        )

    def executions(self, tag: str) -> list[pathlib.Path]:
        return sorted(
            (path for path in self.exec_dir.iterdir() if path.name.startswith(tag + ".")),
            key=execution_started_ns,
        )


def execution_started_ns(path: pathlib.Path) -> int:
    """When the probe app started that execution (written into the file, not its mtime)."""
    return int(path.read_text().split()[1])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    built = Stack(tmp_path_factory.mktemp("gateway-contract"))
    with gwharness.cleanup(built.gateway, *built.runners):
        built.start()
        yield built


def test_submit_status_result_follow_the_urls_the_gateway_returns(stack: Stack) -> None:
    outcome = stack.client(
        """
        handle = fal_client.submit("team-a/probe", arguments={"text": "hello", "log_lines": 2})
        status = handle.status(with_logs=True)
        result = handle.get()
        final = handle.status(with_logs=True)
        emit({"id": handle.request_id, "status_url": handle.status_url,
              "response_url": handle.response_url, "cancel_url": handle.cancel_url,
              "first": type(status).__name__, "result": result,
              "final": type(final).__name__, "logs": final.logs, "metrics": final.metrics,
              "error": final.error})
        """
    )
    base = f"https://127.0.0.1:{stack.gateway.queue_port}/team-a/probe/requests/{outcome['id']}"
    assert outcome["response_url"] == base
    assert outcome["status_url"] == base + "/status"
    assert outcome["cancel_url"] == base + "/cancel"
    assert outcome["first"] in ("Queued", "InProgress", "Completed")
    assert outcome["result"]["text"] == "hello"
    assert outcome["final"] == "Completed"
    assert outcome["error"] is None
    assert [line["message"] for line in outcome["logs"]] == ["log line 0", "log line 1"]
    assert outcome["metrics"]["inference_time"] >= 0


def test_subscribe_reports_queue_updates_with_logs(stack: Stack) -> None:
    outcome = stack.client(
        """
        updates = []
        result = fal_client.subscribe(
            "team-a/probe", arguments={"text": "sub", "log_lines": 3, "sleep": 1.0},
            with_logs=True, on_queue_update=lambda update: updates.append(
                [type(update).__name__,
                 [line["message"] for line in (getattr(update, "logs", None) or [])]]),
        )
        emit({"result": result, "updates": updates})
        """
    )
    assert outcome["result"]["text"] == "sub"
    kinds = [kind for kind, _ in outcome["updates"]]
    assert "InProgress" in kinds
    seen = {message for _, messages in outcome["updates"] for message in messages}
    assert {"log line 0", "log line 1", "log line 2"} <= seen


def test_submit_to_a_subpath_keeps_the_subpath_out_of_request_urls(stack: Stack) -> None:
    outcome = stack.client(
        """
        handle = fal_client.submit("team-a/probe", arguments={"text": "sub"}, path="/echo")
        emit({"status_url": handle.status_url, "result": handle.get(),
              "run": fal_client.run("team-a/probe", arguments={"text": "r"}, path="echo")})
        """
    )
    assert outcome["status_url"].endswith(
        "/team-a/probe/requests/" + outcome["status_url"].split("/")[-2] + "/status"
    )
    assert "/echo" not in outcome["status_url"]
    assert outcome["result"]["text"] == "echo:sub"
    assert outcome["run"]["text"] == "echo:r"


def test_run_returns_the_runner_answer(stack: Stack) -> None:
    outcome = stack.client(
        """
        emit(fal_client.run("team-a/probe", arguments={"text": "sync"}))
        """
    )
    assert outcome["text"] == "sync"


def test_stream_passes_server_sent_events_through(stack: Stack) -> None:
    outcome = stack.client(
        """
        emit(list(fal_client.stream("team-a/probe", arguments={"text": "s"})))
        """
    )
    assert outcome == [{"index": i, "text": "s"} for i in range(3)]


def test_realtime_without_jwt_round_trips_msgpack(stack: Stack) -> None:
    outcome = stack.client(
        """
        with fal_client.realtime("team-a/probe", use_jwt=False) as connection:
            connection.send({"prompt": "abc"})
            first = connection.recv()
            connection.send({"prompt": "xyz"})
            second = connection.recv()
        emit([first, second])
        """
    )
    assert outcome == [{"text": "cba"}, {"text": "zyx"}]


def test_a_failing_app_completes_with_an_error_and_the_result_raises(stack: Stack) -> None:
    outcome = stack.client(
        """
        handle = fal_client.submit("team-a/probe", arguments={"fail": True})
        try:
            handle.get()
            raised = None
        except fal_client.client.FalClientHTTPError as error:
            raised = {"status": error.status_code, "message": error.message}
        status = handle.status()
        try:
            fal_client.run("team-a/probe", arguments={"fail": True})
            run_raised = None
        except fal_client.client.FalClientHTTPError as error:
            run_raised = error.status_code
        emit({"raised": raised, "status": type(status).__name__, "error": status.error,
              "error_type": status.error_type, "run_raised": run_raised})
        """
    )
    assert outcome["raised"]["status"] == 500
    assert outcome["status"] == "Completed"
    assert outcome["error"]
    assert outcome["error_type"] == "runner_error"
    assert outcome["run_raised"] == 500


def test_cancel_of_a_queued_and_of_a_running_request(stack: Stack) -> None:
    outcome = stack.client(
        """
        import time
        running = fal_client.submit("team-a/serial", arguments={"sleep": 3, "tag": "cancel-run"})
        queued = fal_client.submit("team-a/serial", arguments={"tag": "cancel-queued"})
        queued.cancel()
        while type(running.status()).__name__ != "InProgress":
            time.sleep(0.05)
        running.cancel()
        results = {}
        for name, handle in (("queued", queued), ("running", running)):
            status = handle.status()
            while type(status).__name__ != "Completed":
                time.sleep(0.05)
                status = handle.status()
            try:
                handle.get()
                results[name] = None
            except fal_client.client.FalClientHTTPError as error:
                results[name] = [error.status_code, status.error_type]
        emit(results)
        """
    )
    assert outcome["queued"] == [400, "request_cancelled"]
    assert outcome["running"] == [400, "request_cancelled"]
    assert stack.executions("cancel-queued") == []


def test_low_priority_waits_behind_normal_with_a_single_slot(stack: Stack) -> None:
    waiting.wait_for(
        lambda: (
            httpx.get(stack.serial.url + "/_kubefal/info", timeout=5).json()["runner"]["in_flight"]
            == 0
        ),
        timeout=60,
        description="the serial runner to be idle",
    )
    stack.client(
        """
        blocker = fal_client.submit("team-a/serial", arguments={"sleep": 3, "tag": "prio-block"})
        low = fal_client.submit("team-a/serial", arguments={"tag": "prio-low"}, priority="low")
        normal = fal_client.submit("team-a/serial", arguments={"tag": "prio-normal"},
                                   priority="normal")
        emit([low.get(), normal.get(), blocker.get()])
        """
    )
    (normal,) = stack.executions("prio-normal")
    (low,) = stack.executions("prio-low")
    assert execution_started_ns(normal) < execution_started_ns(low)


def test_queue_wait_timeout_gives_504_that_the_client_does_not_retry(stack: Stack) -> None:
    outcome = stack.client(
        """
        import time
        try:
            fal_client.run("team-a/nowhere", arguments={}, start_timeout=2)
            sync = None
        except fal_client.client.FalClientHTTPError as error:
            sync = [error.status_code, error.response_headers.get("x-fal-request-timeout-type")]
        handle = fal_client.submit("team-a/nowhere", arguments={}, start_timeout=2)
        status = handle.status()
        while type(status).__name__ != "Completed":
            time.sleep(0.1)
            status = handle.status()
        try:
            handle.get()
            queued = None
        except fal_client.client.FalClientHTTPError as error:
            queued = [error.status_code, error.response_headers.get("x-fal-request-timeout-type")]
        emit({"sync": sync, "queued": queued, "error_type": status.error_type})
        """
    )
    assert outcome["sync"] == [504, "user"]
    assert outcome["queued"] == [504, "user"]
    assert outcome["error_type"] == "request_timeout"
    metrics = httpx.get(stack.gateway.admin_url + "/metrics", timeout=10).text
    attempts = [
        line
        for line in metrics.splitlines()
        if line.startswith("kubefal_gateway_request_latency_seconds_count")
        and 'app="team-a/nowhere"' in line
        and 'outcome="start_timeout"' in line
    ]
    assert attempts and attempts[0].endswith(" 1.0"), "the client must not have resent the run"


def test_a_request_whose_runner_crashes_is_retried_on_the_other_runner(stack: Stack) -> None:
    outcome = stack.client(
        """
        emit(fal_client.submit("team-a/pair", arguments={"tag": "crash", "crash_once": True,
                                                          "text": "survived"}).get())
        """
    )
    assert outcome["text"] == "survived"
    assert len(stack.executions("crash")) == 2
    crashed = [runner for runner in (stack.left, stack.right) if not runner.alive()]
    assert len(crashed) == 1
    assert outcome["pid"] != crashed[0].popen.pid


def test_runner_hint_routes_to_the_runner_that_advertised_it(stack: Stack) -> None:
    pair = [runner for runner in (stack.left, stack.right) if runner.alive()]
    if len(pair) < 2:
        survivor = pair[0]
        hint = "left" if survivor is stack.left else "right"
    else:
        hint = "right"
    outcome = stack.client(
        f"""
        first = [fal_client.run("team-a/pair", arguments={{"text": str(i)}})["pid"]
                 for i in range(4)]
        hinted = [fal_client.run("team-a/pair", arguments={{}}, hint={hint!r})["pid"]
                  for _ in range(4)]
        emit({{"hinted": hinted}})
        """
    )
    expected = (stack.left if hint == "left" else stack.right).popen.pid
    assert outcome["hinted"] == [expected] * 4


def test_webhook_is_delivered_with_the_result(stack: Stack) -> None:
    received: list[dict[str, Any]] = []

    def record(headers: email.message.Message, body: bytes) -> None:
        received.append({"headers": dict(headers), "body": json.loads(body), "raw": body})

    with webhook_server(record) as url:
        outcome = stack.client(
            f"""
            handle = fal_client.submit("team-a/probe", arguments={{"text": "hooked"}},
                                       webhook_url={url!r})
            emit({{"id": handle.request_id, "result": handle.get()}})
            """
        )
        waiting.wait_for(
            lambda: any(item["body"].get("request_id") == outcome["id"] for item in received),
            timeout=60,
            description="webhook delivery",
        )
        delivery = next(
            item for item in received if item["body"].get("request_id") == outcome["id"]
        )
        assert delivery["body"]["status"] == "OK"
        assert delivery["body"]["payload"] == outcome["result"]
        assert webhooks.verify_signature(
            stack.webhook_secret.encode(),
            delivery["headers"]["X-Kubefal-Signature"],
            delivery["raw"],
        )


AUTH_SCRIPT = """
import httpx
outcomes = {}
for app in ("team-a/probe", "team-a/shared-probe", "team-a/public-probe"):
    for name, key in KEYS.items():
        client = fal_client.SyncClient(key=key)
        try:
            client.run(app, arguments={"text": "auth"})
            outcomes[f"{app} {name}"] = 200
        except fal_client.client.FalClientHTTPError as error:
            outcomes[f"{app} {name}"] = [error.status_code, error.message]
emit(outcomes)
"""


def test_auth_matrix_of_private_shared_and_public_apps(stack: Stack) -> None:
    bad_key = stack.key_a.split(":")[0] + ":wrong-secret"
    keys = {
        "good": stack.key_a,
        "bad": bad_key,
        "other-namespace": stack.key_b,
        "revoked": stack.key_revoked,
    }
    outcome = stack.client(f"KEYS = {keys!r}\n" + AUTH_SCRIPT)
    expected_status = {
        "team-a/probe": {"good": 200, "bad": 401, "other-namespace": 403, "revoked": 401},
        "team-a/shared-probe": {"good": 200, "bad": 401, "other-namespace": 200, "revoked": 401},
        "team-a/public-probe": {"good": 200, "bad": 200, "other-namespace": 200, "revoked": 200},
    }
    for app, by_key in expected_status.items():
        for name, status in by_key.items():
            got = outcome[f"{app} {name}"]
            assert (got if got == 200 else got[0]) == status, (app, name, got)
            if status != 200:
                assert got[1], "errors carry a JSON detail"
    with stack.gateway.http() as http:
        for app, status in (("probe", 401), ("shared-probe", 401), ("public-probe", 200)):
            response = http.post(f"{stack.gateway.run_url}/team-a/{app}", json={"text": "x"})
            assert response.status_code == status
            if status == 401:
                assert "detail" in response.json()
            queued = http.post(f"{stack.gateway.queue_url}/team-a/{app}", json={"text": "x"})
            assert queued.status_code == status


def test_bad_requests_get_4xx_with_a_json_detail(stack: Stack) -> None:
    auth = {"authorization": f"Key {stack.key_a}"}
    gateway = stack.gateway
    with gateway.http() as http:
        cases = [
            http.post(f"{gateway.run_url}/team-a/unknown", json={}, headers=auth),
            http.post(f"{gateway.queue_url}/team-a/unknown", json={}, headers=auth),
            http.post(f"{gateway.run_url}/", json={}, headers=auth),
            http.post(
                f"{gateway.queue_url}/team-a/probe",
                json={},
                headers={**auth, "x-fal-queue-priority": "urgent"},
            ),
            http.post(
                f"{gateway.queue_url}/team-a/probe",
                json={},
                headers={**auth, "x-fal-request-timeout": "soon"},
            ),
            http.get(f"{gateway.queue_url}/team-a/probe/requests/nope/status", headers=auth),
            http.get(f"{gateway.queue_url}/team-a/probe/requests/nope", headers=auth),
            http.put(f"{gateway.queue_url}/team-a/probe/requests/nope/cancel", headers=auth),
            http.delete(f"{gateway.queue_url}/team-a/probe/requests/nope", headers=auth),
            http.post(
                f"{gateway.queue_url}/team-a/probe?fal_webhook=ftp://x", json={}, headers=auth
            ),
            http.post(f"{gateway.run_url}/team-a/probe", content=b"x" * 5000, headers=auth),
            http.post(f"{gateway.queue_url}/team-a/probe", content=b"x" * 5000, headers=auth),
        ]
        expected = [404, 404, 404, 400, 400, 404, 404, 404, 405, 400, 413, 413]
        assert [response.status_code for response in cases] == expected
        for response in cases:
            assert "detail" in response.json()
        head = http.head(f"{gateway.run_url}/team-a/probe", headers=auth)
        assert head.status_code == 405


def test_result_before_completion_is_400_still_in_progress(stack: Stack) -> None:
    auth = {"authorization": f"Key {stack.key_a}"}
    with stack.gateway.http() as http:
        submitted = http.post(
            f"{stack.gateway.queue_url}/team-a/serial", json={"sleep": 1.0}, headers=auth
        ).json()
        early = http.get(submitted["response_url"], headers=auth)
        assert early.status_code == 400
        assert early.json()["detail"] == "Request is still in progress"
        waiting.wait_for(
            lambda: http.get(submitted["status_url"], headers=auth).json()["status"] == "COMPLETED",
            timeout=60,
            description="completion",
        )
        assert http.get(submitted["response_url"], headers=auth).status_code == 200


def test_a_websocket_may_carry_the_key_in_fal_jwt_token_and_is_refused_without_one(
    stack: Stack,
) -> None:
    outcome = stack.client(
        f"""
        import ssl, msgpack
        from websockets.sync.client import connect
        from websockets.exceptions import InvalidStatus
        context = ssl.create_default_context(cafile={str(stack.tls.ca_path)!r})
        base = "wss://127.0.0.1:{stack.gateway.run_port}/team-a/probe/realtime"
        with connect(base + "?fal_jwt_token={stack.key_a}&max_buffering=5", ssl=context) as ws:
            ws.send(msgpack.packb({{"prompt": "token"}}, use_bin_type=True))
            answer = msgpack.unpackb(ws.recv())
        try:
            connect(base, ssl=context)
            refused = None
        except InvalidStatus as error:
            refused = error.response.status_code
        emit({{"answer": answer, "refused": refused}})
        """
    )
    assert outcome == {"answer": {"text": "nekot"}, "refused": 401}


def test_requests_after_an_app_500_succeed_on_the_reconnected_runner_connection(
    stack: Stack,
) -> None:
    outcome = stack.client(
        """
        answers = []
        for round in range(3):
            try:
                fal_client.run("team-a/serial", arguments={"fail": True})
            except fal_client.client.FalClientHTTPError as error:
                answers.append(error.status_code)
            answers.append(fal_client.run("team-a/serial", arguments={"text": str(round)})["text"])
        emit(answers)
        """
    )
    assert outcome == [500, "0", 500, "1", 500, "2"]


ISOLATION_SCRIPT = """
import uuid
owner = fal_client.SyncClient(key=KEYS["owner"])
handle = owner.submit("team-a/probe", arguments={"text": "a's secret", "sleep": 8, "log_lines": 1})
missing = str(uuid.uuid4())


def attempt(key, app, request_id):
    client = fal_client.SyncClient(key=key)
    answers = {}
    calls = {
        "status": lambda: client.status(app, request_id, with_logs=False),
        "logs": lambda: client.status(app, request_id, with_logs=True),
        "result": lambda: client.result(app, request_id),
        "cancel": lambda: client.cancel(app, request_id),
    }
    for name, call in calls.items():
        try:
            call()
            answers[name] = "answered"
        except fal_client.client.FalClientHTTPError as error:
            body = error.response.content.decode().replace(request_id, "<id>")
            answers[name] = [error.status_code, body]
    return answers


outcome = {}
for caller, key, app in (
    ("other-namespace", KEYS["other-namespace"], "team-a/probe"),
    ("storage-only", KEYS["storage-only"], "team-a/probe"),
    ("other-app", KEYS["owner"], "team-a/serial"),
):
    outcome[caller] = {
        "existing": attempt(key, app, handle.request_id),
        "missing": attempt(key, app, missing),
    }
outcome["status_after"] = type(handle.status()).__name__
outcome["result"] = handle.get()
outcome["final_error"] = handle.status().error
emit(outcome)
"""


def test_another_callers_request_is_refused_as_if_it_did_not_exist(stack: Stack) -> None:
    """Status, logs, result and cancel of caller A's queued request by a key of another
    namespace, by a storage-only key of A's namespace and under another app of A's namespace
    (A's own key) get exactly the answer a request id nobody submitted gets, and change
    nothing: A's request still completes with A's answer."""
    keys = {"owner": stack.key_a, "other-namespace": stack.key_b, "storage-only": stack.key_storage}
    outcome = stack.client(f"KEYS = {keys!r}\n" + ISOLATION_SCRIPT)
    expected_status = {"other-namespace": 403, "storage-only": 403, "other-app": 404}
    for caller, status in expected_status.items():
        answers = outcome[caller]
        assert answers["existing"] == answers["missing"], caller
        for name, answer in answers["existing"].items():
            assert answer != "answered", (caller, name)
            assert answer[0] == status, (caller, name, answer)
            assert json.loads(answer[1])["detail"], (caller, name, answer)
    assert outcome["status_after"] in ("Queued", "InProgress"), "B's cancel came too late"
    assert outcome["result"]["text"] == "a's secret"
    assert outcome["final_error"] is None


CONCURRENT_SCRIPT = """
import concurrent.futures, threading, uuid

start = threading.Barrier(len(CALLERS))


def caller(index, key, app):
    client = fal_client.SyncClient(key=key)
    start.wait(timeout=120)
    wrong = []
    for round in range(3):
        text = f"{index}-{round}-{uuid.uuid4().hex}"
        handle = client.submit(app, arguments={"text": text, "tag": text})
        queued = client.result(app, handle.request_id)
        ran = client.run(app, arguments={"text": text + "-run", "tag": text})
        if (queued["text"], queued["tag"]) != (text, text):
            wrong.append(["queue", text, queued])
        if (ran["text"], ran["tag"]) != (text + "-run", text):
            wrong.append(["run", text, ran])
    return wrong


with concurrent.futures.ThreadPoolExecutor(len(CALLERS)) as pool:
    futures = [pool.submit(caller, index, *pair) for index, pair in enumerate(CALLERS)]
    emit([problem for future in futures for problem in future.result()])
"""


def test_concurrent_callers_with_different_keys_each_get_their_own_answers(stack: Stack) -> None:
    """Twelve callers at once, with the keys of two namespaces on a private and a shared app
    served by one runner, each submit, fetch by request id and run; every answer carries the
    caller's own text (no answer crosses callers on the queue or the run path)."""
    callers = [
        (stack.key_a, "team-a/probe"),
        (stack.key_b, "team-a/shared-probe"),
        (stack.key_a, "team-a/shared-probe"),
    ] * 4
    outcome = stack.client(f"CALLERS = {callers!r}\n" + CONCURRENT_SCRIPT, timeout=300)
    assert outcome == []


REALTIME_SCRIPT = """
import concurrent.futures, threading, uuid

start = threading.Barrier(len(CALLERS))


def session(key, app):
    client = fal_client.SyncClient(key=key)
    wrong = []
    with client.realtime(app, use_jwt=False) as connection:
        start.wait(timeout=120)
        for _ in range(5):
            prompt = uuid.uuid4().hex
            connection.send({"prompt": prompt})
            answer = connection.recv()
            if answer != {"text": prompt[::-1]}:
                wrong.append([app, prompt, answer])
    return wrong


def refused(key):
    try:
        with fal_client.SyncClient(key=key).realtime("team-a/probe", use_jwt=False):
            return "accepted"
    except Exception as error:
        return error.response.status_code


with concurrent.futures.ThreadPoolExecutor(len(CALLERS)) as pool:
    futures = [pool.submit(session, *pair) for pair in CALLERS]
    wrong = [problem for future in futures for problem in future.result()]
emit({"wrong": wrong, "refused": {name: refused(key) for name, key in REFUSED.items()}})
"""


def test_concurrent_realtime_sessions_get_their_own_answers_and_other_keys_are_refused(
    stack: Stack,
) -> None:
    """Six realtime sessions at once (keys of two namespaces, a private and a shared app) each
    get the answers to their own prompts; on the private app a key of another namespace and a
    storage-only key of the app's namespace are refused 403 before any runner is reached."""
    callers = [
        (stack.key_a, "team-a/probe"),
        (stack.key_b, "team-a/shared-probe"),
        (stack.key_a, "team-a/shared-probe"),
    ] * 2
    refused = {"other-namespace": stack.key_b, "storage-only": stack.key_storage}
    outcome = stack.client(
        f"CALLERS = {callers!r}\nREFUSED = {refused!r}\n" + REALTIME_SCRIPT, timeout=300
    )
    assert outcome == {"wrong": [], "refused": {"other-namespace": 403, "storage-only": 403}}


WEBHOOKS_SCRIPT = """
import concurrent.futures, uuid


def submit(key, app, url):
    text = uuid.uuid4().hex
    handle = fal_client.SyncClient(key=key).submit(app, arguments={"text": text}, webhook_url=url)
    return [url, handle.request_id, text]


with concurrent.futures.ThreadPoolExecutor(len(SUBMITS)) as pool:
    emit([future.result() for future in [pool.submit(submit, *item) for item in SUBMITS]])
"""


def test_concurrent_webhooks_each_reach_only_their_own_receiver_with_their_own_result(
    stack: Stack,
) -> None:
    """Sixteen concurrent submissions by keys of two namespaces, each naming its own caller's
    webhook receiver: every receiver gets exactly its caller's requests, each with that
    request's own result, and nothing of the other caller's."""
    received: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}

    def recorder(name: str) -> Any:
        return lambda _headers, body: received[name].append(json.loads(body))

    with webhook_server(recorder("a")) as url_a, webhook_server(recorder("b")) as url_b:
        submits = [
            (stack.key_a, "team-a/probe", url_a),
            (stack.key_b, "team-a/shared-probe", url_b),
        ] * 8
        outcome = stack.client(f"SUBMITS = {submits!r}\n" + WEBHOOKS_SCRIPT, timeout=300)
        expected = {
            name: {request_id: text for hook, request_id, text in outcome if hook == url}
            for name, url in (("a", url_a), ("b", url_b))
        }
        waiting.wait_for(
            lambda: all(
                len({item["request_id"] for item in received[name]}) >= 8 for name in received
            ),
            timeout=120,
            description="all sixteen webhooks delivered",
        )
    for name, by_id in expected.items():
        assert len(by_id) == 8
        delivered = {item["request_id"]: item for item in received[name]}
        assert set(delivered) == set(by_id), name
        for request_id, item in delivered.items():
            assert item["status"] == "OK", item
            assert item["payload"]["text"] == by_id[request_id], item


STREAMS_SCRIPT = """
import concurrent.futures, threading, uuid

start = threading.Barrier(len(CALLERS))


def streams(key, app):
    client = fal_client.SyncClient(key=key)
    start.wait(timeout=120)
    wrong = []
    for _ in range(3):
        text = uuid.uuid4().hex
        events = list(client.stream(app, arguments={"text": text}))
        if events != [{"index": index, "text": text} for index in range(3)]:
            wrong.append([app, text, events])
    return wrong


with concurrent.futures.ThreadPoolExecutor(len(CALLERS)) as pool:
    futures = [pool.submit(streams, *pair) for pair in CALLERS]
    emit([problem for future in futures for problem in future.result()])
"""


def test_concurrent_streams_each_carry_only_their_own_events(stack: Stack) -> None:
    """Eight callers at once (keys of two namespaces) stream from the same runner: each stream
    carries exactly its own three events, none of another caller's."""
    callers = [(stack.key_a, "team-a/probe"), (stack.key_b, "team-a/shared-probe")] * 4
    outcome = stack.client(f"CALLERS = {callers!r}\n" + STREAMS_SCRIPT, timeout=300)
    assert outcome == []
