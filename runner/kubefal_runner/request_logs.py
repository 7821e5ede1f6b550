"""Logs written while a request runs, kept per request id so the gateway can return them.

fal returns an in-progress request's logs in ``status(with_logs=True)``. On fal the platform
collects the process's stdout and stderr; here the runner does it in-process: ``sys.stdout`` and
``sys.stderr`` are replaced by streams that look up the current request id (a context variable the
ASGI wrapper sets, which Starlette copies into the threadpool that runs sync endpoints). Text
written outside a request passes through untouched. Text written inside one is split into lines
(``\n``, ``\r\n`` and a lone ``\r`` each end one, so a progress bar redrawn with ``\r`` gives
one line per redraw; a line longer than the message limit is cut into pieces of that size, so
the text held per request while its line is unfinished is bounded and each write costs time
linear in its own length, however long the output runs without a newline), each kept in a
bounded in-memory store in fal's log shape
``{"message","level","source":"USER","timestamp"}`` and written to the real stdout as one JSON line
carrying the request id, for the cluster's log collector. ``logging`` output reaches the same
streams through its handlers; records of an app that configured no handler at all (Python's "last
resort") keep their level name instead of ``STDERR``.
"""

from __future__ import annotations

import collections
import contextvars
import datetime
import json
import logging
import re
import sys
import threading
from typing import Any, TextIO, cast

CURRENT_REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "kubefal_current_request_id", default=None
)
"""The id of the request the current code runs for; None outside requests."""

DEFAULT_MAX_REQUESTS = 2000
DEFAULT_MAX_ENTRIES_PER_REQUEST = 1000
DEFAULT_MAX_MESSAGE_CHARS = 16 * 1024
DEFAULT_MAX_TOTAL_CHARS = 32 * 1024 * 1024
"""All kept messages together; the oldest requests are dropped beyond it."""


def _fal_timestamp() -> str:
    """UTC time in the format fal uses in log entries."""
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


