"""The gateway's operational metrics that the chart's alerts read (docs/operations.md):
``kubefal_gateway_store_errors_total`` counts the queue store failures a client or a probe
sees, by component, ``/metrics`` stays scrapeable while the store is down (it answered 503
then, hiding the very errors), and ``kubefal_gateway_webhook_deliveries_pending`` is served
from the start. Real gateway processes and a real redis-server, stalled with SIGSTOP."""

from __future__ import annotations

import pathlib

import gwharness
import httpx
import pytest
from prometheus_client import parser as exposition

from testkit import waiting
from testkit.redis import RedisServer

pytestmark = pytest.mark.slow  # starts real processes; `make unit` leaves it out

APP = "team-a/metered"


def _samples(text: str, name: str) -> dict[str, float]:
    """Values of one metric's samples by their (only) label's value."""
    found: dict[str, float] = {}
    for family in exposition.text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                (label,) = sample.labels.values()
                found[label] = sample.value
    return found


def test_store_errors_are_counted_by_component_and_webhook_backlog_is_served(
    tmp_path: pathlib.Path, redis_server: RedisServer
) -> None:
    gateway, runner = gwharness.gateway_on_redis(tmp_path, redis_server.url, APP)
    with gwharness.cleanup(gateway, runner), httpx.Client(timeout=30) as client:
        runner.wait_ready()
        gateway.wait_ready([APP])
        before = client.get(f"{gateway.admin_url}/metrics").text
        with redis_server.stalled():
            during = client.post(f"{gateway.queue_url}/{APP}", json={"tag": "during"})
            waiting.wait_for(
                lambda: client.get(f"{gateway.admin_url}/readyz").status_code == 503,
                timeout=30,
                description="/readyz reporting 503",
            )
            scrape = client.get(f"{gateway.admin_url}/metrics")
    assert during.status_code == 503
    assert scrape.status_code == 200, scrape.text
    after = scrape.text
    errors_before = _samples(before, "kubefal_gateway_store_errors_total")
    errors_after = _samples(after, "kubefal_gateway_store_errors_total")
    # Every component's series exists before the first error, so rate() sees the first one.
    assert errors_before == {
        "api": 0,
        "queue_worker": 0,
        "webhooks": 0,
        "readiness": 0,
        "metrics": 0,
    }
    assert errors_after["api"] == 1  # the one submit answered 503
    assert errors_after["readiness"] >= 1
    assert errors_after["metrics"] == 1  # this scrape's refresh of the queue gauges
    assert _samples(after, "kubefal_gateway_webhook_deliveries_pending") == {
        "waiting": 0,
        "in_flight": 0,
    }
    assert _samples(before, "kubefal_gateway_webhook_deliveries_total") == {
        "delivered": 0,
        "retry": 0,
        "gave_up": 0,
        "refused": 0,
    }
