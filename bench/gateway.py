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

    .venv/bin/python bench/gateway.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
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

import orjson
import psutil
import yaml

from kubefal_gateway import upstream

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from bench import results as bench_results
from testkit import certs
from testkit.ports import free_port

ROOT = pathlib.Path(__file__).resolve().parent.parent
ECHO_APP = f"{ROOT / 'tests' / 'runner' / 'apps' / 'echo_app.py'}::EchoApp"
BODY = b'{"text": "hello from the bench"}'
HEADERS = [(b"content-type", b"application/json")]
FAST_POLL = 0.002
FAL_CLIENT_POLL = 0.1


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
) -> tuple[list[float], int]:
    """Run `total` requests with `concurrency` workers; returns latencies (s) and status polls."""
    client = upstream.UpstreamClient(ssl_context=tls)
    pool = client.pool("127.0.0.1", port)
    latencies: list[float] = []
    polls = 0
    remaining = total

    async def worker() -> None:
        nonlocal remaining, polls
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            response = await pool.request("POST", path, headers=HEADERS, body=BODY)
            if response.status != 200:
                raise SystemExit(f"POST {path}: {response.status} {response.body[:200]!r}")
            if queue:
                request_id = orjson.loads(response.body)["request_id"]
                base = f"{path}/requests/{request_id}"
                while True:
                    status = await pool.request("GET", base + "/status", headers=[], body=b"")
                    polls += 1
                    if orjson.loads(status.body)["status"] == "COMPLETED":
                        break
                    await asyncio.sleep(poll)
                result = await pool.request("GET", base, headers=[], body=b"")
                if result.status != 200:
                    raise SystemExit(f"result: {result.status} {result.body[:200]!r}")
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    client.close()
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
        )
    )
    before = process.cpu_times() if process is not None else None
    latencies, polls = asyncio.run(
        drive(port, path, concurrency=concurrency, total=total, queue=queue, poll=poll, tls=tls)
    )
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
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per measurement")
    bench_results.add_option(parser)
    args = parser.parse_args()
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
    python = sys.executable
    log = (workdir / "processes.log").open("wb")
    runner = subprocess.Popen(
        [
            python,
            "-m",
            "kubefal_runner",
            "--app",
            ECHO_APP,
            "--host",
            "127.0.0.1",
            "--port",
            str(runner_port),
            "--metrics-port",
            "0",
            "--max-multiplexing",
            "64",
        ],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    gateway = subprocess.Popen(
        [
            python,
            "-m",
            "kubefal_gateway",
            "--host",
            "127.0.0.1",
            "--queue-port",
            str(queue_port),
            "--run-port",
            str(run_port),
            "--admin-port",
            str(admin_port),
            "--store",
            f"sqlite:///{workdir / 'queue.db'}",
            "--static-config",
            str(config),
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    ca_path, cert_path, key_path = make_tls(workdir)
    tls_run_port, tls_queue_port, tls_admin_port = (free_port() for _ in range(3))
    tls_gateway = subprocess.Popen(
        [
            python,
            "-m",
            "kubefal_gateway",
            "--host",
            "127.0.0.1",
            "--queue-port",
            str(tls_queue_port),
            "--run-port",
            str(tls_run_port),
            "--admin-port",
            str(tls_admin_port),
            "--tls-cert",
            str(cert_path),
            "--tls-key",
            str(key_path),
            "--store",
            f"sqlite:///{workdir / 'queue-tls.db'}",
            "--static-config",
            str(config),
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    tls_context = ssl.create_default_context(cafile=str(ca_path))
    try:
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
            "latency in ms, gateway CPU in ms per request"
        )
        print(
            f"{'path':<9} {'conc':>4} {'p50':>7} {'p99':>7} {'+p50':>7} {'+p99':>7} "
            f"{'gw CPU':>7} {'polls':>6}"
        )
        for concurrency in (1, 32):
            direct = measure(runner_port, "/", concurrency=concurrency, total=total)
            sync = measure(
                run_port,
                "/bench/echo",
                concurrency=concurrency,
                total=total,
                process=gateway_process,
            )
            queued = measure(
                queue_port,
                "/bench/echo",
                concurrency=concurrency,
                total=total,
                queue=True,
                process=gateway_process,
            )
            fal_polled = measure(
                queue_port,
                "/bench/echo",
                concurrency=concurrency,
                total=total if concurrency > 1 else max(100, total // 10),
                queue=True,
                process=gateway_process,
                poll=FAL_CLIENT_POLL,
            )
            sync_tls = measure(
                tls_run_port,
                "/bench/echo",
                concurrency=concurrency,
                total=total,
                process=tls_gateway_process,
                tls=tls_context,
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
                    f"{added_p50:7.3f} {added_p99:7.3f} {cpu} {polls}"
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
                "loadavg_before": list(load_before),
                "loadavg_after": list(os.getloadavg()),
                # concurrency -> path (direct, sync, sync-tls, queue, queue-fal) -> figures
                # (p50/p99/mean in ms, cpu_ms_per_request of the gateway, polls_per_request)
                "by_concurrency": collected,
            },
        )
    finally:
        for process in (gateway, tls_gateway, runner):
            os.killpg(process.pid, signal.SIGTERM)
        for process in (gateway, tls_gateway, runner):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
