"""The chart's monitoring of the admission webhook, by ``helm template`` (no cluster).

The PodMonitor scrapes the port the webhook Deployment names ``metrics`` on the webhook's
pods only; the PrometheusRule's kubefal.webhook group and the dashboard's panels read the
webhook's metrics. That those names are the ones the running webhook serves, and that the API
server accepts the PodMonitor with the Prometheus Operator's CRDs, is e2e/test_monitoring.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests import charthelm

ALL_MONITORING = {
    "monitoring": {
        "labels": {"release": "kube-prometheus-stack"},
        "webhookPodMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "grafanaDashboard": {"enabled": True},
    }
}


@pytest.fixture(scope="module")
def helm() -> charthelm.Helm:
    return charthelm.helm()


def _webhook_rules(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    rule = charthelm.find(objects, "PrometheusRule")
    return {
        item["alert"]: item
        for group in rule["spec"]["groups"]
        if group["name"] == "kubefal.webhook"
        for item in group["rules"]
    }


def test_the_webhook_pod_monitor_is_off_by_default(helm: charthelm.Helm) -> None:
    assert not [o for o in helm.template({}) if o["kind"] == "PodMonitor"]


def test_the_pod_monitor_scrapes_the_webhook_pods_metrics_port_over_plain_http(
    helm: charthelm.Helm,
) -> None:
    objects = helm.template(ALL_MONITORING)
    monitor = charthelm.find(objects, "PodMonitor", "kubefal-webhook")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    deployment = charthelm.deployment(objects, "webhook")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [charthelm.NAMESPACE]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["scheme"]) == (
        "metrics",
        "/metrics",
        "http",
    )
    container = charthelm.sole_container(deployment)
    assert charthelm.container_port(container, "metrics") == 9090
    # No other component's pods carry the webhook's selector labels.
    for other in ("operator", "gateway"):
        other_labels = charthelm.deployment(objects, other)["spec"]["template"]["metadata"]
        assert (
            not monitor["spec"]["selector"]["matchLabels"].items() <= other_labels["labels"].items()
        )


def test_the_metrics_port_follows_the_value_and_must_differ_from_the_https_port(
    helm: charthelm.Helm,
) -> None:
    objects = helm.template({"webhook": {"metricsPort": 9300}})
    container = charthelm.sole_container(charthelm.deployment(objects, "webhook"))
    assert charthelm.container_port(container, "metrics") == 9300
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["KUBEFAL_WEBHOOK_METRICS_PORT"] == "9300"
    error = helm.template_error({"webhook": {"port": 9443, "metricsPort": 9443}})
    assert "webhook.metricsPort (9443) must differ from webhook.port (9443)" in error
    assert "metricsPort" in helm.template_error({"webhook": {"metricsPort": 0}})


def test_without_the_webhook_there_is_no_webhook_monitor_or_alert(helm: charthelm.Helm) -> None:
    objects = helm.template({**ALL_MONITORING, "webhook": {"enabled": False}})
    assert not [o for o in objects if o["kind"] == "PodMonitor"]
    assert _webhook_rules(objects) == {}


def test_the_webhook_alerts_take_their_thresholds_from_the_values(helm: charthelm.Helm) -> None:
    values = {
        "monitoring": {
            **ALL_MONITORING["monitoring"],
            "prometheusRule": {
                "enabled": True,
                "admissionErrorsFor": "7m",
                "admissionDeniedRatio": 0.8,
                "admissionDeniedFor": "1h",
                "alertLabels": {"team": "ml-platform"},
            },
        }
    }
    alerts = _webhook_rules(helm.template(values))
    assert set(alerts) == {"KubefalAdmissionWebhookErrors", "KubefalAdmissionWebhookDenyingMost"}
    errors = alerts["KubefalAdmissionWebhookErrors"]
    assert errors["for"] == "7m"
    assert (
        'kubefal_webhook_admission_reviews_total{kind="FalApp", result="error"}' in errors["expr"]
    )
    assert errors["labels"] == {"severity": "critical", "team": "ml-platform"}
    denying = alerts["KubefalAdmissionWebhookDenyingMost"]
    assert denying["for"] == "1h"
    assert "> 0.8)" in denying["expr"]
    assert "More than 0.8 of the FalApp reviews" in denying["annotations"]["description"]
    assert "pattern" in helm.template_error(
        {"monitoring": {"prometheusRule": {"admissionErrorsFor": "soon"}}}
    )
    assert "admissionDeniedRatio" in helm.template_error(
        {"monitoring": {"prometheusRule": {"admissionDeniedRatio": 2}}}
    )


def test_the_dashboard_has_the_admission_webhook_panels(helm: charthelm.Helm) -> None:
    objects = helm.template(ALL_MONITORING)
    (config_map,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    dashboard = json.loads(config_map["data"]["kubefal.json"])
    panels = dashboard["panels"]
    row = next(p for p in panels if p["type"] == "row" and p["title"] == "Admission webhook")
    below = [p for p in panels if p["gridPos"]["y"] > row["gridPos"]["y"]]
    queries = [t["expr"] for p in below for t in p.get("targets", [])]
    for name in (
        "kubefal_webhook_admission_reviews_total",
        "kubefal_webhook_admission_duration_seconds_bucket",
        "kubefal_webhook_invalid_requests_total",
        "kubefal_webhook_api_errors_total",
    ):
        assert any(name in query for query in queries), name
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
