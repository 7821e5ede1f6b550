"""Unit tests of the gateway's pure parts: slots, runner client, config, auth, errors."""

from __future__ import annotations

import asyncio
import pathlib

import orjson
import pytest

from kubefal_api import apikeys
from kubefal_gateway import (
    apps,
    auth,
    discovery,
    dispatch,
    errors,
    http_api,
    limits,
    queue_worker,
    queueing,
    runners,
    settings,
    upstream,
)
from tests.gateway.gwharness import read_http_request


# ---- slots ---------------------------------------------------------------------------------------
def _table(*ready: tuple[str, int]) -> tuple[runners.RunnerTable, list[runners.Runner]]:
    table = runners.RunnerTable(client=upstream.UpstreamClient(), probe_interval=1.0)
    created = []
    for index, (runner_id, in_flight) in enumerate(ready):
        runner = runners.Runner(
            runner_id=runner_id,
            app_id="ns/app",
            host="127.0.0.1",
            port=1000 + index,
            ready=True,
            in_flight=in_flight,
        )
        table.by_app.setdefault("ns/app", {})[runner_id] = runner
        created.append(runner)
    return table, created


async def test_the_least_loaded_ready_runner_gets_the_slot() -> None:
    table, (_busy, idle) = _table(("busy", 1), ("idle", 0))
    slots = dispatch.AppSlots(table=table, app_id="ns/app", max_multiplexing=2)
    assert await slots.acquire() is idle


async def test_a_runner_that_advertised_the_hint_wins_over_a_less_loaded_one() -> None:
    table, (hinted, other) = _table(("hinted", 1), ("other", 0))
    hinted.hints = frozenset({"gpu-cache"})
    slots = dispatch.AppSlots(table=table, app_id="ns/app", max_multiplexing=2)
    assert await slots.acquire(hint="gpu-cache") is hinted
    assert await slots.acquire(hint="unknown") is other


async def test_waiters_get_freed_slots_normal_priority_first_then_fifo() -> None:
    table, (runner,) = _table(("only", 0))
    slots = dispatch.AppSlots(table=table, app_id="ns/app", max_multiplexing=1)
    holder = await slots.acquire()
    order: list[str] = []

    async def wait(name: str, priority: str) -> None:
        got = await slots.acquire(priority=priority)
        order.append(name)
        slots.release(got)

    tasks = [
        asyncio.create_task(wait("low-1", "low")),
        asyncio.create_task(wait("normal-1", "normal")),
        asyncio.create_task(wait("low-2", "low")),
        asyncio.create_task(wait("normal-2", "normal")),
    ]
    while slots.waiting < 4:
        await asyncio.sleep(0)
    slots.release(holder)
    await asyncio.gather(*tasks)
    assert order == ["normal-1", "normal-2", "low-1", "low-2"]
    assert runner.in_flight == 0


async def test_waiting_longer_than_the_start_timeout_raises_queue_wait_timeout() -> None:
    table, _ = _table()
    slots = dispatch.AppSlots(table=table, app_id="ns/app", max_multiplexing=1)
    with pytest.raises(errors.QueueWaitTimeout) as raised:
        await slots.acquire(timeout=0.05)
    status, headers, body = errors.to_http(raised.value)
    assert status == 504
    assert (b"x-fal-request-timeout-type", b"user") in headers
    assert orjson.loads(body)["error_type"] == "request_timeout"
    assert slots.waiting == 0


# ---- upstream client -----------------------------------------------------------------------------
class _Server:
    """A tiny HTTP/1.1 server: answers each request, optionally closing after N answers."""

    def __init__(
        self,
        *,
        close_after: int | None = None,
        chunks: list[bytes] | None = None,
        chunk_delay: float = 0.01,
    ):
        self.chunk_delay = chunk_delay
        self.connections = 0
        self.requests = 0
        self.close_after = close_after
        self.chunks = chunks

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        answered = 0
        try:
            while True:
                _head, body = await read_http_request(reader)
                self.requests += 1
                if self.chunks is not None:
                    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    for chunk in self.chunks:
                        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        if self.chunk_delay:
                            await writer.drain()
                            await asyncio.sleep(self.chunk_delay)
                    writer.write(b"0\r\n\r\n")
                else:
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nx-echo: 1\r\n\r\n%s"
                        % (len(body), body)
                    )
                await writer.drain()
                answered += 1
                if self.close_after is not None and answered >= self.close_after:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


