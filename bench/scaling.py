"""Does kubefal keep runners just as long as ``keepAlive`` says, and how many does a load start?

Two measurements on the whole system on one machine (``e2e/system.py``: the real gateway,
the operator with the builtin actuator, a pod runner playing the kubelet), with the real
``fal_client`` over TLS and the sleepy app (``e2e/apps/sleepy.py``):

(a) keep-alive accuracy. For each ``keepAlive`` value, an app with ``minConcurrency: 0``
    serves one request at a time from zero; the observed idle time is from the end of the
    last request (inside the app: its ``started`` plus the requested sleep) to the moment
    a watch sees the Deployment's replicas drop. Target: |idle - keepAlive| ≤ 1 s. The
    anchor, KEDA, counts its 300 s cooldown from scale-up, not from the last request
    (kedacore/http-add-on#881).

(b) scaling policies side by side, in the same run: fal's formula (``policy: fal``, the
    default) and ``policy: countStarting`` (docs/design-decisions.md, "Cold starts that do not
    overshoot"), each on its own app with ``maxMultiplexing: 1``, ``minConcurrency: 0`` and
    the same keepAlive, primed first with one request from zero (so the gateway has seen one
    cold start and one request time of the app, as any app that served before), then back at
    zero before each trace:

    * steady: a constant rate (0.5 s each at 3 req/s: 1.5 busy runners on average, so 2 are
      needed) for a warm-up and then a measured window. The replica timeline is printed, with
      the replica changes after the first scale-up to the steady level (target: none beyond
      it), over the whole run and inside the measured window. From zero, during the first
      cold start the queue builds up and fal's formula asks for one runner per queued
      request; the target for countStarting is a peak of at most 3 runners with a p99
      latency at most 1.2x fal's.
    * bursty: on/off traffic, clumps of requests at a high rate for a few seconds, then a
      pause longer than keepAlive (so each burst meets a cold start), a few cycles.

    Per trace and policy: requests completed and failed, peak runners (the Deployment's
    replicas), runner-seconds per completed request (replicas integrated from the first
    request until the app is back at zero: what the runners hold, GPUs on a real cluster)
    and the p50/p99 latency from submit to result as fal_client sees it (its 0.1 s polls
    included); then countStarting's figures as ratios of fal's. The bench asserts nothing
    on timing: it prints, and exits non-zero only on errors.

    python bench/scaling.py                                # local control plane, ~8 minutes
    python bench/scaling.py --skip-keep-alive              # only (b), ~6 minutes
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
import urllib.request
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench import results as bench_results
from bench import scale_from_zero as harness  # found through the sys.path entry above
from e2e import system as whole
from testkit import waiting

TARGET_KEEP_ALIVE_ERROR_SECONDS = 1.0
POLICIES = ("fal", "countStarting")
"""spec.scaling.policy values; the first is the baseline of the ratios."""
TRACES = ("steady", "bursty")
TARGET_STEADY_PEAK = 3
"""countStarting on the steady load: at most this many runners at the peak."""
TARGET_STEADY_P99_RATIO = 1.2
"""countStarting on the steady load: p99 latency at most this times fal's."""


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
    parser.add_argument(
        "--policies",
        nargs="+",
        default=list(POLICIES),
        choices=list(POLICIES),
        help="spec.scaling.policy values to run side by side (default: both)",
    )
    parser.add_argument(
        "--traces",
        nargs="+",
        default=list(TRACES),
        choices=list(TRACES),
        help="load traces to run (default: both)",
    )
    parser.add_argument(
        "--burst-rate", type=float, default=4.0, help="bursty trace: requests/s while on"
    )
    parser.add_argument(
        "--burst-clump", type=int, default=4, help="bursty trace: requests sent at once"
    )
    parser.add_argument(
        "--burst-seconds", type=float, default=5.0, help="bursty trace: seconds on per cycle"
    )
    parser.add_argument(
        "--burst-pause",
        type=float,
        default=12.0,
        help="bursty trace: seconds off per cycle (longer than keepAlive: each burst meets a "
        "cold start)",
    )
    parser.add_argument("--burst-cycles", type=int, default=3, help="bursty trace: cycles")
    parser.add_argument("--skip-keep-alive", action="store_true", help="only the policies (b)")
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


