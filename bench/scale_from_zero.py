"""How much of a cold start is kubefal's control path, and how much the runner's own start-up?

A FalApp with ``minConcurrency: 0`` and a short ``keepAlive`` runs on the whole system on
one machine (``e2e/system.py``: the real gateway, the operator with the builtin actuator,
and a pod runner that runs each kwok pod's container as a local process). Each trial waits
until the app is at zero replicas with no runner process, submits one request with the real
``fal_client`` over TLS, and times every step of the cold start:

    submit → Deployment replicas 1 (watch) → pod Running (kwok, watch) → runner process
    started (/proc) → runner ready (its "startup finished" log line) → dispatch (the sleepy
    app's ``started``, the wall clock at the start of the request inside the app)

The CONTROL OVERHEAD is (dispatch - submit) - (runner ready - process start): everything
but the runner process's own start-up, which is the app's cost, not the platform's. Of it,
kubefal's own components account for submit → replicas (gateway push, operator write) and
ready → dispatch (gateway readiness probe, dispatch); the rest is kwok and the e2e pod runner
standing in for the kubelet and container runtime. Target:
≤ 1 s at p95. Anchor: Knative's scale-from-zero averages 3.4 s in total (OpenShift Serverless
docs, no image pull); the KEDA HTTP add-on pushes its activity signal every 200 ms.

    python bench/scale_from_zero.py                    # 10 trials on the local control plane
    python bench/scale_from_zero.py --trials 20 --keep-alive 1
    python bench/scale_from_zero.py --gateway-arg=--runner-probe-interval=0.1
    python bench/scale_from_zero.py --no-announce        # baseline: readiness via the Pod watch
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import pathlib
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
import types
import uuid
from collections.abc import Iterator
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench import results as bench_results  # noqa: E402
from e2e import cluster as local_cluster  # noqa: E402  (the repository root is not a package)
from e2e import system as whole  # noqa: E402
from testkit import waiting  # noqa: E402

APP_SOURCE = REPO_ROOT / "e2e" / "apps" / "sleepy.py"
APP_NAME = "sleepy"
TARGET_P95_SECONDS = 1.0
KNATIVE_COLD_START_AVERAGE_SECONDS = 3.4
KEDA_PUSH_PERIOD_SECONDS = 0.2
READY_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO kubefal_runner: startup finished"
)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10, help="cold starts to time")
    parser.add_argument("--keep-alive", type=float, default=2, help="the app's keepAlive (s)")
    parser.add_argument("--kubeconfig", default=None, help="use this cluster, not the local one")
    parser.add_argument("--workdir", default=None, help="keep logs here (default: a temp dir)")
    parser.add_argument(
        "--no-announce",
        action="store_true",
        help="runners do not announce readiness (the gateway waits for the Pod watch): the "
        "baseline of 'runner ready → dispatch'",
    )
    parser.add_argument(
        "--gateway-arg",
        action="append",
        default=[],
        help="extra gateway flag, e.g. --gateway-arg=--runner-probe-interval=0.1 (repeatable)",
    )
    bench_results.add_option(parser)
    return parser.parse_args()


# -- infrastructure shared with bench/scaling.py --


def raise_keyboard_interrupt_on_sigterm() -> None:
    """Let SIGTERM (and Ctrl-C, always) unwind the context managers, which clean up."""

    def handler(signal_number: int, frame: types.FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored


@contextlib.contextmanager
def cluster_kubeconfig(kubeconfig: str | None) -> Iterator[pathlib.Path]:
    """The given cluster, the running local control plane, or one started (and stopped) here."""
    if kubeconfig:
        yield pathlib.Path(kubeconfig)
        return
    attached = local_cluster.LocalCluster.attach()
    if attached is not None:
        yield attached.kubeconfig
        return
    state_dir = REPO_ROOT / ".kubefal" / f"bench-{os.getpid()}"
    print(f"starting a local control plane in {state_dir}", file=sys.stderr)
    with local_cluster.LocalCluster(state_dir) as started:
        yield started.kubeconfig


@contextlib.contextmanager
def fresh_namespace(api_client: k8s.ApiClient, prefix: str) -> Iterator[str]:
    core = k8s.CoreV1Api(api_client)
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    try:
        waiting.wait_for(
            lambda: any(
                sa.metadata is not None and sa.metadata.name == "default"
                for sa in core.list_namespaced_service_account(name).items
            ),
            timeout=60,
            description=f"the default ServiceAccount in {name}",
        )
        yield name
    finally:
        core.delete_namespace(name, propagation_policy="Background")


@contextlib.contextmanager
def whole_system(
    kubeconfig: pathlib.Path,
    namespace: str,
    workdir: str | None,
    gateway_args: list[str],
    *,
    announce: bool = True,
) -> Iterator[whole.System]:
    root = pathlib.Path(workdir) if workdir else pathlib.Path(tempfile.mkdtemp(prefix="kf-bench-"))
    with whole.running_system(
        kubeconfig,
        workdir=root / "system",
        namespaces=[namespace],
        gateway_args=gateway_args,
        operator_env=None if announce else {"KUBEFAL_RUNNER_ANNOUNCE_URL": "off"},
    ) as system:
        print(f"logs under {root / 'system'}", file=sys.stderr)
        yield system


def use_fal_client(system: whole.System) -> Any:
    """Import the real fal_client pointed at this system's gateway (it reads env at import)."""
    os.environ.update(system.client_env())
    import fal_client

    return fal_client