async def _serve(server: _Server) -> tuple[asyncio.Server, int]:
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    return listener, listener.sockets[0].getsockname()[1]


async def test_the_client_reuses_one_keep_alive_connection() -> None:
    server = _Server()
    listener, port = await _serve(server)
    client = upstream.UpstreamClient()
    try:
        pool = client.pool("127.0.0.1", port)
        for index in range(5):
            response = await pool.request("POST", "/", headers=[], body=b"%d" % index)
            assert (response.status, response.body) == (200, b"%d" % index)
            assert response.header(b"x-echo") == b"1"
        assert server.connections == 1
    finally:
        client.close()
        listener.close()


async def test_a_connection_closed_by_the_runner_is_replaced_without_an_error() -> None:
    server = _Server(close_after=1)
    listener, port = await _serve(server)
    client = upstream.UpstreamClient()
    try:
        pool = client.pool("127.0.0.1", port)
        first = await pool.request("POST", "/", headers=[], body=b"a")
        await asyncio.sleep(0.05)
        second = await pool.request("POST", "/", headers=[], body=b"b")
        assert (first.body, second.body) == (b"a", b"b")
        assert server.connections == 2
    finally:
        client.close()
        listener.close()


async def test_a_streamed_body_arrives_chunk_by_chunk() -> None:
    server = _Server(chunks=[b"data: 1\n\n", b"data: 2\n\n"])
    listener, port = await _serve(server)
    client = upstream.UpstreamClient()
    try:
        response = await client.pool("127.0.0.1", port).request(
            "POST", "/stream", headers=[], body=b"", stream=True
        )
        assert [chunk async for chunk in response.iter_body()] == [b"data: 1\n\n", b"data: 2\n\n"]
    finally:
        client.close()
        listener.close()


async def test_a_slow_stream_reader_pauses_the_runner_connection_and_loses_nothing() -> None:
    chunks = [b"data: %d\n\n" % index for index in range(200)]
    server = _Server(chunks=chunks, chunk_delay=0)
    listener, port = await _serve(server)
    client = upstream.UpstreamClient()
    try:
        response = await client.pool("127.0.0.1", port).request(
            "POST", "/stream", headers=[], body=b"", stream=True
        )
        received: list[bytes] = []
        async for chunk in response.iter_body():
            received.append(chunk)
            await asyncio.sleep(0.005)
        assert b"".join(received) == b"".join(chunks)
    finally:
        client.close()
        listener.close()


async def test_an_unreachable_runner_raises_upstream_error() -> None:
    client = upstream.UpstreamClient(connect_timeout=2)
    with pytest.raises(upstream.UpstreamError):
        await client.pool("127.0.0.1", 1).request("GET", "/", headers=[], body=b"")


# ---- config --------------------------------------------------------------------------------------
def test_static_app_entries_are_validated_with_field_names() -> None:
    config = apps.from_static_entry(
        {
            "id": "ns/app",
            "auth": "shared",
            "maxMultiplexing": 3,
            "requestTimeout": 5,
            "skipRetryConditions": ["timeout"],
            "runners": ["http://127.0.0.1:1/"],
        }
    )
    assert config.app_id == "ns/app"
    assert config.auth is apps.AuthMode.SHARED
    assert config.max_multiplexing == 3
    assert config.runner_urls == ("http://127.0.0.1:1",)
    for bad, word in (
        ({"id": "no-slash"}, "id"),
        ({"id": "a/b", "auth": "open"}, "auth"),
        ({"id": "a/b", "skipRetryConditions": ["always"]}, "skipRetryConditions"),
        ({"id": "a/b", "maxMultiplexing": 0}, "scaling"),
        ({"id": "a/b", "requestTimeout": "soon"}, "requestTimeout"),
    ):
        with pytest.raises(apps.InvalidAppConfig, match=word):
            apps.from_static_entry(bad)


