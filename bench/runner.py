"""Benchmark: the kubefal runner against the fal SDK alone, serving the same echo app, same run.

Baseline (A): the SDK's own ASGI app as fal serves it offline, ``App(_allow_init=True)`` +
``fal.ref.set_current_app`` + uvicorn on ``app._build_app()`` with the runner's uvicorn settings
(keep-alive 300 s, uvloop/httptools when installed, uvicorn's default logging).
Candidate (B): ``python -m kubefal_runner`` on the same app file (metrics server off, the
multiplexing limit above the client concurrency so the guard admits everything but still counts).

A small asyncio load generator keeps ``--concurrency`` keep-alive HTTP/1.1 connections busy with
``POST /`` (raw bytes over asyncio streams: an HTTP client library would be slower than the servers
it measures), each request carrying an ``x-fal-request-id`` as the gateway's do. Rounds alternate
A/B/A/B so drift on a shared machine hits both. It prints requests/s, p50 latency and server CPU
time per request (from /proc, steadier than throughput when other work shares the cores) for each,
and the ratios; the target is B/A >= 0.95 in throughput. Last, it times `RunnerASGI` in-process
around a no-op ASGI app: the runner's own per-request cost, free of network and scheduling noise.

    .venv/bin/python bench/runner.py [--concurrency 16] [--duration 5] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from kubefal_runner import asgi, request_logs, state

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from bench import results as bench_results
from testkit import runners
from testkit.ports import free_port

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_APP = f"{REPO / 'tests' / 'runner' / 'apps' / 'echo_app.py'}::EchoApp"
STARTUP_TIMEOUT_SECONDS = 120.0
WARMUP_SECONDS = 1.0
TARGET_RATIO = 0.95

SDK_ALONE_SCRIPT = """
import logging.config
import runpy

import fal.ref
import uvicorn
import uvicorn.config

from kubefal_runner import serving  # only for the identical uvicorn settings

