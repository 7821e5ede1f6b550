"""Service, NetworkPolicy, PodDisruptionBudget and the set of children of one FalApp."""

from __future__ import annotations

from collections.abc import Callable

from kubefal_api import machines, naming, v1alpha1
from kubefal_operator.render import catalogue as catalogue_render
from kubefal_operator.render import children, common, disruption, network

MakeApp = Callable[..., v1alpha1.FalApp]
"""The ``make_app`` fixture (tests/operator/conftest.py)."""


def test_service_is_headless_with_http_and_metrics_ports(
    make_app: MakeApp, settings: common.RenderSettings
) -> None:
    service = network.service(make_app(name="svc"), settings=settings)
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == naming.runner_selector("svc")
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("http", 8080, "http"),
        ("metrics", 9090, "metrics"),
    ]


def test_network_policy_admits_the_app_port_only_from_gateway_pods(
    make_app: MakeApp, settings: common.RenderSettings
) -> None:
    policy = network.network_policy(make_app(name="np"), settings=settings)
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": naming.runner_selector("np")}
    assert spec["policyTypes"] == ["Ingress"]
    app_rules = [
        rule for rule in spec["ingress"] if {"protocol": "TCP", "port": 8080} in rule["ports"]
    ]
    assert len(app_rules) == 1
    assert app_rules[0]["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubefal-system"}},
            "podSelector": {"matchLabels": naming.gateway_selector()},
        }
    ]
    metrics_rules = [rule for rule in spec["ingress"] if rule not in app_rules]
    assert all(rule["ports"] == [{"protocol": "TCP", "port": 9090}] for rule in metrics_rules)


def test_network_policy_admits_only_the_configured_gateway_pods_in_their_namespace(
    make_app: MakeApp,
) -> None:
    gateway_labels = {
        "app.kubernetes.io/instance": "edge",
        "app.kubernetes.io/component": "gateway",
    }
    settings = common.RenderSettings(
        gateway_namespace="edge-system", gateway_pod_labels=tuple(sorted(gateway_labels.items()))
    )
    policy = network.network_policy(make_app(name="np"), settings=settings)
    (app_rule,) = [
        rule
        for rule in policy["spec"]["ingress"]
        if {"protocol": "TCP", "port": 8080} in rule["ports"]
    ]
    # One peer holding both selectors: a pod must match both (two peers would admit either).
    assert app_rule["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "edge-system"}},
            "podSelector": {"matchLabels": gateway_labels},
        }
    ]


def test_disruption_budget_exists_only_from_two_warm_runners(make_app: MakeApp) -> None:
    assert not disruption.wanted(make_app(scaling={"minConcurrency": 0}))
    assert not disruption.wanted(make_app(scaling={"minConcurrency": 1}))
    app = make_app(name="warm", scaling={"minConcurrency": 2})
    assert disruption.wanted(app)
    budget = disruption.pod_disruption_budget(app)
    assert budget["spec"]["selector"] == {"matchLabels": naming.runner_selector("warm")}
    assert budget["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in budget["spec"]


def test_children_list_puts_the_deployment_last_and_marks_an_unwanted_budget(
    make_app: MakeApp, catalogue: machines.MachineCatalogue, settings: common.RenderSettings
) -> None:
    cold = children.children(make_app(), catalogue=catalogue, settings=settings)
    assert [child["kind"] for child in cold.wanted] == ["Service", "NetworkPolicy", "Deployment"]
    assert cold.unwanted == (
        ("policy/v1", "PodDisruptionBudget"),
        ("keda.sh/v1alpha1", "ScaledObject"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
    )
    warm = children.children(
        make_app(scaling={"minConcurrency": 3}), catalogue=catalogue, settings=settings
    )
    assert [child["kind"] for child in warm.wanted] == [
        "Service",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Deployment",
    ]
    assert warm.unwanted == (
        ("keda.sh/v1alpha1", "ScaledObject"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
    )


def test_every_child_is_owned_by_the_falapp(
    make_app: MakeApp, catalogue: machines.MachineCatalogue, settings: common.RenderSettings
) -> None:
    rendered = children.children(
        make_app(name="owned", scaling={"minConcurrency": 2}),
        catalogue=catalogue,
        settings=settings,
    )
    for child in rendered.wanted:
        meta = child["metadata"]
        assert meta["name"] == "owned"
        assert meta["namespace"] == "team-a"
        assert meta["ownerReferences"][0]["uid"] == "uid-owned"
        assert meta["ownerReferences"][0]["controller"] is True
        assert meta["labels"][naming.LABEL_APP] == "owned"


def test_default_catalogue_config_map_parses_back_to_the_defaults() -> None:
    config_map = catalogue_render.catalogue_config_map(namespace="kubefal-system")
    assert config_map["metadata"]["name"] == naming.MACHINE_CATALOGUE_CONFIGMAP
    parsed = machines.load_from_configmap_data(config_map["data"])
    assert parsed == machines.default_catalogue()
