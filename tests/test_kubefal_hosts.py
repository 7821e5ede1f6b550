"""The kubefal hosts hook (client/kubefal_hosts): inert without KUBEFAL_REST_HOST, redirects
exactly fal_client's REST_URL and CDN_URL with it, refuses a value that is not host[:port]."""

from __future__ import annotations

import pathlib

import pytest

from tests.gateway import storage_harness

SCRIPT = """
import sys
import fal_client.client as c
emit([c.REST_URL, c.CDN_URL, c.RUN_URL_FORMAT, "kubefal_hosts" in sys.modules])
"""


@pytest.fixture(scope="module")
def python(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return storage_harness.hooked_python(tmp_path_factory.mktemp("hook"))


def test_inert_without_the_variable(python: pathlib.Path) -> None:
    assert storage_harness.run_python(python, SCRIPT, env={}) == [
        "https://rest.fal.ai",
        "https://v3.fal.media",
        "https://fal.run/",
        False,
    ]


def test_redirects_rest_and_cdn_only(python: pathlib.Path) -> None:
    result = storage_harness.run_python(
        python, SCRIPT, env={"KUBEFAL_REST_HOST": "gw.example:8445", "FAL_RUN_HOST": "gw:1"}
    )
    assert result == ["https://gw.example:8445", "https://gw.example:8445", "https://gw:1/", True]


@pytest.mark.parametrize("value", ["http://x", "a/b", "x y", "h:99999999"])
def test_refuses_what_is_not_a_host(python: pathlib.Path, value: str) -> None:
    result = storage_harness.run_python(python, SCRIPT, env={"KUBEFAL_REST_HOST": value})
    assert result[:2] == ["https://rest.fal.ai", "https://v3.fal.media"]
