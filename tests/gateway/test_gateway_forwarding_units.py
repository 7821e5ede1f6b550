"""Pure logic of the forwarding path: what may reach a request line, and the runner connection
pool's rules on resending, reuse and answer sizes (against small real asyncio servers)."""

from __future__ import annotations

import asyncio
import collections.abc

import pytest

from kubefal_gateway import dispatch, errors, runners, targets, upstream
from tests.gateway.gwharness import read_http_request

MAX_URL = 2048


# ---- targets -----------------------------------------------------------------------------------
def test_the_forwarded_subpath_stays_encoded_and_the_app_is_decoded() -> None:
    assert targets.forward_path(b"/team-a/app", max_url_bytes=MAX_URL) == ("team-a", "app", "/")
    assert targets.forward_path(b"/team-a/app/x%2Fy/z", max_url_bytes=MAX_URL) == (
        "team-a",
        "app",
        "/x%2Fy/z",
    )
    assert targets.forward_path(b"/team%2Da/app/", max_url_bytes=MAX_URL)[:2] == ("team-a", "app")


@pytest.mark.parametrize(
    "raw",
    [
        b"/a/b/x%0d%0aHost:%20y",
        b"/a/b/x%0a",
        b"/a/b/x%00",
        b"/a/b/x%20y",
        b"/a/b/x%7f",
        b"/a/b/%C3%A9",
        b"/a/b/x y",
        b"/a/b/x\r\n",
        b"/a/b/x|y",
        b"/a/b/x%",
        b"/a/b/x%4",
        b"/a/b/x%zz",
        b"/a/b/\xc3\xa9",
    ],
)
def test_paths_that_must_not_reach_a_request_line_are_400(raw: bytes) -> None:
    with pytest.raises(errors.BadRequest):
        targets.forward_path(raw, max_url_bytes=MAX_URL)


def test_an_overlong_path_or_query_is_414() -> None:
    with pytest.raises(errors.UriTooLong):
        targets.forward_path(b"/a/b/" + b"x" * MAX_URL, max_url_bytes=MAX_URL)
    with pytest.raises(errors.UriTooLong):
        targets.forward_query(b"q=" + b"x" * MAX_URL, limit=MAX_URL)


@pytest.mark.parametrize(
    "subpath",
    [
        "/_kubefal",
        "/_kubefal/logs/x",
        "//_kubefal/logs/x",
        "/%5Fkubefal/logs/x",
        "/%5fKUBEFAL/logs/x",
        "/./_kubefal/ready",
        "/a/../_kubefal/ready",
        "/a/b/../../../_kubefal/ready",
        "/%2e%2e/_kubefal",
        "/%252e%252e/%255Fkubefal",
        "/%2F_kubefal",
        "/%5C_kubefal",
        "/_KUBEFAL/cancel/x",
        "/_kubefalx",
        "/_kubefal;x/logs",
    ],
)
def test_reserved_subpaths_are_404_in_every_spelling(subpath: str) -> None:
    assert targets.is_reserved(subpath)
    with pytest.raises(errors.NotFound):
        targets.forward_path(b"/a/b" + subpath.encode(), max_url_bytes=MAX_URL)


@pytest.mark.parametrize("subpath", ["/", "/stream", "/kubefal", "/x/_kubefal", "/a_kubefal"])
def test_app_subpaths_are_not_reserved(subpath: str) -> None:
    assert not targets.is_reserved(subpath)


def test_queries_are_forwarded_raw_and_checked() -> None:
    assert targets.forward_query(b"a=1&b=%0D%0A&c=x/y?z", limit=MAX_URL) == "a=1&b=%0D%0A&c=x/y?z"
    for bad in (b"a=b c", b"a=\r\n", b"a=%zz", b"a=|", b"a=\xc3\xa9"):
        with pytest.raises(errors.BadRequest):
            targets.forward_query(bad, limit=MAX_URL)
    assert targets.without_parameter("a=1&fal_webhook=x&b=2", "fal_webhook") == "a=1&b=2"
    assert targets.without_parameter("fal%5Fwebhook=x", "fal_webhook") == ""
    assert targets.without_parameter("a=1", "fal_webhook") == "a=1"


def test_check_target_accepts_origin_forms_only() -> None:
    targets.check_target("/a/b%20c?x=1&y=%0D")
    for bad in ("/a b", "/a\r\nX: y", "a", "/a\x00", "/é", "http://x/"):
        with pytest.raises(targets.InvalidTarget):
            targets.check_target(bad)


# ---- upstream ----------------------------------------------------------------------------------
class _Runner:
    """A tiny HTTP/1.1 server; `behaviour(index)` decides how the index-th request is answered:
    "ok", "500" (answered, connection kept), "drop" (read, then the connection closed unanswered),
    "big" (a declared huge body, only its start sent), "big-chunked"."""

    def __init__(self, behaviour: collections.abc.Callable[[int], str]) -> None:
        self.behaviour = behaviour
        self.requests: list[bytes] = []
        self.connections = 0
        self.closed_by_client = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head, body = await read_http_request(reader)
                self.requests.append(head.split(b"\r\n", 1)[0] + b" " + body)
                what = self.behaviour(len(self.requests) - 1)
                if what == "drop":
                    writer.close()
                    return
                if what == "big":
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 100000000\r\n\r\n" + b"x" * 10
                    )
                elif what == "big-chunked":
                    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    for _ in range(100):
                        writer.write(b"1000\r\n" + b"x" * 4096 + b"\r\n")
                        await writer.drain()
                        await asyncio.sleep(0)
                        if writer.is_closing():
                            return
                    writer.write(b"0\r\n\r\n")
                else:
                    status = b"500 Internal Server Error" if what == "500" else b"200 OK"
                    writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client.set()
            writer.close()