def deploy(
    api_client: k8s.ApiClient, namespace: str, *, name: str, scaling: dict[str, Any]
) -> None:
    whole.deploy_app(
        api_client, namespace, name=name, source=APP_SOURCE, app="Sleepy", scaling=scaling
    )


def replicas_of(api_client: k8s.ApiClient, namespace: str, name: str) -> int:
    deployment = k8s.AppsV1Api(api_client).read_namespaced_deployment(name, namespace)
    return int(deployment.spec.replicas or 0)


class Recorder:
    """Watch Deployments and pods in one namespace; keep when each change was first seen.

    ``replicas[name]`` is the list of (wall time, replicas) at each change of a Deployment's
    ``spec.replicas``; ``pod_running[pod]`` the wall time a pod was first seen Running and
    ``pod_ready[pod]`` with its Ready condition True (what the gateway's discovery waits for).
    """

    def __init__(self, api_client: k8s.ApiClient, namespace: str) -> None:
        self.apps = k8s.AppsV1Api(api_client)
        self.core = k8s.CoreV1Api(api_client)
        self.namespace = namespace
        self.replicas: dict[str, list[tuple[float, int]]] = {}
        self.pod_running: dict[str, float] = {}
        self.pod_ready: dict[str, float] = {}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._watches: list[k8s_watch.Watch] = []
        self._threads = [
            threading.Thread(target=self._loop, args=(self._deployment_stream,), daemon=True),
            threading.Thread(target=self._loop, args=(self._pod_stream,), daemon=True),
        ]

    def __enter__(self) -> Recorder:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for stream in list(self._watches):
            stream.stop()  # type: ignore[no-untyped-call]
        for thread in self._threads:
            thread.join(timeout=10)

    def _loop(self, stream_once: Any) -> None:
        while not self._stop.is_set():
            try:
                stream_once()
            except (urllib3.exceptions.HTTPError, k8s.ApiException, OSError):
                self._stop.wait(0.2)

    def _deployment_stream(self) -> None:
        stream = k8s_watch.Watch()  # type: ignore[no-untyped-call]
        self._watches.append(stream)
        for event in stream.stream(  # type: ignore[no-untyped-call]
            self.apps.list_namespaced_deployment, self.namespace, timeout_seconds=30
        ):
            seen_at = time.time()
            deployment = event["object"]
            replicas = int(deployment.spec.replicas or 0)
            with self.lock:
                timeline = self.replicas.setdefault(deployment.metadata.name, [])
                if not timeline or timeline[-1][1] != replicas:
                    timeline.append((seen_at, replicas))
            if self._stop.is_set():
                stream.stop()  # type: ignore[no-untyped-call]

    def _pod_stream(self) -> None:
        stream = k8s_watch.Watch()  # type: ignore[no-untyped-call]
        self._watches.append(stream)
        for event in stream.stream(  # type: ignore[no-untyped-call]
            self.core.list_namespaced_pod, self.namespace, timeout_seconds=30
        ):
            seen_at = time.time()
            pod = event["object"]
            if pod.status.phase == "Running" and pod.status.pod_ip:
                with self.lock:
                    self.pod_running.setdefault(pod.metadata.name, seen_at)
            if any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or ()):
                with self.lock:
                    self.pod_ready.setdefault(pod.metadata.name, seen_at)
            if self._stop.is_set():
                stream.stop()  # type: ignore[no-untyped-call]

    def timeline(self, name: str) -> list[tuple[float, int]]:
        with self.lock:
            return list(self.replicas.get(name, []))

    def current(self, name: str) -> int | None:
        timeline = self.timeline(name)
        return timeline[-1][1] if timeline else None


