"""`kubefal run` serves files too: an app returning `Image.from_pil` and `File.from_bytes`, and
the real fal_client uploading with `upload_file` and calling `realtime()` with its defaults,
using only the printed env lines (and the kubefal_hosts hook installed beside fal_client)."""

from __future__ import annotations

import hashlib
import pathlib

import pytest

from tests.cli.test_cli_run import StartCli, WaitFor, start_cli, started_env
from tests.gateway import storage_harness

__all__ = ["start_cli"]


@pytest.mark.slow
def test_uploads_images_and_realtime_with_the_printed_env(
    start_cli: StartCli, wait_for: WaitFor, tmp_path: pathlib.Path
) -> None:
    cli = start_cli(storage_harness.FILES_APP)
    env = started_env(cli, wait_for)
    python = storage_harness.hooked_python(tmp_path / "client")
    data = hashlib.sha256(b"w").digest() * 65536
    (tmp_path / "w.bin").write_bytes(data)

    outcome = storage_harness.run_python(
        python,
        f"""
        import os, httpx, fal_client
        app = os.environ["KUBEFAL_APP"]
        made = fal_client.run(app, {{"text": "hi"}})
        url = fal_client.upload_file({str(tmp_path / "w.bin")!r})
        hashed = fal_client.run(app, {{"url": url}}, path="/hash")
        with fal_client.realtime(app) as connection:
            connection.send({{"text": "rt"}})
            realtime = connection.recv()
        with httpx.Client() as http:
            text = http.get(made["file"]["url"]).text
        emit({{"url": url, "hashed": hashed, "realtime": realtime, "text": text}})
        """,
        env=env,
    )

    rest = f"https://{env['KUBEFAL_REST_HOST']}/files/local/"
    assert outcome["url"].startswith(rest)
    assert outcome["hashed"] == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert outcome["realtime"] == {"sha256": hashlib.sha256(b"rt").hexdigest(), "size": 2}
    assert outcome["text"] == "hi"
