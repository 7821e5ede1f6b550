"""How fast is the gateway's file path compared with writing and reading the backend directly?

The gateway (``python -m kubefal_gateway``, a subprocess as it ships, TLS, REST listener on the
embedded store or on S3) takes 20 MB uploads on ``POST /files/upload`` and serves them back on
the returned URL; the baseline, measured in the same run on the same kind of backend, is this
script writing and reading the same bytes through the same ``BlobStore`` class in-process (no
HTTP, no TLS). The trials alternate between the two paths (and which goes first), and every
object is deleted after its trial, so both see the same machine: load, page cache, dirty-page
writeback. Reported per direction: median MB/s of each, the ratio gateway / direct (target
>= 0.8 for 20 MB files), the same for the client's whole run (``wall``: curl's process start
and TLS handshake included), the gateway process's CPU per MB moved (user + system) and the
load average before and after. Gateway MB/s is curl's transfer time (``time_total -
time_appconnect``): the file path, not the connection set-up (which ``wall`` includes).

    python bench/storage.py                         # embedded store (local disk)
    python bench/storage.py --backend s3            # s3proxy on 127.0.0.1 (Java; jar cached)
    python bench/storage.py --size-mb 20 --trials 15
    python bench/storage.py --client httpx          # fal_client's HTTP library, one connection
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator

import httpx
import psutil
import yaml

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench import results as bench_results  # noqa: E402
from kubefal_api import apikeys  # noqa: E402
from kubefal_gateway.storage import blobs, runtime  # noqa: E402
from testkit import certs  # noqa: E402  (the repository root is not a package)
from testkit.ports import free_port  # noqa: E402  (the repository root is not a package)

CHUNK = 64 * 1024


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10, help="uploads and downloads per path")
    parser.add_argument("--size-mb", type=int, default=20, help="file size in MB")
    parser.add_argument("--backend", choices=["local", "s3"], default="local")
    parser.add_argument(
        "--client",
        choices=["curl", "httpx"],
        default="curl",
        help="HTTP client of the gateway path (curl: native TLS; httpx: what fal_client uses)",
    )
    bench_results.add_option(parser)
    return parser.parse_args()


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]


async def direct_once(store: blobs.BlobStore, data: bytes, trial: int) -> tuple[float, float]:
    """One direct write and read of ``data`` through the backend in-process; the object is
    deleted afterwards so the trials do not pile up dirty pages (or bucket objects)."""
    key = f"bench/direct{trial:04d}/file.bin"
    started = time.perf_counter()
    await store.write(key, _chunks(data), limit=len(data), meta={"type": "x/y"})
    written = time.perf_counter() - started
    started = time.perf_counter()
    size = 0
    async for chunk in store.read(key):
        size += len(chunk)
    read = time.perf_counter() - started
    assert size == len(data)
    await store.delete(key)
    return written, read


async def delete_uploads(store: blobs.BlobStore) -> None:
    """Remove what the gateway stored in a trial (not its signing key or records)."""
    keys = [key async for key in store.list("") if not key.startswith("_kubefal/")]
    for key in keys:
        await store.delete(key)


@dataclasses.dataclass
class GatewayTrial:
    """One upload and download through the gateway: transfer seconds (from the end of the TLS
    handshake to the last byte, curl's ``time_total - time_appconnect``), wall seconds (the
    whole client run, process start and handshake included) and gateway CPU seconds."""

    up: float
    up_wall: float
    down: float
    down_wall: float
    cpu_up: float
    cpu_down: float


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def through_gateway_curl(
    base: str, ca: pathlib.Path, token: str, source: pathlib.Path, size: int,
    gateway: psutil.Process,
) -> GatewayTrial:  # fmt: skip
    """curl as the client (native TLS: the client costs little CPU, so the figures are the
    gateway's); curl reports its own phase times."""
    common = ["curl", "-sS", "--fail", "--cacert", str(ca), "--noproxy", "*"]
    timing = "\n%{time_appconnect} %{time_total}"
    before = _cpu(gateway)
    started = time.perf_counter()
    answer = subprocess.run(
        [
            *common, "-H", f"Authorization: Bearer {token}", "-H", "Content-Type: x/y",
            "-H", "Expect:", "--data-binary", f"@{source}", "-w", timing,
            f"{base}/files/upload",
        ],
        capture_output=True, check=True, text=True,
    )  # fmt: skip
    up_wall = time.perf_counter() - started
    middle = _cpu(gateway)
    body, _, times = answer.stdout.rpartition("\n")
    connected, total = (float(value) for value in times.split())
    url = json.loads(body)["access_url"]
    started = time.perf_counter()
    got = subprocess.run(
        [*common, "-o", "/dev/null", "-w", "%{size_download} %{time_appconnect} %{time_total}",
         url],
        capture_output=True, check=True, text=True,
    )  # fmt: skip
    down_wall = time.perf_counter() - started
    downloaded, down_connected, down_total = got.stdout.split()
    assert int(downloaded) == size, got.stdout
    return GatewayTrial(
        up=total - connected,
        up_wall=up_wall,
        down=float(down_total) - float(down_connected),
        down_wall=down_wall,
        cpu_up=middle - before,
        cpu_down=_cpu(gateway) - middle,
    )


def through_gateway_httpx(
    http: httpx.Client, base: str, token: str, data: bytes, gateway: psutil.Process
) -> GatewayTrial:
    """httpx as the client (what fal_client uses), on one kept-alive connection."""
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "x/y"}
    before = _cpu(gateway)
    started = time.perf_counter()
    answer = http.post(f"{base}/files/upload", content=data, headers=auth)
    up = time.perf_counter() - started
    middle = _cpu(gateway)
    answer.raise_for_status()
    url = answer.json()["access_url"]
    started = time.perf_counter()
    size = 0
    with http.stream("GET", url) as response:
        for chunk in response.iter_raw():
            size += len(chunk)
    down = time.perf_counter() - started
    assert size == len(data), size
    return GatewayTrial(up, up, down, down, middle - before, _cpu(gateway) - middle)