def test_falapp_objects_become_app_configs() -> None:
    config = apps.from_falapp(
        {
            "metadata": {"namespace": "team", "name": "gen"},
            "spec": {
                "app": "app.py::Gen",
                "auth": "public",
                "scaling": {"maxMultiplexing": 4, "keepAlive": 30},
                "skipRetryConditions": ["server_error"],
                "requestTimeout": 60,
            },
        }
    )
    assert (config.app_id, config.auth, config.max_multiplexing) == (
        "team/gen",
        apps.AuthMode.PUBLIC,
        4,
    )
    assert config.skip_retry_conditions == frozenset({"server_error"})
    assert config.request_timeout == 60.0


def test_flags_win_over_environment_variables(tmp_path: pathlib.Path) -> None:
    loaded = settings.load(
        ["--queue-port", "1", "--store", "redis://x:1/0"],
        environ={
            "KUBEFAL_GATEWAY_QUEUE_PORT": "2",
            "KUBEFAL_GATEWAY_RUN_PORT": "3",
            "KUBEFAL_GATEWAY_STATIC_CONFIG": str(tmp_path / "c.yaml"),
        },
    )
    assert (loaded.queue_port, loaded.run_port, loaded.store) == (1, 3, "redis://x:1/0")
    assert loaded.static_config == tmp_path / "c.yaml"
    with pytest.raises(SystemExit):
        settings.load(["--tls-cert", "only-cert.pem"], environ={})
    with pytest.raises(SystemExit):
        settings.load(["--queue-port", "many"], environ={})


# ---- auth ----------------------------------------------------------------------------------------
async def test_keys_are_checked_against_the_app_auth_mode() -> None:
    keys = auth.KeyStore()
    team_key = apikeys.generate_key()
    other_key = apikeys.generate_key()
    keys.put(auth.record_from_static_entry({"key": str(team_key), "namespaces": "team"}))
    keys.put(auth.record_from_static_entry({"key": str(other_key), "namespaces": ["other"]}))
    private = apps.AppConfig(namespace="team", name="app", auth=apps.AuthMode.PRIVATE)
    shared = apps.AppConfig(namespace="team", name="app", auth=apps.AuthMode.SHARED)
    public = apps.AppConfig(namespace="team", name="app", auth=apps.AuthMode.PUBLIC)
    assert (await auth.authorize(keys, app=private, authorization=f"Key {team_key}")) is not None
    with pytest.raises(errors.Forbidden):
        await auth.authorize(keys, app=private, authorization=f"Key {other_key}")
    assert await auth.authorize(keys, app=shared, authorization=f"Key {other_key}") is not None
    assert await auth.authorize(keys, app=public, authorization=None) is None
    for header in (None, "Key nonsense", f"Key {team_key.id}:wrong", "Bearer token"):
        with pytest.raises(errors.MissingCredentials):
            await auth.authorize(keys, app=shared, authorization=header)


async def test_a_verified_key_is_not_hashed_again_until_its_record_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = auth.KeyStore()
    key = apikeys.generate_key()
    keys.put(auth.record_from_static_entry({"key": str(key)}))
    calls = []
    real = apikeys.verify_secret

    def counting(**kwargs: str) -> bool:
        calls.append(1)
        return real(**kwargs)

    monkeypatch.setattr(apikeys, "verify_secret", counting)
    for _ in range(3):
        await keys.verify(f"Key {key}")
    assert len(calls) == 1
    keys.put(auth.record_from_static_entry({"key": str(key), "revoked": True}))
    with pytest.raises(errors.MissingCredentials, match="revoked"):
        await keys.verify(f"Key {key}")
    assert len(calls) == 2


# ---- results -------------------------------------------------------------------------------------
def test_a_runner_error_becomes_a_completed_error_result_with_fal_shapes() -> None:
    response = upstream.UpstreamResponse(
        status=500,
        headers=[(b"content-type", b"application/json")],
        body=b'{"detail":"Internal Server Error"}',
        connection=None,
    )
    result = queue_worker.result_from_response(response, inference_time=0.5, max_result_bytes=1000)
    assert result.outcome is queueing.Outcome.ERROR
    assert (result.status_code, result.error, result.error_type) == (
        500,
        "Internal Server Error",
        "runner_error",
    )
    assert orjson.loads(result.body) == {
        "detail": "Internal Server Error",
        "error_type": "runner_error",
    }
    assert result.metrics == {"inference_time": 0.5}


