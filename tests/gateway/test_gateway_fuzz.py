"""Fuzzing the HTTP API with hypothesis: whatever a client sends, the gateway answers < 500.

Requests are built from the API's own vocabulary (app ids, `requests`, `status`, `cancel`, the fal
headers) mixed with arbitrary text, methods, queries, headers and bodies, and sent to both
listeners of a real gateway in front of a real runner.
"""

from __future__ import annotations

import pathlib
import urllib.parse
from collections.abc import Iterator

import gwharness
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubefal_api import apikeys

pytestmark = pytest.mark.slow

KEY = str(apikeys.generate_key())


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[gwharness.Gateway]:
    workdir: pathlib.Path = tmp_path_factory.mktemp("gateway-fuzz")
    runner = gwharness.Runner(workdir=workdir, max_multiplexing=8)
    static = {
        "apps": [
            {
                "id": "team-a/public",
                "auth": "public",
                "runners": [runner.url],
                "maxMultiplexing": 8,
            },
            {
                "id": "team-a/private",
                "auth": "private",
                "runners": [runner.url],
                "maxMultiplexing": 8,
            },
        ],
        "keys": [{"key": KEY, "namespaces": "team-a"}],
    }
    started = gwharness.Gateway(
        workdir=workdir, static_config=static, tls=None, extra_args=["--max-request-bytes", "4096"]
    )
    with gwharness.cleanup(started, runner):
        runner.wait_ready()
        started.wait_ready(["team-a/public"])
        yield started


SEGMENTS = st.one_of(
    st.sampled_from(
        [
            "team-a",
            "public",
            "private",
            "requests",
            "status",
            "cancel",
            "stream",
            "echo",
            "00000000-0000-0000-0000-000000000000",
            "",
            "..",
            "realtime",
            "_kubefal",
        ]
    ),
    st.text(min_size=0, max_size=12),
)
HEADER_VALUES = st.one_of(
    st.sampled_from(
        [
            "normal",
            "low",
            "2",
            "0",
            "-1",
            "nan",
            "inf",
            "1e309",
            "",
            "Key x:y",
            f"Key {KEY}",
            "Bearer z",
            "text/event-stream",
        ]
    ),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20).map(
        str.strip  # a client cannot send surrounding whitespace in a header value
    ),
)
HEADER_NAMES = st.sampled_from(
    [
        "x-fal-queue-priority",
        "x-fal-request-timeout",
        "x-fal-runner-hint",
        "authorization",
        "accept",
        "content-type",
        "x-fal-request-id",
    ]
)
BODIES = st.one_of(
    st.binary(max_size=64),
    st.just(b'{"text": "fuzz"}'),
    st.just(b"x" * 5000),
    st.just(b'{"sleep": "long"}'),
)


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    listener=st.sampled_from(["queue", "run"]),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
    segments=st.lists(SEGMENTS, min_size=0, max_size=6),
    query=st.dictionaries(
        st.sampled_from(["logs", "fal_webhook", "x", "fal_jwt_token"]),
        st.text(max_size=20),
        max_size=3,
    ),
    headers=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=4),
    body=BODIES,
)
def test_no_request_gets_a_5xx(
    gateway: gwharness.Gateway,
    listener: str,
    method: str,
    segments: list[str],
    query: dict[str, str],
    headers: dict[str, str],
    body: bytes,
) -> None:
    base = gateway.queue_url if listener == "queue" else gateway.run_url
    path = "/" + "/".join(urllib.parse.quote(segment, safe="") for segment in segments)
    url = base + path + ("?" + urllib.parse.urlencode(query) if query else "")
    with httpx.Client(timeout=60) as client:
        response = client.request(method, url, headers=headers, content=body)
    assert response.status_code < 500, (method, url, headers, response.status_code, response.text)
    is_json = response.headers.get("content-type", "").startswith("application/json")
    if response.status_code >= 400 and method != "HEAD" and is_json:
        assert "detail" in response.json()
