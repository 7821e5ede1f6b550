"""Gateway hop cost: added latency and gateway CPU per request, measured against a direct call.

Starts a real runner serving the echo app (tests/runner/apps/echo_app.py) and a real gateway
(plain HTTP, SQLite store in a temp dir), then drives them with a raw asyncio keep-alive load
generator (kubefal_gateway.upstream, not httpx) at concurrency 1 and 32:

* direct:  POST runner/                       (the baseline)
* sync:    POST gateway-run/bench/echo        (the gateway's sync path)
* queue:   POST gateway-queue/bench/echo, then GET .../status every 2 ms until COMPLETED,
           then GET the result                (submit to result latency; polls cost CPU too)
* queue-fal: the same with fal_client's 0.1 s poll interval: the gateway CPU per job a real
           client causes (fewer jobs at concurrency 1, since each takes at least 0.1 s)

With TLS (a throwaway CA made here), the sync path is measured once more as `sync-tls`: the
gateway terminating TLS itself, as the fal_client needs when no ingress does it.

It prints p50/p99 latency, the latency added over the direct call at the same concurrency, and
the gateway's CPU seconds (psutil, user+system) divided by requests. Targets (issue 5): sync
<= 0.4 ms CPU/request and <= 1 ms added p50; queue <= 1 ms CPU/request.

``--client`` picks the HTTP client the bench drives every row with: ``upstream`` (default, the
gateway's own hand-written client), ``httpx`` (``AsyncClient``) or ``aiohttp``
(``ClientSession``). The ``client CPU`` column is this process's CPU per request: on the
``direct`` row it is what that library costs to do the gateway's upstream job (a keep-alive POST
to the runner at that concurrency), the comparison behind docs/design-decisions.md's choice of a
hand-written client.

    .venv/bin/python bench/gateway.py [--requests 2000] [--client upstream|httpx|aiohttp]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from typing import IO, Any

import orjson
import psutil
import yaml

from kubefal_gateway import upstream

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from bench import results as bench_results
from testkit import certs, runners
from testkit.ports import free_port

ROOT = pathlib.Path(__file__).resolve().parent.parent
ECHO_APP = f"{ROOT / 'tests' / 'runner' / 'apps' / 'echo_app.py'}::EchoApp"
BODY = b'{"text": "hello from the bench"}'
HEADERS = [(b"content-type", b"application/json")]
FAST_POLL = 0.002
FAL_CLIENT_POLL = 0.1
TEXT_HEADERS = {key.decode(): value.decode() for key, value in HEADERS}
CLIENTS = ("upstream", "httpx", "aiohttp")
"""The HTTP clients ``--client`` chooses from."""


class BenchClient:
    """One HTTP client library behind the two calls the bench makes (request, close)."""

    def __init__(self, kind: str, port: int, tls: ssl.SSLContext | None) -> None:
        scheme = "https" if tls is not None else "http"
        self.kind = kind
        self.base = f"{scheme}://127.0.0.1:{port}"
        self._upstream: upstream.UpstreamClient | None = None
        self._httpx: Any = None
        self._aiohttp: Any = None
        if kind == "upstream":
            self._upstream = upstream.UpstreamClient(ssl_context=tls)
            self._pool = self._upstream.pool("127.0.0.1", port)
        elif kind == "httpx":
            import httpx

            self._httpx = httpx.AsyncClient(
                base_url=self.base,
                verify=tls if tls is not None else True,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
                timeout=60,
            )
        elif kind == "aiohttp":
            import aiohttp

            self._aiohttp = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=tls if tls is not None else False, limit=0),
                timeout=aiohttp.ClientTimeout(total=60),
            )
        else:
            raise SystemExit(f"unknown --client {kind!r}: one of {', '.join(CLIENTS)}")

    async def request(self, method: str, path: str, *, body: bytes = b"") -> tuple[int, bytes]:
        headers = TEXT_HEADERS if body else {}
        if self._upstream is not None:
            response = await self._pool.request(
                method, path, headers=HEADERS if body else [], body=body
            )
            return response.status, response.body
        if self._httpx is not None:
            reply = await self._httpx.request(method, path, content=body, headers=headers)
            return reply.status_code, reply.content
        async with self._aiohttp.request(
            method, self.base + path, data=body, headers=headers
        ) as answer:
            return answer.status, await answer.read()

    async def close(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
        if self._httpx is not None:
            await self._httpx.aclose()
        if self._aiohttp is not None:
            await self._aiohttp.close()


def wait_http(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


@contextlib.contextmanager
def process_group(command: list[str], log: IO[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` in its own process group, stopped (TERM, then KILL after 30 s) on the way out.

    Each process the bench starts is entered on one ExitStack, so a failure anywhere after it
    starts (a certificate that cannot be made, a later process that does not start, a gateway
    that never gets ready) stops it too.
    """
    process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
    try:
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def make_tls(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """A throwaway CA and a certificate for 127.0.0.1; returns (ca, cert, key) paths."""
    return certs.issue_serving_certificate(
        directory, dns_names=["localhost"], ip_addresses=["127.0.0.1"]
    )


async def drive(
    port: int,
    path: str,
    *,
    concurrency: int,
    total: int,
    queue: bool,
    poll: float,
    tls: ssl.SSLContext | None = None,
    client_kind: str = "upstream",
) -> tuple[list[float], int]:
    """Run `total` requests with `concurrency` workers; returns latencies (s) and status polls."""
    client = BenchClient(client_kind, port, tls)
    latencies: list[float] = []
    polls = 0
    remaining = total

    async def worker() -> None:
        nonlocal remaining, polls
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            code, body = await client.request("POST", path, body=BODY)
            if code != 200:
                raise SystemExit(f"POST {path}: {code} {body[:200]!r}")
            if queue:
                request_id = orjson.loads(body)["request_id"]
                base = f"{path}/requests/{request_id}"
                while True:
                    _, status = await client.request("GET", base + "/status")
                    polls += 1
                    if orjson.loads(status)["status"] == "COMPLETED":
                        break
                    await asyncio.sleep(poll)
                code, result = await client.request("GET", base)
                if code != 200:
                    raise SystemExit(f"result: {code} {result[:200]!r}")
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await client.close()
    return latencies, polls


def measure(
    port: int,
    path: str,
    *,
    concurrency: int,
    total: int,
    queue: bool = False,
    process: psutil.Process | None = None,
    poll: float = FAST_POLL,
    tls: ssl.SSLContext | None = None,
    client_kind: str = "upstream",
) -> dict[str, float]:
    warm_up = max(50, total // 10)
    asyncio.run(
        drive(
            port,
            path,
            concurrency=concurrency,
            total=warm_up,
            queue=queue,
            poll=FAST_POLL,
            tls=tls,
            client_kind=client_kind,
        )
    )
    before = process.cpu_times() if process is not None else None
    me = psutil.Process()
    mine_before = me.cpu_times()
    latencies, polls = asyncio.run(
        drive(
            port,
            path,
            concurrency=concurrency,
            total=total,
            queue=queue,
            poll=poll,
            tls=tls,
            client_kind=client_kind,
        )
    )
    mine_after = me.cpu_times()
    client_cpu = (mine_after.user + mine_after.system) - (mine_before.user + mine_before.system)
    cpu = 0.0
    if process is not None and before is not None:
        after = process.cpu_times()
        cpu = (after.user + after.system) - (before.user + before.system)
    return {
        "p50": percentile(latencies, 0.50) * 1000,
        "p99": percentile(latencies, 0.99) * 1000,
        "mean": statistics.fmean(latencies) * 1000,
        "cpu_ms_per_request": cpu * 1000 / total,
        "polls_per_request": polls / total,
        "client_cpu_ms_per_request": client_cpu * 1000 / total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per measurement")
    parser.add_argument(
        "--client",
        choices=CLIENTS,
        default="upstream",
        help="HTTP client the bench drives every row with (default: the gateway's own)",
    )
    parser.add_argument(
        "--gateway-arg",
        action="append",
        default=[],
        help="extra gateway flag for an A/B, e.g. --gateway-arg=--status-hold-seconds=0 "
        "(repeatable)",
    )
    bench_results.add_option(parser)
    args = parser.parse_args()
    client_kind: str = args.client
    load_before = os.getloadavg()
    collected: dict[str, dict[str, dict[str, float]]] = {}
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="kubefal-bench-"))
    runner_port, queue_port, run_port, admin_port = (free_port() for _ in range(4))
    config = workdir / "static.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "apps": [
                    {
                        "id": "bench/echo",
                        "auth": "public",
                        "maxMultiplexing": 64,
                        "runners": [f"http://127.0.0.1:{runner_port}"],
                    }
                ]
            }
        )
    )
    with contextlib.ExitStack() as stack:
        log = stack.enter_context((workdir / "processes.log").open("wb"))
        python = sys.executable
        stack.enter_context(
            process_group(
                runners.runner_command(ECHO_APP, port=runner_port, max_multiplexing=64), log
            )
        )

        def gateway_command(
            queue: int, run: int, admin: int, database: str, *tls: str
        ) -> list[str]:
            return [
                python, "-m", "kubefal_gateway", "--host", "127.0.0.1",
                "--queue-port", str(queue), "--run-port", str(run), "--admin-port", str(admin),
                *tls, "--store", f"sqlite:///{workdir / database}",
                "--static-config", str(config), "--log-level", "warning", *args.gateway_arg,
            ]  # fmt: skip

        gateway = stack.enter_context(
            process_group(gateway_command(queue_port, run_port, admin_port, "queue.db"), log)
        )
        ca_path, cert_path, key_path = make_tls(workdir)
        tls_run_port, tls_queue_port, tls_admin_port = (free_port() for _ in range(3))
        tls_files = ["--tls-cert", str(cert_path), "--tls-key", str(key_path)]
        tls_gateway = stack.enter_context(
            process_group(
                gateway_command(
                    tls_queue_port, tls_run_port, tls_admin_port, "queue-tls.db", *tls_files
                ),
                log,
            )
        )
        tls_context = ssl.create_default_context(cafile=str(ca_path))
        wait_http(f"http://127.0.0.1:{runner_port}/_kubefal/ready")
        wait_http(f"http://127.0.0.1:{admin_port}/readyz")
        wait_http(f"http://127.0.0.1:{tls_admin_port}/readyz")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{admin_port}/_kubefal/apps/bench/echo/scaling"
            ) as response:
                if orjson.loads(response.read())["readyRunners"]:
                    break
            time.sleep(0.1)
        gateway_process = psutil.Process(gateway.pid)
        tls_gateway_process = psutil.Process(tls_gateway.pid)
        total = args.requests
        print(
            f"kubefal gateway bench: {total} requests per row, echo app, plain HTTP "
            f"(sync-tls: TLS), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
            f"client {client_kind}; latency in ms, gateway and client CPU in ms per request"
        )
        print(
            f"{'path':<9} {'conc':>4} {'p50':>7} {'p99':>7} {'+p50':>7} {'+p99':>7} "
            f"{'gw CPU':>7} {'polls':>6} {'client CPU':>10}"
        )
        for concurrency in (1, 32):
            direct = measure(
                runner_port, "/", concurrency=concurrency, total=total, client_kind=client_kind
            )
            sync = measure(
                run_port,
                "/bench/echo",
                concurrency=concurrency,
                total=total,
                process=gateway_process,
                client_kind=client_kind,
            )
            queued = measure(
                queue_port,
                "/bench/echo",
                concurrency=concurrency,
                total=total,
                queue=True,
                process=gateway_process,
                client_kind=client_kind,
            )
            fal_polled = measure(
                queue_port,
                "/bench/echo",
                concurrency=concurrency,
                total=total if concurrency > 1 else max(100, total // 10),
                queue=True,
                process=gateway_process,
                poll=FAL_CLIENT_POLL,
                client_kind=client_kind,
            )
            sync_tls = measure(
                tls_run_port,
                "/bench/echo",
                concurrency=concurrency,
                total=total,
                process=tls_gateway_process,
                tls=tls_context,
                client_kind=client_kind,
            )
            rows = (
                ("direct", direct),
                ("sync", sync),
                ("sync-tls", sync_tls),
                ("queue", queued),
                ("queue-fal", fal_polled),
            )
            collected[str(concurrency)] = dict(rows)
            for name, row in rows:
                added_p50 = row["p50"] - direct["p50"]
                added_p99 = row["p99"] - direct["p99"]
                cpu = f"{row['cpu_ms_per_request']:7.3f}" if name != "direct" else f"{'-':>7}"
                polls = (
                    f"{row['polls_per_request']:6.1f}" if name.startswith("queue") else f"{'-':>6}"
                )
                print(
                    f"{name:<9} {concurrency:>4} {row['p50']:7.3f} {row['p99']:7.3f} "
                    f"{added_p50:7.3f} {added_p99:7.3f} {cpu} {polls} "
                    f"{row['client_cpu_ms_per_request']:10.3f}"
                )
        print(
            "targets: sync <= 0.4 ms CPU/request and <= 1 ms added p50; "
            "queue <= 1 ms CPU/request (status polls included)"
        )
        bench_results.write(
            args.json,
            "gateway",
            {
                "requests": total,
                "client": client_kind,
                "loadavg_before": list(load_before),
                "loadavg_after": list(os.getloadavg()),
                # concurrency -> path (direct, sync, sync-tls, queue, queue-fal) -> figures
                # (p50/p99/mean in ms, cpu_ms_per_request of the gateway, polls_per_request)
                "by_concurrency": collected,
            },
        )


if __name__ == "__main__":
    main()
