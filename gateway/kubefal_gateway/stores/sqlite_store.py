"""SQLite queue store: the embedded default for a single gateway replica with a volume.

Why it looks like this (docs/design-decisions.md, "SQLite group commit"): a commit per request costs
~120 µs of gateway CPU; one commit per event-loop turn costs ~30-45 µs spread over every request of
that turn. So writes run at once on the one connection inside an open transaction; a call that must
be durable before it returns (submit, complete, cancel, ...) schedules the ``COMMIT`` for the next
loop turn (``loop.call_soon``) and awaits its own future, which the commit resolves. Writes that
need not be durable at once (lease, renew, log lines) do not force a commit: they ride along with
the next one, or are committed by a timer within `LAZY_COMMIT_SECONDS`, so one request in flight
costs two commits (submit, complete), not three.

SQLite runs in the event-loop thread: with WAL and ``synchronous=NORMAL`` a commit is a write to the
WAL file without fsync (fsync happens at checkpoints), which survives a crash of the process (not a
power loss), the guarantee the gateway promises. Only one process may use a database file (an
exclusive lock on ``<path>.lock`` makes a second gateway fail at start instead of re-running the
first one's jobs; several replicas need the Redis store): the store is the single owner, so at
open it returns jobs left IN_PROGRESS by a previous (crashed) process to the queue (counting an
attempt), and it keeps an in-memory index of queued sequence numbers per app and
priority, which makes lease and ``queue_position`` O(log n) without touching SQL indexes.

This module is over 500 lines because it is one class, `SqliteQueueStore`, implementing the whole
`queueing.QueueStore` protocol on one connection whose transaction and commit schedule every
method shares; splitting its methods across modules would split that one invariant.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import fcntl
import logging
import sqlite3
import time
import typing
from collections.abc import Callable, Sequence
from typing import Any

from kubefal_gateway import queueing
from kubefal_gateway.stores import codec

LOG = logging.getLogger(__name__)

LAZY_COMMIT_SECONDS = 0.05
"""Longest time a write that nobody waits for (lease, renew, log lines) stays uncommitted."""

_QUEUED, _IN_PROGRESS, _COMPLETED = 0, 1, 2
_STATES = (queueing.JobState.IN_QUEUE, queueing.JobState.IN_PROGRESS, queueing.JobState.COMPLETED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    app_id TEXT NOT NULL,
    state INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    submitted_at REAL NOT NULL,
    start_deadline REAL,
    webhook_url TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    holder TEXT,
    lease_until REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    meta BLOB NOT NULL,
    body BLOB,
    result_meta BLOB,
    result_body BLOB,
    completed_at REAL,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS jobs_leased ON jobs (lease_until) WHERE state = 1;
CREATE INDEX IF NOT EXISTS jobs_deadline ON jobs (start_deadline)
    WHERE state = 0 AND start_deadline IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_completed ON jobs (completed_at) WHERE state = 2;
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    line BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_request ON logs (request_id, id);
CREATE TABLE IF NOT EXISTS webhooks (
    delivery_id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    url TEXT NOT NULL,
    result_meta BLOB NOT NULL,
    result_body BLOB NOT NULL,
    attempts INTEGER NOT NULL,
    due_at REAL NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS webhooks_due ON webhooks (due_at);
"""


