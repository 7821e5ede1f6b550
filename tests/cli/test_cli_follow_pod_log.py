"""``kube.follow_pod_log`` (the build log ``kubefal deploy`` streams): lines as they come, and a
line with no end (a progress bar without newlines) in bounded pieces, never buffered whole.

Pure logic over the generated client's streamed response, so the response is a stand-in.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any

from kubefal_cli import kube


class _StreamedLog:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.released = False

    def stream(self, amount: int) -> Iterator[bytes]:
        yield from self.chunks

    def release_conn(self) -> None:
        self.released = True


def _client(response: _StreamedLog) -> Any:
    def read_namespaced_pod_log(**_: object) -> _StreamedLog:
        return response

    return types.SimpleNamespace(
        core=types.SimpleNamespace(read_namespaced_pod_log=read_namespaced_pod_log)
    )


def test_lines_split_across_chunks_come_whole_and_in_order() -> None:
    response = _StreamedLog([b"STEP 1/2: FROM py", b"thon\nSTEP 2/2: RUN", b" true\n\nlast"])

    lines = list(kube.follow_pod_log(_client(response), namespace="n", name="p"))

    assert lines == ["STEP 1/2: FROM python", "STEP 2/2: RUN true", "", "last"]
    assert response.released


def test_a_line_that_never_ends_comes_in_pieces_of_the_limit_while_it_streams() -> None:
    limit = kube.MAX_LOG_LINE_BYTES
    chunks = [b"#" * 4096 for _ in range(40)] + [b"\n"]  # 160 KiB, no newline until the end
    response = _StreamedLog(chunks)

    follower = kube.follow_pod_log(_client(response), namespace="n", name="p")
    first = next(follower)  # before the stream is read to its end
    rest = list(follower)

    assert first == "#" * limit
    assert all(len(piece) <= limit for piece in rest)
    assert "".join([first, *rest]) == "#" * (40 * 4096)
