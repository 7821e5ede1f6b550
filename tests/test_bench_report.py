"""The bench report generator (bench/report.py) over synthetic results files: no bench runs here.

What `make bench` writes, and what the README's performance table is copied from, must put each
figure beside its own target and its same-run baseline, say whether the target is met, note the
machine's load, and survive a bench that failed or wrote results it does not understand.
"""

from __future__ import annotations

import pathlib
from typing import Any

import orjson
import pytest

from bench import report


def gateway_rows(sync: float, queue: float, queue_fal: float) -> dict[str, Any]:
    def row(cpu: float, p50: float = 1.0) -> dict[str, float]:
        return {"p50": p50, "p99": 2 * p50, "mean": p50, "cpu_ms_per_request": cpu}

    return {
        "direct": row(0.0, 1.0),
        "sync": row(sync, 1.25),
        "sync-tls": row(sync * 1.5),
        "queue": {**row(queue), "polls_per_request": 9.0},
        "queue-fal": {**row(queue_fal), "polls_per_request": 2.0},
    }


def stages(overhead: float, share: float, ready: float) -> dict[str, dict[str, float]]:
    def q(p95: float) -> dict[str, float]:
        return {"p50": p95 / 2, "p95": p95, "mean": p95 / 2, "max": p95}

    return {
        "overhead": q(overhead),
        "kubefal_share": q(share),
        "ready_to_dispatch": q(ready),
        "total": q(2 * overhead),
    }


RESULTS: dict[str, tuple[str, dict[str, Any]]] = {
    "gateway": (
        "gateway",
        {
            "requests": 1000,
            "by_concurrency": {
                "1": gateway_rows(sync=0.25, queue=0.9, queue_fal=0.55),
                "32": gateway_rows(sync=0.11, queue=0.45, queue_fal=0.6),
            },
        },
    ),
    "runner": (
        "runner",
        {
            "concurrency": 16,
            "servers": {
                "sdk alone": {"requests_per_s": 1000.0},
                "kubefal runner": {"requests_per_s": 960.0},
            },
            "p50_ratio": 1.0,
            "wrapper_added_us": 6.0,
            "target_throughput_ratio": 0.95,
        },
    ),
    "storage": (
        "storage",
        {
            "backend": "local",
            "client": "curl",
            "size_mb": 20,
            "upload": {
                "direct_mb_per_s": 100.0,
                "gateway_mb_per_s": 70.0,
                "ratio": 0.7,
                "gateway_cpu_ms_per_mb": 3.0,
            },
        },
    ),
    "scale_from_zero": (
        "scale_from_zero",
        {"trials": 5, "runners_announce": True, "stages": stages(0.9, 0.14, 0.031)},
    ),
    "scale_from_zero_watch": (
        "scale_from_zero",
        {"trials": 5, "runners_announce": False, "stages": stages(1.2, 0.33, 0.177)},
    ),
    "scaling": (
        "scaling",
        {
            "keep_alive": {"max_abs_error_s": 0.2, "mean_abs_error_s": 0.1, "target_s": 1.0},
            "steady_load": {
                "rate": 3.0,
                "request_seconds": 0.5,
                "steady_level": 2,
                "changes_in_window": 0,
                "max_replicas": 10,
                "timeline": [[0.0, 0], [0.4, 1], [1.0, 10], [20.0, 2]],
                "window": [15.0, 35.0],
            },
            # bench/scaling.py --policies: both policies per trace, same run
            "policies": {
                "steady": {
                    "fal": {"peak_runners": 10, "p99_s": 2.0, "runner_seconds_per_request": 1.5},
                    "countStarting": {
                        "peak_runners": 3,
                        "p99_s": 2.6,
                        "runner_seconds_per_request": 0.9,
                    },
                },
                "bursty": {
                    "fal": {"peak_runners": 8, "p99_s": 3.0},
                    "countStarting": {"peak_runners": 5, "p99_s": 3.3},
                },
            },
        },
    ),
    # A bench whose results the generator does not understand (a renamed key, say).
    "actuator": ("actuator", {"unexpected": 1}),
}


def write_run(directory: pathlib.Path) -> None:
    runs = []
    for run_id, (bench, results) in RESULTS.items():
        document = {"bench": bench, "argv": [], "cpus": 2, "loadavg": [3.0], "results": results}
        (directory / f"{run_id}.json").write_bytes(orjson.dumps(document))
        runs.append(
            {
                "id": run_id,
                "bench": bench,
                "command": ["/venv/python", f"bench/{bench}.py", "--trials", "5", "--json", "x"],
                "returncode": 0,
                "seconds": 12.0,
                "loadavg_before": [3.5, 3.0, 2.0],
                "loadavg_after": [4.25, 3.0, 2.0],
            }
        )
    # A bench that failed before writing anything.
    runs.append(
        {
            "id": "reconcile",
            "bench": "reconcile",
            "command": ["/venv/python", "bench/reconcile.py", "--n", "200"],
            "returncode": 1,
            "seconds": 3.0,
            "loadavg_before": [4.0],
            "loadavg_after": [4.0],
        }
    )
    meta = {
        "started": "2026-01-01T00:00:00Z",
        "finished": "2026-01-01T00:20:00Z",
        "profile": "short",
        "commit": "abc1234",
        "rerun": [{"at": "2026-01-01T00:30:00Z", "ids": ["scaling"]}],
        "cpus": 2,
        "loadavg_before": [2.5, 2.0, 1.0],
        "loadavg_after": [6.75, 3.0, 2.0],
        "runs": runs,
    }
    (directory / "run.json").write_bytes(orjson.dumps(meta))