class RequestLogStore:
    """Recent log entries by request id, bounded in requests, lines and characters.

    Beyond a bound the oldest requests are forgotten first; beyond a request's line limit its
    oldest lines are.
    """

    def __init__(
        self,
        *,
        sink: TextIO,
        max_requests: int = DEFAULT_MAX_REQUESTS,
        max_entries_per_request: int = DEFAULT_MAX_ENTRIES_PER_REQUEST,
        max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS,
        max_total_chars: int = DEFAULT_MAX_TOTAL_CHARS,
    ) -> None:
        self._sink = sink
        self._max_requests = max_requests
        self._max_entries_per_request = max_entries_per_request
        self.max_message_chars = max_message_chars
        """Longest message kept; the capturing streams cut longer lines into pieces this long."""
        self._max_total_chars = max_total_chars
        self._total_chars = 0
        self._entries: collections.OrderedDict[str, collections.deque[dict[str, str]]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()

    def append(self, *, request_id: str, level: str, message: str) -> None:
        """Keep one entry and write it to the sink as a JSON line."""
        entry = {
            "message": message[: self.max_message_chars],
            "level": level,
            "source": "USER",
            "timestamp": _fal_timestamp(),
        }
        line = json.dumps({"request_id": request_id, **entry}) + "\n"
        with self._lock:
            entries = self._entries.get(request_id)
            if entries is None:
                entries = collections.deque()
                self._entries[request_id] = entries
            if len(entries) >= self._max_entries_per_request:
                self._total_chars -= len(entries.popleft()["message"])
            entries.append(entry)
            self._total_chars += len(entry["message"])
            while len(self._entries) > 1 and (
                len(self._entries) > self._max_requests or self._total_chars > self._max_total_chars
            ):
                _, dropped = self._entries.popitem(last=False)
                self._total_chars -= sum(len(item["message"]) for item in dropped)
            self._sink.write(line)
            self._sink.flush()

    def count(self, request_id: str) -> int:
        """How many entries are kept for ``request_id``."""
        with self._lock:
            entries = self._entries.get(request_id)
            return 0 if entries is None else len(entries)

    def entries(self, request_id: str) -> list[dict[str, str]]:
        """The entries kept for ``request_id``, oldest first (empty when none are known)."""
        with self._lock:
            return list(self._entries.get(request_id, ()))


class _PartialLine:
    """The unfinished line of one request: its pieces, their length, and a pending ``\r``."""

    __slots__ = ("after_carriage_return", "chunks", "length")

    def __init__(self) -> None:
        self.chunks: list[str] = []
        self.length = 0
        self.after_carriage_return = False
        """The last text ended with ``\r``: a ``\n`` right after it ends no second line."""

    def take(self) -> str:
        text = "".join(self.chunks)
        self.chunks.clear()
        self.length = 0
        return text


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class RequestCapturingStream:
    """A stand-in for ``sys.stdout``/``sys.stderr`` that files in-request text under its request."""

    def __init__(self, *, original: TextIO, level: str, store: RequestLogStore) -> None:
        self._original = original
        self._level = level
        self._store = store
        self._max_line_chars = store.max_message_chars
        self._partial_lines: dict[str, _PartialLine] = {}
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        request_id = CURRENT_REQUEST_ID.get()
        if request_id is None:
            return self._original.write(text)
        with self._lock:
            complete_lines = self._split(request_id, text)
        for line in complete_lines:
            self._store.append(request_id=request_id, level=self._level, message=line)
        return len(text)

    def _split(self, request_id: str, text: str) -> list[str]:
        """Lines completed by ``text``; the unfinished rest stays with the request (lock held).

        Each character of ``text`` is looked at a bounded number of times and the kept rest is
        never longer than the message limit, so writing N characters in any number of pieces
        costs O(N) time and O(limit) memory.
        """
        partial = self._partial_lines.get(request_id)
        if partial is None:
            partial = self._partial_lines[request_id] = _PartialLine()
        limit = self._max_line_chars
        complete: list[str] = []
        position = 0
        if partial.after_carriage_return and text.startswith("\n"):
            position = 1  # the "\r\n" of a line already ended at its "\r"
        partial.after_carriage_return = False
        for match in _LINE_BREAK.finditer(text, position):
            self._append_piece(partial, text[position : match.start()], complete, limit)
            line = partial.take()
            # An empty segment ended by "\r" (a redraw that starts with "\r") is no line.
            if line or match.group() != "\r":
                complete.append(line)
            position = match.end()
        if position < len(text):
            self._append_piece(partial, text[position:], complete, limit)
        elif text.endswith("\r"):
            partial.after_carriage_return = True
        if not partial.chunks and not partial.after_carriage_return:
            del self._partial_lines[request_id]
        return complete

    @staticmethod
    def _append_piece(partial: _PartialLine, piece: str, complete: list[str], limit: int) -> None:
        """Add ``piece`` to the unfinished line, cutting off a full line beyond ``limit`` chars."""
        while partial.length + len(piece) > limit:
            room = limit - partial.length
            partial.chunks.append(piece[:room])
            partial.length = limit
            complete.append(partial.take())
            piece = piece[room:]
        if piece:
            partial.chunks.append(piece)
            partial.length += len(piece)

    def pending_chars(self, request_id: str) -> int:
        """Characters of ``request_id``'s unfinished line held in memory."""
        with self._lock:
            partial = self._partial_lines.get(request_id)
            return 0 if partial is None else partial.length

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def finish_request(self, request_id: str) -> None:
        """Keep a last line that was written without a newline."""
        if not self._partial_lines:
            return
        with self._lock:
            partial = self._partial_lines.pop(request_id, None)
            rest = "" if partial is None else partial.take()
        if rest:
            self._store.append(request_id=request_id, level=self._level, message=rest)

    def has_partial_line(self, request_id: str) -> bool:
        """True when text without a final newline waits to be kept for ``request_id``."""
        with self._lock:
            partial = self._partial_lines.get(request_id)
            return partial is not None and bool(partial.chunks)

    def flush(self) -> None:
        self._original.flush()

    def isatty(self) -> bool:
        return self._original.isatty()

    def fileno(self) -> int:
        return self._original.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


class _LastResortHandler(logging.Handler):
    """Python's last-resort handler (WARNING and above to stderr), keeping the level in requests."""

    def __init__(self, *, store: RequestLogStore, original_stderr: TextIO) -> None:
        super().__init__(level=logging.WARNING)
        self._store = store
        self._original_stderr = original_stderr

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            request_id = CURRENT_REQUEST_ID.get()
            if request_id is None:
                self._original_stderr.write(message + "\n")
            else:
                self._store.append(request_id=request_id, level=record.levelname, message=message)
        except Exception:
            self.handleError(record)


class RequestLogCapture:
    """Owns the replaced streams; `install` once at start, before the app is loaded."""

    def __init__(self, store: RequestLogStore) -> None:
        self.store = store
        self._streams: list[RequestCapturingStream] = []

    def install(self) -> None:
        stdout = RequestCapturingStream(original=sys.stdout, level="STDOUT", store=self.store)
        stderr = RequestCapturingStream(original=sys.stderr, level="STDERR", store=self.store)
        logging.lastResort = _LastResortHandler(store=self.store, original_stderr=sys.stderr)
        sys.stdout = cast(TextIO, stdout)
        sys.stderr = cast(TextIO, stderr)
        self._streams = [stdout, stderr]

    def line_count(self, request_id: str) -> int:
        """Lines kept for ``request_id`` so far, counting a pending unterminated one."""
        pending = sum(stream.has_partial_line(request_id) for stream in self._streams)
        return self.store.count(request_id) + pending

    def finish_request(self, request_id: str) -> None:
        for stream in self._streams:
            stream.finish_request(request_id)
