"""The runner's readiness announcement: sent from the pod's IP with its name, best effort."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

import pytest

from kubefal_runner import announcing


class _Receiver(http.server.BaseHTTPRequestHandler):
    answer = 200
    seen: list[tuple[str, str, dict[str, object]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        self.seen.append((self.client_address[0], self.path, body))
        self.send_response(self.answer)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Receiver", (_Receiver,), {"seen": [], "answer": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/_kubefal/runners/ready", handler
    finally:
        server.shutdown()
        server.server_close()


def test_the_announcement_comes_from_the_pod_ip_and_names_the_pod(
    receiver: tuple[str, type[_Receiver]],
) -> None:
    url, handler = receiver
    accepted = announcing.announce(
        {
            "KUBEFAL_GATEWAY_ANNOUNCE_URL": url,
            "KUBEFAL_POD_IP": "127.0.0.2",
            "KUBEFAL_POD_NAME": "gen-5d8f-abcde",
        }
    )

    assert accepted is True
    assert handler.seen == [("127.0.0.2", "/_kubefal/runners/ready", {"pod": "gen-5d8f-abcde"})]


def test_a_refused_or_unreachable_announcement_is_only_logged(
    receiver: tuple[str, type[_Receiver]],
) -> None:
    url, handler = receiver
    handler.answer = 403
    refused = announcing.announce({"KUBEFAL_GATEWAY_ANNOUNCE_URL": url})
    unreachable = announcing.announce(
        {"KUBEFAL_GATEWAY_ANNOUNCE_URL": "http://127.0.0.1:9/_kubefal/runners/ready"}
    )
    not_http = announcing.announce({"KUBEFAL_GATEWAY_ANNOUNCE_URL": "file:///etc/passwd"})
    unset = announcing.announce({})

    assert (refused, unreachable, not_http, unset) == (False, False, False, False)
    assert [path for _ip, path, _body in handler.seen] == ["/_kubefal/runners/ready"]