class _QueuedIndex:
    """Sorted sequence numbers of the queued jobs, per app and priority (mirror of the table)."""

    def __init__(self) -> None:
        self.by_app: dict[str, tuple[list[int], list[int]]] = {}
        self.submitted_at: dict[int, float] = {}

    def lists(self, app_id: str) -> tuple[list[int], list[int]]:
        lists = self.by_app.get(app_id)
        if lists is None:
            lists = ([], [])
            self.by_app[app_id] = lists
        return lists

    def add(self, app_id: str, priority: int, seq: int, submitted_at: float) -> None:
        self.submitted_at[seq] = submitted_at
        seqs = self.lists(app_id)[priority]
        if not seqs or seqs[-1] < seq:
            seqs.append(seq)
        else:
            bisect.insort(seqs, seq)

    def remove(self, app_id: str, priority: int, seq: int) -> None:
        self.submitted_at.pop(seq, None)
        seqs = self.lists(app_id)[priority]
        index = bisect.bisect_left(seqs, seq)
        if index < len(seqs) and seqs[index] == seq:
            del seqs[index]
        if not self.by_app[app_id][0] and not self.by_app[app_id][1]:
            del self.by_app[app_id]

    def position(self, app_id: str, priority: int, seq: int) -> int:
        normal, low = self.lists(app_id)
        if priority == queueing.Priority.NORMAL:
            return bisect.bisect_left(normal, seq)
        return len(normal) + bisect.bisect_left(low, seq)

    def head(self, app_id: str) -> tuple[int, int] | None:
        lists = self.by_app.get(app_id)
        if lists is None:
            return None
        for priority, seqs in enumerate(lists):
            if seqs:
                return priority, seqs[0]
        return None

    def stats(self, app_id: str, waiting_since: float) -> tuple[int, int, float | None]:
        """(queued, queued at or before ``waiting_since``, oldest submit time)."""
        lists = self.by_app.get(app_id)
        if lists is None:
            return 0, 0, None
        times = [self.submitted_at[seq] for seqs in lists for seq in seqs]
        waiting = sum(1 for submitted_at in times if submitted_at <= waiting_since)
        return len(times), waiting, min(times)


