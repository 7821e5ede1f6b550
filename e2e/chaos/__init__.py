"""`make chaos`: the reliability suite that treats every process as one kill -9 from restarting.

Each case starts real processes on 127.0.0.1 (gateway, runners, redis-server, and for the
operator case the local control plane), drives them with a bounded load, injects one fault
(kill -9, SIGSTOP, a hostile client) and prints, per case, requests accepted / completed /
lost / answered wrongly / run twice and the gateway's peak memory. A case passes when nothing
accepted is lost, nobody gets somebody else's answer, and every limit it checks holds.
`python -m e2e.chaos --help` lists the cases.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

from testkit import waiting

CHAOS_APP = f"{pathlib.Path(__file__).parent / 'app.py'}::ChaosApp"


class ChaosTimeout(RuntimeError):
    """A case waited longer than its bound for a condition."""


def wait_until(predicate: Callable[[], object], *, timeout: float, what: str) -> None:
    try:
        waiting.wait_for(predicate, timeout=timeout, interval=0.05, description=what)
    except waiting.ConditionTimeout as timeout_error:
        raise ChaosTimeout(str(timeout_error)) from timeout_error
