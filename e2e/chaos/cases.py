"""The chaos cases: one fault each, on real processes, with the outcome counted per request."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from e2e.chaos import load, wait_until
from e2e.chaos.processes import SupervisedRunner
from testkit.redis import RedisServer
from tests.gateway import gwharness  # the gateway tests' process harness

APP = "chaos/app"
PRIVATE_APP = "chaos/private"
COLLECT_TIMEOUT = 240.0
WEBHOOK_ALLOW = ["--webhook-allow", "127.0.0.0/8"]
"""Webhooks to loopback are refused by default; the suite's receivers live on 127.0.0.1."""

Case = Callable[[pathlib.Path], load.Tally]


def _static(runners: list[SupervisedRunner], multiplexing: int, **app: Any) -> dict[str, Any]:
    return {
        "apps": [
            {
                "id": APP,
                "auth": "public",
                "runners": [runner.url for runner in runners],
                "maxMultiplexing": multiplexing,
                **app,
            }
        ]
    }


@contextlib.contextmanager
def _runners(
    workdir: pathlib.Path, count: int, multiplexing: int
) -> Iterator[tuple[list[SupervisedRunner], pathlib.Path]]:
    exec_dir = workdir / "executions"
    exec_dir.mkdir(exist_ok=True)
    runners = [
        SupervisedRunner(workdir, exec_dir=exec_dir, max_multiplexing=multiplexing).start()
        for _ in range(count)
    ]
    try:
        for runner in runners:
            runner.wait_ready()
        yield runners, exec_dir
    finally:
        for runner in runners:
            runner.stop()


def _gateway(
    workdir: pathlib.Path,
    static: dict[str, Any],
    *,
    store: str | None = None,
    tls: gwharness.Tls | None = None,
    extra: list[str] | None = None,
    name: str = "gateway",
    ports: tuple[int, int, int] | None = None,
) -> gwharness.Gateway:
    gateway = gwharness.Gateway(
        workdir=workdir,
        static_config=static,
        tls=tls,
        store=store,
        extra_args=extra,
        name=name,
        ports=ports,
    )
    gateway.wait_ready([app["id"] for app in static["apps"]])
    return gateway


# ---- kill -9 of the gateway under 500 requests ---------------------------------------------
def _gateway_kill(workdir: pathlib.Path, *, backend: str) -> load.Tally:
    tally = load.Tally(f"gateway kill -9 ({backend}, 500 requests)")
    redis = RedisServer(workdir / "redis", durable=True).start() if backend == "redis" else None
    store = redis.url if redis is not None else None
    gateways: list[gwharness.Gateway] = []
    try:
        with _runners(workdir, 2, 8) as (runners, exec_dir), load.PeakMemory() as memory:
            static = _static(runners, 8)
            extra = ["--lease-seconds", "3"]
            first = _gateway(workdir, static, store=store, extra=extra)
            gateways.append(first)
            memory.watch(first.popen.pid)
            jobs = load.make_jobs("kill", 500, sleep=0.02)
            accepted = [0]
            accepted_at_kill = [0]

            async def drive() -> None:
                def on_accepted(_: load.Job) -> None:
                    accepted[0] += 1

                submitting = asyncio.create_task(
                    load.submit_all(first.queue_url, APP, jobs, on_accepted=on_accepted)
                )
                while accepted[0] < 200 and not submitting.done():
                    await asyncio.sleep(0.01)
                accepted_at_kill[0] = accepted[0]
                await asyncio.to_thread(first.kill)
                ports = (first.queue_port, first.run_port, first.admin_port)
                second = await asyncio.to_thread(
                    _gateway, workdir, static, store=store, extra=extra, name="gw2", ports=ports
                )
                gateways.append(second)
                memory.watch(second.popen.pid)
                await submitting
                await load.collect(second.queue_url, APP, jobs, timeout=COLLECT_TIMEOUT)

            asyncio.run(drive())
            tally.count(jobs, exec_dir)
            tally.check(
                f"the kill came mid-load ({accepted_at_kill[0]}/500 accepted)",
                accepted_at_kill[0] < 500,
            )
        tally.peak_rss_mib = memory.peak_mib
    finally:
        for gateway in gateways:
            gateway.stop()
        if redis is not None:
            redis.stop()
    return tally


def gateway_kill_sqlite(workdir: pathlib.Path) -> load.Tally:
    return _gateway_kill(workdir, backend="sqlite")


