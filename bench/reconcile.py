"""How fast does the operator turn FalApps into Deployments, and at what memory cost?

Creates N FalApps (default 500) in a fresh namespace of a real control plane and measures
the time until every app has its Deployment and a status for its current generation
(``status.observedGeneration == metadata.generation``). The baseline, measured in the same
run on the same API server, is creating the same N Deployments directly (the operator's own
rendering, without owner references), with the same client and concurrency: the ratio says
what the operator costs on top of the writes it cannot avoid. It also prints the operator's
peak RSS and CPU time (sampled with psutil).

    python bench/reconcile.py                      # starts the local control plane
    python bench/reconcile.py --n 100 --kubeconfig .kubefal/cluster/kubeconfig
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from kubefal_api import crds, machines, v1alpha1
from kubefal_operator.render import common, deployment

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from e2e import cluster as local_cluster  # noqa: E402  (the repository root is not a package)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=500, help="FalApps to create (default 500)")
    parser.add_argument(
        "--kubeconfig", default=None, help="use this cluster instead of starting one"
    )
    parser.add_argument("--workers", type=int, default=16, help="concurrent create calls")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before giving up")
    return parser.parse_args()


@contextlib.contextmanager
def control_plane(kubeconfig: str | None) -> Iterator[pathlib.Path]:
    if kubeconfig:
        yield pathlib.Path(kubeconfig)
        return
    running = local_cluster.LocalCluster.attach()
    if running is not None:
        yield running.kubeconfig
        return
    with (
        tempfile.TemporaryDirectory(prefix="kubefal-bench-") as state,
        local_cluster.LocalCluster(pathlib.Path(state)) as started,
    ):
        yield started.kubeconfig


def install_crd(api_client: k8s.ApiClient) -> None:
    crd = yaml.safe_load((REPO_ROOT / "crds" / crds.CRD_FILENAME).read_text(encoding="utf-8"))
    extensions = k8s.ApiextensionsV1Api(api_client)
    extensions.patch_custom_resource_definition(
        name=v1alpha1.CRD_NAME,
        body=crd,
        field_manager="kubefal-bench",
        force=True,
        _content_type="application/apply-patch+yaml",
    )
    objects = k8s.CustomObjectsApi(api_client)
    wait_until(
        lambda: (
            objects.list_cluster_custom_object(
                v1alpha1.GROUP, v1alpha1.VERSION, v1alpha1.PLURAL, limit=1
            )
            is not None
        ),
        timeout=60,
    )


def wait_until(predicate: Callable[[], object], *, timeout: float, interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except (k8s.ApiException, urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout:.0f}s")
        time.sleep(interval)


def falapp(name: str) -> dict[str, Any]:
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "metadata": {"name": name},
        "spec": {"app": "app.py::Bench", "machineTypes": ["XS"]},
    }


def direct_deployment(name: str, namespace: str) -> dict[str, Any]:
    """What the operator renders for the same app, as an unowned Deployment."""
    app = v1alpha1.FalApp.from_kube(
        {**falapp(name), "metadata": {"name": name, "namespace": namespace, "uid": "bench"}}
    )
    manifest = deployment.deployment(
        app, catalogue=machines.default_catalogue(), settings=common.RenderSettings()
    )
    manifest["metadata"].pop("ownerReferences")
    # Other labels, so the operator (if running) does not take these for its children.
    labels = {"bench.kubefal.io/app": name}
    manifest["metadata"]["labels"] = labels
    manifest["spec"]["selector"] = {"matchLabels": labels}
    manifest["spec"]["template"]["metadata"]["labels"] = labels
    manifest["spec"]["replicas"] = 0
    return manifest


def create_all(create: Callable[[int], object], *, n: int, workers: int) -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(create, index) for index in range(n)]:
            future.result()


class PeakMemory:
    """Samples a process's RSS and CPU time in a background thread."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak_rss = 0
        self.cpu_seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
                times = self.process.cpu_times()
                self.cpu_seconds = times.user + times.system
            self._stop.wait(0.1)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> int:
    arguments = parse_arguments()
    n = arguments.n
    with control_plane(arguments.kubeconfig) as kubeconfig:
        api_client = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig)
        )
        api_client.configuration.connection_pool_maxsize = arguments.workers
        install_crd(api_client)
        core, apps = k8s.CoreV1Api(api_client), k8s.AppsV1Api(api_client)
        objects = k8s.CustomObjectsApi(api_client)
        suffix = uuid.uuid4().hex[:5]
        direct_ns, operator_ns = f"bench-direct-{suffix}", f"bench-operator-{suffix}"
        for namespace in (direct_ns, operator_ns):
            core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
        operator: subprocess.Popen[bytes] | None = None
        try:
            # Baseline: the same Deployments, created directly, before the operator runs.
            started = time.perf_counter()
            create_all(
                lambda index: apps.create_namespaced_deployment(
                    direct_ns,
                    direct_deployment(f"app-{index}", direct_ns),  # type: ignore[arg-type]
                ),
                n=n,
                workers=arguments.workers,
            )
            direct_seconds = time.perf_counter() - started

            liveness, metrics_port = local_cluster.free_port(), local_cluster.free_port()
            log_path = pathlib.Path(tempfile.gettempdir()) / f"kubefal-bench-operator-{suffix}.log"
            with log_path.open("wb") as log:
                operator = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "kubefal_operator",
                        "--quiet",
                        "--liveness",
                        f"http://127.0.0.1:{liveness}/healthz",
                    ],
                    env={
                        **os.environ,
                        "KUBECONFIG": str(kubeconfig),
                        "KUBEFAL_OPERATOR_METRICS_HOST": "127.0.0.1",
                        "KUBEFAL_OPERATOR_METRICS_PORT": str(metrics_port),
                    },
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            wait_until(
                lambda: (
                    urllib.request.urlopen(f"http://127.0.0.1:{liveness}/healthz", timeout=5).status
                    == 200
                ),
                timeout=120,
            )
            with PeakMemory(operator.pid) as sampler:
                idle_rss = sampler.process.memory_info().rss
                idle_cpu = sum(sampler.process.cpu_times()[:2])
                started = time.perf_counter()
                create_all(
                    lambda index: objects.create_namespaced_custom_object(
                        v1alpha1.GROUP,
                        v1alpha1.VERSION,
                        operator_ns,
                        v1alpha1.PLURAL,
                        falapp(f"app-{index}"),
                    ),
                    n=n,
                    workers=arguments.workers,
                )
                created_seconds = time.perf_counter() - started

                def observed() -> bool:
                    # From the watch cache (resourceVersion 0): polling must not load the
                    # API server it measures.
                    listing: Any = objects.list_namespaced_custom_object(
                        v1alpha1.GROUP,
                        v1alpha1.VERSION,
                        operator_ns,
                        v1alpha1.PLURAL,
                        resource_version="0",
                    )
                    current = [
                        item
                        for item in listing["items"]
                        if (item.get("status") or {}).get("observedGeneration")
                        == item["metadata"]["generation"]
                    ]
                    return bool(len(current) == n)

                def deployed() -> bool:
                    listing = apps.list_namespaced_deployment(operator_ns, resource_version="0")
                    return bool(len(listing.items) == n)

                wait_until(observed, timeout=arguments.timeout, interval=1.0)
                wait_until(deployed, timeout=arguments.timeout, interval=1.0)
                operator_seconds = time.perf_counter() - started
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{metrics_port}/metrics", timeout=10
                ) as response:
                    exposition = response.read().decode()
            cpu_seconds = sampler.cpu_seconds - idle_cpu
        finally:
            if operator is not None:
                operator.terminate()
                try:
                    operator.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    operator.kill()
            for namespace in (direct_ns, operator_ns):
                with contextlib.suppress(k8s.ApiException):
                    core.delete_namespace(namespace, propagation_policy="Background")

    operator_rate, direct_rate = n / operator_seconds, n / direct_seconds
    print(f"FalApps: {n} (XS, minConcurrency 0), {arguments.workers} concurrent create calls")
    print(
        f"operator: {operator_seconds:.1f} s until every app had its Deployment and an observed "
        f"status = {operator_rate:.1f} apps/s (the creates alone took {created_seconds:.1f} s)"
    )
    print(f"direct:   {direct_seconds:.1f} s to create {n} Deployments = {direct_rate:.1f} /s")
    print(f"ratio operator/direct: {operator_rate / direct_rate:.2f}")
    print(
        f"operator RSS: idle {idle_rss / 2**20:.0f} MiB, peak {sampler.peak_rss / 2**20:.0f} MiB; "
        f"CPU {cpu_seconds:.1f} s = {1000 * cpu_seconds / n:.1f} ms per app"
    )
    status_writes = sum(
        float(line.split()[-1])
        for line in exposition.splitlines()
        if line.startswith("kubefal_operator_status_writes_total")
    )
    changed = sum(
        float(line.split()[-1])
        for line in exposition.splitlines()
        if line.startswith("kubefal_operator_reconciles_total") and 'result="changed"' in line
    )
    print(
        f"operator writes: {status_writes / n:.2f} status updates and {changed / n:.2f} "
        "reconciles that applied something, per app"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