# -- (b) scaling policies side by side --


def steady_schedule(arguments: argparse.Namespace) -> list[float]:
    """Send times (s from the start) of the steady trace: warm-up plus measured window."""
    count = int(arguments.rate * (arguments.warmup_seconds + arguments.load_seconds))
    return [index / arguments.rate for index in range(count)]


def bursty_schedule(arguments: argparse.Namespace) -> list[float]:
    """Send times of the bursty trace: clumps at ``burst_rate`` while on, then a pause."""
    times = []
    cycle = arguments.burst_seconds + arguments.burst_pause
    clumps = max(1, round(arguments.burst_rate * arguments.burst_seconds / arguments.burst_clump))
    gap = arguments.burst_clump / arguments.burst_rate
    for index in range(arguments.burst_cycles):
        for clump in range(clumps):
            times.extend([index * cycle + clump * gap] * arguments.burst_clump)
    return times


def run_trace(
    fal_client: Any, app_id: str, schedule: list[float], *, request_seconds: float
) -> list[float | None]:
    """Submit at the scheduled times; wait for all; each request's latency (None: failed)."""

    def one(index: int) -> float:
        sent = time.monotonic()
        handle = fal_client.submit(
            app_id, arguments={"seconds": request_seconds, "tag": f"load-{index}"}
        )
        handle.get(interval=0.1)
        return time.monotonic() - sent

    futures = []
    started = time.monotonic()
    # One thread per request that may be waiting at once: a full pool would delay submissions.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=256)
    try:
        for index, offset in enumerate(schedule):
            delay = started + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # the schedule, not a wait for a condition
            futures.append(pool.submit(one, index))
        concurrent.futures.wait(futures, timeout=300)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # on Ctrl-C, do not start queued ones
    return [
        f.result() if f.done() and not f.cancelled() and f.exception() is None else None
        for f in futures
    ]


def runner_seconds(timeline: list[tuple[float, int]], start: float, end: float) -> float:
    """Replicas integrated over [start, end] (the count before ``start`` holds at ``start``)."""
    total = 0.0
    level = 0
    moment = start
    for when, replicas in timeline:
        if when <= start:
            level = replicas
            continue
        if when >= end:
            break
        total += level * (when - moment)
        level, moment = replicas, when
    return total + level * max(0.0, end - moment)


def app_name(trace: str, policy: str) -> str:
    return f"{trace}-{policy.lower()}"


def deploy_and_prime(
    system: whole.System,
    recorder: harness.Recorder,
    fal_client: Any,
    api_client: k8s.ApiClient,
    namespace: str,
    arguments: argparse.Namespace,
    *,
    name: str,
    policy: str,
) -> None:
    """The app with ``policy``, primed with one request from zero, back at zero."""
    harness.deploy(
        api_client,
        namespace,
        name=name,
        scaling={
            "minConcurrency": 0,
            "maxMultiplexing": 1,
            "keepAlive": arguments.load_keep_alive,
            "scalingDelay": arguments.scaling_delay,
            "policy": policy,
        },
    )
    harness.wait_scaled_to_zero(system, recorder, name)
    fal_client.subscribe(
        f"{namespace}/{name}", arguments={"seconds": arguments.request_seconds, "tag": "prime"}
    )
    harness.wait_scaled_to_zero(system, recorder, name)


def gateway_view(system: whole.System, namespace: str, name: str) -> dict[str, Any]:
    """What the gateway knows of the app for the countStarting policy (its scaling signal)."""
    url = system.admin_url(f"/_kubefal/apps/{namespace}/{name}/scaling")
    with urllib.request.urlopen(url, timeout=10) as response:
        signal = json.loads(response.read())
    return {
        key: signal.get(key)
        for key in ("policy", "meanRequestSeconds", "coldStartSeconds", "startingRunners")
    }