def gateway_kill_redis(workdir: pathlib.Path) -> load.Tally:
    return _gateway_kill(workdir, backend="redis")


# ---- kill -9 of a runner mid-request ----------------------------------------------------------
def runner_kill(workdir: pathlib.Path) -> load.Tally:
    tally = load.Tally("runner kill -9 mid-request (100 requests)")
    with _runners(workdir, 2, 2) as (runners, exec_dir), load.PeakMemory() as memory:
        gateway = _gateway(workdir, _static(runners, 2))
        memory.watch(gateway.popen.pid)
        try:
            jobs = load.make_jobs("rk", 100, sleep=0.3)

            async def drive() -> None:
                submitting = asyncio.create_task(load.submit_all(gateway.queue_url, APP, jobs))
                await asyncio.to_thread(
                    wait_until,
                    lambda: len(load.executions(exec_dir)) >= 10,
                    timeout=60,
                    what="10 executions",
                )
                runners[0].kill()
                await submitting
                await load.collect(gateway.queue_url, APP, jobs, timeout=COLLECT_TIMEOUT)

            asyncio.run(drive())
            tally.count(jobs, exec_dir)
            tally.check("the runner was restarted", runners[0].restarts >= 1)
        finally:
            gateway.stop()
        tally.peak_rss_mib = memory.peak_mib
    return tally


# ---- Redis stalled, then killed and restarted --------------------------------------------------
def redis_stall_and_restart(workdir: pathlib.Path) -> load.Tally:
    tally = load.Tally("redis SIGSTOP 3 s, then kill -9 and restart (300 requests)")
    redis = RedisServer(workdir / "redis", durable=True).start()
    try:
        with _runners(workdir, 1, 4) as (runners, exec_dir), load.PeakMemory() as memory:
            gateway = _gateway(workdir, _static(runners, 4), store=redis.url)
            memory.watch(gateway.popen.pid)
            try:
                jobs = load.make_jobs("rs", 300, sleep=0.01)
                accepted = [0]
                not_ready_during_stall = [False]

                def on_accepted(_: load.Job) -> None:
                    accepted[0] += 1

                def readyz() -> int:
                    try:
                        return httpx.get(gateway.admin_url + "/readyz", timeout=2).status_code
                    except httpx.HTTPError:
                        return 0

                async def drive() -> None:
                    submitting = asyncio.create_task(
                        load.submit_all(
                            gateway.queue_url, APP, jobs, concurrency=8, on_accepted=on_accepted
                        )
                    )
                    while accepted[0] < 80 and not submitting.done():
                        await asyncio.sleep(0.01)
                    redis.stall()
                    stalled_until = time.monotonic() + 3.0
                    while time.monotonic() < stalled_until:
                        if await asyncio.to_thread(readyz) not in (200, 0):
                            not_ready_during_stall[0] = True
                        await asyncio.sleep(0.2)
                    redis.resume()
                    while accepted[0] < 160 and not submitting.done():
                        await asyncio.sleep(0.01)
                    await asyncio.to_thread(redis.kill)
                    await asyncio.to_thread(redis.start)
                    await submitting
                    await load.collect(gateway.queue_url, APP, jobs, timeout=COLLECT_TIMEOUT)

                asyncio.run(drive())
                tally.count(jobs, exec_dir)
                tally.check("/readyz said not ready while Redis stalled", not_ready_during_stall[0])
            finally:
                gateway.stop()
            tally.peak_rss_mib = memory.peak_mib
    finally:
        redis.stop()
    return tally


