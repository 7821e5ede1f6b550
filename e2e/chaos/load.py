"""Load, bookkeeping and measurement for the chaos suite.

A `Job` is one queue request with a tag and a nonce. `submit_all` sends them the way a patient
client would (a connection that breaks before the gateway answers is tried again, bounded), and a
job counts as *accepted* only once the gateway acknowledged it with a request id. `collect`
polls each accepted job to the end; `Tally` then says, per case, how many were accepted,
completed with their own answer, answered with somebody else's (wrong), lost, and run more than
once (counted inside the app, see `app.py`).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import pathlib
import secrets
import threading
import time
from typing import Any

import httpx
import psutil

SUBMIT_RETRY_SECONDS = 60.0
"""How long a client keeps retrying a submit the gateway never acknowledged."""


@dataclasses.dataclass
class Job:
    tag: str
    nonce: str = dataclasses.field(default_factory=lambda: secrets.token_hex(8))
    arguments: dict[str, Any] = dataclasses.field(default_factory=dict)
    request_id: str | None = None
    refused: int | None = None
    """The gateway's final 4xx/5xx status when it refused the submit (not accepted)."""
    outcome: str = "pending"
    """pending | completed | wrong | failed | lost."""
    detail: str = ""

    def payload(self) -> dict[str, Any]:
        return {"tag": self.tag, "nonce": self.nonce, **self.arguments}


def make_jobs(prefix: str, count: int, **arguments: Any) -> list[Job]:
    return [Job(tag=f"{prefix}{index:04d}", arguments=dict(arguments)) for index in range(count)]


async def submit_all(
    base_url: str | list[str],
    app_id: str,
    jobs: list[Job],
    *,
    concurrency: int = 32,
    headers: dict[str, str] | None = None,
    verify: Any = False,
    on_accepted: Any = None,
) -> None:
    """Submit every job; connection failures are retried until SUBMIT_RETRY_SECONDS pass."""
    urls = [base_url] if isinstance(base_url, str) else base_url
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=30, verify=verify) as client:

        async def submit(index: int, job: Job) -> None:
            deadline = time.monotonic() + SUBMIT_RETRY_SECONDS
            async with semaphore:
                while True:
                    url = f"{urls[index % len(urls)]}/{app_id}"
                    try:
                        response = await client.post(url, json=job.payload(), headers=headers)
                    except httpx.HTTPError as error:
                        job.detail = f"submit: {type(error).__name__}"
                    else:
                        if response.status_code == 200:
                            job.request_id = response.json()["request_id"]
                            if on_accepted is not None:
                                on_accepted(job)
                            return
                        if response.status_code not in (502, 503):
                            job.refused = response.status_code
                            job.detail = response.text[:200]
                            return
                        job.detail = f"submit: {response.status_code}"
                    if time.monotonic() > deadline:
                        job.refused = 0
                        return
                    await asyncio.sleep(0.2)

        await asyncio.gather(*(submit(index, job) for index, job in enumerate(jobs)))


async def collect(
    base_url: str | list[str],
    app_id: str,
    jobs: list[Job],
    *,
    timeout: float,
    headers: dict[str, str] | None = None,
    verify: Any = False,
) -> None:
    """Poll every accepted job until it ends or `timeout` passes (then it is lost)."""
    urls = [base_url] if isinstance(base_url, str) else base_url
    semaphore = asyncio.Semaphore(32)
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=10, verify=verify) as client:

        async def wait(index: int, job: Job) -> None:
            base = f"{urls[index % len(urls)]}/{app_id}/requests/{job.request_id}"
            async with semaphore:
                while time.monotonic() < deadline:
                    try:
                        status = await client.get(base + "/status", headers=headers)
                        if status.status_code == 200 and status.json()["status"] == "COMPLETED":
                            result = await client.get(base, headers=headers)
                            judge(job, result)
                            return
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.1)
            job.outcome = "lost"
            job.detail = "not completed in time"

        await asyncio.gather(
            *(wait(index, job) for index, job in enumerate(jobs) if job.request_id is not None)
        )


def judge(job: Job, result: httpx.Response) -> None:
    if result.status_code != 200:
        job.outcome = "failed"
        job.detail = f"{result.status_code} {result.text[:200]}"
        return
    body = result.json()
    if body.get("tag") == job.tag and body.get("nonce") == job.nonce:
        job.outcome = "completed"
    else:
        job.outcome = "wrong"
        job.detail = f"expected {job.tag}/{job.nonce}, got {body}"


def executions(exec_dir: pathlib.Path) -> collections.Counter[str]:
    return collections.Counter(path.name.split(".")[0] for path in exec_dir.iterdir())


@dataclasses.dataclass
class Tally:
    case: str
    accepted: int = 0
    completed: int = 0
    failed: int = 0
    unexpected_failures: int = 0
    lost: int = 0
    wrong: int = 0
    run_twice: int = 0
    peak_rss_mib: float = 0.0
    checks: list[tuple[str, bool]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def count(
        self,
        jobs: list[Job],
        exec_dir: pathlib.Path | None = None,
        *,
        expect_failed: frozenset[str] = frozenset(),
    ) -> None:
        runs = executions(exec_dir) if exec_dir is not None else collections.Counter()
        for job in jobs:
            if job.request_id is None:
                continue
            self.accepted += 1
            if job.outcome == "completed":
                self.completed += 1
            elif job.outcome == "failed" and job.tag in expect_failed:
                self.failed += 1
            elif job.outcome == "failed":
                self.failed += 1
                self.unexpected_failures += 1
                self.notes.append(f"{job.tag} failed unexpectedly: {job.detail}")
            elif job.outcome == "wrong":
                self.wrong += 1
                self.notes.append(f"{job.tag}: {job.detail}")
            else:
                self.lost += 1
                self.notes.append(f"{job.tag} lost: {job.detail}")
            if runs.get(job.tag, 0) > 1:
                self.run_twice += 1

    def check(self, name: str, holds: bool) -> None:
        self.checks.append((name, holds))

    @property
    def passed(self) -> bool:
        return (
            self.lost == 0
            and self.wrong == 0
            and self.unexpected_failures == 0
            and all(holds for _, holds in self.checks)
        )


class PeakMemory:
    """Samples the resident memory of a process (and its children) every 50 ms in a thread."""

    def __init__(self) -> None:
        self.peak_bytes = 0
        self._pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, pid: int) -> None:
        self._pids.add(pid)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for pid in list(self._pids):
                try:
                    rss = psutil.Process(pid).memory_info().rss
                except psutil.Error:
                    continue
                self.peak_bytes = max(self.peak_bytes, rss)

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2**20