def test_a_result_over_the_size_limit_becomes_a_413_error() -> None:
    response = upstream.UpstreamResponse(status=200, headers=[], body=b"x" * 11, connection=None)
    result = queue_worker.result_from_response(response, inference_time=0.1, max_result_bytes=10)
    assert (result.status_code, result.error_type) == (413, "result_too_large")


# ---- Kubernetes discovery events -----------------------------------------------------------------
_REPLICA_SET = {
    "metadata": {
        "namespace": "team",
        "name": "gen-5d8f",
        "uid": "rs-uid",
        "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gen", "controller": True}
        ],
    }
}


def _pod(name: str, *, ip: str | None, ready: bool, deleting: bool = False) -> dict[str, object]:
    """A runner pod of the ReplicaSet above (discovery accepts only pods its Deployment owns)."""
    return {
        "metadata": {
            "namespace": "team",
            "name": name,
            "labels": {
                "kubefal.io/app": "gen",
                "app.kubernetes.io/component": "runner",
                "pod-template-hash": "5d8f",
            },
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "gen-5d8f",
                    "uid": "rs-uid",
                    "controller": True,
                }
            ],
            **({"deletionTimestamp": "2026-01-01T00:00:00Z"} if deleting else {}),
        },
        "status": {
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def _discovery(
    table: runners.RunnerTable,
    *,
    registry: apps.AppRegistry | None = None,
    keys: auth.KeyStore | None = None,
) -> discovery.KubernetesDiscovery:
    """Kubernetes discovery with no API server: the tests feed it watch events by hand."""
    return discovery.KubernetesDiscovery(
        registry=apps.AppRegistry() if registry is None else registry,
        keys=auth.KeyStore() if keys is None else keys,
        table=table,
        kubeconfig=None,
        key_namespace=None,
        runner_port=8080,
    )


async def test_pod_events_add_and_remove_runners_by_ip_and_readiness() -> None:
    table = runners.RunnerTable(client=upstream.UpstreamClient(), probe_interval=60)
    watcher = _discovery(table)
    try:
        watcher._on_replica_set("ADDED", _REPLICA_SET)
        watcher._on_pod("ADDED", _pod("gen-1", ip="10.0.0.1", ready=True))
        watcher._on_pod("ADDED", _pod("gen-2", ip=None, ready=False))
        assert [(r.host, r.port) for r in table.runners("team/gen").values()] == [
            ("10.0.0.1", 8080)
        ]
        watcher._on_pod("MODIFIED", _pod("gen-1", ip="10.0.0.1", ready=True, deleting=True))
        assert table.runners("team/gen") == {}
        watcher._relist_pods([_pod("gen-3", ip="10.0.0.3", ready=True)])
        assert list(table.runners("team/gen")) == ["team/gen-3"]
    finally:
        table.close()


def _other_app_pod(name: str, *, ip: str) -> dict[str, object]:
    """A runner pod of another app, "team/other", with its own ReplicaSet."""
    pod = _pod(name, ip=ip, ready=False)
    metadata = pod["metadata"]
    assert isinstance(metadata, dict)
    metadata["labels"] = {
        **metadata["labels"],
        "kubefal.io/app": "other",
        "pod-template-hash": "77",
    }
    metadata["ownerReferences"] = [
        {**metadata["ownerReferences"][0], "name": "other-77", "uid": "o"}
    ]
    return pod


_OTHER_REPLICA_SET = {
    "metadata": {
        "namespace": "team",
        "name": "other-77",
        "uid": "o",
        "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "other", "controller": True}
        ],
    }
}


def _watcher(table: runners.RunnerTable) -> discovery.KubernetesDiscovery:
    watcher = _discovery(table)
    watcher._on_replica_set("ADDED", _REPLICA_SET)
    watcher._on_replica_set("ADDED", _OTHER_REPLICA_SET)
    return watcher


