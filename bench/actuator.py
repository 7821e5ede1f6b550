"""How long from the gateway's signal to the Deployment's new replicas, with the builtin actuator?

The operator's share of a cold start: a scaling event is pushed on a real server-sent-events
stream (the gateway's wire format, ``e2e.operator_harness.ScalingStream``), the operator
(``python -m kubefal_operator --gateway-admin-url ...``, a subprocess as it ships) writes
``spec.replicas``, and a watch on the Deployment sees it. The baseline, measured in the same
run on the same API server and with the same watch, is this script writing the same replicas
itself: the ratio says what the actuator (stream, coalescing, decision, server-side apply)
adds on top of a write it cannot avoid. Trials alternate between 1 and 0 runners (a scale
from zero and back), reported apart: before a scale-down the actuator first annotates the
runners' ``pod-deletion-cost`` and waits until its pod watch shows the new costs. The app
has ``minConcurrency: 0``.

    python bench/actuator.py                   # the running local control plane (make cluster-up)
    python bench/actuator.py --trials 40 --kubeconfig .kubefal/cluster/kubeconfig
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench import results as bench_results  # noqa: E402
from e2e import cluster as local_cluster  # noqa: E402  (the repository root is not a package)
from e2e import operator_harness  # noqa: E402
from kubefal_api import v1alpha1  # noqa: E402
from testkit import waiting  # noqa: E402


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="scale changes per variant")
    parser.add_argument("--kubeconfig", default=None, help="use this cluster")
    bench_results.add_option(parser)
    return parser.parse_args()


class ReplicasWatch:
    """A watch on one Deployment that records when each replicas value was first seen."""

    def __init__(self, apps: k8s.AppsV1Api, *, namespace: str, name: str) -> None:
        self.seen: dict[int, float] = {}
        self.condition = threading.Condition()
        self._watch = k8s_watch.Watch()  # type: ignore[no-untyped-call]
        self._thread = threading.Thread(target=self._run, args=(apps, namespace, name), daemon=True)

    def _run(self, apps: k8s.AppsV1Api, namespace: str, name: str) -> None:
        events = self._watch.stream(  # type: ignore[no-untyped-call]
            apps.list_namespaced_deployment,
            namespace,
            field_selector=f"metadata.name={name}",
            timeout_seconds=3600,
        )
        try:
            for event in events:
                replicas = int(event["object"].spec.replicas or 0)
                with self.condition:
                    self.seen.setdefault(replicas, time.perf_counter())
                    self.condition.notify_all()
        except urllib3.exceptions.HTTPError:
            return  # stop() closed the connection

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._watch.stop()  # type: ignore[no-untyped-call]

    def time_to(self, replicas: int, *, after: Callable[[], None]) -> float:
        """Seconds from calling ``after`` until the watch shows ``replicas``."""
        with self.condition:
            self.seen.pop(replicas, None)
        started = time.perf_counter()
        after()
        with self.condition:
            if not self.condition.wait_for(lambda: replicas in self.seen, timeout=60):
                raise TimeoutError(f"replicas never became {replicas}")
            return self.seen[replicas] - started


def _p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _summary(samples: list[float]) -> str:
    return f"p50 {statistics.median(samples) * 1000:7.1f} ms   p95 {_p95(samples) * 1000:7.1f} ms"


def main() -> int:
    arguments = parse_arguments()
    load_before = os.getloadavg()
    if arguments.kubeconfig:
        kubeconfig = pathlib.Path(arguments.kubeconfig)
    else:
        running = local_cluster.LocalCluster.attach()
        if running is None:
            print("no local control plane: run `make cluster-up` or pass --kubeconfig")
            return 2
        kubeconfig = running.kubeconfig
    api_client = k8s_config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    operator_harness.install_falapp_crd(api_client)
    core, apps = k8s.CoreV1Api(api_client), k8s.AppsV1Api(api_client)
    objects = k8s.CustomObjectsApi(api_client)
    namespace = f"bench-actuator-{uuid.uuid4().hex[:6]}"
    name = "cold"
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
    stream = operator_harness.ScalingStream()
    stream.start()
    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="bench-actuator-"))
    operator = operator_harness.OperatorProcess(
        kubeconfig=kubeconfig,
        log_path=log_dir / "operator.log",
        catalogue_namespace=namespace,
        arguments=("-n", namespace, "--gateway-admin-url", stream.url, "--quiet"),
    )
    watch = ReplicasWatch(apps, namespace=namespace, name=name)
    try:
        operator.start()
        waiting.wait_for(lambda: stream.subscribers > 0, timeout=60, description="subscribed")
        manifest: dict[str, Any] = {
            "apiVersion": v1alpha1.API_VERSION,
            "kind": v1alpha1.KIND,
            "metadata": {"name": name},
            "spec": {"app": "app.py::Demo", "machineTypes": ["XS"], "scaling": {}},
        }
        objects.create_namespaced_custom_object(
            v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL, manifest
        )
        waiting.wait_for(
            lambda: apps.read_namespaced_deployment(name, namespace),
            timeout=60,
            description="the Deployment",
        )
        watch.start()

        def publish(target: int) -> Callable[[], None]:
            return lambda: stream.publish(namespace, name, desired=target, queued=target)

        def write(target: int) -> Callable[[], None]:
            def patch() -> None:
                apps.patch_namespaced_deployment_scale(
                    name, namespace, {"spec": {"replicas": target}}
                )

            return patch

        actuated: list[float] = []
        for trial in range(arguments.trials):
            # Spaced beyond the actuator's 150 ms rate limit: this measures latency, not
            # the coalescing of a burst (which delays a second write on purpose).
            time.sleep(0.3)
            target = 1 - trial % 2
            actuated.append(watch.time_to(target, after=publish(target)))
        # Baseline: the same replicas writes, by this script, with the operator stopped.
        operator.stop()
        direct: list[float] = []
        for trial in range(arguments.trials):
            time.sleep(0.3)
            target = 1 - trial % 2
            direct.append(watch.time_to(target, after=write(target)))
    finally:
        watch.stop()
        operator.stop()
        stream.stop()
        core.delete_namespace(namespace, propagation_policy="Background")
    # Even trials scale 0 -> 1 (a cold start), odd ones 1 -> 0 (annotate, then scale down).
    figures: dict[str, dict[str, float]] = {}
    for key, start in (("scale_from_zero", 0), ("scale_down", 1)):
        mine, base = actuated[start::2], direct[start::2]
        figures[key] = {
            "trials": len(mine),
            "actuator_p50_ms": statistics.median(mine) * 1000,
            "actuator_p95_ms": _p95(mine) * 1000,
            "direct_p50_ms": statistics.median(base) * 1000,
            "direct_p95_ms": _p95(base) * 1000,
        }
    bench_results.write(
        arguments.json,
        "actuator",
        {
            "loadavg_before": list(load_before),
            "loadavg_after": list(os.getloadavg()),
            **figures,
        },
    )
    for label, start in (("0 -> 1 (scale from zero)", 0), ("1 -> 0 (scale-down)", 1)):
        mine, base = actuated[start::2], direct[start::2]
        print(f"{label}, {len(mine)} trials each:")
        print(f"  signal -> replicas seen, builtin actuator: {_summary(mine)}")
        print(f"  direct replicas write -> seen (baseline):  {_summary(base)}")
        print(f"  ratio of medians: {statistics.median(mine) / statistics.median(base):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