def process_start_wall_time(pid: int) -> float:
    """Wall-clock start of a process, from its start time in clock ticks since boot."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    start_since_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    now_since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.time() - (now_since_boot - start_since_boot)


class ProcessTracker:
    """Remember each runner process's start time and log, even after the pod runner drops it."""

    def __init__(self, system: whole.System) -> None:
        self.system = system
        self.started: dict[str, tuple[float, pathlib.Path]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcessTracker:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for key, entry in self.system.pods.running().items():
                if key not in self.started:
                    with contextlib.suppress(OSError):
                        started = process_start_wall_time(entry.process.pid)
                        self.started[key] = (started, entry.log)


def runner_ready_wall_time(log: pathlib.Path) -> float | None:
    for line in log.read_text(errors="replace").splitlines():
        match = READY_LINE.match(line)
        if match:
            stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp()  # the runner logs local time, as this process reads it
    return None


def wait_scaled_to_zero(
    system: whole.System, recorder: Recorder, name: str, *, timeout: float = 120
) -> None:
    """Until the Deployment is at 0, no runner process runs and the last pod is deleted."""
    core = k8s.CoreV1Api(system.pods.core.api_client)

    def cold() -> bool:
        if recorder.current(name) != 0 or system.pods.running():
            return False
        pods = core.list_namespaced_pod(recorder.namespace, label_selector=f"kubefal.io/app={name}")
        return not pods.items

    waiting.wait_for(
        cold,
        timeout=timeout,
        interval=0.05,
        description=f"{name} at 0 replicas with no pod and no runner process",
        describe_last=system.describe,
    )


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with ``fraction`` of the values at or below."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


# -- the cold start benchmark --


def one_cold_start(
    system: whole.System,
    recorder: Recorder,
    tracker: ProcessTracker,
    fal_client: Any,
    app_id: str,
) -> dict[str, float]:
    wait_scaled_to_zero(system, recorder, APP_NAME)
    submitted = time.time()
    handle = fal_client.submit(app_id, arguments={"seconds": 0, "tag": "cold"})
    result = handle.get(interval=0.1)
    answered = time.time()
    key = f"{recorder.namespace}/{result['pod']}"
    process_started, log = waiting.wait_for(
        lambda: tracker.started.get(key), timeout=10, description=f"the process of {key}"
    )
    ready = waiting.wait_for(
        lambda: runner_ready_wall_time(log), timeout=10, description="the ready line"
    )
    scaled_up = next(
        t for t, replicas in recorder.timeline(APP_NAME) if t >= submitted and replicas
    )
    pod_running = recorder.pod_running[result["pod"]]
    pod_ready = recorder.pod_ready.get(result["pod"], pod_running)
    dispatched = float(result["started"])
    runner_startup = ready - process_started
    return {
        "total": dispatched - submitted,
        "overhead": (dispatched - submitted) - runner_startup,
        "submit_to_replicas": scaled_up - submitted,
        "replicas_to_pod_running": pod_running - scaled_up,
        "pod_running_to_process": process_started - pod_running,
        "runner_startup": runner_startup,
        "ready_to_dispatch": dispatched - ready,
        "kubefal_share": (scaled_up - submitted) + (dispatched - ready),
        "running_to_pod_ready": pod_ready - pod_running,
        "client_seen": answered - submitted,
    }


def summarise(trials: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        column: {
            "p50": statistics.median(t[column] for t in trials),
            "p95": percentile([t[column] for t in trials], 0.95),
            "mean": statistics.fmean(t[column] for t in trials),
            "max": max(t[column] for t in trials),
        }
        for column in trials[0]
    }


def main() -> int:
    arguments = parse_arguments()
    raise_keyboard_interrupt_on_sigterm()
    load_before = os.getloadavg()
    trials: list[dict[str, float]] = []
    with cluster_kubeconfig(arguments.kubeconfig) as kubeconfig:
        api_client = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig)
        )
        with (
            fresh_namespace(api_client, "bench-cold") as namespace,
            whole_system(
                kubeconfig,
                namespace,
                arguments.workdir,
                arguments.gateway_arg,
                announce=not arguments.no_announce,
            ) as system,
            Recorder(api_client, namespace) as recorder,
            ProcessTracker(system) as tracker,
        ):
            fal_client = use_fal_client(system)
            deploy(
                api_client,
                namespace,
                name=APP_NAME,
                scaling={"minConcurrency": 0, "keepAlive": arguments.keep_alive},
            )
            for index in range(arguments.trials):
                trial = one_cold_start(
                    system, recorder, tracker, fal_client, f"{namespace}/{APP_NAME}"
                )
                trials.append(trial)
                print(
                    f"trial {index + 1:2d}: overhead {trial['overhead']:.3f} s, "
                    f"total {trial['total']:.3f} s, "
                    f"runner start-up {trial['runner_startup']:.3f} s",
                    file=sys.stderr,
                )
    summary = summarise(trials)
    print_table(summary, len(trials))
    overhead_p95 = summary["overhead"]["p95"]
    results = {
        "bench": "scale_from_zero",
        "trials": len(trials),
        "keep_alive_seconds": arguments.keep_alive,
        "runners_announce": not arguments.no_announce,
        "overhead_p50_s": round(summary["overhead"]["p50"], 4),
        "overhead_p95_s": round(overhead_p95, 4),
        "target_p95_s": TARGET_P95_SECONDS,
        "meets_target": overhead_p95 <= TARGET_P95_SECONDS,
        "total_mean_s": round(summary["total"]["mean"], 4),
        "knative_total_average_s": KNATIVE_COLD_START_AVERAGE_SECONDS,
        "knative_over_kubefal_total": round(
            KNATIVE_COLD_START_AVERAGE_SECONDS / summary["total"]["mean"], 2
        ),
        "stages": {k: {s: round(v, 4) for s, v in d.items()} for k, d in summary.items()},
    }
    print(json.dumps(results))
    bench_results.write(
        arguments.json,
        "scale_from_zero",
        {
            **results,
            "loadavg_before": list(load_before),
            "loadavg_after": list(os.getloadavg()),
            "trial_stages": trials,
        },
    )
    return 0