def table_row(text: str, what: str) -> list[str]:
    rows = [line for line in text.splitlines() if line.startswith(f"| {what} |")]
    assert len(rows) == 1, (what, rows)
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    directory = tmp_path_factory.mktemp("bench-run")
    write_run(directory)
    report.render(directory)  # one render (plots included) for the module's tests
    return directory


@pytest.fixture
def rendered(run_dir: pathlib.Path) -> str:
    return (run_dir / "report.md").read_text(encoding="utf-8")


def test_each_figure_stands_beside_its_target_verdict_and_same_run_baseline(rendered: str) -> None:
    queue = table_row(
        rendered, "queue path (submit → result, 2 ms polls): gateway CPU per job, c=32"
    )
    assert queue[1:5] == [
        "0.450 ms",
        "≤ 0.3 (issue 14)",
        "**not met**",
        "0.110 ms (sync path, same run)",
    ]
    fal = table_row(rendered, "queue path with fal_client's 0.1 s polls: gateway CPU per job, c=1")
    assert fal[1] == "0.550 ms" and fal[3] == "met"
    added = table_row(rendered, "gateway sync path: added p50 latency over a direct call, c=1")
    assert added[1] == "0.250 ms" and added[3] == "met" and added[4].startswith("1.00 ms")


def test_relative_targets_compare_against_the_baseline_of_the_same_run(rendered: str) -> None:
    runner = table_row(rendered, "runner vs the fal SDK alone (echo app, c=16): requests/s")
    assert runner[1] == "960 req/s" and runner[3] == "met"  # 0.96 >= 0.95
    upload = table_row(rendered, "file upload through the gateway (20 MB, local, curl, TLS)")
    assert upload[3] == "**not met**"  # 70 < 0.8 x 100
    assert upload[4] == "100 MB/s (the same BlobStore in-process)"


def test_cold_start_figures_take_their_baseline_from_the_watch_only_run(rendered: str) -> None:
    ready = table_row(rendered, "runner ready → first dispatch, p95")
    assert ready[1:4] == ["0.031 s", "≤ 0.02 (issue 14)", "**not met**"]
    assert ready[4].startswith("0.177 s (readiness from the Pod watch only")
    share = table_row(
        rendered, "kubefal's own share (submit → replicas + runner ready → dispatch), p95"
    )
    assert share[1] == "0.140 s" and share[3] == "met" and share[4].startswith("0.330 s")


def test_scaling_policies_stand_beside_fals_formula_of_the_same_run(rendered: str) -> None:
    peak = table_row(rendered, "steady load from zero, countStarting policy: peak runners")
    assert peak[1:5] == [
        "3.00 runners",
        "≤ 3 (issue 14)",
        "met",
        "10.0 runners (fal's formula, same run)",
    ]
    p99 = table_row(rendered, "steady load, countStarting policy: p99 latency")
    assert p99[3] == "**not met**"  # 2.6 > 1.2 x 2.0
    bursty = table_row(rendered, "bursty load from zero, countStarting policy: peak runners")
    assert bursty[2] == "—" and bursty[4].startswith("8.00 runners")


def test_figures_follow_the_run_order_and_pipes_do_not_break_the_table(rendered: str) -> None:
    figures = rendered.split("## Figures")[1].split("## Runs")[0]
    assert figures.index("| gateway sync path") < figures.index("| runner vs the fal SDK")
    assert figures.index("| runner vs the fal SDK") < figures.index("| file upload")
    rows = [line for line in figures.splitlines() if line.startswith("| ")]
    assert all(line.replace("\\|", "").count("|") == 7 for line in rows)


def test_machine_load_and_failures_are_reported(rendered: str, run_dir: pathlib.Path) -> None:
    assert "2 cores, 1-minute load average 2.5 before and 6.8 after the run" in rendered
    gateway = table_row(rendered, "gateway")
    assert gateway[1] == "`python bench/gateway.py --trials 5`"  # no interpreter path or --json
    assert gateway[4] == "3.5 → 4.2" and gateway[5] == "ok"
    failed = table_row(rendered, "reconcile")
    assert failed[2] == "1" and failed[5] == "**missing**"
    garbled = table_row(rendered, "actuator")
    assert garbled[5].startswith("**results not understood (KeyError")
    for image in ("gateway.png", "scale_from_zero.png", "scaling.png", "scaling-timeline.png"):
        assert (run_dir / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({image})" in rendered


def test_readme_table_replaces_only_the_marked_section(tmp_path: pathlib.Path) -> None:
    write_run(tmp_path)
    readme = tmp_path / "README.md"
    before = "# kubefal\n\n## Performance\n\nbuild figures stay\n\n"
    after = "\n\nWhat limits them: prose stays.\n"
    readme.write_text(
        before + report.README_BEGIN + "\n| old | table |\n" + report.README_END + after
    )
    report.rewrite_readme(readme, report.readme_table(tmp_path))
    text = readme.read_text()
    assert text.startswith(before) and text.endswith(after)
    assert "| old | table |" not in text
    row = table_row(text, "queue path (submit → result, 2 ms polls): gateway CPU per job, c=32")
    assert row[1].startswith("0.450 ms (**not met**)")
    assert row[4] == "`python bench/gateway.py --trials 5`"
    assert "commit `abc1234`" in text and "load average 2.5 → 6.8" in text
    assert "re-run into it: scaling at 2026-01-01T00:30:00Z" in text
    # Idempotent: a second rewrite from the same report changes nothing.
    report.rewrite_readme(readme, report.readme_table(tmp_path))
    assert readme.read_text() == text


def test_readme_without_markers_is_refused(tmp_path: pathlib.Path) -> None:
    write_run(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("# kubefal\n")
    with pytest.raises(SystemExit):
        report.rewrite_readme(readme, report.readme_table(tmp_path))
    assert readme.read_text() == "# kubefal\n"
