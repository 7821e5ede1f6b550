"""How fast does the operator turn FalApps into their children, at what memory and API cost?

Creates N FalApps (default 500) in a fresh namespace of a real control plane and measures
the time until every app has its Deployment and a status for its current generation
(``status.observedGeneration == metadata.generation``).

The baseline ("direct"), measured in the same run on the same API server with the same
client and concurrency, makes the writes the operator cannot avoid, per app, in order:
create the FalApp, create its Deployment, Service, NetworkPolicy (and PodDisruptionBudget
when the app renders one), then one status write. The ratio operator/direct says what the
operator costs on top of those writes.

API writes are counted by the API server itself (``apiserver_request_total``, mutating
verbs, by resource), per app, in four phases: the direct baseline, the operator's first
create, a steady window with nothing changing, and an operator restart with every app
already in place. Every phase includes what the controller-manager writes for the same
objects (ReplicaSets, EndpointSlices), so the direct phase is the control (leader-election
Lease renewals are left out: they tick whatever happens). The restart is
timed from the process start until it has reconciled every app (its own metrics) and the
API server has seen no new write for a moment. It also prints the operator's peak RSS and
CPU time (sampled with psutil).

    python bench/reconcile.py                      # starts a fresh local control plane
    python bench/reconcile.py --n 100 --kubeconfig .kubefal/cluster/kubeconfig

The operator serves only its own namespace here (``--namespace``), so it never sees the
baseline's FalApps. Exits non-zero only on errors, never on a missed target.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import datetime
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
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import psutil
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from kubefal_api import crds, machines, naming, v1alpha1
from kubefal_operator import status
from kubefal_operator.render import children, common

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench import results as bench_results  # noqa: E402
from e2e import cluster as local_cluster  # noqa: E402  (the repository root is not a package)
from testkit import processes, waiting  # noqa: E402  (the repository root is not a package)

WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"})
TARGET_RATIO = 0.5
TARGET_RSS_MIB = 250
TARGET_RESTART_SECONDS = 10.0


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=500, help="FalApps to create (default 500)")
    parser.add_argument(
        "--kubeconfig", default=None, help="use this cluster instead of starting one"
    )
    parser.add_argument("--workers", type=int, default=16, help="concurrent client calls")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before giving up")
    parser.add_argument(
        "--steady-seconds",
        type=float,
        default=10.0,
        help="length of the window that counts steady-state writes (default 10)",
    )
    parser.add_argument("--no-restart", action="store_true", help="skip the restart phase")
    bench_results.add_option(parser)
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
    waiting.wait_for(
        lambda: (
            objects.list_cluster_custom_object(
                v1alpha1.GROUP, v1alpha1.VERSION, v1alpha1.PLURAL, limit=1
            )
            is not None
        ),
        timeout=60,
    )


def falapp(name: str) -> dict[str, Any]:
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "metadata": {"name": name},
        "spec": {"app": "app.py::Bench", "machineTypes": ["XS"]},
    }


def direct_objects(created: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """What the operator renders for a created FalApp (owned by it, as the operator's are)
    and the status document it would write first."""
    app = v1alpha1.FalApp.from_kube(created)
    rendered = children.children(
        app, catalogue=machines.default_catalogue(), settings=common.RenderSettings()
    )
    manifests = [dict(manifest) for manifest in rendered.wanted]
    for manifest in manifests:
        if manifest["kind"] == "Deployment":
            manifest["spec"] = {**manifest["spec"], "replicas": app.spec.scaling.min_concurrency}
    computed = status.compute(
        app,
        deployment=None,
        pods=[],
        observed_generation=app.metadata.generation,
        problem=None,
        gateway=status.Gateway(queue_url="https://queue.invalid", run_url="https://run.invalid"),
        now=datetime.datetime.now(tz=datetime.UTC),
        catalogue=machines.default_catalogue(),
    )
    return manifests, status.status_document(computed)


def run_all(work: Callable[[int], object], *, n: int, workers: int) -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(work, index) for index in range(n)]:
            future.result()


def raw_call(api_client: k8s.ApiClient, method: str, path: str, *, body: Any = None) -> bytes:
    """One request on any path with the client's credentials; raises on an error status."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    serialized = api_client.param_serialize(
        method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
    )
    response = api_client.call_api(*serialized)
    response.read()
    if response.status >= 400:
        raise k8s.ApiException(status=response.status, reason=str(response.data[:300]))
    return bytes(response.data)


class WriteCounter:
    """Mutating requests the API server has served, from its own metrics."""

    def __init__(self, api_client: k8s.ApiClient) -> None:
        self.api_client = api_client

    def snapshot(self) -> collections.Counter[str]:
        text = raw_call(self.api_client, "GET", "/metrics").decode()
        counts: collections.Counter[str] = collections.Counter()
        for line in text.splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels_text, _, value = line.rpartition(" ")
            labels = dict(
                part.split("=", 1)
                for part in labels_text[len("apiserver_request_total{") : -1].split(",")
                if "=" in part
            )
            labels = {key: raw.strip('"') for key, raw in labels.items()}
            if labels.get("verb") not in WRITE_VERBS or labels.get("resource") == "leases":
                continue  # leases: the control plane's own leader-election heartbeats
            resource = labels.get("resource", "")
            if labels.get("subresource"):
                resource += "/" + labels["subresource"]
            counts[f"{labels['verb']} {resource}"] += int(float(value))
        return counts

    def settle(self, *, quiet: float = 3.0, timeout: float = 300.0) -> collections.Counter[str]:
        """Wait until no write happened for ``quiet`` seconds (bounded); the last snapshot."""
        deadline = time.monotonic() + timeout
        last = self.snapshot()
        since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.5)
            current = self.snapshot()
            if current != last:
                last, since = current, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return last


