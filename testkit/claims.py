"""Claim files: a resource of this machine (a pod IP range, the one kubelet) that concurrent e2e
sessions share, held by whoever the file names while that holder lives.

Taking over a stale claim is read, judge, replace: two sessions that both read the same stale
holder would otherwise both replace it and both hold the resource. So every take, rewrite and
release runs under an exclusive ``flock`` of a sibling ``<name>.lock`` file, and a rewrite
replaces the file whole (``os.replace``), so no reader sees it empty or half written.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def _locked(path: pathlib.Path) -> Iterator[None]:
    descriptor = os.open(path.with_name(path.name + ".lock"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _read(path: pathlib.Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _replace(path: pathlib.Path, holder: str) -> None:
    partial = path.with_name(f"{path.name}.{os.getpid()}.part")
    partial.write_text(holder)
    os.replace(partial, path)


def take(path: pathlib.Path, holder: str, *, stale: Callable[[str], bool]) -> bool:
    """Write ``holder`` to ``path`` when no claim is there or ``stale(the claim)`` says its
    holder is gone; False (``path`` untouched) while another holder has it."""
    with _locked(path):
        current = _read(path)
        if current is not None and not stale(current):
            return False
        _replace(path, holder)
        return True


def hold(path: pathlib.Path, holder: str) -> None:
    """Rewrite one's own claim (e.g. to name the process that keeps it from now on)."""
    with _locked(path):
        _replace(path, holder)


def release(path: pathlib.Path, *, mine: Callable[[str], bool]) -> None:
    """Remove the claim if ``mine(the claim)``: never one another session took over."""
    with _locked(path):
        current = _read(path)
        if current is not None and mine(current):
            path.unlink()
