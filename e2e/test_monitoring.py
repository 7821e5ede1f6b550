"""The chart's monitoring objects against the real thing.

* Every metric name in every alert of the PrometheusRule and every query of the Grafana
  dashboard (as the chart renders them) is served on ``/metrics`` by a running gateway,
  operator, runner or admission webhook: the whole system of e2e/system.py serves a FalApp
  through the real ``fal_client`` while a GPU FalApp waits for GPUs, the real webhook process
  (e2e/webhook_process.py) runs beside it, and the test reads the four endpoints.
  Expressions are parsed by Prometheus's own PromQL parser (``promql-names``, built by
  ``e2e/testbin.sh``), so one that does not parse fails too.
* The operator's per-FalApp series follow the FalApp's status (the GPU alert's condition) and
  leave with the FalApp.
* The ServiceMonitor, PodMonitors and PrometheusRule are accepted by the API server with the
  Prometheus Operator's CRDs installed: the CRDs are the upstream ones, vendored in
  ``e2e/crds/monitoring.coreos.com/`` (version in their ``operator.prometheus.io/version``
  annotation), so the API server validates the objects as a cluster with kube-prometheus-stack
  would. A structural schema check by the API server covers what ``helm template`` alone cannot
  (types, enums, required fields of a CRD the chart does not own).
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from prometheus_client import parser as exposition

from e2e import cluster as local_cluster
from e2e import system as whole
from e2e.conftest import ClusterHandle
from e2e.webhook_process import running_webhook
from testkit import waiting
from tests import charthelm

APP_SOURCE = pathlib.Path(__file__).with_name("apps") / "sleepy.py"
MONITORING_CRDS = pathlib.Path(__file__).with_name("crds") / "monitoring.coreos.com"
MONITORING = {
    "serviceMonitor": {"enabled": True},
    "podMonitor": {"enabled": True},
    "webhookPodMonitor": {"enabled": True},
    "runnerPodMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "grafanaDashboard": {"enabled": True},
}
# Grafana replaces its variables before sending a query; so does the test, with values
# Prometheus accepts.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$app": ".*"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


def served_names(text: str) -> set[str]:
    """Names a Prometheus scrape of this exposition can yield: every sample's name, and the
    sample names each declared family has once observed (a histogram without observations
    declares ``x`` but has no ``x_bucket`` sample yet)."""
    names: set[str] = set()
    for family in exposition.text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        suffixes = SUFFIXES.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
        if family.type in ("gauge", "untyped", "unknown"):
            names.add(family.name)
    return names


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def selected_names(
    promql_names: pathlib.Path, expressions: list[str]
) -> list[tuple[str, list[str], str]]:
    """(expression, metric names it selects, parse error) by Prometheus's parser."""
    lines = "".join(json.dumps(expression) + "\n" for expression in expressions)
    completed = subprocess.run(
        [str(promql_names)], input=lines, capture_output=True, text=True, check=True, timeout=60
    )
    answers = [json.loads(line) for line in completed.stdout.splitlines()]
    assert len(answers) == len(expressions), completed.stderr
    return [
        (expression, answer["names"], answer.get("error", ""))
        for expression, answer in zip(expressions, answers, strict=True)
    ]


def grafana_query(query: str) -> str:
    """A dashboard query as Grafana sends it: variables replaced; ``label_values(m, label)``
    (a templating query) becomes the selector ``m`` it reads."""
    for variable, value in GRAFANA_VARIABLES.items():
        query = query.replace(variable, value)
    match = re.fullmatch(r"\s*label_values\((.+),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*", query)
    return match.group(1) if match else query