async def _serve(runner: _Runner) -> tuple[asyncio.Server, upstream.OriginPool]:
    server = await asyncio.start_server(runner.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = upstream.OriginPool(host="127.0.0.1", port=port, connect_timeout=2, max_idle=8)
    return server, pool


async def test_a_post_whose_reused_connection_dies_is_not_sent_again() -> None:
    runner = _Runner(lambda index: "drop" if index == 1 else "ok")
    server, pool = await _serve(runner)
    try:
        await pool.request("POST", "/", headers=[], body=b"first")
        with pytest.raises(upstream.UpstreamError) as raised:
            await pool.request("POST", "/", headers=[], body=b"second")
        assert raised.value.sent
        assert [request.split(b" ")[-1] for request in runner.requests] == [b"first", b"second"]
    finally:
        pool.close()
        server.close()


async def test_an_idempotent_request_whose_reused_connection_dies_is_sent_again() -> None:
    runner = _Runner(lambda index: "drop" if index == 1 else "ok")
    server, pool = await _serve(runner)
    try:
        await pool.request("GET", "/", headers=[], body=b"")
        response = await pool.request("GET", "/again", headers=[], body=b"")
        assert response.body == b"ok"
        assert len(runner.requests) == 3
        assert runner.connections == 2
    finally:
        pool.close()
        server.close()


async def test_a_connection_is_not_reused_after_a_500_nor_after_idling_too_long() -> None:
    runner = _Runner(lambda index: "500" if index == 0 else "ok")
    server, pool = await _serve(runner)
    try:
        assert (await pool.request("POST", "/", headers=[], body=b"a")).status == 500
        assert (await pool.request("POST", "/", headers=[], body=b"b")).status == 200
        assert runner.connections == 2
        pool.idle_seconds = 0.0
        assert (await pool.request("POST", "/", headers=[], body=b"c")).status == 200
        assert runner.connections == 3
    finally:
        pool.close()
        server.close()


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("POST", "/a\r\nX-Injected: 1", []),
        ("POST", "/a b", []),
        ("POST", "/a", [(b"x-a", b"v\r\nx-injected: 1")]),
        ("POST", "/a", [(b"x-a", b"v\nx")]),
        ("POST", "/a", [(b"x-a", b"v\x00")]),
        ("POST", "/a", [(b"x-a: b", b"v")]),
        ("POST", "/a", [(b"", b"v")]),
        ("PO ST", "/a", []),
    ],
)
async def test_nothing_unsafe_is_written_into_a_request(
    method: str, target: str, headers: list[tuple[bytes, bytes]]
) -> None:
    runner = _Runner(lambda index: "ok")
    server, pool = await _serve(runner)
    try:
        with pytest.raises(upstream.InvalidRequest):
            await pool.request(method, target, headers=headers, body=b"")
        assert runner.requests == []
    finally:
        pool.close()
        server.close()


@pytest.mark.parametrize("kind", ["big", "big-chunked"])
async def test_an_answer_over_max_body_is_refused_and_not_read_further(kind: str) -> None:
    runner = _Runner(lambda index: kind)
    server, pool = await _serve(runner)
    try:
        with pytest.raises(upstream.ResponseTooLarge):
            await pool.request("POST", "/", headers=[], body=b"", max_body=20_000)
        # the connection is closed, not drained: the runner notices
        await asyncio.wait_for(runner.closed_by_client.wait(), timeout=10)
        assert pool.idle == collections.deque()
    finally:
        pool.close()
        server.close()


# ---- dispatch ----------------------------------------------------------------------------------
class _NoClient:
    def forget(self, host: str, port: int) -> None:
        pass


async def test_waiters_that_give_up_do_not_accumulate_in_the_slot_heap() -> None:
    table = runners.RunnerTable(client=_NoClient(), probe_interval=1.0)  # type: ignore[arg-type]
    slots = dispatch.AppSlots(table=table, app_id="a/b", max_multiplexing=1)
    first = asyncio.ensure_future(slots.acquire())  # no runner: waits at the top of the heap
    await asyncio.sleep(0)
    for _ in range(500):
        with pytest.raises(errors.QueueWaitTimeout):
            await slots.acquire(timeout=0)
    assert slots.waiting == 1
    assert len(slots.waiters) <= 2 * dispatch.COMPACT_MIN_DEAD
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert slots.waiters == []
    assert slots.waiting == 0


async def test_the_waiting_count_stays_exact_when_many_waiters_give_up_at_once() -> None:
    table = runners.RunnerTable(client=_NoClient(), probe_interval=1.0)  # type: ignore[arg-type]
    slots = dispatch.AppSlots(table=table, app_id="a/b", max_multiplexing=1)
    tasks = [asyncio.ensure_future(slots.acquire()) for _ in range(100)]
    await asyncio.sleep(0)
    assert slots.waiting == 100
    # the last 70 give up together: their futures are cancelled at once, their cleanups run one
    # after the other (and compact the heap in between), below 30 waiters that stay
    for task in tasks[30:]:
        task.cancel()
    await asyncio.gather(*tasks[30:], return_exceptions=True)
    assert slots.waiting == 30
    assert len(slots.waiters) == 30
    for task in tasks[:30]:
        task.cancel()
    await asyncio.gather(*tasks[:30], return_exceptions=True)
    assert (slots.waiting, slots.waiters) == (0, [])
