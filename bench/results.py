"""Machine-readable bench results: the file each bench writes with ``--json PATH``.

``make bench`` (bench/report.py) collects these files into one report, so no figure is ever
parsed back out of a bench's printed table. A results file is one JSON object: the bench's
name, its command line, the machine (cores, load average when the results were written) and
the bench's own figures under ``results`` (each bench's keys are its own; bench/report.py
knows which of them carry a target).
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import sys
from typing import Any

import orjson


def add_option(parser: argparse.ArgumentParser) -> None:
    """The ``--json PATH`` option every bench has."""
    parser.add_argument(
        "--json",
        metavar="PATH",
        default=None,
        help="also write the results as JSON to PATH (what `make bench` collects)",
    )


def write(path: str | None, bench: str, results: dict[str, Any]) -> None:
    """Write ``results`` of ``bench`` to ``path`` (nothing when ``path`` is None)."""
    if path is None:
        return
    document = {
        "bench": bench,
        "argv": sys.argv[1:],
        "written_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
        "results": results,
    }
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
