"""Queued requests are bound to their submitter, on both queue backends, across a restart.

Real processes: a runner serving the probe fal.App, a gateway over TLS on the SQLite or the Redis
store (a real redis-server), the unmodified fal_client for keyed callers and httpx over the same
TLS for anonymous ones. The apps live in namespace `team-o`; key A (`team-x`) submits, key C
(`team-z`) is admitted by the `shared` and `public` apps but is not A, key O is `team-o`'s own.
Whoever may not act on a request must get exactly the answer of an id nobody submitted
(docs/security.md, "Queued requests, uploads and ids").
"""

from __future__ import annotations

import json
import pathlib
import uuid
from collections.abc import Iterator
from typing import Any

import gwharness
import pytest

from kubefal_api import apikeys

pytestmark = pytest.mark.slow

SHARED = "team-o/shared"
PUBLIC = "team-o/public"


class Stack:
    def __init__(self, workdir: pathlib.Path, store: str) -> None:
        self.workdir = workdir
        self.store = store
        self.tls = gwharness.Tls(workdir)
        self.keys = {name: str(apikeys.generate_key()) for name in ("a", "c", "o")}
        self.runner = gwharness.Runner(workdir=workdir, max_multiplexing=8)
        self.static = {
            "apps": [
                {"id": app, "auth": auth, "runners": [self.runner.url], "maxMultiplexing": 4}
                for app, auth in ((SHARED, "shared"), (PUBLIC, "public"))
            ],
            "keys": [
                {"key": self.keys["a"], "namespaces": "team-x"},
                {"key": self.keys["c"], "namespaces": "team-z"},
                {"key": self.keys["o"], "namespaces": "team-o"},
            ],
        }
        self.restarts = 0
        self.gateway = self._gateway()

    def _gateway(self) -> gwharness.Gateway:
        return gwharness.Gateway(
            workdir=self.workdir,
            static_config=self.static,
            tls=self.tls,
            store=self.store,
            name=f"gateway-{self.restarts}",
        )

    def restart(self) -> None:
        """Stop the gateway and start a new process on the same store."""
        self.gateway.stop()
        self.restarts += 1
        self.gateway = self._gateway()
        self.gateway.wait_ready([SHARED, PUBLIC])

    def client(self, script: str, key: str = "a", timeout: float = 180) -> Any:
        prelude = f"KEYS = {self.keys!r}\nSHARED = {SHARED!r}\nPUBLIC = {PUBLIC!r}\n"
        return gwharness.run_client(
            prelude + ATTEMPT + script,
            env=self.gateway.client_env(self.keys[key]),
            timeout=timeout,
        )

    def anonymous(self, app: str, request_id: str) -> dict[str, list[Any]]:
        """Status, status with logs, result and cancel of `request_id` without a key (httpx over
        the gateway's TLS): per call [status code, body with the id replaced by <id>]."""
        base = f"{self.gateway.queue_url}/{app}/requests/{request_id}"
        with self.gateway.http() as http:
            answers = {
                "status": http.get(base + "/status"),
                "logs": http.get(base + "/status?logs=1"),
                "result": http.get(base),
                "cancel": http.put(base + "/cancel"),
            }
        return {
            name: [answer.status_code, answer.text.replace(request_id, "<id>")]
            for name, answer in answers.items()
        }


ATTEMPT = """
import time, uuid


def attempt(key, app, request_id, cancel=True):
    client = fal_client.SyncClient(key=KEYS[key])
    calls = {
        "status": lambda: type(client.status(app, request_id, with_logs=False)).__name__,
        "logs": lambda: [line["message"]
                         for line in client.status(app, request_id, with_logs=True).logs],
        "result": lambda: client.result(app, request_id)["text"],
    }
    if cancel:
        calls["cancel"] = lambda: client.cancel(app, request_id)
    answers = {}
    for name, call in calls.items():
        try:
            answers[name] = ["answered", call()]
        except fal_client.client.FalClientHTTPError as error:
            body = error.response.content.decode().replace(request_id, "<id>")
            answers[name] = [error.status_code, body]
    return answers


def refused(key, app, request_id):
    return {"existing": attempt(key, app, request_id),
            "missing": attempt(key, app, str(uuid.uuid4()))}
"""


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp(f"queue-owner-{request.param}")
    if request.param == "sqlite":
        store = f"sqlite:///{workdir / 'queue.db'}"
    else:
        url: str = request.getfixturevalue("redis_url")
        store = f"{url}{'&' if '?' in url else '?'}prefix=owner-{uuid.uuid4().hex}"
    built = Stack(workdir, store)
    with gwharness.cleanup(built.runner):
        built.runner.wait_ready()
        try:
            built.gateway.wait_ready([SHARED, PUBLIC])
            yield built
        finally:
            built.gateway.stop()


def assert_refused_as_unknown(answers: dict[str, dict[str, Any]], what: str) -> None:
    """`answers` (from `refused`) for an existing request equal those for a made-up id: 404."""
    assert answers["existing"] == answers["missing"], what
    for name, answer in answers["existing"].items():
        assert answer[0] == 404, (what, name, answer)


