"""`python -m e2e.chaos [CASE ...]`: run the chaos cases and print one line of figures each."""

from __future__ import annotations

import argparse
import pathlib
import signal
import sys
import tempfile
import time
import traceback
from types import FrameType

from e2e.chaos import ChaosTimeout, load
from e2e.chaos.cases import CASES

CASE_TIMEOUT = 600
"""Seconds one case may take, faults, restarts and collection included."""


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise ChaosTimeout(f"the case took longer than {CASE_TIMEOUT} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.chaos", description=__doc__)
    parser.add_argument(
        "cases", nargs="*", metavar="CASE", help=f"cases to run (default: all): {', '.join(CASES)}"
    )
    parser.add_argument(
        "--workdir",
        type=pathlib.Path,
        default=None,
        help="keep every process's log here (default: a temp dir, removed)",
    )
    args = parser.parse_args(argv)
    selected = args.cases or list(CASES)
    unknown = [name for name in selected if name not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    signal.signal(signal.SIGALRM, _on_alarm)
    tallies: list[load.Tally] = []
    with tempfile.TemporaryDirectory(prefix="kubefal-chaos-") as scratch:
        root = args.workdir or pathlib.Path(scratch)
        for name in selected:
            workdir = root / name
            workdir.mkdir(parents=True, exist_ok=True)
            print(f"== {name} ...", flush=True)
            started = time.monotonic()
            signal.alarm(CASE_TIMEOUT)
            try:
                tally = CASES[name](workdir)
            except Exception as error:
                tally = load.Tally(name)
                tally.check(f"the case ran to the end: {type(error).__name__}: {error}", False)
                traceback.print_exc()
                print(f"   logs: {workdir}", flush=True)
            finally:
                signal.alarm(0)
            tally.notes.append(f"took {time.monotonic() - started:.0f} s")
            tallies.append(tally)
            _print_case(tally)
    _print_table(tallies)
    return 0 if all(tally.passed for tally in tallies) else 1


def _print_case(tally: load.Tally) -> None:
    for name, holds in tally.checks:
        print(f"   [{'ok' if holds else 'FAIL'}] {name}")
    for note in tally.notes[:10]:
        print(f"   - {note}")


def _print_table(tallies: list[load.Tally]) -> None:
    print()
    header = (
        "case",
        "accepted",
        "completed",
        "failed",
        "lost",
        "wrong",
        "run twice",
        "peak MiB",
        "result",
    )
    rows = [
        (
            t.case,
            t.accepted,
            t.completed,
            t.failed,
            t.lost,
            t.wrong,
            t.run_twice,
            f"{t.peak_rss_mib:.0f}",
            "pass" if t.passed else "FAIL",
        )
        for t in tallies
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


if __name__ == "__main__":
    sys.exit(main())