async def test_a_runner_that_announces_from_its_pod_ip_is_ready_before_its_pod_is() -> None:
    table = runners.RunnerTable(client=upstream.UpstreamClient(), probe_interval=60)
    watcher = _watcher(table)
    try:
        watcher._on_pod("ADDED", _pod("gen-1", ip="10.0.0.1", ready=False))
        assert table.runners("team/gen") == {}  # the watch alone waits for Ready

        assert watcher.announce("10.0.0.1", pod_name="gen-1") == ("team/gen", "team/gen-1")
        ready = [(r.host, r.port, r.ready) for r in table.runners("team/gen").values()]
        # A status update that still says not Ready (the kubelet is behind) keeps it.
        watcher._on_pod("MODIFIED", _pod("gen-1", ip="10.0.0.1", ready=False))
        kept = [r.ready for r in table.runners("team/gen").values()]
        # The watch stays the source of truth for removal.
        watcher._on_pod("MODIFIED", _pod("gen-1", ip="10.0.0.1", ready=False, deleting=True))
        after_delete = table.runners("team/gen")
    finally:
        table.close()

    assert ready == [("10.0.0.1", 8080, True)]
    assert kept == [True]
    assert after_delete == {}


async def test_a_pod_cannot_announce_itself_as_another_apps_runner() -> None:
    table = runners.RunnerTable(client=upstream.UpstreamClient(), probe_interval=60)
    watcher = _watcher(table)
    try:
        watcher._on_pod("ADDED", _pod("gen-1", ip="10.0.0.1", ready=False))
        watcher._on_pod("ADDED", _other_app_pod("other-1", ip="10.0.0.9"))
        refusals = []
        for peer, name in (
            ("10.0.0.9", "gen-1"),  # other's pod names gen's pod: wrong IP for that name
            ("10.0.0.7", None),  # an address that is no known runner pod
            ("10.0.0.7", "gen-1"),
        ):
            with pytest.raises(discovery.NotAnnounceable):
                watcher.announce(peer, pod_name=name)
            refusals.append((peer, name))
        # From its own IP the other pod becomes a runner of its own app, never of gen.
        own = watcher.announce("10.0.0.9")
        gen_runners = table.runners("team/gen")
        other_runners = [r.host for r in table.runners("team/other").values()]
        # A terminating pod cannot announce either.
        watcher._on_pod("MODIFIED", _pod("gen-1", ip="10.0.0.1", ready=False, deleting=True))
        with pytest.raises(discovery.NotAnnounceable):
            watcher.announce("10.0.0.1")
    finally:
        table.close()

    assert len(refusals) == 3
    assert own == ("team/other", "team/other-1")
    assert gen_runners == {}
    assert other_runners == ["10.0.0.9"]


def test_falapp_and_key_secret_events_update_the_registry_and_key_store() -> None:
    registry = apps.AppRegistry()
    keys = auth.KeyStore()
    watcher = _discovery(
        runners.RunnerTable(client=upstream.UpstreamClient(), probe_interval=60),
        registry=registry,
        keys=keys,
    )
    falapp = {
        "metadata": {"namespace": "team", "name": "gen"},
        "spec": {"app": "app.py::Gen", "auth": "shared"},
    }
    watcher._on_falapp("ADDED", falapp)
    assert registry.get("team/gen") is not None
    watcher._on_falapp("ADDED", {**falapp, "spec": {"app": "bad ref"}})
    assert registry.get("team/gen") is not None, "an invalid update keeps the last good config"
    watcher._on_falapp("DELETED", falapp)
    assert registry.get("team/gen") is None
    key = apikeys.generate_key()
    record = apikeys.new_record(key=key, namespaces=["team"])
    secret = apikeys.secret_manifest(record, namespace="kubefal-system")
    watcher._on_secret("ADDED", secret)
    assert keys.records[key.id].namespaces == ("team",)
    watcher._on_secret("DELETED", secret)
    assert key.id not in keys.records