def print_table(summary: dict[str, dict[str, float]], count: int) -> None:
    labels = {
        "overhead": "CONTROL OVERHEAD (total - runner start-up)",
        "submit_to_replicas": "  submit → Deployment replicas 1",
        "replicas_to_pod_running": "  replicas 1 → pod Running (kwok)",
        "pod_running_to_process": "  pod Running → process (kubelet stand-in)",
        "ready_to_dispatch": "  runner ready → dispatch in the app",
        "kubefal_share": "kubefal's own share (1st + 4th stage)",
        "runner_startup": "runner process start-up (context)",
        "running_to_pod_ready": "pod Running → Ready condition (context)",
        "total": "submit → dispatch (total cold start)",
        "client_seen": "submit → result seen by fal_client",
    }
    print(f"\nscale from zero, {count} trials (seconds)")
    print(f"{'stage':<46}{'p50':>8}{'p95':>8}{'mean':>8}{'max':>8}")
    for column, label in labels.items():
        row = summary[column]
        print(
            f"{label:<46}{row['p50']:>8.3f}{row['p95']:>8.3f}{row['mean']:>8.3f}{row['max']:>8.3f}"
        )
    overhead_p95 = summary["overhead"]["p95"]
    verdict = "meets" if overhead_p95 <= TARGET_P95_SECONDS else "MISSES"
    print(
        f"\ncontrol overhead p95 {overhead_p95:.3f} s {verdict} "
        f"the ≤ {TARGET_P95_SECONDS:.1f} s target"
    )
    print(
        f"Knative scale-from-zero averages {KNATIVE_COLD_START_AVERAGE_SECONDS} s in total; "
        "kubefal's "
        f"total here averages {summary['total']['mean']:.3f} s "
        f"({KNATIVE_COLD_START_AVERAGE_SECONDS / summary['total']['mean']:.1f}x faster), of which "
        f"{summary['overhead']['mean']:.3f} s is control overhead "
        f"(KEDA HTTP add-on pushes activity every {KEDA_PUSH_PERIOD_SECONDS * 1000:.0f} ms)"
    )


if __name__ == "__main__":
    sys.exit(main())
