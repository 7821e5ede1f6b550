"""A real gateway over TLS against hostile connections and callers (issue 9, items 3, 10, 12):
header floods, slowloris, silent and handshake-less connections, connection caps, wrong-secret
floods and the admin listener's token.

Raw sockets play the attacker; the real fal_client plays the legitimate caller at the same time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import pathlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import gwharness
import httpx
import orjson
import psutil
import pytest

from kubefal_api import apikeys
from testkit import waiting

pytestmark = pytest.mark.slow

MAX_HEADER_BYTES = 16 * 1024
HEADER_TIMEOUT = 2.0
ADMIN_TOKEN = "admin-token-for-tests"


class Edge:
    def __init__(self, workdir: pathlib.Path) -> None:
        self.tls = gwharness.Tls(workdir)
        self.key_a = apikeys.generate_key()
        self.key_b = apikeys.generate_key()
        self.runner = gwharness.Runner(workdir=workdir, max_multiplexing=8)
        static = {
            "apps": [
                {
                    "id": "edge/probe",
                    "auth": "shared",
                    "runners": [self.runner.url],
                    "maxMultiplexing": 8,
                },
            ],
            "keys": [{"key": str(self.key_a)}, {"key": str(self.key_b)}],
        }
        self.gateway = gwharness.Gateway(
            workdir=workdir,
            static_config=static,
            tls=self.tls,
            extra_args=[
                f"--max-header-bytes={MAX_HEADER_BYTES}",
                "--max-headers=40",
                f"--header-timeout={HEADER_TIMEOUT}",
                "--tls-handshake-timeout=2",
                "--auth-failures-per-key=5",
                "--auth-failures-per-ip=1000",
            ],
            admin_token=ADMIN_TOKEN,
        )

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.tls.ca_path))

    def tls_socket(self, port: int | None = None) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", port or self.gateway.run_port), timeout=30)
        return self.context().wrap_socket(raw, server_hostname="127.0.0.1")

    def rss(self) -> int:
        return int(psutil.Process(self.gateway.popen.pid).memory_info().rss)

    def fal_run(self, key: apikeys.ApiKey, text: str) -> Any:
        return gwharness.run_client(
            f"emit(fal_client.run('edge/probe', arguments={{'text': {text!r}}}))",
            env=self.gateway.client_env(str(key)),
        )


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    stack = Edge(tmp_path_factory.mktemp("gateway-edge"))
    with gwharness.cleanup(stack.gateway, stack.runner):
        stack.runner.wait_ready()
        stack.gateway.wait_ready(["edge/probe"])
        yield stack


def read_until_closed(sock: socket.socket, *, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (fails after `timeout`)."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
        pass
    except TimeoutError:
        pytest.fail(f"the gateway kept the connection open for {timeout} s: {received[:200]!r}")
    return received


def status_and_detail(response: bytes) -> tuple[int, str]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, orjson.loads(body)["detail"]


# ---- item 3: headers and connections -----------------------------------------------------------
def test_a_header_flood_from_many_sockets_is_cut_off_and_memory_stays_bounded(edge: Edge) -> None:
    sockets = 40
    per_socket = 4 * 1024 * 1024  # 160 MiB in all, if the gateway took it
    line = b"x-flood: " + b"a" * 1000 + b"\r\n"
    baseline = edge.rss()
    peak = baseline
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, edge.rss())
            time.sleep(0.02)

    def flood(index: int) -> tuple[int, int]:
        # Returns (bytes sent, status received); the kernel's socket buffers may absorb the
        # whole flood, so what counts is the answer and the gateway's memory.
        sock = edge.tls_socket()
        sent = 0
        try:
            sock.sendall(f"POST /edge/probe HTTP/1.1\r\nhost: h{index}\r\n".encode())
            while sent < per_socket:
                sock.sendall(line * 16)
                sent += len(line) * 16
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, TimeoutError):
            pass
        response = read_until_closed(sock, timeout=30)
        sock.close()
        return sent, status_and_detail(response)[0] if response else 0

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=sockets) as pool:
            outcomes = list(pool.map(flood, range(sockets)))
    finally:
        stop.set()
        sampler.join()
    assert [status for _, status in outcomes] == [431] * sockets
    # Each connection may hold one head (--max-header-bytes) plus up to two read chunks (256 KiB
    # each) and its TLS buffers before it is cut off; add 32 MiB of slack for the allocator.
    # That is far below the 160 MiB the flood carries.
    per_connection = MAX_HEADER_BYTES + 2 * 256 * 1024 + 64 * 1024
    bound = sockets * per_connection + 32 * 1024 * 1024
    growth = peak - baseline
    assert growth < bound, f"gateway RSS grew by {growth / 2**20:.0f} MiB"
    assert edge.gateway.alive()


def test_too_many_header_fields_get_431_with_a_json_detail(edge: Edge) -> None:
    with edge.tls_socket() as sock:
        headers = "".join(f"x-h{index}: v\r\n" for index in range(60))
        sock.sendall(f"GET /edge/probe HTTP/1.1\r\nhost: a\r\n{headers}\r\n".encode())
        status, detail = status_and_detail(read_until_closed(sock, timeout=30))
    assert status == 431
    assert "40 header fields" in detail


def test_slow_silent_and_handshake_less_connections_are_closed_while_a_client_is_served(
    edge: Edge,
) -> None:
    slowloris = edge.tls_socket()
    slowloris.sendall(b"POST /edge/probe HTTP/1.1\r\nhost: a\r\n")
    silent = edge.tls_socket()
    handshake_less = socket.create_connection(("127.0.0.1", edge.gateway.run_port), timeout=30)
    closed = threading.Event()

    def trickle() -> None:
        # One header byte every 0.2 s: never a complete head, never idle for long.
        try:
            while not closed.is_set():
                slowloris.sendall(b"x")
                time.sleep(0.2)
        except (OSError, ssl.SSLError):
            pass

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        result = edge.fal_run(edge.key_a, "served")
        assert result["text"] == "served"
        status, detail = status_and_detail(read_until_closed(slowloris, timeout=30))
        assert status == 408
        assert "not received within" in detail
        assert status_and_detail(read_until_closed(silent, timeout=30))[0] == 408
        # No TLS handshake at all: the TCP connection is dropped without a byte.
        assert read_until_closed(handshake_less, timeout=30) == b""
    finally:
        closed.set()
        trickler.join()
        for sock in (slowloris, silent, handshake_less):
            sock.close()


def test_connections_over_the_cap_are_refused_with_503_and_idle_ones_closed(
    tmp_path: pathlib.Path,
) -> None:
    tls = gwharness.Tls(tmp_path)
    gateway = gwharness.Gateway(
        workdir=tmp_path,
        static_config={"apps": []},
        tls=tls,
        extra_args=[
            "--max-connections=8",
            "--max-connections-per-ip=5",
            "--header-timeout=60",
            "--idle-timeout=1",
        ],
    )
    with gwharness.cleanup(gateway):
        gateway.wait_ready()
        context = ssl.create_default_context(cafile=str(tls.ca_path))
        held = []
        try:
            for _ in range(5):
                raw = socket.create_connection(("127.0.0.1", gateway.run_port), timeout=30)
                held.append(context.wrap_socket(raw, server_hostname="127.0.0.1"))
            raw = socket.create_connection(("127.0.0.1", gateway.run_port), timeout=30)
            extra = context.wrap_socket(raw, server_hostname="127.0.0.1")
            status, detail = status_and_detail(read_until_closed(extra, timeout=30))
            assert (status, detail) == (503, "Too many open connections; retry later")
            held.pop().close()

            def admitted() -> bool:
                with httpx.Client(verify=str(tls.ca_path), timeout=10) as client:
                    return client.get(f"{gateway.run_url}/a/b").status_code == 404

            waiting.wait_for(admitted, timeout=30, description="a freed slot admits a client")
            # A keep-alive connection idle after its answer is closed after --idle-timeout.
            idle = held.pop()
            idle.sendall(b"GET /a/b HTTP/1.1\r\nhost: a\r\n\r\n")
            answer = read_until_closed(idle, timeout=30)
            assert answer.startswith(b"HTTP/1.1 404 ")
            idle.close()
        finally:
            for sock in held:
                sock.close()


# ---- item 8: webhook targets at submit and at delivery ------------------------------------------
def metric_value(edge: Edge, name: str, **labels: str) -> float:
    text = httpx.get(f"{edge.gateway.admin_url}/metrics", timeout=10).text
    selector = ",".join(f'{key}="{value}"' for key, value in labels.items())
    wanted = f"{name}{{{selector}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize(
    ("webhook", "reason"),
    [
        ("http://[abc", "not a valid URL"),
        ("http://example.com:99999/hook", "not a valid URL"),
        ("gopher://example.com/", "http or https"),
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.96.0.10/", "private"),
    ],
)
def test_a_submit_with_a_refused_webhook_gets_400_naming_fal_webhook(
    edge: Edge, webhook: str, reason: str
) -> None:
    with edge.gateway.http() as client:
        response = client.post(
            f"{edge.gateway.queue_url}/edge/probe",
            params={"fal_webhook": webhook},
            json={"text": "x"},
            headers={"authorization": f"Key {edge.key_a}"},
        )
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert detail.startswith("fal_webhook ")
    assert reason in detail


def test_a_webhook_host_resolving_to_loopback_is_refused_at_delivery(edge: Edge) -> None:
    received: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.settimeout(0.2)

    def accept() -> None:
        with contextlib.suppress(OSError):
            connection, _ = listener.accept()
            received.append(connection.recv(65536))

    refused_before = metric_value(
        edge, "kubefal_gateway_webhook_deliveries_total", outcome="refused"
    )
    result = gwharness.run_client(
        f"""
        handle = fal_client.submit("edge/probe", arguments={{"text": "hooked"}},
                                   webhook_url="http://localhost:{port}/hook")
        emit(handle.get())
        """,
        env=edge.gateway.client_env(str(edge.key_a)),
    )
    assert result["text"] == "hooked"
    waiting.wait_for(
        lambda: (
            metric_value(edge, "kubefal_gateway_webhook_deliveries_total", outcome="refused")
            > refused_before
        ),
        timeout=60,
        description="the refused delivery",
    )
    accept()
    listener.close()
    assert received == []


# ---- items 10 and 12: API-key floods and per-key limits over TLS --------------------------------
def hash_verifications(edge: Edge) -> float:
    return metric_value(edge, "kubefal_gateway_key_hash_verifications_total")


def test_a_wrong_secret_flood_is_throttled_while_valid_callers_are_served(edge: Edge) -> None:
    assert edge.fal_run(edge.key_a, "warm")["text"] == "warm"
    before = hash_verifications(edge)
    started = time.monotonic()
    stop = threading.Event()
    answers: list[tuple[int, str | None, str]] = []

    def attack(worker: int) -> None:
        with edge.gateway.http() as client:
            attempt = 0
            while not stop.is_set():
                attempt += 1
                response = client.post(
                    f"{edge.gateway.run_url}/edge/probe",
                    json={"text": "x"},
                    headers={"authorization": f"Key {edge.key_a.id}:wrong-{worker}-{attempt}"},
                )
                answers.append(
                    (
                        response.status_code,
                        response.headers.get("retry-after"),
                        response.json()["detail"],
                    )
                )

    attackers = [threading.Thread(target=attack, args=(index,)) for index in range(4)]
    for thread in attackers:
        thread.start()
    try:
        waiting.wait_for(
            lambda: sum(status == 429 for status, _, _ in answers) >= 20,
            timeout=60,
            description="throttled attempts",
        )
        # During the flood: the attacked key's own (cached) caller and another key's first call.
        during_a = edge.fal_run(edge.key_a, "during-a")
        during_b = edge.fal_run(edge.key_b, "during-b")
    finally:
        stop.set()
        for thread in attackers:
            thread.join()
    assert (during_a["text"], during_b["text"]) == ("during-a", "during-b")
    assert {status for status, _, _ in answers} == {401, 429}
    throttled = [(retry, detail) for status, retry, detail in answers if status == 429]
    assert all(retry is not None and int(retry) >= 1 for retry, _ in throttled)
    assert {detail for _, detail in throttled} == {"Too many failed attempts for this API key id"}
    # The flood cost at most the key id's budget of hash computations (a burst of 5, then 5 a
    # minute while the test ran), plus key B's one.
    refilled = math.ceil((time.monotonic() - started) * 5 / 60)
    assert hash_verifications(edge) - before <= 5 + refilled + 1


def test_known_and_unknown_key_ids_cost_one_hash_per_failure_alike(edge: Edge) -> None:
    unknown = apikeys.generate_key()
    with edge.gateway.http() as client:

        def fail(key_id: str, attempt: int) -> None:
            response = client.post(
                f"{edge.gateway.run_url}/edge/probe",
                json={},
                headers={"authorization": f"Key {key_id}:not-it-{attempt}"},
            )
            assert (response.status_code, response.json()["detail"]) == (401, "Invalid API key")

        start = hash_verifications(edge)
        for attempt in range(3):
            fail(edge.key_b.id, attempt)
        known = hash_verifications(edge) - start
        for attempt in range(3):
            fail(unknown.id, attempt)
        unknown_cost = hash_verifications(edge) - start - known
    assert known == unknown_cost == 3


# ---- item 12: the admin listener's token --------------------------------------------------------
def test_the_admin_listener_needs_its_token_except_for_probes_and_metrics(edge: Edge) -> None:
    admin = edge.gateway.admin_url
    scaling = f"{admin}/_kubefal/apps/edge/probe/scaling"
    with httpx.Client(timeout=10) as client:
        assert client.get(f"{admin}/healthz").status_code == 200
        assert client.get(f"{admin}/readyz").status_code == 200
        assert client.get(f"{admin}/metrics").status_code == 200
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": ADMIN_TOKEN}):
            refused = client.get(scaling, headers=headers)
            assert refused.status_code == 401
            assert "admin token" in refused.json()["detail"]
            assert refused.headers["www-authenticate"].startswith("Bearer")
        watch = client.get(f"{admin}/_kubefal/scaling/watch")
        assert watch.status_code == 401
        allowed = client.get(scaling, headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
        assert allowed.status_code == 200
        assert allowed.json()["app"] == "edge/probe"


def test_a_runner_announcement_needs_no_admin_token_and_bad_ones_get_4xx(edge: Edge) -> None:
    """Runners hold no admin token: the announcement is authenticated by the caller's IP
    against the watched runner pods, which a gateway with a static config does not have."""
    announce = f"{edge.gateway.admin_url}/_kubefal/runners/ready"
    with httpx.Client(timeout=10) as client:
        static = client.post(announce, json={"pod": "gen-1"})
        wrong_method = client.get(announce)
        not_json = client.post(announce, content=b"pod=gen-1")
        wrong_shape = client.post(announce, json={"pod": 7})
        too_long = client.post(announce, json={"pod": "x" * 2000})

    assert static.status_code == 404
    assert "Kubernetes" in static.json()["detail"]
    assert wrong_method.status_code == 405
    assert (not_json.status_code, wrong_shape.status_code) == (400, 400)
    assert too_long.status_code == 413
    for answer in (wrong_method, not_json, wrong_shape, too_long):
        assert answer.json()["detail"]


async def test_the_operator_follows_the_scaling_stream_with_the_token(edge: Edge) -> None:
    from kubefal_operator import actuator, config, metrics, signals

    received: list[signals.ScalingSignal] = []

    async def on_signal(signal: signals.ScalingSignal) -> None:
        received.append(signal)

    loaded = config.OperatorConfig.from_environment({signals.ADMIN_TOKEN_ENV: ADMIN_TOKEN})
    assert loaded.gateway_admin_token == ADMIN_TOKEN
    follower = actuator.Actuator(
        admin_url=edge.gateway.admin_url,
        on_signal=on_signal,
        instruments=metrics.Metrics.create(),
        interval=0.01,
        admin_token=loaded.gateway_admin_token,
    )
    follower.start()
    try:
        await asyncio.wait_for(follower.connected.wait(), timeout=30)
        deadline = asyncio.get_running_loop().time() + 30
        while not received and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await follower.stop()
    assert [signal.key for signal in received][:1] == [("edge", "probe")]


def test_the_per_key_rate_limit_answers_429_with_retry_after(tmp_path: pathlib.Path) -> None:
    key = apikeys.generate_key()
    other = apikeys.generate_key()
    tls = gwharness.Tls(tmp_path)
    gateway = gwharness.Gateway(
        workdir=tmp_path,
        static_config={
            "apps": [{"id": "rl/app", "auth": "shared", "runners": []}],
            "keys": [{"key": str(key)}, {"key": str(other)}],
        },
        tls=tls,
        extra_args=["--key-rate-limit=0.01", "--key-rate-burst=3"],
    )
    with gwharness.cleanup(gateway):
        gateway.wait_ready()
        with gateway.http() as client:

            def submit(with_key: apikeys.ApiKey) -> httpx.Response:
                return client.post(
                    f"{gateway.queue_url}/rl/app",
                    json={},
                    headers={"authorization": f"Key {with_key}"},
                )

            statuses = [submit(key).status_code for _ in range(3)]
            limited = submit(key)
            assert statuses == [200, 200, 200]
            assert limited.status_code == 429
            assert limited.json()["detail"] == "Rate limit of this API key exceeded"
            assert 1 <= int(limited.headers["retry-after"]) <= 100
            # Buckets are per key: another key of the same caller is not limited.
            assert submit(other).status_code == 200


def test_the_control_plane_reads_runner_details_with_the_admin_token(
    edge: Edge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chart gives the control plane the admin token: with it, `fal apps runners` gets each
    runner's in-flight count from the gateway; without it, the gateway answers 401 and the
    control plane falls back to the pods alone (no details)."""
    from kubefal_controlplane import gateway_admin, settings

    monkeypatch.setenv("KUBEFAL_GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)
    loaded = settings.from_args(["--local-credentials"])
    assert loaded.gateway_admin_token == ADMIN_TOKEN
    expected = {entry["id"] for entry in edge.gateway.scaling("edge/probe")["runnerDetails"]}
    assert expected
    details = gateway_admin.runner_details(
        edge.gateway.admin_url,
        namespace="edge",
        name="probe",
        timeout=10,
        token=loaded.gateway_admin_token,
    )
    assert details is not None and set(details) == expected
    assert all(detail.in_flight == 0 and detail.leases == () for detail in details.values())
    without = gateway_admin.runner_details(
        edge.gateway.admin_url, namespace="edge", name="probe", timeout=10
    )
    assert without is None
