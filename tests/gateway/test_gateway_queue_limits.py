"""Queue limits and store faults as a client sees them, through real gateway processes (issue 9):
the per-app queue-depth limit (429 + Retry-After), and a stalled Redis (503 fast, /readyz 503)."""

from __future__ import annotations

import pathlib
from typing import Any

import gwharness
import httpx

APP = "team-a/limited"


def _static_without_runner() -> dict[str, Any]:
    # A runner URL where nothing listens: submitted jobs stay queued.
    dead = f"http://127.0.0.1:{gwharness.free_port()}"
    return {"apps": [{"id": APP, "auth": "public", "runners": [dead]}]}


def test_a_submit_beyond_the_queue_depth_limit_gets_429_with_retry_after(
    tmp_path: pathlib.Path,
) -> None:
    gateway = gwharness.Gateway(
        workdir=tmp_path,
        static_config=_static_without_runner(),
        tls=None,
        extra_args=["--max-queued-per-app", "2"],
    )
    with gwharness.cleanup(gateway):
        gateway.wait_ready()
        with httpx.Client(timeout=30) as client:
            accepted = [client.post(f"{gateway.queue_url}/{APP}", json={}) for _ in range(2)]
            refused = client.post(f"{gateway.queue_url}/{APP}", json={"tag": "third"})
            statuses = [
                client.get(f"{gateway.queue_url}/{APP}/requests/{r.json()['request_id']}/status")
                for r in accepted
            ]
    assert [response.status_code for response in accepted] == [200, 200]
    assert [response.json()["queue_position"] for response in accepted] == [0, 1]
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["content-type"] == "application/json"
    assert "queued requests" in refused.json()["detail"]
    assert refused.json()["error_type"] == "queue_full"
    assert [status.json()["status"] for status in statuses] == ["IN_QUEUE", "IN_QUEUE"]