def main() -> None:
    arguments = parse_arguments()
    data = os.urandom(arguments.size_mb * 1024 * 1024)
    megabytes = len(data) / 1e6
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as temporary:
        workdir = pathlib.Path(temporary)
        s3 = None
        environment = dict(os.environ)
        if arguments.backend == "s3":
            from tests.gateway import s3server

            s3 = s3server.S3Proxy(workdir).start()
            s3.create_bucket("bench")
            environment.update(s3.env())
            os.environ.update(s3.env())
            storage_spec = f"s3://bench/gateway?endpoint={s3.endpoint}"
            direct_spec = f"s3://bench/direct?endpoint={s3.endpoint}"
        else:
            storage_spec = str(workdir / "gateway-files")
            direct_spec = str(workdir / "direct-files")
        ca, cert, tls_key = certs.issue_serving_certificate(
            workdir, dns_names=["localhost"], ip_addresses=["127.0.0.1"]
        )
        key = apikeys.generate_key()
        config = workdir / "static.yaml"
        config.write_text(yaml.safe_dump({"apps": [], "keys": [{"key": str(key)}]}))
        rest_port, admin_port = free_port(), free_port()
        process = subprocess.Popen(
            [
                sys.executable, "-m", "kubefal_gateway",
                "--queue-port", str(free_port()), "--run-port", str(free_port()),
                "--admin-port", str(admin_port), "--rest-port", str(rest_port),
                "--tls-cert", str(cert), "--tls-key", str(tls_key),
                "--store", f"sqlite:///{workdir / 'queue.db'}",
                "--static-config", str(config), "--storage", storage_spec,
                "--storage-max-file-bytes", str(len(data) * 2), "--log-level", "warning",
            ],
            env=environment,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{admin_port}/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit("the gateway did not start")
                time.sleep(0.1)
            store = runtime.open_store(direct_spec)
            gateway_store = runtime.open_store(storage_spec)
            gateway = psutil.Process(process.pid)
            base = f"https://127.0.0.1:{rest_port}"
            source = workdir / "upload.bin"
            source.write_bytes(data)
            http = httpx.Client(verify=str(ca), timeout=300, trust_env=False)
            token = http.post(
                f"{base}/storage/auth/token", headers={"Authorization": f"Key {key}"}, json={}
            ).json()["token"]

            def gateway_once() -> GatewayTrial:
                if arguments.client == "curl":
                    return through_gateway_curl(base, ca, token, source, len(data), gateway)
                return through_gateway_httpx(http, base, token, data, gateway)

            loop = asyncio.new_event_loop()
            # warm-up of both paths, then the trials interleaved (alternating which path goes
            # first), so both see the same machine: load, page cache, dirty-page writeback
            loop.run_until_complete(direct_once(store, data, 0))
            gateway_once()
            loop.run_until_complete(delete_uploads(gateway_store))
            direct_times: list[tuple[float, float]] = []
            gateway_trials: list[GatewayTrial] = []
            load_before = os.getloadavg()[0]
            for trial in range(arguments.trials):
                if trial % 2:
                    gateway_trials.append(gateway_once())
                    direct_times.append(loop.run_until_complete(direct_once(store, data, trial)))
                else:
                    direct_times.append(loop.run_until_complete(direct_once(store, data, trial)))
                    gateway_trials.append(gateway_once())
                loop.run_until_complete(delete_uploads(gateway_store))
            load_after = os.getloadavg()[0]
            http.close()
            loop.run_until_complete(store.close())
            loop.run_until_complete(gateway_store.close())
            loop.close()
        finally:
            process.terminate()
            process.wait(timeout=30)
            if s3 is not None:
                s3.stop()

    def rate(seconds: list[float]) -> float:
        return megabytes / statistics.median(seconds)

    total = megabytes * arguments.trials
    print(
        f"backend {arguments.backend}, client {arguments.client}, "
        f"{arguments.size_mb} MB files, {arguments.trials} interleaved trials, "
        f"load average {load_before:.1f} -> {load_after:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"{'':10}{'direct MB/s':>13}{'gateway MB/s':>14}{'ratio':>7}"
        f"{'gw MB/s wall':>14}{'ratio wall':>12}{'gw CPU ms/MB':>14}"
    )
    figures: dict[str, dict[str, float]] = {}
    directions = (
        ("upload", [t[0] for t in direct_times], [g.up for g in gateway_trials],
         [g.up_wall for g in gateway_trials], sum(g.cpu_up for g in gateway_trials)),
        ("download", [t[1] for t in direct_times], [g.down for g in gateway_trials],
         [g.down_wall for g in gateway_trials], sum(g.cpu_down for g in gateway_trials)),
    )  # fmt: skip
    for name, direct_seconds, gateway_seconds, wall_seconds, cpu in directions:
        ratio = rate(gateway_seconds) / rate(direct_seconds)
        ratio_wall = rate(wall_seconds) / rate(direct_seconds)
        print(
            f"{name:10}{rate(direct_seconds):13.1f}{rate(gateway_seconds):14.1f}{ratio:7.2f}"
            f"{rate(wall_seconds):14.1f}{ratio_wall:12.2f}{1000 * cpu / total:14.2f}"
        )
        figures[name] = {
            "direct_mb_per_s": rate(direct_seconds),
            "gateway_mb_per_s": rate(gateway_seconds),
            "ratio": ratio,
            "gateway_wall_mb_per_s": rate(wall_seconds),
            "ratio_wall": ratio_wall,
            "gateway_cpu_ms_per_mb": 1000 * cpu / total,
        }
    bench_results.write(
        arguments.json,
        "storage",
        {
            "backend": arguments.backend,
            "client": arguments.client,
            "size_mb": arguments.size_mb,
            "trials": arguments.trials,
            **figures,
        },
    )


if __name__ == "__main__":
    main()