def rendered_queries() -> tuple[dict[str, str], dict[str, str]]:
    """The chart's alert expressions by alert name and dashboard queries by panel title."""
    objects = charthelm.render({"monitoring": MONITORING})
    (rule,) = [o for o in objects if o["kind"] == "PrometheusRule"]
    alerts = {
        item["alert"]: item["expr"] for group in rule["spec"]["groups"] for item in group["rules"]
    }
    (dashboard_map,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    dashboard = json.loads(dashboard_map["data"]["kubefal.json"])
    queries: dict[str, str] = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queries[f"panel {panel['title']!r} {target['refId']}"] = grafana_query(target["expr"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            queries[f"variable {variable['name']}"] = grafana_query(variable["query"]["query"])
    return alerts, queries


def test_grafana_queries_are_read_as_grafana_sends_them() -> None:
    assert grafana_query("label_values(kubefal_gateway_desired_runners, app)") == (
        "kubefal_gateway_desired_runners"
    )
    assert grafana_query('rate(x{app=~"$app"}[$__rate_interval])') == 'rate(x{app=~".*"}[5m])'


def test_served_names_include_the_samples_a_family_has_once_observed() -> None:
    text = (
        "# HELP h_seconds a histogram\n# TYPE h_seconds histogram\n"
        "# HELP c_total a counter\n# TYPE c_total counter\nc_total 1.0\n"
        "# HELP g a gauge\n# TYPE g gauge\n"
    )
    names = served_names(text)
    assert {"h_seconds_bucket", "h_seconds_count", "c_total", "g"} <= names
    assert "h_seconds_total" not in names and "c_bucket" not in names


def test_the_promql_parser_names_selected_metrics_and_refuses_broken_expressions() -> None:
    tool = local_cluster.testbin_dir() / f"promql-names-{_prometheus_version()}"
    (good, unbalanced, unknown) = selected_names(
        tool,
        [
            'max by (x) (a{b="c"}) unless on (x) rate(d_total[5m])',
            "sum(rate(a[5m])",
            "nonsense_function(a)",
        ],
    )
    assert good[1:] == (["a", "d_total"], "")
    assert unbalanced[2] and unknown[2]


@pytest.fixture
def running(
    cluster: ClusterHandle, namespace: str, tmp_path: pathlib.Path, e2e_logs: list[pathlib.Path]
) -> Iterator[tuple[whole.System, int]]:
    """The whole system; yields it with the operator's metrics port."""
    operator_metrics = local_cluster.free_port()
    with whole.running_system(
        cluster.kubeconfig,
        workdir=tmp_path / "system",
        namespaces=[namespace],
        operator_env={"KUBEFAL_OPERATOR_METRICS_PORT": str(operator_metrics)},
    ) as system:
        e2e_logs.extend(system.logs)
        yield system, operator_metrics
        e2e_logs.extend(system.pods.logs())


def _falapp(api_client: k8s.ApiClient, namespace: str, name: str, **spec: Any) -> None:
    k8s.CustomObjectsApi(api_client).create_namespaced_custom_object(
        "kubefal.io",
        "v1alpha1",
        namespace,
        "falapps",
        {
            "apiVersion": "kubefal.io/v1alpha1",
            "kind": "FalApp",
            "metadata": {"name": name},
            "spec": {
                "app": "app.py::Sleepy",
                "source": {"configMapRef": {"name": "sleepy-source"}},
                "auth": "public",
                **spec,
            },
        },
    )


def _condition_series(text: str, namespace: str, falapp: str) -> set[tuple[str, str, str]]:
    """(type, status, reason) of the operator's condition series of one FalApp."""
    found = set()
    for family in exposition.text_string_to_metric_families(text):
        if family.name != "kubefal_operator_falapp_condition":
            continue
        for sample in family.samples:
            labels = sample.labels
            if labels["namespace"] == namespace and labels["falapp"] == falapp:
                assert sample.value == 1.0
                found.add((labels["type"], labels["status"], labels["reason"]))
    return found


def test_every_alert_and_dashboard_query_uses_metrics_the_components_serve(
    cluster: ClusterHandle,
    api_client: k8s.ApiClient,
    namespace: str,
    running: tuple[whole.System, int],
    tmp_path: pathlib.Path,
    e2e_logs: list[pathlib.Path],
) -> None:
    system, operator_metrics = running
    core = k8s.CoreV1Api(api_client)
    core.create_namespaced_config_map(
        namespace,
        k8s.V1ConfigMap(
            metadata=k8s.V1ObjectMeta(name="sleepy-source"),
            data={"app.py": APP_SOURCE.read_text()},
        ),
    )
    _falapp(api_client, namespace, "sleepy", scaling={"minConcurrency": 1})
    # Two runners of 8 GPUs each: the one A100 node holds one at most, so one waits for GPUs.
    _falapp(
        api_client,
        namespace,
        "gpu",
        machineTypes=["GPU-A100"],
        numGpus=8,
        scaling={"minConcurrency": 2},
    )
    output = system.run_client(
        "import fal_client, json\n"
        f"print(json.dumps(fal_client.run('{namespace}/sleepy', arguments={{'tag': 'run'}})))\n"
        f"r = fal_client.subscribe('{namespace}/sleepy', arguments={{'tag': 'queued'}})\n"
        "print(json.dumps(r))\n",
        timeout=300,
    )
    assert [json.loads(line).get("tag") for line in output.strip().splitlines()] == [
        "run",
        "queued",
    ], output

    operator_url = f"http://127.0.0.1:{operator_metrics}/metrics"
    gpu_wait = ("Scheduled", "False", "WaitingForGPUCapacity")

    def status_conditions(name: str) -> set[tuple[str, str, str]]:
        item = json.loads(cluster.kubectl("get", "falapp", name, "-n", namespace, "-o", "json"))
        return {
            (c["type"], c["status"], c["reason"])
            for c in item.get("status", {}).get("conditions", [])
        }

    def operator_text_matching_the_status() -> str | None:
        # The series say what the FalApp's status says, once both have caught up.
        text = _scrape(operator_url)
        series = _condition_series(text, namespace, "gpu")
        return text if gpu_wait in series and series == status_conditions("gpu") else None

    operator_text = waiting.wait_for(
        operator_text_matching_the_status,
        timeout=180,
        description="the operator's series of the GPU FalApp: its status, waiting for GPUs",
        describe_last=lambda: (
            cluster.kubectl("get", "falapps,pods", "-n", namespace, "-o", "wide")
            + f"\nseries: {_condition_series(_scrape(operator_url), namespace, 'gpu')}"
        ),
    )
    gateway_text = _scrape(system.admin_url("/metrics"))
    pods = system.pods.running()
    runner_pod = next(p for name, p in pods.items() if "/sleepy-" in name)
    runner_text = _scrape(f"http://{runner_pod.ip}:9090/metrics")
    e2e_logs.append(tmp_path / "webhook" / "webhook.log")
    (tmp_path / "webhook").mkdir()
    with running_webhook(
        cluster.kubeconfig, workdir=tmp_path / "webhook", catalogue_namespace=namespace
    ) as webhook:
        webhook_text = _scrape(webhook.metrics_url)
    served = (
        served_names(gateway_text)
        | served_names(operator_text)
        | served_names(runner_text)
        | served_names(webhook_text)
    )

    promql_names = cluster.testbin / f"promql-names-{_prometheus_version()}"
    alerts, queries = rendered_queries()
    assert {
        "KubefalQueueWaitHigh",
        "KubefalRunnerStartFailing",
        "KubefalWaitingForGPUCapacity",
        "KubefalWebhookBacklog",
        "KubefalStoreErrors",
        "KubefalAdmissionWebhookErrors",
        "KubefalAdmissionWebhookDenyingMost",
    } <= alerts.keys()
    assert any("kubefal_webhook_" in query for query in queries.values())
    problems = []
    where = {**{f"alert {k}": v for k, v in alerts.items()}, **queries}
    for (label, _), (expression, names, error) in zip(
        where.items(), selected_names(promql_names, list(where.values())), strict=True
    ):
        if error:
            problems.append(f"{label}: does not parse: {error}\n  {expression}")
        elif not names:
            problems.append(f"{label}: selects no metric\n  {expression}")
        for name in names:
            if name not in served:
                problems.append(f"{label}: {name} is not served\n  {expression}")
    assert not problems, "\n".join(problems)

    # A deleted FalApp's series leave with it.
    k8s.CustomObjectsApi(api_client).delete_namespaced_custom_object(
        "kubefal.io", "v1alpha1", namespace, "falapps", "gpu"
    )
    waiting.wait_for(
        lambda: not _condition_series(_scrape(operator_url), namespace, "gpu"),
        timeout=120,
        description="the deleted FalApp's series gone from the operator's /metrics",
    )
    assert _condition_series(_scrape(operator_url), namespace, "sleepy")


def _prometheus_version() -> str:
    text = (local_cluster.REPO_ROOT / "e2e" / "versions.env").read_text()
    match = re.search(r"^PROMETHEUS_VERSION=(\S+)$", text, flags=re.MULTILINE)
    assert match is not None
    return match.group(1)


def _established(cluster: ClusterHandle, names: list[str]) -> bool:
    items = json.loads(cluster.kubectl("get", "crd", *names, "-o", "json"))["items"]
    return len(items) == len(names) and all(
        any(
            c["type"] == "Established" and c["status"] == "True"
            for c in item.get("status", {}).get("conditions") or []
        )
        for item in items
    )


def test_the_api_server_accepts_the_monitors_and_rules_with_the_prometheus_operator_crds(
    cluster: ClusterHandle, namespace: str
) -> None:
    names = []
    for crd in sorted(MONITORING_CRDS.glob("*.yaml")):
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
        names.append(yaml.safe_load(crd.read_text())["metadata"]["name"])
    waiting.wait_for(
        lambda: _established(cluster, names),
        timeout=60,
        description="the Prometheus Operator CRDs established",
    )
    values = {
        "monitoring": {**MONITORING, "labels": {"release": "kube-prometheus-stack"}},
        "gateway": {"adminAuth": {"protectMetrics": True}},
    }
    completed = charthelm.helm_template(values)
    assert completed.returncode == 0, completed.stderr
    monitoring_kinds = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    documents = [
        d for d in yaml.safe_load_all(completed.stdout) if d and d["kind"] in monitoring_kinds
    ]
    assert sorted(d["kind"] for d in documents) == [
        "PodMonitor",
        "PodMonitor",
        "PodMonitor",
        "PrometheusRule",
        "ServiceMonitor",
    ]
    for document in documents:
        document["metadata"]["namespace"] = namespace
    # Strict field validation: a field the CRD does not know is an error, not dropped.
    cluster.kubectl(
        "apply",
        "--server-side",
        "--validate=strict",
        "-n",
        namespace,
        "-f",
        "-",
        input_text=yaml.safe_dump_all(documents),
    )
    stored = {
        (d["kind"], d["metadata"]["name"]): d
        for d in json.loads(
            cluster.kubectl(
                "get", "servicemonitors,podmonitors,prometheusrules", "-n", namespace, "-o", "json"
            )
        )["items"]
    }
    assert set(stored) == {(d["kind"], d["metadata"]["name"]) for d in documents}
    (monitor,) = [d for (kind, _), d in stored.items() if kind == "ServiceMonitor"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http-admin"
    # protectMetrics: Prometheus sends the gateway's admin token.
    assert endpoint["authorization"]["credentials"]["key"] == "token"
    assert all(d["metadata"]["labels"]["release"] == "kube-prometheus-stack" for d in documents)
    runners = next(
        d for (kind, name), d in stored.items() if kind == "PodMonitor" and "runners" in name
    )
    assert runners["spec"]["namespaceSelector"] == {"any": True}
    assert runners["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "runner"
    webhook = stored[("PodMonitor", "kubefal-webhook")]
    (webhook_endpoint,) = webhook["spec"]["podMetricsEndpoints"]
    assert (webhook_endpoint["port"], webhook_endpoint["scheme"]) == ("metrics", "http")
    assert webhook["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "webhook"


def test_the_monitoring_objects_render_only_when_enabled() -> None:
    kinds = {o["kind"] for o in charthelm.render({})}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    dashboards = [
        o
        for o in charthelm.render({})
        if o["kind"] == "ConfigMap" and "grafana_dashboard" in o["metadata"]["labels"]
    ]
    assert dashboards == []
