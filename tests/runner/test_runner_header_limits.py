"""A request with a huge or endless head is refused by the runner with 431, not buffered.

The runner's port is reached without the gateway's limits too (``kubefal run`` on 127.0.0.1, a
cluster without enforced NetworkPolicies): a real runner process, a raw socket for the heads no
HTTP client sends, and httpx for the requests that must still pass (a large body is not a head).
"""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from kubefal_runner import asgi
from testkit import runners

pytestmark = pytest.mark.slow  # starts real processes; `make unit` leaves it out

MAX_HEADER_BYTES = 4096
MAX_HEADERS = 20


def _raw_answer(runner: runners.RunnerProcess, head: bytes) -> tuple[int, dict[str, object]]:
    """Send ``head`` on a fresh connection and read the answer until the runner closes it."""
    with socket.create_connection(("127.0.0.1", runner.port), timeout=30) as connection:
        connection.sendall(head)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    body = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(body)


@pytest.fixture
def limited_runner(start_runner: runners.RunnerFactory) -> runners.RunnerProcess:
    runner = start_runner(
        "echo_app.py::EchoApp",
        extra_args=[
            *("--max-header-bytes", str(MAX_HEADER_BYTES)),
            *("--max-headers", str(MAX_HEADERS)),
        ],
    )
    runner.wait_ready()
    return runner


def test_a_header_that_never_ends_is_refused_once_past_the_limit(
    limited_runner: runners.RunnerProcess,
) -> None:
    head = b"POST / HTTP/1.1\r\nhost: runner\r\nx-endless: " + b"a" * (2 * MAX_HEADER_BYTES)

    status, body = _raw_answer(limited_runner, head)

    assert status == 431
    assert body == {"detail": f"the request's headers exceed {MAX_HEADER_BYTES} bytes"}


def test_a_complete_head_over_the_byte_limit_is_refused(
    limited_runner: runners.RunnerProcess,
) -> None:
    response = httpx.post(
        f"{limited_runner.base_url}/",
        json={"text": "too big"},
        headers={"x-big": "b" * (MAX_HEADER_BYTES + 1)},
        timeout=30,
    )

    assert response.status_code == 431
    assert response.json() == {"detail": f"the request's headers exceed {MAX_HEADER_BYTES} bytes"}


def test_too_many_header_fields_are_refused(limited_runner: runners.RunnerProcess) -> None:
    headers = {f"x-field-{index}": "v" for index in range(MAX_HEADERS + 1)}

    response = httpx.post(
        f"{limited_runner.base_url}/", json={"text": "many"}, headers=headers, timeout=30
    )

    assert response.status_code == 431
    assert response.json() == {"detail": f"the request has more than {MAX_HEADERS} header fields"}


def test_a_head_within_the_limits_and_a_large_body_reach_the_app(
    limited_runner: runners.RunnerProcess,
) -> None:
    text = "t" * (4 * 1024 * 1024)  # the body, read in the same chunks as the head, is no head
    headers = {"x-near-limit": "n" * (MAX_HEADER_BYTES // 2)}

    with httpx.Client(timeout=60) as client:
        refused = client.post(
            f"{limited_runner.base_url}/", json={"text": "x"}, headers={"x-big": "b" * 9000}
        )
        served = client.post(f"{limited_runner.base_url}/", json={"text": text}, headers=headers)
        again = client.post(f"{limited_runner.base_url}/", json={"text": "again"}, headers=headers)

    assert refused.status_code == 431
    assert served.status_code == 200
    assert served.json() == {"text": text}
    assert again.json() == {"text": "again"}  # the next request on the kept-alive connection


def test_the_default_limits_pass_what_the_gateway_forwards(
    start_runner: runners.RunnerFactory,
) -> None:
    # The gateway forwards heads of up to 64 KiB in up to 128 fields (docs/security.md).
    runner = start_runner("echo_app.py::EchoApp")
    runner.wait_ready()
    forwarded = {f"x-field-{index}": "f" * 500 for index in range(128)}

    served = httpx.post(f"{runner.base_url}/", json={"text": "ok"}, headers=forwarded, timeout=30)
    refused = httpx.post(
        f"{runner.base_url}/", json={"text": "no"}, headers={"x-big": "b" * 140_000}, timeout=30
    )

    assert served.json() == {"text": "ok"}
    assert refused.status_code == 431


def test_a_request_id_longer_than_the_limit_is_refused_and_one_at_the_limit_is_echoed(
    limited_runner: runners.RunnerProcess,
) -> None:
    # The id keys the request's kept log lines: a caller's megabytes must not become one.
    longest = "i" * asgi.MAX_REQUEST_ID_BYTES
    url = f"{limited_runner.base_url}/"

    refused = httpx.post(
        url, json={"text": "x"}, headers={"x-fal-request-id": longest + "i"}, timeout=30
    )
    served = httpx.post(url, json={"text": "y"}, headers={"x-fal-request-id": longest}, timeout=30)

    assert refused.status_code == 400
    assert refused.json() == {
        "detail": f"x-fal-request-id is longer than {asgi.MAX_REQUEST_ID_BYTES} bytes"
    }
    assert served.json() == {"text": "y"}
    assert served.headers["x-fal-request-id"] == longest