def delta(after: collections.Counter[str], before: collections.Counter[str]) -> dict[str, int]:
    return {key: after[key] - before[key] for key in after if after[key] - before[key] > 0}


def describe_writes(name: str, writes: Mapping[str, int], *, n: int) -> str:
    total = sum(writes.values())
    parts = ", ".join(f"{key} {count / n:.2f}" for key, count in sorted(writes.items()))
    return f"{name:<16} {total / n:5.2f} per app  ({parts or 'none'})"


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


class OperatorProcess:
    """``python -m kubefal_operator`` serving one namespace, with its liveness and metrics."""

    def __init__(self, *, kubeconfig: pathlib.Path, namespace: str, log_path: pathlib.Path):
        self.liveness = local_cluster.free_port()
        self.metrics_port = local_cluster.free_port()
        self.started = time.perf_counter()
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kubefal_operator",
                    "--quiet",
                    "--namespace",
                    namespace,
                    "--liveness",
                    f"http://127.0.0.1:{self.liveness}/healthz",
                ],
                env={
                    **os.environ,
                    "KUBECONFIG": str(kubeconfig),
                    "KUBEFAL_OPERATOR_METRICS_HOST": "127.0.0.1",
                    "KUBEFAL_OPERATOR_METRICS_PORT": str(self.metrics_port),
                },
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_live(self) -> None:
        url = f"http://127.0.0.1:{self.liveness}/healthz"
        waiting.wait_for(lambda: urllib.request.urlopen(url, timeout=5).status == 200, timeout=120)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())

    def metric_sum(self, name: str, *, having: str = "") -> float:
        return sum(
            float(line.split()[-1])
            for line in self.metrics().splitlines()
            if (line.startswith(name + "{") or line.startswith(name + " ")) and having in line
        )

    def stop(self) -> None:
        processes.stop(self.process)