def test_a_shared_apps_request_answers_its_submitter_and_the_apps_namespace_only(
    stack: Stack,
) -> None:
    """Key C, admitted by the shared app, gets the unknown-id answer for status, logs, result and
    cancel of key A's request, while it runs on this gateway and once it completed, and its cancel
    changes nothing; A and a key of the app's namespace read it and may cancel A's requests."""
    outcome = stack.client(
        """
a = fal_client.SyncClient(key=KEYS["a"])
handle = a.submit(SHARED, arguments={"text": "a's secret", "sleep": 8, "log_lines": 1})
while type(a.status(SHARED, handle.request_id)).__name__ != "InProgress":
    time.sleep(0.05)
outcome = {"running": refused("c", SHARED, handle.request_id)}
outcome["still_running"] = type(a.status(SHARED, handle.request_id)).__name__
outcome["result"] = handle.get()["text"]
outcome["done"] = refused("c", SHARED, handle.request_id)
outcome["a"] = attempt("a", SHARED, handle.request_id, cancel=False)
outcome["o"] = attempt("o", SHARED, handle.request_id, cancel=False)
outcome["cancelled"] = {}
for canceller in ("o", "a"):
    doomed = a.submit(SHARED, arguments={"text": "doomed", "sleep": 30})
    fal_client.SyncClient(key=KEYS[canceller]).cancel(SHARED, doomed.request_id)
    while type(doomed.status()).__name__ != "Completed":
        time.sleep(0.05)
    outcome["cancelled"][canceller] = doomed.status().error_type
emit(outcome)
"""
    )
    assert_refused_as_unknown(outcome["running"], "while running")
    assert_refused_as_unknown(outcome["done"], "once completed")
    assert outcome["still_running"] == "InProgress", "C's cancel must not have touched it"
    assert outcome["result"] == "a's secret"
    for caller in ("a", "o"):
        assert outcome[caller] == {
            "status": ["answered", "Completed"],
            "logs": ["answered", ["log line 0"]],
            "result": ["answered", "a's secret"],
        }, caller
    assert outcome["cancelled"] == {"o": "request_cancelled", "a": "request_cancelled"}


SUBMIT_SCRIPT = """
a = fal_client.SyncClient(key=KEYS["a"])
keyed = a.submit(PUBLIC, arguments={"text": "a's public"})
shared = a.submit(SHARED, arguments={"text": "a's shared"})
emit({"keyed": [keyed.request_id, keyed.get()["text"]],
      "shared": [shared.request_id, shared.get()["text"]]})
"""

CHECK_SCRIPT = """
emit({
    "c_anonymous": attempt("c", PUBLIC, IDS["anonymous"], cancel=False),
    "c_keyed": refused("c", PUBLIC, IDS["keyed"]),
    "c_shared": refused("c", SHARED, IDS["shared"]),
    "a_keyed": attempt("a", PUBLIC, IDS["keyed"], cancel=False),
    "o_keyed": attempt("o", PUBLIC, IDS["keyed"], cancel=False),
    "a_shared": attempt("a", SHARED, IDS["shared"], cancel=False),
    "o_shared": attempt("o", SHARED, IDS["shared"], cancel=False),
})
"""


def test_public_apps_bind_keyed_requests_only_and_a_restart_keeps_every_binding(
    stack: Stack,
) -> None:
    """On a public app a request submitted without a key is readable by its id alone, one
    submitted with key A answers only A and the app's namespace (anonymous callers and key C get
    the unknown-id answer); the same holds, and A's shared-app request stays bound, after the
    gateway restarted on the same store."""
    with stack.gateway.http() as http:
        anonymous = http.post(f"{stack.gateway.queue_url}/{PUBLIC}", json={"text": "anon"})
    assert anonymous.status_code == 200
    submitted = stack.client(SUBMIT_SCRIPT)
    ids = {
        "anonymous": anonymous.json()["request_id"],
        "keyed": submitted["keyed"][0],
        "shared": submitted["shared"][0],
    }
    assert submitted["keyed"][1] == "a's public"
    assert submitted["shared"][1] == "a's shared"
    for phase in ("before restart", "after restart"):
        if phase == "after restart":
            stack.restart()
        outcome = stack.client(f"IDS = {ids!r}\n" + CHECK_SCRIPT)
        assert outcome["c_anonymous"]["result"] == ["answered", "anon"], phase
        assert outcome["c_anonymous"]["status"] == ["answered", "Completed"], phase
        assert_refused_as_unknown(outcome["c_keyed"], f"C, keyed public request, {phase}")
        assert_refused_as_unknown(outcome["c_shared"], f"C, shared request, {phase}")
        for caller, request, text in (
            ("a_keyed", "keyed", "a's public"),
            ("o_keyed", "keyed", "a's public"),
            ("a_shared", "shared", "a's shared"),
            ("o_shared", "shared", "a's shared"),
        ):
            assert outcome[caller]["status"] == ["answered", "Completed"], (phase, caller, request)
            assert outcome[caller]["result"] == ["answered", text], (phase, caller, request)
        # Anonymous callers: the anonymous request by its id, A's keyed request never.
        by_anonymous = stack.anonymous(PUBLIC, ids["anonymous"])
        assert by_anonymous["status"][0] == 200, phase
        assert by_anonymous["result"][0] == 200, phase
        assert json.loads(by_anonymous["result"][1])["text"] == "anon", phase
        keyed = stack.anonymous(PUBLIC, ids["keyed"])
        missing = stack.anonymous(PUBLIC, str(uuid.uuid4()))
        assert keyed == missing, phase
        assert {answer[0] for answer in keyed.values()} == {404}, phase