file_path, class_name = {app!r}.rsplit("::", 1)
app_class = runpy.run_path(file_path)[class_name]
app = app_class(_allow_init=True)
fal.ref.set_current_app(app)
logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)
config = serving.uvicorn_config(app._build_app(), host="127.0.0.1", port={port})
config.lifespan = "on"  # alone, the SDK runs setup() through uvicorn's lifespan
uvicorn.Server(config).run()
"""


@dataclasses.dataclass
class RoundResult:
    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    server_cpu_seconds: float = 0.0


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) from /proc, in seconds."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    user_ticks, system_ticks = int(fields[11]), int(fields[12])
    return (user_ticks + system_ticks) / os.sysconf("SC_CLK_TCK")


def build_request(*, port: int, request_id: str) -> bytes:
    body = json.dumps({"text": "hello kubefal"}).encode()
    head = (
        f"POST / HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
        f"x-fal-request-id: {request_id}\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one response; return its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def drive(port: int, *, concurrency: int, seconds: float) -> RoundResult:
    """Keep ``concurrency`` connections busy for ``seconds``."""
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []
    errors = 0
    request_ids = itertools.count()

    async def connection_loop() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                request = build_request(port=port, request_id=f"bench-{next(request_ids)}")
                started = time.perf_counter()
                writer.write(request)
                status = await read_response(reader)
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    errors += 1
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    started = time.perf_counter()
    await asyncio.gather(*(connection_loop() for _ in range(concurrency)))
    return RoundResult(
        requests=len(latencies),
        errors=errors,
        seconds=time.perf_counter() - started,
        latencies=latencies,
    )


def wait_until_serving(*, port: int, process: subprocess.Popen[bytes]) -> None:
    request = build_request(port=port, request_id="bench-probe")
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(request)
            if s.recv(12).endswith(b"200"):
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing served 200 on port {port}")


def start_servers(
    *, app: str, concurrency: int, log_dir: pathlib.Path
) -> dict[str, tuple[int, subprocess.Popen[bytes]]]:
    sdk_port, runner_port = free_port(), free_port()
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sdk_script = SDK_ALONE_SCRIPT.format(app=app, port=sdk_port)
    commands = {
        "sdk alone": (sdk_port, [sys.executable, "-c", sdk_script]),
        "kubefal runner": (
            runner_port,
            runners.runner_command(app, port=runner_port, max_multiplexing=concurrency * 4),
        ),
    }
    servers: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    for name, (port, command) in commands.items():
        log = (log_dir / f"{name.replace(' ', '-')}.log").open("wb")
        servers[name] = (
            port,
            subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment),
        )
    for port, process in servers.values():
        wait_until_serving(port=port, process=process)
    return servers


async def wrapper_overhead_us(calls: int = 20000, repeats: int = 5) -> tuple[float, float]:
    """In-process cost of `RunnerASGI` itself: a no-op ASGI app called bare and wrapped (us)."""

    async def bare_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    runner_state = state.RunnerState(max_multiplexing=calls)
    runner_state.mark_ready()
    with open(os.devnull, "w") as devnull:
        wrapped = asgi.RunnerASGI(
            app=bare_app,
            runner_state=runner_state,
            log_capture=request_logs.RequestLogCapture(request_logs.RequestLogStore(sink=devnull)),
            app_info={},
            health_check=None,
        )

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Any) -> None:
            return None

        def scope() -> dict[str, Any]:
            return {
                "type": "http",
                "method": "POST",
                "path": "/",
                "headers": [(b"content-type", b"application/json"), (b"x-fal-request-id", b"r")],
            }

        timings: dict[str, list[float]] = {"bare": [], "wrapped": []}
        for _ in range(repeats):
            for name, app in (("bare", bare_app), ("wrapped", wrapped)):
                started = time.perf_counter()
                for _ in range(calls):
                    await app(scope(), receive, send)
                timings[name].append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(timings["bare"]), statistics.median(timings["wrapped"])


def percentile_ms(latencies: list[float], quantile: float) -> float:
    ordered = sorted(latencies)
    return 1000 * ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]


async def run_rounds(
    servers: dict[str, tuple[int, subprocess.Popen[bytes]]],
    *,
    concurrency: int,
    duration: float,
    rounds: int,
) -> dict[str, list[RoundResult]]:
    results: dict[str, list[RoundResult]] = {name: [] for name in servers}
    for port, _ in servers.values():
        await drive(port, concurrency=concurrency, seconds=WARMUP_SECONDS)
    for round_number in range(rounds):
        for name, (port, process) in servers.items():
            cpu_before = process_cpu_seconds(process.pid)
            result = await drive(port, concurrency=concurrency, seconds=duration)
            result.server_cpu_seconds = process_cpu_seconds(process.pid) - cpu_before
            results[name].append(result)
            print(
                f"  round {round_number + 1} {name:>15}: {result.requests / result.seconds:8.0f}"
                f" req/s  p50 {statistics.median(result.latencies) * 1000:6.2f} ms"
                f"  errors {result.errors}"
            )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", default=DEFAULT_APP)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per server (A/B/A/B...)")
    bench_results.add_option(parser)
    arguments = parser.parse_args()
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="kubefal-bench-") as log_dir:
        servers = start_servers(
            app=arguments.app, concurrency=arguments.concurrency, log_dir=pathlib.Path(log_dir)
        )
        try:
            print(
                f"echo app, concurrency {arguments.concurrency}, {arguments.rounds} x "
                f"{arguments.duration:g} s per server, alternating"
            )
            results = asyncio.run(
                run_rounds(
                    servers,
                    concurrency=arguments.concurrency,
                    duration=arguments.duration,
                    rounds=arguments.rounds,
                )
            )
        finally:
            for _, process in servers.values():
                process.terminate()
            for _, process in servers.values():
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()

    summary: dict[str, tuple[float, float, float, int, float]] = {}
    for name, rounds in results.items():
        requests = sum(result.requests for result in rounds)
        seconds = sum(result.seconds for result in rounds)
        latencies = [latency for result in rounds for latency in result.latencies]
        errors = sum(result.errors for result in rounds)
        cpu_per_request = sum(result.server_cpu_seconds for result in rounds) / requests
        summary[name] = (
            requests / seconds,
            percentile_ms(latencies, 0.5),
            percentile_ms(latencies, 0.99),
            errors,
            cpu_per_request,
        )
        print(
            f"{name:>15}: {summary[name][0]:8.0f} req/s  p50 {summary[name][1]:6.2f} ms"
            f"  p99 {summary[name][2]:6.2f} ms  server CPU {cpu_per_request * 1e6:6.0f} us/req"
            f"  errors {errors}"
        )
    baseline, candidate = summary["sdk alone"], summary["kubefal runner"]
    throughput_ratio = candidate[0] / baseline[0]
    latency_ratio = baseline[1] / candidate[1]
    cpu_ratio = baseline[4] / candidate[4]
    print(
        f"ratio runner/sdk: throughput {throughput_ratio:.3f}, p50 latency (sdk/runner) "
        f"{latency_ratio:.3f}, CPU efficiency (sdk CPU per request / runner's) {cpu_ratio:.3f}"
    )
    print(
        f"target throughput >= {TARGET_RATIO}: "
        f"{'met' if throughput_ratio >= TARGET_RATIO else 'NOT met'} "
        "(on a shared, loaded machine the CPU-per-request ratio is the steadier overhead figure)"
    )
    bare_us, wrapped_us = asyncio.run(wrapper_overhead_us())
    print(
        f"RunnerASGI in-process around a no-op ASGI app: {wrapped_us - bare_us:.1f} us per request "
        f"added ({bare_us:.1f} us bare, {wrapped_us:.1f} us wrapped); "
        f"the SDK alone spent {baseline[4] * 1e6:.0f} us of server CPU per request"
    )
    bench_results.write(
        arguments.json,
        "runner",
        {
            "concurrency": arguments.concurrency,
            "duration_s": arguments.duration,
            "rounds": arguments.rounds,
            "loadavg_before": list(load_before),
            "loadavg_after": list(os.getloadavg()),
            "servers": {
                name: {
                    "requests_per_s": row[0],
                    "p50_ms": row[1],
                    "p99_ms": row[2],
                    "errors": row[3],
                    "cpu_us_per_request": row[4] * 1e6,
                }
                for name, row in summary.items()
            },
            "throughput_ratio": throughput_ratio,
            "p50_ratio": latency_ratio,
            "cpu_ratio": cpu_ratio,
            "target_throughput_ratio": TARGET_RATIO,
            "wrapper_added_us": wrapped_us - bare_us,
        },
    )
    return 0 if candidate[3] == 0 and baseline[3] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