def measure_policy(
    system: whole.System,
    recorder: harness.Recorder,
    fal_client: Any,
    namespace: str,
    arguments: argparse.Namespace,
    *,
    trace: str,
    name: str,
) -> dict[str, Any]:
    """One trace against one (primed, idle) app: the figures of (b)."""
    schedule = steady_schedule(arguments) if trace == "steady" else bursty_schedule(arguments)
    before = gateway_view(system, namespace, name)
    load_start = time.time()
    latencies = run_trace(
        fal_client, f"{namespace}/{name}", schedule, request_seconds=arguments.request_seconds
    )
    load_end = time.time()
    harness.wait_scaled_to_zero(system, recorder, name, timeout=300)
    timeline = [(t, r) for t, r in recorder.timeline(name) if t >= load_start - 0.5]
    back_at_zero = next((t for t, r in timeline if t >= load_end and r == 0), time.time())
    done = [latency for latency in latencies if latency is not None]
    result: dict[str, Any] = {
        "requests": len(latencies),
        "completed": len(done),
        "failed": len(latencies) - len(done),
        "peak_runners": max((r for t, r in timeline if t <= back_at_zero), default=0),
        "runner_seconds": round(runner_seconds(timeline, load_start, back_at_zero), 2),
        "p50_s": round(harness.percentile(done, 0.50), 3) if done else None,
        "p99_s": round(harness.percentile(done, 0.99), 3) if done else None,
        "timeline": [(round(t - load_start, 3), r) for t, r in timeline],
        "gateway_before": before,
        "gateway_after": gateway_view(system, namespace, name),
    }
    result["runner_seconds_per_request"] = (
        round(result["runner_seconds"] / len(done), 3) if done else None
    )
    if trace == "steady":
        result.update(steadiness(arguments, timeline, load_start, load_end))
    return result


def steadiness(
    arguments: argparse.Namespace,
    timeline: list[tuple[float, int]],
    load_start: float,
    load_end: float,
) -> dict[str, Any]:
    """Replica changes of the steady trace after reaching the steady level, and in the window."""
    steady_level = math.ceil(arguments.rate * arguments.request_seconds)
    window_start = load_start + arguments.warmup_seconds
    window_end = min(load_end, window_start + arguments.load_seconds)
    first_steady = next((t for t, r in timeline if t >= load_start and r >= steady_level), None)
    before_window = [r for t, r in timeline if t <= window_start]
    return {
        "rate": arguments.rate,
        "request_seconds": arguments.request_seconds,
        "steady_level": steady_level,
        "changes_after_first_steady": (
            sum(1 for t, _ in timeline if first_steady < t <= load_end)
            if first_steady is not None
            else None
        ),
        "changes_in_window": sum(1 for t, _ in timeline if window_start <= t <= window_end),
        "replicas_at_window_start": before_window[-1] if before_window else None,
        "max_replicas": max((r for t, r in timeline if t <= load_end), default=0),
        "window": [arguments.warmup_seconds, round(window_end - load_start, 3)],
    }


