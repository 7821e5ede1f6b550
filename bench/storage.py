"""How fast is the gateway's file path compared with writing and reading the backend directly?

Two gateways (``python -m kubefal_gateway``, subprocesses as they ship, REST listener on the
embedded store or on S3): one serving TLS (what fal_client reaches) and one on plain TCP (a
gateway behind a TLS-terminating proxy, where downloads from the embedded store are zero-copy
``sendfile``). Each takes 20 MB uploads on ``POST /files/upload`` and serves them back on the
returned URL; the baseline, measured in the same run on the same kind of backend, is this
script writing and reading the same bytes through the same ``BlobStore`` class in-process (no
HTTP, no TLS). The trials rotate between the three paths (and which goes first), and every
object is deleted after its trial, so all see the same machine: load, page cache, dirty-page
writeback. Reported per direction and listener: median MB/s, the ratio gateway / direct
(target >= 0.8 for 20 MB files), the same for the client's whole run (``wall``: curl's
process start and connection set-up included), the gateway process's CPU per MB moved (user +
system), curl's CPU per MB, and the load average before and after. Gateway MB/s is curl's
transfer time (``time_total - time_pretransfer``): the file path, not the connection set-up
(which ``wall`` includes). Last, what TLS alone costs on this CPU: Python's ``ssl`` (the
gateway's TLS) encrypting and decrypting 20 MB in-process, without sockets.

    python bench/storage.py                         # embedded store (local disk)
    python bench/storage.py --backend s3            # s3proxy on 127.0.0.1 (Java; jar cached)
    python bench/storage.py --size-mb 20 --trials 15
    python bench/storage.py --client httpx          # fal_client's HTTP library, one connection
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import pathlib
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psutil
import yaml

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench import results as bench_results  # noqa: E402
from kubefal_api import apikeys  # noqa: E402
from kubefal_gateway.storage import blobs, runtime  # noqa: E402
from testkit import certs, processes  # noqa: E402  (the repository root is not a package)
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
    """One upload and download through a gateway: transfer seconds (from the end of the
    connection set-up to the last byte, curl's ``time_total - time_pretransfer``), wall seconds
    (the whole client run, process start and handshake included), gateway CPU seconds and the
    client's CPU seconds (curl's; 0 with httpx)."""

    up: float
    up_wall: float
    down: float
    down_wall: float
    cpu_up: float
    cpu_down: float
    client_cpu_up: float = 0.0
    client_cpu_down: float = 0.0


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclasses.dataclass
class Gateway:
    """A gateway process of the bench: its REST base URL and its process (for CPU)."""

    name: str
    base: str
    process: subprocess.Popen[bytes]
    admin_port: int
    storage_spec: str

    @property
    def stats(self) -> psutil.Process:
        return psutil.Process(self.process.pid)


def through_gateway_curl(
    gateway: Gateway, ca: pathlib.Path, token: str, source: pathlib.Path, size: int
) -> GatewayTrial:
    """curl as the client (native TLS: the client costs little CPU, so the figures are the
    gateway's); curl reports its own phase times."""
    common = ["curl", "-sS", "--fail", "--cacert", str(ca), "--noproxy", "*"]
    timing = "\n%{time_pretransfer} %{time_total}"
    process = gateway.stats
    before, client_before = _cpu(process), _children_cpu()
    started = time.perf_counter()
    answer = subprocess.run(
        [
            *common, "-H", f"Authorization: Bearer {token}", "-H", "Content-Type: x/y",
            "-H", "Expect:", "--data-binary", f"@{source}", "-w", timing,
            f"{gateway.base}/files/upload",
        ],
        capture_output=True, check=True, text=True,
    )  # fmt: skip
    up_wall = time.perf_counter() - started
    middle, client_middle = _cpu(process), _children_cpu()
    body, _, times = answer.stdout.rpartition("\n")
    connected, total = (float(value) for value in times.split())
    url = json.loads(body)["access_url"]
    started = time.perf_counter()
    got = subprocess.run(
        [*common, "-o", "/dev/null", "-w", "%{size_download} %{time_pretransfer} %{time_total}",
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
        cpu_down=_cpu(process) - middle,
        client_cpu_up=client_middle - client_before,
        client_cpu_down=_children_cpu() - client_middle,
    )


def through_gateway_httpx(
    http: httpx.Client, gateway: Gateway, token: str, data: bytes
) -> GatewayTrial:
    """httpx as the client (what fal_client uses), on one kept-alive connection."""
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "x/y"}
    process = gateway.stats
    before = _cpu(process)
    started = time.perf_counter()
    answer = http.post(f"{gateway.base}/files/upload", content=data, headers=auth)
    up = time.perf_counter() - started
    middle = _cpu(process)
    answer.raise_for_status()
    url = answer.json()["access_url"]
    started = time.perf_counter()
    size = 0
    with http.stream("GET", url) as response:
        for chunk in response.iter_raw():
            size += len(chunk)
    down = time.perf_counter() - started
    assert size == len(data), size
    return GatewayTrial(up, up, down, down, middle - before, _cpu(process) - middle)


def start_gateway(
    name: str,
    workdir: pathlib.Path,
    storage_spec: str,
    config: pathlib.Path,
    tls: tuple[pathlib.Path, pathlib.Path] | None,
    max_bytes: int,
    environment: dict[str, str],
) -> Gateway:
    rest_port, admin_port = free_port(), free_port()
    tls_arguments = [] if tls is None else ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    process = subprocess.Popen(
        [
            sys.executable, "-m", "kubefal_gateway",
            "--queue-port", str(free_port()), "--run-port", str(free_port()),
            "--admin-port", str(admin_port), "--rest-port", str(rest_port), *tls_arguments,
            "--store", f"sqlite:///{workdir / f'queue-{name}.db'}",
            "--static-config", str(config), "--storage", storage_spec,
            "--storage-max-file-bytes", str(max_bytes), "--log-level", "warning",
        ],
        env=environment,
    )  # fmt: skip
    scheme = "http" if tls is None else "https"
    return Gateway(name, f"{scheme}://127.0.0.1:{rest_port}", process, admin_port, storage_spec)


def wait_ready(gateway: Gateway) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            answer = httpx.get(f"http://127.0.0.1:{gateway.admin_port}/readyz", trust_env=False)
            if answer.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or gateway.process.poll() is not None:
            raise SystemExit(f"the {gateway.name} gateway did not start")
        time.sleep(0.1)


def tls_cost(cert: pathlib.Path, key: pathlib.Path, ca: pathlib.Path, size: int) -> dict[str, Any]:
    """Python's ssl (OpenSSL, as the gateway's event loop uses it) encrypting `size` bytes on
    one side and decrypting them on the other, in memory: the CPU time (not wall time: the
    machine may be loaded) TLS alone costs per MB here, with the cipher a default client
    negotiates."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(str(cert), str(key))
    client_context = ssl.create_default_context(cafile=str(ca))
    pipes = [ssl.MemoryBIO() for _ in range(4)]
    server = server_context.wrap_bio(pipes[0], pipes[1], server_side=True)
    client = client_context.wrap_bio(pipes[2], pipes[3], server_hostname="127.0.0.1")
    for _ in range(10):  # the handshake, driven by hand
        for endpoint in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                endpoint.do_handshake()
        pipes[0].write(pipes[3].read())
        pipes[2].write(pipes[1].read())
    block = os.urandom(1024 * 1024)
    times: dict[str, float] = {}
    for name, writer, out, into, reader in (
        ("encrypt", server, pipes[1], pipes[2], client),
        ("decrypt", client, pipes[3], pipes[0], server),
    ):
        encrypt = decrypt = 0.0
        for _ in range(size // len(block)):
            started = time.process_time()
            writer.write(block)
            records = out.read()
            middle = time.process_time()
            into.write(records)
            got = 0
            while got < len(block):
                got += len(reader.read(len(block)))
            encrypt += middle - started
            decrypt += time.process_time() - middle
        times[name] = encrypt if name == "encrypt" else decrypt
    megabytes = (size // len(block)) * len(block) / 1e6
    return {
        "cipher": str((server.cipher() or ("?",))[0]),
        "encrypt_ms_per_mb": 1000 * times["encrypt"] / megabytes,
        "decrypt_ms_per_mb": 1000 * times["decrypt"] / megabytes,
    }


def main() -> None:
    arguments = parse_arguments()
    data = os.urandom(arguments.size_mb * 1024 * 1024)
    megabytes = len(data) / 1e6
    with (
        tempfile.TemporaryDirectory(prefix="bench-storage-") as temporary,
        contextlib.ExitStack() as cleanup,  # what started is stopped, whatever fails after it
    ):
        workdir = pathlib.Path(temporary)
        environment = dict(os.environ)
        if arguments.backend == "s3":
            from tests.gateway import s3server

            s3 = s3server.S3Proxy(workdir).start()
            cleanup.callback(s3.stop)
            s3.create_bucket("bench")
            environment.update(s3.env())
            os.environ.update(s3.env())
            specs = {
                name: f"s3://bench/{name}?endpoint={s3.endpoint}"
                for name in ("tls", "plain", "direct")
            }
        else:
            specs = {name: str(workdir / f"{name}-files") for name in ("tls", "plain", "direct")}
        ca, cert, tls_key = certs.issue_serving_certificate(
            workdir, dns_names=["localhost"], ip_addresses=["127.0.0.1"]
        )
        key = apikeys.generate_key()
        config = workdir / "static.yaml"
        config.write_text(yaml.safe_dump({"apps": [], "keys": [{"key": str(key)}]}))
        gateways: list[Gateway] = []
        for name, tls in (("tls", (cert, tls_key)), ("plain", None)):
            gateway = start_gateway(
                name, workdir, specs[name], config, tls, len(data) * 2, environment
            )
            gateways.append(gateway)
            cleanup.callback(processes.stop, gateway.process)
        trials: dict[str, list[GatewayTrial]] = {gateway.name: [] for gateway in gateways}
        direct_times: list[tuple[float, float]] = []
        for gateway in gateways:
            wait_ready(gateway)
        store = runtime.open_store(specs["direct"])
        gateway_stores = {
            gateway.name: runtime.open_store(specs[gateway.name]) for gateway in gateways
        }
        source = workdir / "upload.bin"
        source.write_bytes(data)
        http = httpx.Client(verify=str(ca), timeout=300, trust_env=False)
        tokens = {
            gateway.name: http.post(
                f"{gateway.base}/storage/auth/token",
                headers={"Authorization": f"Key {key}"},
                json={},
            ).json()["token"]
            for gateway in gateways
        }

        def gateway_once(gateway: Gateway) -> GatewayTrial:
            if arguments.client == "curl":
                return through_gateway_curl(gateway, ca, tokens[gateway.name], source, len(data))
            return through_gateway_httpx(http, gateway, tokens[gateway.name], data)

        loop = asyncio.new_event_loop()

        def clean() -> None:
            for gateway_store in gateway_stores.values():
                loop.run_until_complete(delete_uploads(gateway_store))

        # warm-up of every path, then the trials with the order rotated, so all see the
        # same machine: load, page cache, dirty-page writeback
        loop.run_until_complete(direct_once(store, data, 0))
        for gateway in gateways:
            gateway_once(gateway)
        clean()
        load_before = os.getloadavg()[0]
        paths = ["direct", *(gateway.name for gateway in gateways)]
        for trial in range(arguments.trials):
            shift = trial % len(paths)
            for path in paths[shift:] + paths[:shift]:
                if path == "direct":
                    direct_times.append(loop.run_until_complete(direct_once(store, data, trial)))
                else:
                    gateway = next(g for g in gateways if g.name == path)
                    trials[path].append(gateway_once(gateway))
            clean()
        load_after = os.getloadavg()[0]
        http.close()
        loop.run_until_complete(store.close())
        for gateway_store in gateway_stores.values():
            loop.run_until_complete(gateway_store.close())
        loop.close()
        cleanup.close()  # the gateways (and s3proxy) stopped before TLS is timed alone
        cost = tls_cost(cert, tls_key, ca, len(data))

    def rate(seconds: list[float]) -> float:
        return megabytes / statistics.median(seconds)

    total = megabytes * arguments.trials
    print(
        f"backend {arguments.backend}, client {arguments.client}, "
        f"{arguments.size_mb} MB files, {arguments.trials} interleaved trials, "
        f"load average {load_before:.1f} -> {load_after:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"{'':20}{'direct MB/s':>13}{'gateway MB/s':>14}{'ratio':>7}"
        f"{'gw MB/s wall':>14}{'ratio wall':>12}{'gw CPU ms/MB':>14}{'client ms/MB':>14}"
    )
    figures: dict[str, dict[str, float]] = {}
    for direction in ("upload", "download"):
        index = 0 if direction == "upload" else 1
        direct_seconds = [t[index] for t in direct_times]
        for gateway in gateways:
            rows = trials[gateway.name]
            if direction == "upload":
                seconds = [g.up for g in rows]
                wall = [g.up_wall for g in rows]
                cpu = sum(g.cpu_up for g in rows)
                client_cpu = sum(g.client_cpu_up for g in rows)
            else:
                seconds = [g.down for g in rows]
                wall = [g.down_wall for g in rows]
                cpu = sum(g.cpu_down for g in rows)
                client_cpu = sum(g.client_cpu_down for g in rows)
            ratio = rate(seconds) / rate(direct_seconds)
            ratio_wall = rate(wall) / rate(direct_seconds)
            label = f"{direction} ({gateway.name})"
            print(
                f"{label:20}{rate(direct_seconds):13.1f}{rate(seconds):14.1f}{ratio:7.2f}"
                f"{rate(wall):14.1f}{ratio_wall:12.2f}{1000 * cpu / total:14.2f}"
                f"{1000 * client_cpu / total:14.2f}"
            )
            # "upload"/"download" are the TLS rows (what fal_client reaches); "_plain" the
            # plain-TCP listener's
            key_name = direction if gateway.name == "tls" else f"{direction}_plain"
            figures[key_name] = {
                "direct_mb_per_s": rate(direct_seconds),
                "gateway_mb_per_s": rate(seconds),
                "ratio": ratio,
                "gateway_wall_mb_per_s": rate(wall),
                "ratio_wall": ratio_wall,
                "gateway_cpu_ms_per_mb": 1000 * cpu / total,
                "client_cpu_ms_per_mb": 1000 * client_cpu / total,
            }
    print(
        f"TLS alone (Python ssl in memory, CPU time, {cost['cipher']}): encrypt "
        f"{cost['encrypt_ms_per_mb']:.2f} ms/MB, decrypt {cost['decrypt_ms_per_mb']:.2f} ms/MB"
    )
    # One connection's records are sealed and opened in order on one core, so the gateway's
    # TLS side alone bounds a TLS transfer (sockets, HTTP and the disk all cost more on top).
    ceilings: dict[str, dict[str, float]] = {}
    for direction, work in (("upload", "decrypt"), ("download", "encrypt")):
        bound = 1000 / cost[f"{work}_ms_per_mb"]
        ceilings[direction] = {
            "mb_per_s": bound,
            "ratio": bound / figures[direction]["direct_mb_per_s"],
        }
        print(
            f"TLS ceiling, {direction} (the gateway's {work} alone, nothing else): "
            f"{bound:.0f} MB/s, ratio {ceilings[direction]['ratio']:.2f} against the direct path"
        )
    bench_results.write(
        arguments.json,
        "storage",
        {
            "backend": arguments.backend,
            "client": arguments.client,
            "size_mb": arguments.size_mb,
            "trials": arguments.trials,
            "load_before": load_before,
            "load_after": load_after,
            "tls_cost": cost,
            "tls_ceiling": ceilings,
            **figures,
        },
    )


if __name__ == "__main__":
    main()