class SqliteQueueStore:
    """`queueing.QueueStore` on one SQLite file (see the module docstring)."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        *,
        path: str,
        result_ttl: float,
        max_logs_per_job: int,
        max_attempts: int = queueing.DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        self.path = path
        self.max_attempts = max_attempts
        self.result_ttl = result_ttl
        self._db = connection
        self._max_logs_per_job = max_logs_per_job
        self._loop = asyncio.get_running_loop()
        self._events = queueing.EventHub()
        self._queued = _QueuedIndex()
        self._in_transaction = False
        self._commit_handle: asyncio.Handle | None = None
        self._commit_soon_scheduled = False
        self._commit_waiters: list[asyncio.Future[None]] = []
        self._pending_events: dict[queueing.QueueEvent, None] = {}
        self._redo: list[Callable[[], None]] = []
        """Writes of the open transaction that nobody waits for (lease, renew, requeue): if its
        commit fails they are applied again, since the jobs they concern go on running."""
        self._housekeeping: asyncio.Task[None] | None = None
        self._lock: typing.IO[bytes] | None = None
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: str,
        *,
        result_ttl: float = 3600.0,
        max_logs_per_job: int = 1000,
        housekeeping_interval: float | None = 1.0,
        max_attempts: int = queueing.DEFAULT_MAX_ATTEMPTS,
    ) -> SqliteQueueStore:
        """Open (or create) the database at ``path``; ``":memory:"`` gives a throw-away store.

        Jobs a previous process left IN_PROGRESS go back to the queue (attempts + 1), or complete
        with `queueing.attempts_exhausted_result` once that reaches ``max_attempts``. With a
        ``housekeeping_interval`` a task calls `expire` that often.
        """
        lock = _lock(path)
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA busy_timeout=5000")
        connection.executescript(_SCHEMA)
        _add_owner_column(connection)
        store = cls(
            connection,
            path=path,
            result_ttl=result_ttl,
            max_logs_per_job=max_logs_per_job,
            max_attempts=max_attempts,
        )
        store._lock = lock
        store._load_index()
        # The previous process's leases: this process is the file's only user, so they are lost.
        store._begin()
        store._return_leases(now=time.time(), expired_before=None)
        await store._durable()
        if housekeeping_interval is not None:
            store._housekeeping = queueing.start_housekeeping(store, housekeeping_interval)
        return store

    def _load_index(self) -> None:
        self._queued = _QueuedIndex()
        rows = self._db.execute(
            "SELECT app_id, priority, seq, submitted_at FROM jobs WHERE state = 0 ORDER BY seq"
        ).fetchall()
        for app_id, priority, seq, submitted_at in rows:
            self._queued.add(app_id, priority, seq, submitted_at)

    # ------------------------------------------------------------------ group commit

    def _begin(self) -> None:
        """Open the transaction (if needed); it commits within `LAZY_COMMIT_SECONDS` at most."""
        if self._closed:
            raise queueing.QueueError("the queue store is closed")
        if not self._in_transaction:
            self._db.execute("BEGIN IMMEDIATE")
            self._in_transaction = True
        if self._commit_handle is None:
            self._commit_handle = self._loop.call_later(LAZY_COMMIT_SECONDS, self._commit)

    def _commit_soon(self) -> None:
        """Commit the open transaction at the start of the next loop turn."""
        if not self._commit_soon_scheduled:
            self._commit_soon_scheduled = True
            if self._commit_handle is not None:
                self._commit_handle.cancel()
            self._commit_handle = self._loop.call_soon(self._commit)

    def _durable(self) -> asyncio.Future[None]:
        """A future resolved once the open transaction is committed (next loop turn)."""
        waiter = self._loop.create_future()
        self._commit_waiters.append(waiter)
        self._commit_soon()
        return waiter

    def _commit(self) -> None:
        if self._commit_handle is not None:
            self._commit_handle.cancel()
        self._commit_handle = None
        self._commit_soon_scheduled = False
        if not self._in_transaction:
            return
        waiters, self._commit_waiters = self._commit_waiters, []
        events, self._pending_events = self._pending_events, {}
        redo, self._redo = self._redo, []
        self._in_transaction = False
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as error:
            # The batch is lost: its durable calls (submit, complete, cancel, ...) fail to their
            # callers. Leases, renewals and requeues of the batch are applied again, so a job
            # that runs stays IN_PROGRESS instead of going back to the queue and running twice.
            LOG.error("queue store commit failed, rolled back: %s", error)
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            self._load_index()
            failure = queueing.QueueError(f"queue store commit failed: {error}")
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(failure)
            if redo and not self._closed:
                try:
                    self._begin()
                    for write in redo:
                        write()
                except sqlite3.Error as redo_error:
                    LOG.error("queue store could not re-apply leases: %s", redo_error)
            return
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        for event in events:
            self._events.publish(event)

    def _emit(self, event: queueing.QueueEvent) -> None:
        self._pending_events[event] = None

    # ------------------------------------------------------------------ jobs

    async def submit(self, job: queueing.Job, *, max_queued: int = 0) -> int:
        if max_queued > 0:
            normal, low = self._queued.by_app.get(job.app_id, ((), ()))
            if len(normal) + len(low) >= max_queued:
                raise queueing.QueueFullError(job.app_id, max_queued)
        self._begin()
        try:
            cursor = self._db.execute(
                "INSERT INTO jobs (request_id, app_id, state, priority, submitted_at,"
                " start_deadline, webhook_url, attempts, meta, body, owner)"
                " VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.request_id,
                    job.app_id,
                    int(job.priority),
                    job.submitted_at,
                    job.start_deadline,
                    job.webhook_url,
                    job.attempts,
                    codec.encode_job_meta(job),
                    job.body,
                    job.owner,
                ),
            )
        except sqlite3.IntegrityError:
            raise queueing.DuplicateRequestError(job.request_id) from None
        seq = cursor.lastrowid
        assert seq is not None
        self._queued.add(job.app_id, int(job.priority), seq, job.submitted_at)
        position = self._queued.position(job.app_id, int(job.priority), seq)
        self._emit(queueing.QueueEvent(kind=queueing.EventKind.SUBMITTED, app_id=job.app_id))
        await self._durable()
        return position

    async def view(
        self, request_id: str, *, with_logs: bool = False, with_body: bool = False
    ) -> queueing.JobView | None:
        self._check_open()
        row = self._db.execute(
            "SELECT app_id, state, priority, seq, attempts, cancel_requested, owner, result_meta,"
            f" {'result_body' if with_body else 'NULL'} FROM jobs WHERE request_id = ?",
            (request_id,),
        ).fetchone()
        if row is None:
            return None
        (
            app_id,
            state,
            priority,
            seq,
            attempts,
            cancel_requested,
            owner,
            result_meta,
            result_body,
        ) = row
        position = self._queued.position(app_id, priority, seq) if state == _QUEUED else None
        result = None
        if state == _COMPLETED:
            result = codec.decode_result(result_meta, result_body or b"")
        return queueing.JobView(
            request_id=request_id,
            app_id=app_id,
            state=_STATES[state],
            queue_position=position,
            logs=self._logs(request_id) if with_logs else None,
            result=result,
            cancel_requested=bool(cancel_requested),
            attempts=attempts,
            owner=owner,
        )

    def _logs(self, request_id: str) -> tuple[queueing.LogLine, ...]:
        rows = self._db.execute(
            "SELECT line FROM logs WHERE request_id = ? ORDER BY id", (request_id,)
        ).fetchall()
        return tuple(codec.decode_log_line(line) for (line,) in rows)

    async def queue_position(self, request_id: str) -> int | None:
        self._check_open()
        row = self._db.execute(
            "SELECT app_id, priority, seq FROM jobs WHERE request_id = ? AND state = 0",
            (request_id,),
        ).fetchone()
        if row is None:
            return None
        app_id, priority, seq = row
        return self._queued.position(app_id, priority, seq)

    async def lease(
        self,
        app_id: str,
        *,
        holder: str,
        lease_seconds: float,
        now: float | None = None,
    ) -> queueing.Job | None:
        now = time.time() if now is None else now
        while True:
            head = self._queued.head(app_id)
            if head is None:
                return None
            priority, seq = head
            self._begin()
            row = self._db.execute(
                "UPDATE jobs SET state = 1, holder = ?, lease_until = ? WHERE seq = ? AND state = 0"
                " RETURNING request_id, meta, body, attempts",
                (holder, now + lease_seconds, seq),
            ).fetchone()
            self._queued.remove(app_id, priority, seq)
            if row is None:  # the index and the table disagree: trust the table
                LOG.error("queued job #%d of %s is missing; dropped from the index", seq, app_id)
                continue
            request_id, meta, body, attempts = row
            self._redo_lease(seq, holder, now + lease_seconds)
            job = codec.decode_job(request_id, meta, body, attempts)
            if job.missed_start(now):
                self._finish(
                    request_id,
                    app_id,
                    job.webhook_url,
                    queueing.start_timeout_result(now=now),
                    now=now,
                )
                self._commit_soon()
                continue
            # Durable before the job is dispatched (group commit: one commit per loop turn for
            # every lease of that turn): a lease lost with the process would let a job that
            # crashes its gateway within LAZY_COMMIT_SECONDS run again without counting.
            await self._durable()
            return job

    def _redo_lease(self, seq: int, holder: str, lease_until: float) -> None:
        def redo() -> None:
            row = self._db.execute(
                "UPDATE jobs SET state = 1, holder = ?, lease_until = ? WHERE seq = ? AND state = 0"
                " RETURNING app_id, priority",
                (holder, lease_until, seq),
            ).fetchone()
            if row is not None:
                self._queued.remove(row[0], row[1], seq)
                self._redo.append(redo)

        self._redo.append(redo)

    async def renew(
        self,
        request_id: str,
        *,
        holder: str,
        lease_seconds: float,
        now: float | None = None,
    ) -> queueing.LeaseStatus:
        now = time.time() if now is None else now
        self._begin()
        row = self._db.execute(
            "UPDATE jobs SET lease_until = ? WHERE request_id = ? AND state = 1 AND holder = ?"
            " RETURNING cancel_requested",
            (now + lease_seconds, request_id, holder),
        ).fetchone()
        if row is None:
            return queueing.LeaseStatus.LOST
        lease_until = now + lease_seconds

        def redo() -> None:
            self._db.execute(
                "UPDATE jobs SET lease_until = ? WHERE request_id = ? AND state = 1 AND holder = ?",
                (lease_until, request_id, holder),
            )
            self._redo.append(redo)

        self._redo.append(redo)
        return queueing.LeaseStatus.CANCEL_REQUESTED if row[0] else queueing.LeaseStatus.HELD

    async def note_attempts(self, request_id: str, *, holder: str, attempts: int) -> None:
        self._begin()

        def write() -> None:
            self._db.execute(
                "UPDATE jobs SET attempts = max(attempts, ?)"
                " WHERE request_id = ? AND state = 1 AND holder = ?",
                (attempts, request_id, holder),
            )
            self._redo.append(write)

        write()
        # Durable before the next attempt starts: a lazy commit (up to LAZY_COMMIT_SECONDS)
        # could be lost with the process while that attempt already runs, and the count would
        # restart below it. Retries are rare, so the commit costs nothing on the hot path.
        await self._durable()

    async def complete(
        self,
        request_id: str,
        *,
        holder: str,
        result: queueing.Result,
        now: float | None = None,
    ) -> bool:
        now = time.time() if now is None else now
        self._begin()
        result_meta = codec.encode_result_meta(result)
        row = self._db.execute(
            "UPDATE jobs SET state = 2, holder = NULL, lease_until = NULL, body = NULL,"
            " result_meta = ?, result_body = ?, completed_at = ?"
            " WHERE request_id = ? AND state = 1 AND holder = ? RETURNING app_id, webhook_url",
            (result_meta, result.body, now, request_id, holder),
        ).fetchone()
        if row is None:
            return False
        app_id, webhook_url = row
        self._finished(request_id, app_id, webhook_url, result_meta, result.body, now=now)
        await self._durable()
        return True

    def _finish(
        self,
        request_id: str,
        app_id: str,
        webhook_url: str | None,
        result: queueing.Result,
        *,
        now: float,
    ) -> None:
        """Mark a job COMPLETED with ``result`` (inside the open transaction)."""
        result_meta = codec.encode_result_meta(result)
        self._db.execute(
            "UPDATE jobs SET state = 2, holder = NULL, lease_until = NULL, body = NULL,"
            " result_meta = ?, result_body = ?, completed_at = ? WHERE request_id = ?",
            (result_meta, result.body, now, request_id),
        )
        self._finished(request_id, app_id, webhook_url, result_meta, result.body, now=now)

    def _finished(
        self,
        request_id: str,
        app_id: str,
        webhook_url: str | None,
        result_meta: bytes,
        result_body: bytes,
        *,
        now: float,
    ) -> None:
        """What follows a completion: the webhook delivery (same transaction) and the event."""
        if webhook_url:
            self._db.execute(
                "INSERT OR IGNORE INTO webhooks (delivery_id, request_id, app_id, url,"
                " result_meta, result_body, attempts, due_at, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?)",
                (request_id, request_id, app_id, webhook_url, result_meta, result_body, now, now),
            )
        self._emit(
            queueing.QueueEvent(
                kind=queueing.EventKind.COMPLETED,
                app_id=app_id,
                request_id=request_id,
                webhook=bool(webhook_url),
            )
        )

    async def requeue(
        self,
        request_id: str,
        *,
        holder: str,
        reason: str,
        count_attempt: bool = True,
    ) -> bool:
        self._begin()
        row = self._db.execute(
            "UPDATE jobs SET state = 0, holder = NULL, lease_until = NULL,"
            " attempts = attempts + ? WHERE request_id = ? AND state = 1 AND holder = ?"
            " RETURNING app_id, priority, seq, submitted_at",
            (1 if count_attempt else 0, request_id, holder),
        ).fetchone()
        if row is None:
            return False
        app_id, priority, seq, submitted_at = row
        LOG.debug("requeued %s (%s)", request_id, reason)
        increment = 1 if count_attempt else 0

        def redo() -> None:
            again = self._db.execute(
                "UPDATE jobs SET state = 0, holder = NULL, lease_until = NULL,"
                " attempts = attempts + ? WHERE request_id = ? AND state = 1 AND holder = ?",
                (increment, request_id, holder),
            )
            if again.rowcount:
                self._queued.add(app_id, priority, seq, submitted_at)
                self._emit(queueing.QueueEvent(kind=queueing.EventKind.SUBMITTED, app_id=app_id))
                self._redo.append(redo)

        self._redo.append(redo)
        self._queued.add(app_id, priority, seq, submitted_at)
        self._emit(queueing.QueueEvent(kind=queueing.EventKind.SUBMITTED, app_id=app_id))
        self._commit_soon()  # wake the dispatchers without waiting for a lazy commit
        return True

    async def cancel(self, request_id: str, *, now: float | None = None) -> queueing.CancelOutcome:
        now = time.time() if now is None else now
        self._check_open()
        row = self._db.execute(
            "SELECT app_id, state, priority, seq, webhook_url FROM jobs WHERE request_id = ?",
            (request_id,),
        ).fetchone()
        if row is None:
            return queueing.CancelOutcome.NOT_FOUND
        app_id, state, priority, seq, webhook_url = row
        if state == _COMPLETED:
            return queueing.CancelOutcome.ALREADY_COMPLETED
        self._begin()
        if state == _QUEUED:
            self._queued.remove(app_id, priority, seq)
            self._finish(
                request_id, app_id, webhook_url, queueing.cancelled_result(now=now), now=now
            )
            await self._durable()
            return queueing.CancelOutcome.OK
        self._db.execute("UPDATE jobs SET cancel_requested = 1 WHERE seq = ?", (seq,))
        self._emit(
            queueing.QueueEvent(
                kind=queueing.EventKind.CANCEL_REQUESTED, app_id=app_id, request_id=request_id
            )
        )
        await self._durable()
        return queueing.CancelOutcome.CANCELLATION_REQUESTED

    async def append_logs(self, request_id: str, lines: Sequence[queueing.LogLine]) -> None:
        if not lines:
            return
        self._check_open()
        (count,) = self._db.execute(
            "SELECT count(*) FROM logs WHERE request_id = ?", (request_id,)
        ).fetchone()
        room = self._max_logs_per_job - count
        if room <= 0:
            return
        exists = self._db.execute(
            "SELECT 1 FROM jobs WHERE request_id = ?", (request_id,)
        ).fetchone()
        if exists is None:
            return
        self._begin()
        self._db.executemany(
            "INSERT INTO logs (request_id, line) VALUES (?, ?)",
            ((request_id, codec.encode_log_line(line)) for line in lines[:room]),
        )

    async def expire(self, *, now: float | None = None) -> int:
        now = time.time() if now is None else now
        self._check_open()
        if not self._expiry_due(now):
            return 0  # the common case, twice a second: three index probes, no write transaction
        self._begin()
        changed = self._return_leases(now=now, expired_before=now)
        overdue = self._db.execute(
            "SELECT request_id, app_id, priority, seq, webhook_url FROM jobs"
            " WHERE state = 0 AND start_deadline IS NOT NULL AND start_deadline < ?",
            (now,),
        ).fetchall()
        for request_id, app_id, priority, seq, webhook_url in overdue:
            self._queued.remove(app_id, priority, seq)
            self._finish(
                request_id, app_id, webhook_url, queueing.start_timeout_result(now=now), now=now
            )
        changed += len(overdue)
        gone = self._db.execute(
            "DELETE FROM jobs WHERE state = 2 AND completed_at < ? RETURNING request_id",
            (now - self.result_ttl,),
        ).fetchall()
        self._db.executemany("DELETE FROM logs WHERE request_id = ?", gone)
        changed += len(gone)
        await self._durable()
        return changed

    def _expiry_due(self, now: float) -> bool:
        """Whether `expire` has anything to do: a lease run out, a start deadline passed or a
        result past its time to live (each an index lookup)."""
        row = self._db.execute(
            "SELECT EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_leased"
            " WHERE state = 1 AND lease_until < ?)"
            " OR EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_deadline"
            " WHERE state = 0 AND start_deadline IS NOT NULL AND start_deadline < ?)"
            " OR EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_completed"
            " WHERE state = 2 AND completed_at < ?)",
            (now, now, now - self.result_ttl),
        ).fetchone()
        return bool(row[0])

    def _return_leases(self, *, now: float, expired_before: float | None) -> int:
        """Lost leases (all, or those running out before ``expired_before``): back to the queue
        with attempts + 1, or completed as exhausted when that reaches ``max_attempts``."""
        where = "state = 1" if expired_before is None else "state = 1 AND lease_until < ?"
        arguments: tuple[float, ...] = () if expired_before is None else (expired_before,)
        exhausted = self._db.execute(
            f"UPDATE jobs SET attempts = attempts + 1 WHERE {where} AND attempts + 1 >= ?"
            " RETURNING request_id, app_id, webhook_url",
            (*arguments, self.max_attempts),
        ).fetchall()
        if exhausted:
            result = queueing.attempts_exhausted_result(max_attempts=self.max_attempts, now=now)
            for request_id, app_id, webhook_url in exhausted:
                LOG.warning(
                    "job %s of %s used up its %d attempts", request_id, app_id, self.max_attempts
                )
                self._finish(request_id, app_id, webhook_url, result, now=now)
        requeued = self._db.execute(
            f"UPDATE jobs SET state = 0, holder = NULL, lease_until = NULL,"
            f" attempts = attempts + 1 WHERE {where} RETURNING app_id, priority, seq, submitted_at",
            arguments,
        ).fetchall()
        for app_id, priority, seq, submitted_at in requeued:
            self._queued.add(app_id, priority, seq, submitted_at)
            self._emit(queueing.QueueEvent(kind=queueing.EventKind.SUBMITTED, app_id=app_id))
        return len(exhausted) + len(requeued)

    async def fail_queued(
        self, app_id: str, result: queueing.Result, *, now: float | None = None
    ) -> int:
        now = time.time() if now is None else now
        self._check_open()
        rows = self._db.execute(
            "SELECT request_id, priority, seq, webhook_url FROM jobs"
            " WHERE app_id = ? AND state = 0",
            (app_id,),
        ).fetchall()
        if not rows:
            return 0
        self._begin()
        for request_id, priority, seq, webhook_url in rows:
            self._queued.remove(app_id, priority, seq)
            self._finish(request_id, app_id, webhook_url, result, now=now)
        await self._durable()
        return len(rows)

    async def stats(self, app_id: str, *, waiting_since: float) -> queueing.AppQueueStats:
        self._check_open()
        queued, waiting, oldest = self._queued.stats(app_id, waiting_since)
        (in_progress,) = self._db.execute(
            "SELECT count(*) FROM jobs INDEXED BY jobs_leased WHERE state = 1 AND app_id = ?",
            (app_id,),
        ).fetchone()
        return queueing.AppQueueStats(
            app_id=app_id,
            queued=queued,
            queued_waiting=waiting,
            in_progress=in_progress,
            oldest_queued_at=oldest,
        )

    async def apps(self) -> list[str]:
        self._check_open()
        in_progress = self._db.execute(
            "SELECT DISTINCT app_id FROM jobs INDEXED BY jobs_leased WHERE state = 1"
        ).fetchall()
        return sorted(set(self._queued.by_app) | {app_id for (app_id,) in in_progress})

    def subscribe(
        self,
        *,
        max_pending: int = 10_000,
        accept: Callable[[queueing.QueueEvent], bool] | None = None,
    ) -> queueing.EventSubscription:
        return self._events.subscribe(max_pending=max_pending, accept=accept)

    async def ping(self) -> None:
        self._check_open()
        try:
            self._db.execute("SELECT 1 FROM jobs LIMIT 1").fetchall()
        except sqlite3.Error as error:
            raise queueing.QueueError(f"queue database unreadable: {error}") from error

    # ------------------------------------------------------------------ webhook outbox

    async def enqueue_webhook(
        self, delivery: queueing.WebhookDelivery, *, now: float | None = None
    ) -> None:
        now = time.time() if now is None else now
        self._begin()
        self._db.execute(
            "INSERT OR REPLACE INTO webhooks (delivery_id, request_id, app_id, url, result_meta,"
            " result_body, attempts, due_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                delivery.delivery_id,
                delivery.request_id,
                delivery.app_id,
                delivery.url,
                codec.encode_result_meta(delivery.result),
                delivery.result.body,
                delivery.attempts,
                now,
                delivery.created_at or now,
            ),
        )
        await self._durable()

    async def lease_webhooks(
        self, *, limit: int, lease_seconds: float, now: float | None = None
    ) -> list[queueing.WebhookDelivery]:
        now = time.time() if now is None else now
        self._check_open()
        rows = self._db.execute(
            "SELECT delivery_id, request_id, app_id, url, result_meta, result_body, attempts,"
            " created_at FROM webhooks WHERE due_at <= ? ORDER BY due_at LIMIT ?",
            (now, limit),
        ).fetchall()
        if not rows:
            return []
        self._begin()
        # The claim counts as an attempt (the delivery carries the count before it): a gateway
        # that dies while posting leaves it counted, so a redelivery is the next attempt.
        self._db.executemany(
            "UPDATE webhooks SET due_at = ?, attempts = attempts + 1 WHERE delivery_id = ?",
            ((now + lease_seconds, row[0]) for row in rows),
        )
        return [_delivery(row) for row in rows]

    async def ack_webhook(self, delivery_id: str) -> None:
        self._begin()
        self._db.execute("DELETE FROM webhooks WHERE delivery_id = ?", (delivery_id,))
        await self._durable()

    async def reschedule_webhook(self, delivery_id: str, *, attempts: int, due_at: float) -> None:
        self._begin()
        self._db.execute(
            "UPDATE webhooks SET attempts = ?, due_at = ? WHERE delivery_id = ?",
            (attempts, due_at, delivery_id),
        )
        await self._durable()

    # ------------------------------------------------------------------ lifecycle

    def _check_open(self) -> None:
        if self._closed:
            raise queueing.QueueError("the queue store is closed")

    async def close(self) -> None:
        if self._closed:
            return
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
        self._commit()
        self._closed = True
        self._events.close()
        self._db.close()
        if self._lock is not None:
            self._lock.close()  # releases the flock


def _add_owner_column(connection: sqlite3.Connection) -> None:
    """Give a database made before jobs had an ``owner`` column that column, filled from the
    caller header older gateways stored with each job, so its requests stay bound to their
    submitters across the upgrade (docs/security.md, "Queued requests, uploads and ids")."""
    columns = {row[1] for row in connection.execute("PRAGMA table_info(jobs)")}
    if "owner" in columns:
        return
    connection.execute("BEGIN IMMEDIATE")
    connection.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")
    rows = connection.execute("SELECT seq, meta FROM jobs").fetchall()
    for seq, meta in rows:
        owner = codec.stored_caller(meta)
        if owner is not None:
            connection.execute("UPDATE jobs SET owner = ? WHERE seq = ?", (owner, seq))
    connection.execute("COMMIT")


def _lock(path: str) -> typing.IO[bytes] | None:
    """Hold ``<path>.lock`` exclusively for this process (None for an in-memory database)."""
    if path == ":memory:" or path.startswith("file:"):
        return None
    handle = open(path + ".lock", "ab")  # noqa: SIM115 - held until close()
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise queueing.QueueError(
            f"{path} is in use by another gateway process; the SQLite store serves one gateway"
            " (use the Redis store for several replicas)"
        ) from None
    return handle


def _delivery(row: tuple[Any, ...]) -> queueing.WebhookDelivery:
    delivery_id, request_id, app_id, url, result_meta, result_body, attempts, created_at = row
    return queueing.WebhookDelivery(
        delivery_id=delivery_id,
        request_id=request_id,
        app_id=app_id,
        url=url,
        result=codec.decode_result(result_meta, result_body),
        attempts=attempts,
        created_at=created_at,
    )