# ---- a poison job ---------------------------------------------------------------------------
def poison_job(workdir: pathlib.Path) -> load.Tally:
    """A job that kills its runner every time, and one in flight at every gateway crash."""
    tally = load.Tally("poison jobs (runner-crashing and gateway-crashing, max 3 attempts)")
    max_attempts = 3
    gateways: list[gwharness.Gateway] = []
    # One request per runner: a runner crash also fails (and retries) whatever else that
    # runner was running, and with only 3 attempts an innocent job next to the poison could
    # use them all up; this case is about the poison job's own attempts.
    with _runners(workdir, 2, 1) as (runners, exec_dir), load.PeakMemory() as memory:
        static = _static(runners, 1)
        extra = ["--max-attempts", str(max_attempts), "--lease-seconds", "2"]
        gateway = _gateway(workdir, static, extra=extra)
        gateways.append(gateway)
        memory.watch(gateway.popen.pid)
        try:
            crashing = load.make_jobs("crash", 1, crash=True)
            in_flight = load.make_jobs("inflight", 1, sleep=4.0)
            normal = load.make_jobs("ok", 20, sleep=0.05)
            ports = (gateway.queue_port, gateway.run_port, gateway.admin_port)

            async def drive() -> None:
                # The poison first; ordinary work after it has done its damage (a job that
                # happens to meet the crashing runners three times would use up its own three
                # attempts: bystanders under runner crashes are the runner-kill case's).
                await load.submit_all(gateway.queue_url, APP, crashing + in_flight)
                # Crash the gateway whenever the in-flight job has just started on a runner.
                current = gateway
                for crash in range(max_attempts + 2):
                    started = await asyncio.to_thread(
                        _wait_runs, exec_dir, "inflight", crash + 1, 30.0
                    )
                    if not started:
                        break
                    await asyncio.to_thread(current.kill)
                    current = await asyncio.to_thread(
                        _gateway, workdir, static, extra=extra, name=f"gw{crash}", ports=ports
                    )
                    gateways.append(current)
                    memory.watch(current.popen.pid)
                await load.collect(
                    current.queue_url, APP, crashing + in_flight, timeout=COLLECT_TIMEOUT
                )
                await load.submit_all(current.queue_url, APP, normal)
                await load.collect(current.queue_url, APP, normal, timeout=COLLECT_TIMEOUT)

            asyncio.run(drive())
            runs = load.executions(exec_dir)
            tally.count(
                crashing + in_flight + normal,
                exec_dir,
                expect_failed=frozenset({"crash0000", "inflight0000"}),
            )
            tally.check(
                f"the runner-crashing job ran at most {max_attempts} times "
                f"(ran {runs['crash0000']})",
                runs["crash0000"] <= max_attempts,
            )
            tally.check(
                f"the gateway-crashing job ran at most {max_attempts} times "
                f"(ran {runs['inflight0000']})",
                runs["inflight0000"] <= max_attempts,
            )
            tally.check("the runner-crashing job ended failed", crashing[0].outcome == "failed")
        finally:
            for each in gateways:
                each.stop()
        tally.peak_rss_mib = memory.peak_mib
    return tally


