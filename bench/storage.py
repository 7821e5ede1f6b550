"""How fast is the gateway's file path compared with writing and reading the backend directly?

The gateway (``python -m kubefal_gateway``, a subprocess as it ships, TLS, REST listener on the
embedded store or on S3) takes 20 MB uploads on ``POST /files/upload`` and serves them back on
the returned URL; the baseline, measured in the same run on the same kind of backend, is this
script writing and reading the same bytes through the same ``BlobStore`` class in-process (no
HTTP, no TLS). Reported per direction: median MB/s of each, the ratio gateway / direct (target
>= 0.8 for 20 MB files) and the gateway process's CPU seconds per MB moved (user + system).

    python bench/storage.py                         # embedded store (local disk)
    python bench/storage.py --backend s3            # s3proxy on 127.0.0.1 (Java; jar cached)
    python bench/storage.py --size-mb 20 --trials 15
"""

from __future__ import annotations

import argparse
import asyncio
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


async def direct(
    store: blobs.BlobStore, data: bytes, trials: int
) -> tuple[list[float], list[float]]:
    writes, reads = [], []
    for trial in range(trials):
        key = f"bench/direct{trial:04d}/file.bin"
        started = time.perf_counter()
        await store.write(key, _chunks(data), limit=len(data), meta={"type": "x/y"})
        writes.append(time.perf_counter() - started)
        started = time.perf_counter()
        size = 0
        async for chunk in store.read(key):
            size += len(chunk)
        reads.append(time.perf_counter() - started)
        assert size == len(data)
    return writes, reads


def through_gateway_curl(
    base: str,
    ca: pathlib.Path,
    key: apikeys.ApiKey,
    source: pathlib.Path,
    size: int,
    trials: int,
    gateway: psutil.Process,
) -> tuple[list[float], list[float], float, float]:
    """The same with curl as the client (native TLS: the client costs little CPU, so the
    numbers are the gateway's)."""
    writes, reads = [], []
    cpu_up = cpu_down = 0.0
    with httpx.Client(verify=str(ca), timeout=300, trust_env=False) as http:
        token = http.post(
            f"{base}/storage/auth/token", headers={"Authorization": f"Key {key}"}, json={}
        ).json()["token"]
    common = ["curl", "-sS", "--fail", "--cacert", str(ca), "--noproxy", "*"]
    for _ in range(trials):
        before = gateway.cpu_times()
        started = time.perf_counter()
        answer = subprocess.run(
            [
                *common, "-H", f"Authorization: Bearer {token}", "-H", "Content-Type: x/y",
                "-H", "Expect:", "--data-binary", f"@{source}", f"{base}/files/upload",
            ],
            capture_output=True, check=True,
        )  # fmt: skip
        writes.append(time.perf_counter() - started)
        after = gateway.cpu_times()
        cpu_up += (after.user + after.system) - (before.user + before.system)
        url = json.loads(answer.stdout)["access_url"]
        before = after
        started = time.perf_counter()
        got = subprocess.run(
            [*common, "-o", "/dev/null", "-w", "%{size_download}", url],
            capture_output=True, check=True, text=True,
        )  # fmt: skip
        reads.append(time.perf_counter() - started)
        after = gateway.cpu_times()
        cpu_down += (after.user + after.system) - (before.user + before.system)
        assert int(got.stdout) == size, got.stdout
    return writes, reads, cpu_up, cpu_down


def through_gateway(
    base: str,
    ca: pathlib.Path,
    key: apikeys.ApiKey,
    data: bytes,
    trials: int,
    gateway: psutil.Process,
) -> tuple[list[float], list[float], float, float]:
    writes, reads = [], []
    cpu_up = cpu_down = 0.0
    with httpx.Client(verify=str(ca), timeout=300, trust_env=False) as http:
        token = http.post(
            f"{base}/storage/auth/token", headers={"Authorization": f"Key {key}"}, json={}
        ).json()
        auth = {"Authorization": f"Bearer {token['token']}", "Content-Type": "x/y"}
        for _ in range(trials):
            before = gateway.cpu_times()
            started = time.perf_counter()
            answer = http.post(f"{base}/files/upload", content=data, headers=auth)
            writes.append(time.perf_counter() - started)
            after = gateway.cpu_times()
            cpu_up += (after.user + after.system) - (before.user + before.system)
            answer.raise_for_status()
            url = answer.json()["access_url"]
            before = after
            started = time.perf_counter()
            size = 0
            with http.stream("GET", url) as response:
                for chunk in response.iter_raw():
                    size += len(chunk)
            reads.append(time.perf_counter() - started)
            after = gateway.cpu_times()
            cpu_down += (after.user + after.system) - (before.user + before.system)
            assert size == len(data), size
    return writes, reads, cpu_up, cpu_down


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
            # warm-up of both paths
            asyncio.run(direct(store, data, 1))
            gateway = psutil.Process(process.pid)
            base = f"https://127.0.0.1:{rest_port}"
            source = workdir / "upload.bin"
            source.write_bytes(data)

            def gateway_path(trials: int) -> tuple[list[float], list[float], float, float]:
                if arguments.client == "curl":
                    return through_gateway_curl(base, ca, key, source, len(data), trials, gateway)
                return through_gateway(base, ca, key, data, trials, gateway)

            gateway_path(1)
            direct_writes, direct_reads = asyncio.run(direct(store, data, arguments.trials))
            gw_writes, gw_reads, cpu_up, cpu_down = gateway_path(arguments.trials)
            asyncio.run(store.close())
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
        f"{arguments.size_mb} MB files, {arguments.trials} trials"
    )
    print(f"{'':10}{'direct MB/s':>14}{'gateway MB/s':>14}{'ratio':>8}{'gw CPU ms/MB':>14}")
    figures: dict[str, dict[str, float]] = {}
    for name, direct_times, gateway_times, cpu in (
        ("upload", direct_writes, gw_writes, cpu_up),
        ("download", direct_reads, gw_reads, cpu_down),
    ):
        ratio = rate(gateway_times) / rate(direct_times)
        print(
            f"{name:10}{rate(direct_times):14.1f}{rate(gateway_times):14.1f}{ratio:8.2f}"
            f"{1000 * cpu / total:14.2f}"
        )
        figures[name] = {
            "direct_mb_per_s": rate(direct_times),
            "gateway_mb_per_s": rate(gateway_times),
            "ratio": ratio,
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