def measure_policies(
    system: whole.System,
    recorder: harness.Recorder,
    fal_client: Any,
    api_client: k8s.ApiClient,
    namespace: str,
    arguments: argparse.Namespace,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Every trace under every policy, one after the other in this run."""
    for trace in arguments.traces:
        for policy in arguments.policies:
            deploy_and_prime(
                system,
                recorder,
                fal_client,
                api_client,
                namespace,
                arguments,
                name=app_name(trace, policy),
                policy=policy,
            )
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for trace in arguments.traces:
        for policy in arguments.policies:
            print(f"(b) {trace} trace, policy {policy} ...", file=sys.stderr)
            results.setdefault(trace, {})[policy] = measure_policy(
                system,
                recorder,
                fal_client,
                namespace,
                arguments,
                trace=trace,
                name=app_name(trace, policy),
            )
    return results


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


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or baseline is None or baseline == 0:
        return None
    return round(value / baseline, 3)


def print_policies(
    results: dict[str, dict[str, dict[str, Any]]], arguments: argparse.Namespace
) -> dict[str, Any]:
    """The side-by-side table, countStarting as ratios of fal, and the steady target."""
    print(
        "\n(b) scaling policies side by side (maxMultiplexing 1, keepAlive "
        f"{arguments.load_keep_alive:g} s, each app primed with one request, from zero)"
    )
    print(
        f"{'trace':<8}{'policy':<15}{'done':>6}{'failed':>7}{'peak':>6}"
        f"{'runner-s':>10}{'runner-s/req':>14}{'p50 s':>8}{'p99 s':>8}"
    )
    ratios: dict[str, dict[str, float | None]] = {}
    for trace, by_policy in results.items():
        for policy, figures in by_policy.items():
            print(
                f"{trace:<8}{policy:<15}{figures['completed']:>6}{figures['failed']:>7}"
                f"{figures['peak_runners']:>6}{figures['runner_seconds']:>10.1f}"
                f"{figures['runner_seconds_per_request'] or 0:>14.3f}"
                f"{figures['p50_s'] or 0:>8.2f}{figures['p99_s'] or 0:>8.2f}"
            )
        for policy, figures in by_policy.items():
            view = figures["gateway_before"]
            print(
                f"  {trace} {policy}: the gateway knew a mean request time of "
                f"{view['meanRequestSeconds']} s and a cold start of {view['coldStartSeconds']} s "
                "at the start; replicas (s since the first request → replicas):"
            )
            print("    " + ", ".join(f"{t:+.1f}→{r}" for t, r in figures["timeline"]))
        baseline, *others = list(by_policy)
        for other in others:
            ours, theirs = by_policy[other], by_policy[baseline]
            ratios[f"{trace}/{other}"] = {
                key: ratio(ours[key], theirs[key])
                for key in ("peak_runners", "runner_seconds_per_request", "p50_s", "p99_s")
            }
            shown = ", ".join(
                f"{key} {value:.2f}" if value is not None else f"{key} n/a"
                for key, value in ratios[f"{trace}/{other}"].items()
            )
            print(f"  {trace}: {other} / {baseline}: {shown}")
    summary: dict[str, Any] = {"ratios": ratios}
    steady = results.get("steady", {})
    if "countStarting" in steady and "fal" in steady:
        peak = steady["countStarting"]["peak_runners"]
        p99_ratio = ratios.get("steady/countStarting", {}).get("p99_s")
        meets = (
            peak <= TARGET_STEADY_PEAK
            and p99_ratio is not None
            and (p99_ratio <= TARGET_STEADY_P99_RATIO)
        )
        summary["steady_target"] = {
            "peak_runners": peak,
            "p99_ratio": p99_ratio,
            "meets": meets,
        }
        print(
            f"steady load, countStarting: peak {peak} runners (target ≤ {TARGET_STEADY_PEAK}; "
            f"fal {steady['fal']['peak_runners']}), p99 {p99_ratio}x fal's (target ≤ "
            f"{TARGET_STEADY_P99_RATIO}): {'meets' if meets else 'MISSES'} the target"
        )
        for policy, figures in steady.items():
            print(
                f"steady load, {policy}: replica changes after first reaching "
                f"{figures['steady_level']}: {figures['changes_after_first_steady']}; inside the "
                f"measured window {figures['window'][0]:g}-{figures['window'][1]:g} s: "
                f"{figures['changes_in_window']} (replicas {figures['replicas_at_window_start']} "
                "at its start)"
            )
    return summary


def main() -> int:
    arguments = parse_arguments()
    harness.raise_keyboard_interrupt_on_sigterm()
    keep_alive_trials: list[dict[str, float]] = []
    policies: dict[str, dict[str, dict[str, Any]]] = {}
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
                policies = measure_policies(
                    system, recorder, fal_client, api_client, namespace, arguments
                )
    report: dict[str, Any] = {"bench": "scaling"}
    if keep_alive_trials:
        report["keep_alive"] = print_keep_alive(keep_alive_trials)
    if policies:
        report["policies"] = policies
        report["policy_summary"] = print_policies(policies, arguments)
        baseline = policies.get("steady", {}).get("fal")
        if baseline is not None:  # the default policy's steady load, as before (b) compared
            report["steady_load"] = baseline
    print(json.dumps(report))
    bench_results.write(arguments.json, "scaling", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
