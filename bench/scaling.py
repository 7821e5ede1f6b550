"""Does kubefal keep runners just as long as ``keepAlive`` says, and hold still under steady load?

Two measurements on the whole system on one machine (``e2e/system.py``: the real gateway,
the operator with the builtin actuator, a pod runner playing the kubelet), with the real
``fal_client`` over TLS and the sleepy app (``e2e/apps/sleepy.py``):

(a) keep-alive accuracy. For each ``keepAlive`` value, an app with ``minConcurrency: 0``
    serves one request at a time from zero; the observed idle time is from the end of the
    last request (inside the app: its ``started`` plus the requested sleep) to the moment
    a watch sees the Deployment's replicas drop. Target: |idle - keepAlive| ≤ 1 s. The
    anchor, KEDA, counts its 300 s cooldown from scale-up, not from the last request
    (kedacore/http-add-on#881).

(b) stability under steady load. An app with ``maxMultiplexing: 1`` gets a constant rate of
    requests (0.5 s each at 3 req/s: 1.5 busy runners on average, so 2 are needed) for a
    warm-up and then a measured window. The replica timeline is printed; the figure is the
    number of replica changes after the first scale-up to the steady level (target: none
    beyond it), counted both over the whole run and inside the measured window. The load
    starts at zero runners, so during the first cold start the queue builds up and the
    formula (queued + in flight over maxMultiplexing) asks for more runners than the steady
    level; the warm-up (default 15 s, > keepAlive) lets that surplus drain before measuring.

    python bench/scaling.py                                # local control plane, ~3 minutes
    python bench/scaling.py --keep-alive 2 4 8 --trials 3 --load-seconds 60
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import pathlib
import statistics
import sys
import time
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench import results as bench_results
from bench import scale_from_zero as harness  # found through the sys.path entry above
from e2e import system as whole
from testkit import waiting

TARGET_KEEP_ALIVE_ERROR_SECONDS = 1.0


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--keep-alive", type=float, nargs="+", default=[2.0, 4.0], help="keepAlive values (s)"
    )
    parser.add_argument("--trials", type=int, default=3, help="trials per keepAlive value")
    parser.add_argument("--rate", type=float, default=3.0, help="steady load, requests/s")
    parser.add_argument("--request-seconds", type=float, default=0.5, help="each request's work")
    parser.add_argument(
        "--warmup-seconds", type=float, default=15.0, help="load before the measured window"
    )
    parser.add_argument("--load-seconds", type=float, default=30.0, help="measured steady window")
    parser.add_argument(
        "--load-keep-alive", type=float, default=5.0, help="keepAlive of the steady-load app (s)"
    )
    parser.add_argument(
        "--scaling-delay",
        type=float,
        default=0.0,
        help="scalingDelay of the steady-load app (s): fal's knob against growing on a backlog "
        "that runners already starting will serve (default 0, fal's default)",
    )
    parser.add_argument("--skip-keep-alive", action="store_true", help="only the steady load")
    parser.add_argument("--skip-load", action="store_true", help="only keep-alive accuracy")
    parser.add_argument("--kubeconfig", default=None, help="use this cluster, not the local one")
    parser.add_argument("--workdir", default=None, help="keep logs here (default: a temp dir)")
    parser.add_argument(
        "--gateway-arg",
        action="append",
        default=[],
        help="extra gateway flag, e.g. --gateway-arg=--runner-probe-interval=0.1 (repeatable)",
    )
    bench_results.add_option(parser)
    return parser.parse_args()


# -- (a) keep-alive accuracy --


def keep_alive_trial(
    system: whole.System,
    recorder: harness.Recorder,
    fal_client: Any,
    *,
    namespace: str,
    name: str,
    keep_alive: float,
) -> dict[str, float]:
    harness.wait_scaled_to_zero(system, recorder, name)
    work_seconds = 0.2
    result = fal_client.subscribe(
        f"{namespace}/{name}", arguments={"seconds": work_seconds, "tag": "last"}
    )
    finished = float(result["started"]) + work_seconds
    scaled_down = waiting.wait_for(
        lambda: next(
            (t for t, replicas in recorder.timeline(name) if t > finished and replicas == 0),
            None,
        ),
        timeout=keep_alive + 60,
        interval=0.05,
        description=f"{name} to scale down after keepAlive {keep_alive}",
    )
    idle = scaled_down - finished
    return {"keep_alive": keep_alive, "idle": idle, "error": idle - keep_alive}


def measure_keep_alive(
    system: whole.System,
    recorder: harness.Recorder,
    fal_client: Any,
    api_client: k8s.ApiClient,
    namespace: str,
    arguments: argparse.Namespace,
) -> list[dict[str, float]]:
    trials = []
    for keep_alive in arguments.keep_alive:
        name = f"keepalive-{int(keep_alive * 1000)}ms"
        harness.deploy(
            api_client, namespace, name=name, scaling={"minConcurrency": 0, "keepAlive": keep_alive}
        )
        harness.wait_scaled_to_zero(system, recorder, name)
        for index in range(arguments.trials):
            trial = keep_alive_trial(
                system, recorder, fal_client, namespace=namespace, name=name, keep_alive=keep_alive
            )
            trials.append(trial)
            print(
                f"keepAlive {keep_alive:g} s trial {index + 1}: idle {trial['idle']:.3f} s "
                f"(error {trial['error']:+.3f} s)",
                file=sys.stderr,
            )
    return trials


# -- (b) stability under steady load --


def steady_load(
    fal_client: Any, app_id: str, *, rate: float, request_seconds: float, duration: float
) -> tuple[int, int]:
    """Submit at a constant rate for ``duration``; wait for all; return (completed, failed)."""

    def one(index: int) -> bool:
        handle = fal_client.submit(
            app_id, arguments={"seconds": request_seconds, "tag": f"load-{index}"}
        )
        handle.get(interval=0.1)
        return True

    futures = []
    started = time.monotonic()
    count = int(rate * duration)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=32)
    try:
        for index in range(count):
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # the schedule, not a wait for a condition
            futures.append(pool.submit(one, index))
        done, _ = concurrent.futures.wait(futures, timeout=300)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # on Ctrl-C, do not start queued ones
    failed = sum(1 for f in done if f.exception() is not None) + len(futures) - len(done)
    return len(futures) - failed, failed


def measure_stability(
    system: whole.System,
    recorder: harness.Recorder,
    fal_client: Any,
    api_client: k8s.ApiClient,
    namespace: str,
    arguments: argparse.Namespace,
) -> dict[str, Any]:
    name = "steady"
    harness.deploy(
        api_client,
        namespace,
        name=name,
        scaling={
            "minConcurrency": 0,
            "maxMultiplexing": 1,
            "keepAlive": arguments.load_keep_alive,
            "scalingDelay": arguments.scaling_delay,
        },
    )
    harness.wait_scaled_to_zero(system, recorder, name)
    steady_level = math.ceil(arguments.rate * arguments.request_seconds)
    load_start = time.time()
    window_start = load_start + arguments.warmup_seconds
    completed, failed = steady_load(
        fal_client,
        f"{namespace}/{name}",
        rate=arguments.rate,
        request_seconds=arguments.request_seconds,
        duration=arguments.warmup_seconds + arguments.load_seconds,
    )
    load_end = time.time()
    window_end = min(load_end, window_start + arguments.load_seconds)
    timeline = [(t, r) for t, r in recorder.timeline(name) if t >= load_start - 0.5]
    first_steady = next((t for t, r in timeline if t >= load_start and r >= steady_level), None)
    changes_after_steady = (
        sum(1 for t, _ in timeline if t > first_steady and t <= load_end)
        if first_steady is not None
        else None
    )
    changes_in_window = sum(1 for t, _ in timeline if window_start <= t <= window_end)
    before_window = [r for t, r in timeline if t <= window_start]
    return {
        "rate": arguments.rate,
        "request_seconds": arguments.request_seconds,
        "steady_level": steady_level,
        "completed": completed,
        "failed": failed,
        "changes_after_first_steady": changes_after_steady,
        "changes_in_window": changes_in_window,
        "replicas_at_window_start": before_window[-1] if before_window else None,
        "max_replicas": max((r for t, r in timeline if t <= load_end), default=0),
        "timeline": [(round(t - load_start, 3), r) for t, r in timeline],
        "window": [arguments.warmup_seconds, round(window_end - load_start, 3)],
    }


# -- report --


def print_keep_alive(trials: list[dict[str, float]]) -> dict[str, Any]:
    print("\n(a) keep-alive accuracy: idle time from the last request's end to scale-down")
    print(f"{'keepAlive s':>12}{'trials':>8}{'mean idle':>11}{'mean err':>10}{'max |err|':>11}")
    per_value = {}
    for keep_alive in sorted({t["keep_alive"] for t in trials}):
        rows = [t for t in trials if t["keep_alive"] == keep_alive]
        errors = [t["error"] for t in rows]
        per_value[str(keep_alive)] = {
            "mean_idle_s": round(statistics.fmean(t["idle"] for t in rows), 4),
            "mean_error_s": round(statistics.fmean(errors), 4),
            "max_abs_error_s": round(max(abs(e) for e in errors), 4),
        }
        print(
            f"{keep_alive:>12g}{len(rows):>8}{statistics.fmean(t['idle'] for t in rows):>11.3f}"
            f"{statistics.fmean(errors):>+10.3f}{max(abs(e) for e in errors):>11.3f}"
        )
    errors = [abs(t["error"]) for t in trials]
    summary = {
        "mean_abs_error_s": round(statistics.fmean(errors), 4),
        "max_abs_error_s": round(max(errors), 4),
        "target_s": TARGET_KEEP_ALIVE_ERROR_SECONDS,
        "meets_target": max(errors) <= TARGET_KEEP_ALIVE_ERROR_SECONDS,
        "per_keep_alive": per_value,
    }
    verdict = "meets" if summary["meets_target"] else "MISSES"
    print(
        f"all: mean |error| {summary['mean_abs_error_s']:.3f} s, max |error| "
        f"{summary['max_abs_error_s']:.3f} s: {verdict} the "
        f"≤ {TARGET_KEEP_ALIVE_ERROR_SECONDS:.0f} s target "
        "(KEDA's cooldown counts from scale-up, not from the last request)"
    )
    return summary


def print_stability(result: dict[str, Any]) -> None:
    print(
        f"\n(b) steady load: {result['rate']:g} req/s x {result['request_seconds']:g} s, "
        f"maxMultiplexing 1 → steady level {result['steady_level']} runners; "
        f"{result['completed']} completed, {result['failed']} failed"
    )
    print("replica timeline (s since load start → replicas):")
    print("  " + ", ".join(f"{t:+.1f}→{r}" for t, r in result["timeline"]))
    low, high = result["window"]
    print(
        f"replica changes after first reaching {result['steady_level']}: "
        f"{result['changes_after_first_steady']} (target 0); inside the measured window "
        f"{low:g}-{high:g} s: {result['changes_in_window']} "
        f"(replicas {result['replicas_at_window_start']} at its start); "
        f"max replicas {result['max_replicas']}"
    )


def main() -> int:
    arguments = parse_arguments()
    harness.raise_keyboard_interrupt_on_sigterm()
    keep_alive_trials: list[dict[str, float]] = []
    stability: dict[str, Any] | None = None
    with harness.cluster_kubeconfig(arguments.kubeconfig) as kubeconfig:
        api_client = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig)
        )
        with (
            harness.fresh_namespace(api_client, "bench-scaling") as namespace,
            harness.whole_system(
                kubeconfig, namespace, arguments.workdir, arguments.gateway_arg
            ) as system,
            harness.Recorder(api_client, namespace) as recorder,
        ):
            fal_client = harness.use_fal_client(system)
            if not arguments.skip_keep_alive:
                keep_alive_trials = measure_keep_alive(
                    system, recorder, fal_client, api_client, namespace, arguments
                )
            if not arguments.skip_load:
                stability = measure_stability(
                    system, recorder, fal_client, api_client, namespace, arguments
                )
    report: dict[str, Any] = {"bench": "scaling"}
    if keep_alive_trials:
        report["keep_alive"] = print_keep_alive(keep_alive_trials)
    if stability is not None:
        print_stability(stability)
        report["steady_load"] = stability
    print(json.dumps(report))
    bench_results.write(arguments.json, "scaling", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