def _wait_runs(exec_dir: pathlib.Path, tag: str, count: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if load.executions(exec_dir)[tag] >= count:
            return True
        time.sleep(0.05)
    return False


# ---- slowloris, handshake-less connections and a header flood ---------------------------------
def slowloris_and_header_flood(workdir: pathlib.Path) -> load.Tally:
    tally = load.Tally("slowloris + silent TLS + header flood (300 sockets) vs 60 callers")
    tls = gwharness.Tls(workdir)
    with _runners(workdir, 1, 8) as (runners, exec_dir), load.PeakMemory() as memory:
        gateway = _gateway(workdir, _static(runners, 8), tls=tls)
        memory.watch(gateway.popen.pid)
        baseline = 0.0
        try:
            time.sleep(0.2)
            baseline = memory.peak_mib
            context = ssl.create_default_context(cafile=str(tls.ca_path))
            hostile: list[socket.socket] = []
            closed_by_server = 0
            with contextlib.ExitStack() as stack:
                for _ in range(100):  # connect, never start TLS
                    silent = socket.create_connection(("127.0.0.1", gateway.run_port), timeout=10)
                    stack.callback(silent.close)
                    hostile.append(silent)
                slow = []
                flood = []
                for _ in range(100):
                    raw = socket.create_connection(("127.0.0.1", gateway.run_port), timeout=10)
                    wrapped = context.wrap_socket(raw, server_hostname="127.0.0.1")
                    stack.callback(wrapped.close)
                    wrapped.sendall(b"POST /chaos/app HTTP/1.1\r\nHost: x\r\n")
                    slow.append(wrapped)
                for _ in range(100):
                    raw = socket.create_connection(("127.0.0.1", gateway.run_port), timeout=10)
                    wrapped = context.wrap_socket(raw, server_hostname="127.0.0.1")
                    stack.callback(wrapped.close)
                    wrapped.sendall(b"POST /chaos/app HTTP/1.1\r\nHost: x\r\n")
                    flood.append(wrapped)
                jobs = load.make_jobs("legit", 60)
                flood_until = time.monotonic() + 20.0
                line = b"X-Flood: " + b"a" * 8000 + b"\r\n"

                async def callers() -> None:
                    await _sync_calls(gateway.run_url, jobs, verify=str(tls.ca_path))

                async def attackers() -> None:
                    while time.monotonic() < flood_until:
                        for each in flood + slow:
                            with contextlib.suppress(OSError, ssl.SSLError):
                                each.setblocking(False)
                                each.send(line if each in flood else b"X")
                        await asyncio.sleep(0.05)

                async def both() -> None:
                    await asyncio.gather(callers(), attackers())

                asyncio.run(both())
                for each in hostile + slow + flood:
                    if _closed(each):
                        closed_by_server += 1
            tally.count(jobs, exec_dir)
            tally.check(
                f"the server closed the hostile connections ({closed_by_server}/300)",
                closed_by_server == 300,
            )
        finally:
            gateway.stop()
        tally.peak_rss_mib = memory.peak_mib
    growth = tally.peak_rss_mib - baseline
    tally.notes.append(f"memory growth under attack: {growth:.0f} MiB")
    tally.check(f"gateway memory grew by at most 100 MiB ({growth:.0f})", growth <= 100)
    return tally


def _closed(connection: socket.socket) -> bool:
    """True when the peer closed (EOF, reset) within a few seconds of asking."""
    with contextlib.suppress(OSError, ssl.SSLError):
        connection.setblocking(True)
        connection.settimeout(5)
        while True:
            data = connection.recv(65536)
            if not data:
                return True
    return _is_reset(connection)


def _is_reset(connection: socket.socket) -> bool:
    try:
        connection.setblocking(False)
        return connection.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


async def _sync_calls(
    run_url: str,
    jobs: list[load.Job],
    *,
    app: str = APP,
    headers: dict[str, str] | None = None,
    verify: Any = False,
) -> None:
    """Each job as one sync call (the run API), judged on its own nonce."""
    semaphore = asyncio.Semaphore(16)
    async with httpx.AsyncClient(timeout=60, verify=verify) as client:

        async def call(job: load.Job) -> None:
            async with semaphore:
                job.request_id = "sync"
                try:
                    response = await client.post(
                        f"{run_url}/{app}", json=job.payload(), headers=headers
                    )
                except httpx.HTTPError as error:
                    job.outcome = "lost"
                    job.detail = repr(error)
                    return
                load.judge(job, response)

        await asyncio.gather(*(call(job) for job in jobs))


# ---- request smuggling -----------------------------------------------------------------------
HOSTILE_PATHS = [
    "/chaos/app/%0d%0aGET%20/_kubefal/logs/x%20HTTP/1.1%0d%0aHost:%20x%0d%0a%0d%0a",
    "/chaos/app%0d%0a%0d%0aGET%20/%20HTTP/1.1",
    "/chaos/app/_kubefal/cancel/anything",
    "/chaos/app//_kubefal/logs/anything",
    "/chaos/app/%5Fkubefal/logs/anything",
    "/chaos/app/a/../_kubefal/ready",
    "/chaos/app/%20x",
    "/chaos/app/%00",
]


def smuggling(workdir: pathlib.Path) -> load.Tally:
    tally = load.Tally("request smuggling (400 callers, 2 apps, 1 runner, 160 hostile requests)")
    with _runners(workdir, 1, 8) as (runners, exec_dir), load.PeakMemory() as memory:
        key = "kf00c4a05000000001:chaos-secret-for-the-private-app"
        static = {
            "apps": [
                {"id": APP, "auth": "public", "runners": [runners[0].url], "maxMultiplexing": 8},
                {
                    "id": PRIVATE_APP,
                    "auth": "private",
                    "runners": [runners[0].url],
                    "maxMultiplexing": 8,
                },
            ],
            "keys": [{"key": key, "namespaces": "chaos"}],
        }
        gateway = _gateway(workdir, static)
        memory.watch(gateway.popen.pid)
        try:
            public = load.make_jobs("pub", 200)
            private = load.make_jobs("priv", 200)
            statuses: list[int] = []

            async def hostile() -> None:
                async with httpx.AsyncClient(timeout=30) as client:
                    for _ in range(20):
                        for path in HOSTILE_PATHS:
                            response = await client.post(
                                gateway.run_url + path, content=b"{}", extensions=None
                            )
                            statuses.append(response.status_code)

            async def drive() -> None:
                await asyncio.gather(
                    _sync_calls(gateway.run_url, public),
                    _sync_calls(
                        gateway.run_url,
                        private,
                        app=PRIVATE_APP,
                        headers={"Authorization": f"Key {key}"},
                    ),
                    hostile(),
                )

            asyncio.run(drive())
            tally.count(public + private, exec_dir)
            refused = sum(1 for status in statuses if 400 <= status < 500)
            tally.check(
                f"every hostile request was refused with a 4xx ({refused}/{len(statuses)})",
                refused == len(statuses),
            )
            logs = httpx.get(runners[0].url + "/_kubefal/info", timeout=5)
            tally.check("the runner is still healthy", logs.status_code == 200)
        finally:
            gateway.stop()
        tally.peak_rss_mib = memory.peak_mib
    return tally


# ---- a webhook tarpit -----------------------------------------------------------------------
def webhook_tarpit(workdir: pathlib.Path) -> load.Tally:
    """Tenant A's receiver accepts connections and never answers; tenant B must not wait."""
    tally = load.Tally("webhook tarpit (tenant A: 20 to a tarpit, tenant B: 5 to a receiver)")
    with _runners(workdir, 1, 8) as (runners, _), load.PeakMemory() as memory:
        static = {
            "apps": [
                {
                    "id": "tenant-a/app",
                    "auth": "public",
                    "runners": [runners[0].url],
                    "maxMultiplexing": 8,
                },
                {
                    "id": "tenant-b/app",
                    "auth": "public",
                    "runners": [runners[0].url],
                    "maxMultiplexing": 8,
                },
            ]
        }
        gateway = _gateway(workdir, static, extra=WEBHOOK_ALLOW)
        memory.watch(gateway.popen.pid)
        try:
            outcome = asyncio.run(_tarpit_run(gateway))
            tally.accepted = outcome["accepted"]
            tally.completed = outcome["completed"]
            tally.lost = outcome["accepted"] - outcome["completed"]
            delay = outcome["tenant_b_delay"]
            tally.notes.append(f"tenant B's slowest webhook came {delay:.2f} s after its submit")
            tally.check(
                f"tenant B's webhooks all arrived ({outcome['delivered_b']}/5)",
                outcome["delivered_b"] == 5,
            )
            tally.check(f"tenant B waited at most 5 s ({delay:.1f} s)", delay <= 5.0)
            tally.check("private and metadata webhook targets refused", outcome["refused_ssrf"])
        finally:
            gateway.stop()
        tally.peak_rss_mib = memory.peak_mib
    return tally


async def _tarpit_run(gateway: gwharness.Gateway) -> dict[str, Any]:
    held: list[asyncio.StreamWriter] = []
    arrivals: dict[str, float] = {}

    async def tarpit(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    async def receiver(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = await reader.readexactly(length)
        request_id = httpx.Response(200, content=body).json().get("request_id", "")
        arrivals[request_id] = time.monotonic()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    tarpit_server = await asyncio.start_server(tarpit, "127.0.0.1", 0)
    receiver_server = await asyncio.start_server(receiver, "127.0.0.1", 0)
    tarpit_url = f"http://127.0.0.1:{tarpit_server.sockets[0].getsockname()[1]}/hook"
    receiver_url = f"http://127.0.0.1:{receiver_server.sockets[0].getsockname()[1]}/hook"
    accepted = completed = 0
    async with httpx.AsyncClient(timeout=30) as client:
        refused = []
        for target in (
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.1/",
            "http://[abc",
            "http://example.invalid:99999/",
        ):
            response = await client.post(
                f"{gateway.queue_url}/tenant-b/app",
                params={"fal_webhook": target},
                json={"tag": "ssrf"},
            )
            refused.append(response.status_code == 400)
        a_ids = []
        for index in range(20):
            response = await client.post(
                f"{gateway.queue_url}/tenant-a/app",
                params={"fal_webhook": tarpit_url},
                json={"tag": f"a{index}"},
            )
            if response.status_code == 200:
                accepted += 1
                a_ids.append(response.json()["request_id"])
        b_ids = []
        submitted_at: dict[str, float] = {}
        for index in range(5):
            response = await client.post(
                f"{gateway.queue_url}/tenant-b/app",
                params={"fal_webhook": receiver_url},
                json={"tag": f"b{index}"},
            )
            if response.status_code == 200:
                accepted += 1
                b_ids.append(response.json()["request_id"])
                submitted_at[b_ids[-1]] = time.monotonic()
        deadline = time.monotonic() + 60
        pending = {("tenant-a/app", i) for i in a_ids} | {("tenant-b/app", i) for i in b_ids}
        while pending and time.monotonic() < deadline:
            for app, request_id in list(pending):
                status = await client.get(f"{gateway.queue_url}/{app}/requests/{request_id}/status")
                if status.status_code == 200 and status.json()["status"] == "COMPLETED":
                    completed += 1
                    pending.discard((app, request_id))
            await asyncio.sleep(0.05)
        wait_until_deadline = time.monotonic() + 30
        while not all(i in arrivals for i in b_ids) and time.monotonic() < wait_until_deadline:
            await asyncio.sleep(0.05)
    for writer in held:
        writer.close()
    tarpit_server.close()
    receiver_server.close()
    delays = [arrivals[i] - submitted_at[i] for i in b_ids if i in arrivals]
    return {
        "accepted": accepted,
        "completed": completed,
        "delivered_b": sum(1 for i in b_ids if i in arrivals),
        "tenant_b_delay": max(delays, default=float("inf")),
        "refused_ssrf": all(refused),
    }


# ---- kill -9 of the operator mid-reconcile -----------------------------------------------------
def operator_kill(workdir: pathlib.Path) -> load.Tally:
    """40 FalApps created at once; the operator is killed after the first Deployments appear."""
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    from e2e import cluster as local_cluster
    from e2e import operator_harness as harness

    tally = load.Tally("operator kill -9 mid-reconcile (40 FalApps)")
    count = 40
    with local_cluster.LocalCluster(workdir / "cluster") as cluster, load.PeakMemory() as memory:
        api_client = k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))
        harness.install_falapp_crd(api_client)
        core = k8s.CoreV1Api(api_client)
        apps_api = k8s.AppsV1Api(api_client)
        objects = k8s.CustomObjectsApi(api_client)
        for name in ("chaos-system", "chaos"):
            core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
        operator = harness.OperatorProcess(
            kubeconfig=cluster.kubeconfig,
            log_path=workdir / "operator.log",
            catalogue_namespace="chaos-system",
        )
        operator.start()
        assert operator.process is not None
        memory.watch(operator.process.pid)
        for index in range(count):
            objects.create_namespaced_custom_object(
                "kubefal.io",
                "v1alpha1",
                "chaos",
                "falapps",
                {
                    "apiVersion": "kubefal.io/v1alpha1",
                    "kind": "FalApp",
                    "metadata": {"name": f"app-{index:02d}"},
                    "spec": {
                        "app": "app.py::App",
                        "image": "kubefal/runner:chaos",
                        "machineTypes": ["M"],
                        "scaling": {"minConcurrency": 1},
                    },
                },
            )
        tally.accepted = count

        def deployments() -> int:
            return len(apps_api.list_namespaced_deployment("chaos").items)

        wait_until(lambda: deployments() >= 5, timeout=120, what="the first Deployments")
        at_kill = deployments()
        operator.kill()
        operator.start()
        assert operator.process is not None
        memory.watch(operator.process.pid)

        def reconciled() -> int:
            items = objects.list_namespaced_custom_object(
                "kubefal.io", "v1alpha1", "chaos", "falapps"
            )["items"]
            names = {d.metadata.name for d in apps_api.list_namespaced_deployment("chaos").items}
            return sum(
                1
                for item in items
                if item["metadata"]["name"] in names
                and item.get("status", {}).get("observedGeneration")
                == item["metadata"]["generation"]
            )

        with contextlib.suppress(Exception):
            wait_until(lambda: reconciled() == count, timeout=180, what="every FalApp reconciled")
        tally.completed = reconciled()
        tally.lost = count - tally.completed
        tally.check(f"the kill came mid-reconcile ({at_kill}/{count} Deployments)", at_kill < count)
        operator.stop()
        tally.notes.append("peak memory is the operator's")
        tally.peak_rss_mib = memory.peak_mib
    return tally


CASES: dict[str, Case] = {
    "gateway-kill-sqlite": gateway_kill_sqlite,
    "gateway-kill-redis": gateway_kill_redis,
    "runner-kill": runner_kill,
    "redis-stall": redis_stall_and_restart,
    "operator-kill": operator_kill,
    "poison-job": poison_job,
    "slowloris": slowloris_and_header_flood,
    "smuggling": smuggling,
    "webhook-tarpit": webhook_tarpit,
}
