"""RegisterApplication's app_files read-back (controlplane app_files.py) against a real HTTP
server standing in for the gateway's ``/files/app/<hash>``."""

from __future__ import annotations

import collections.abc
import http.server

import grpc
import pytest

from kubefal_api import bundles
from kubefal_controlplane import app_files, errors
from kubefal_controlplane import settings as settings_module
from testkit import httpstub

BLOB = b"w" * app_files.MAX_FILE_BYTES
MODE = 0o644
BLOB_HASH = app_files.fal_hash(BLOB, MODE)


class _Gateway(http.server.BaseHTTPRequestHandler):
    served = 0

    def do_GET(self) -> None:
        type(self).served += 1
        if self.path != f"/files/app/{BLOB_HASH}":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("content-length", str(len(BLOB)))
        self.send_header("x-fal-file-mode", str(MODE))
        self.end_headers()
        self.wfile.write(BLOB)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gateway() -> collections.abc.Iterator[str]:
    _Gateway.served = 0
    with httpstub.serving(_Gateway) as url:
        yield url


def test_one_large_file_named_many_times_stops_at_the_bundle_limit(gateway: str) -> None:
    settings = settings_module.Settings(local_credentials=True, gateway_rest_url=gateway)
    assert app_files.fetch(settings, [("a.bin", BLOB_HASH)], authorization="Key a:b") == {
        "a.bin": BLOB
    }
    copies = bundles.MAX_BUNDLE_BYTES // len(BLOB) + 20
    with pytest.raises(errors.RpcFailure) as raised:
        app_files.fetch(
            settings,
            [(f"copy{i}.bin", BLOB_HASH) for i in range(copies)],
            authorization="Key a:b",
        )
    assert raised.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert raised.value.message.startswith("files:")
    assert str(bundles.MAX_BUNDLE_BYTES) in raised.value.message
    # It stopped once past the limit, not after reading every copy into memory.
    assert _Gateway.served == 1 + bundles.MAX_BUNDLE_BYTES // len(BLOB) + 1


def test_more_files_than_a_bundle_holds_are_refused_before_any_fetch(gateway: str) -> None:
    settings = settings_module.Settings(local_credentials=True, gateway_rest_url=gateway)
    with pytest.raises(errors.RpcFailure) as raised:
        app_files.fetch(
            settings,
            [(f"f{i}", BLOB_HASH) for i in range(bundles.MAX_FILES + 1)],
            authorization="Key a:b",
        )
    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "files" in raised.value.message
    assert _Gateway.served == 0