def _answer(status: int, *headers: tuple[bytes, bytes]) -> upstream.UpstreamResponse:
    return upstream.UpstreamResponse(
        status=status, headers=list(headers), body=b"", connection=None
    )


def test_503_is_retried_unless_skipped_and_x_fal_needs_retry_overrides_both_ways() -> None:
    assert dispatch.needs_retry(_answer(503), frozenset())
    assert not dispatch.needs_retry(_answer(503), frozenset({"server_error"}))
    assert not dispatch.needs_retry(_answer(500), frozenset())
    assert dispatch.needs_retry(_answer(500, (b"x-fal-needs-retry", b"1")), frozenset())
    assert not dispatch.needs_retry(_answer(503, (b"x-fal-needs-retry", b"0")), frozenset())


async def test_a_pod_with_runner_labels_is_a_runner_only_under_its_apps_deployment() -> None:
    table = runners.RunnerTable(client=upstream.UpstreamClient(), probe_interval=60)
    watcher = _discovery(table)
    owner = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": "gen-5d8f",
        "uid": "rs-uid",
        "controller": True,
    }
    labels = {
        "kubefal.io/app": "gen",
        "app.kubernetes.io/component": "runner",
        "pod-template-hash": "5d8f",
    }

    def impostor(
        name: str, *, owners: list[dict[str, object]], pod_labels: dict[str, str]
    ) -> dict[str, object]:
        return {
            "metadata": {
                "namespace": "team",
                "name": name,
                "labels": pod_labels,
                "ownerReferences": owners,
            },
            "status": {"podIP": "10.0.0.9", "conditions": [{"type": "Ready", "status": "True"}]},
        }

    other_apps_set = {
        "metadata": {
            "namespace": "team",
            "uid": "other-uid",
            "name": "other-5d8f",
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": "other", "controller": True}
            ],
        }
    }
    try:
        # A pod arriving before its ReplicaSet waits for it, then becomes a runner.
        watcher._on_pod("ADDED", _pod("gen-1", ip="10.0.0.1", ready=True))
        assert table.runners("team/gen") == {}
        watcher._on_replica_set("ADDED", _REPLICA_SET)
        watcher._on_replica_set("ADDED", other_apps_set)
        assert list(table.runners("team/gen")) == ["team/gen-1"]

        for name, owners, pod_labels in (
            ("bare", [], labels),
            ("made-up-uid", [{**owner, "uid": "nope"}], labels),
            ("other-apps-set", [{**owner, "uid": "other-uid", "name": "other-5d8f"}], labels),
            ("wrong-hash", [owner], {**labels, "pod-template-hash": "zz"}),
            ("not-controller", [{**owner, "controller": False}], labels),
        ):
            watcher._on_pod("ADDED", impostor(name, owners=owners, pod_labels=pod_labels))
        assert list(table.runners("team/gen")) == ["team/gen-1"]

        # The ReplicaSet going away takes its pods out of traffic.
        watcher._on_replica_set("DELETED", _REPLICA_SET)
        assert table.runners("team/gen") == {}
    finally:
        table.close()


# ---- corked writes -------------------------------------------------------------------------------
class _RecordingTransport:
    """Records what reaches the socket layer (pure logic: the wrapper's write policy)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"extra:{name}"


async def test_a_response_head_and_body_written_in_one_step_leave_as_one_write() -> None:
    raw = _RecordingTransport()
    corked = limits.CorkedTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]

    corked.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    corked.write(b"ok")
    one_step = list(raw.writes)
    corked.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    held = list(raw.writes)
    await asyncio.sleep(0)  # next loop turn: a lone head (a stream's) is not held longer
    after_turn = list(raw.writes)
    corked.write(b"last")
    corked.close()

    assert one_step == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
    assert held == one_step
    assert after_turn[-1] == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    assert raw.writes[-1] == b"last" and raw.closed  # close sends what is held first
    assert corked.get_extra_info("peername") == "extra:peername"


async def test_the_asgi_lifespan_acknowledges_start_up_and_shutdown_then_returns() -> None:
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return inbox.pop(0)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await http_api.serve_lifespan(receive, send)  # type: ignore[arg-type]

    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]
    assert inbox == []