def main() -> int:
    arguments = parse_arguments()
    n = arguments.n
    load_before = os.getloadavg()
    with control_plane(arguments.kubeconfig) as kubeconfig:
        api_client = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig)
        )
        api_client.configuration.connection_pool_maxsize = arguments.workers
        install_crd(api_client)
        core, apps = k8s.CoreV1Api(api_client), k8s.AppsV1Api(api_client)
        objects = k8s.CustomObjectsApi(api_client)
        counter = WriteCounter(api_client)
        suffix = uuid.uuid4().hex[:5]
        direct_ns, operator_ns = f"bench-direct-{suffix}", f"bench-operator-{suffix}"
        for namespace in (direct_ns, operator_ns):
            core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
        dynamic_paths = {
            "Deployment": f"/apis/apps/v1/namespaces/{direct_ns}/deployments",
            "Service": f"/api/v1/namespaces/{direct_ns}/services",
            "NetworkPolicy": f"/apis/networking.k8s.io/v1/namespaces/{direct_ns}/networkpolicies",
            "PodDisruptionBudget": f"/apis/policy/v1/namespaces/{direct_ns}/poddisruptionbudgets",
        }

        def direct(index: int) -> None:
            created: Any = objects.create_namespaced_custom_object(
                v1alpha1.GROUP,
                v1alpha1.VERSION,
                direct_ns,
                v1alpha1.PLURAL,
                falapp(f"app-{index}"),
            )
            manifests, document = direct_objects(created)
            for manifest in manifests:
                raw_call(api_client, "POST", dynamic_paths[manifest["kind"]], body=manifest)
            objects.patch_namespaced_custom_object_status(
                v1alpha1.GROUP,
                v1alpha1.VERSION,
                direct_ns,
                v1alpha1.PLURAL,
                created["metadata"]["name"],
                {"status": document},
            )

        operator: OperatorProcess | None = None
        log_path = pathlib.Path(tempfile.gettempdir()) / f"kubefal-bench-operator-{suffix}.log"
        try:
            # Baseline: the same objects and one status write per app, before the operator runs.
            before = counter.settle()
            started = time.perf_counter()
            run_all(direct, n=n, workers=arguments.workers)
            direct_seconds = time.perf_counter() - started
            direct_writes = delta(counter.settle(), before)

            operator = OperatorProcess(
                kubeconfig=kubeconfig, namespace=operator_ns, log_path=log_path
            )
            operator.wait_live()
            before = counter.settle()
            with PeakMemory(operator.process.pid) as sampler:
                idle_rss = sampler.process.memory_info().rss
                idle_cpu = sum(sampler.process.cpu_times()[:2])
                started = time.perf_counter()
                run_all(
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
                    listing = apps.list_namespaced_deployment(
                        operator_ns, resource_version="0", label_selector=naming.LABEL_APP
                    )
                    return bool(len(listing.items) == n)

                waiting.wait_for(observed, timeout=arguments.timeout, interval=1.0)
                waiting.wait_for(deployed, timeout=arguments.timeout, interval=1.0)
                operator_seconds = time.perf_counter() - started
                create_writes = delta(counter.settle(), before)
                status_writes = operator.metric_sum("kubefal_operator_status_writes_total")
                before = counter.snapshot()
                time.sleep(arguments.steady_seconds)
                steady_writes = delta(counter.snapshot(), before)
            cpu_seconds = sampler.cpu_seconds - idle_cpu

            restart: dict[str, Any] = {}
            if not arguments.no_restart:
                operator.stop()
                before = counter.settle()
                operator = OperatorProcess(
                    kubeconfig=kubeconfig, namespace=operator_ns, log_path=log_path
                )
                with PeakMemory(operator.process.pid) as restarted:
                    operator.wait_live()
                    waiting.wait_for(
                        lambda: (
                            operator is not None
                            and operator.metric_sum(
                                "kubefal_operator_reconciles_total", having='kind="FalApp"'
                            )
                            >= n
                        ),
                        timeout=arguments.timeout,
                        interval=0.2,
                    )
                    restart["reconciled"] = time.perf_counter() - operator.started
                    after = counter.settle()
                    restart["writes"] = delta(after, before)
                    restart["rss"] = restarted.peak_rss
        finally:
            if operator is not None:
                operator.stop()
            for namespace in (direct_ns, operator_ns):
                with contextlib.suppress(k8s.ApiException):
                    core.delete_namespace(namespace, propagation_policy="Background")

    load_after = os.getloadavg()
    operator_rate, direct_rate = n / operator_seconds, n / direct_seconds
    ratio = operator_rate / direct_rate
    print(f"FalApps: {n} (XS, minConcurrency 0), {arguments.workers} concurrent client calls")
    print(
        f"machine: {os.cpu_count()} cores, load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after"
    )
    print(
        f"operator: {operator_seconds:.1f} s until every app had its Deployment and an observed "
        f"status = {operator_rate:.1f} apps/s (the creates alone took {created_seconds:.1f} s)"
    )
    print(
        f"direct:   {direct_seconds:.1f} s to create {n} FalApps with their children and one "
        f"status write each = {direct_rate:.1f} apps/s"
    )
    print(f"ratio operator/direct: {ratio:.2f} (target >= {TARGET_RATIO})")
    print(
        f"operator RSS: idle {idle_rss / 2**20:.0f} MiB, peak {sampler.peak_rss / 2**20:.0f} MiB "
        f"(target <= {TARGET_RSS_MIB}); CPU {cpu_seconds:.1f} s = "
        f"{1000 * cpu_seconds / n:.1f} ms per app; {status_writes / n:.2f} status writes per app"
    )
    print("API writes seen by the API server (all clients, the controller-manager included):")
    print(describe_writes("direct", direct_writes, n=n))
    print(describe_writes("operator create", create_writes, n=n))
    print(describe_writes(f"steady {arguments.steady_seconds:.0f}s", steady_writes, n=n))
    if restart:
        print(describe_writes("restart", restart["writes"], n=n))
        print(
            f"restart: every app reconciled {restart['reconciled']:.1f} s after the process "
            f"started (target < {TARGET_RESTART_SECONDS:.0f} s), "
            f"{sum(restart['writes'].values())} writes, peak RSS {restart['rss'] / 2**20:.0f} MiB"
        )
    results: dict[str, Any] = {
        "n": n,
        "workers": arguments.workers,
        "loadavg_before": list(load_before),
        "loadavg_after": list(load_after),
        "operator_seconds": operator_seconds,
        "operator_apps_per_s": operator_rate,
        "created_seconds": created_seconds,
        "direct_seconds": direct_seconds,
        "direct_apps_per_s": direct_rate,
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "idle_rss_mib": idle_rss / 2**20,
        "peak_rss_mib": sampler.peak_rss / 2**20,
        "target_rss_mib": TARGET_RSS_MIB,
        "cpu_ms_per_app": 1000 * cpu_seconds / n,
        "status_writes_per_app": status_writes / n,
        # API writes per app by resource, in each phase (the API server's own counters)
        "writes_per_app": {
            phase: {key: count / n for key, count in writes.items()}
            for phase, writes in (
                ("direct", direct_writes),
                ("create", create_writes),
                ("steady", steady_writes),
            )
        },
        "steady_seconds": arguments.steady_seconds,
    }
    if restart:
        results["restart"] = {
            "reconciled_seconds": restart["reconciled"],
            "writes": sum(restart["writes"].values()),
            "peak_rss_mib": restart["rss"] / 2**20,
            "target_seconds": TARGET_RESTART_SECONDS,
        }
        results["writes_per_app"]["restart"] = {
            key: count / n for key, count in restart["writes"].items()
        }
    bench_results.write(arguments.json, "reconcile", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
