"""The chart's side of the gateway's edge (issue 9, item 12): the admin port's token Secret
reaches both the gateway and the operator, the gateway NetworkPolicy is on by default and admits
only what needs the gateway (the admin port: the operator and the control plane), and the
webhook allow/deny lists reach the gateway's settings.

Rendered with the real ``helm`` binary (``helm template``, no cluster); the settings the chart
passes are parsed by the gateway's and the operator's own settings code.
"""

from __future__ import annotations

from kubefal_gateway import settings as gateway_settings
from kubefal_operator import config as operator_config
from kubefal_operator import signals
from tests.charthelm import container, find, render
from tests.charthelm import env_items as env


def test_the_admin_token_secret_reaches_the_gateway_and_the_operator() -> None:
    objects = render({})
    secret = find(objects, "Secret", "kubefal-gateway-admin-token")
    assert set(secret["data"]) == {"token"}
    gateway_env = env(find(objects, "Deployment", "kubefal-gateway"))
    operator_env = env(find(objects, "Deployment", "kubefal-operator"))
    reference = {"secretKeyRef": {"name": "kubefal-gateway-admin-token", "key": "token"}}
    assert gateway_env["KUBEFAL_GATEWAY_ADMIN_TOKEN"]["valueFrom"] == reference
    assert operator_env[signals.ADMIN_TOKEN_ENV]["valueFrom"] == reference
    assert "KUBEFAL_GATEWAY_ADMIN_URL" in operator_env
    # What the processes make of it, with the Secret's value filled in.
    loaded = gateway_settings.load(
        [],
        environ={
            "KUBEFAL_GATEWAY_ADMIN_TOKEN": "t0ken",
            "KUBEFAL_GATEWAY_ADMIN_TOKEN_METRICS": gateway_env[
                "KUBEFAL_GATEWAY_ADMIN_TOKEN_METRICS"
            ]["value"],
            "KUBEFAL_GATEWAY_KEY_NAMESPACE": gateway_env["KUBEFAL_GATEWAY_KEY_NAMESPACE"]["value"],
        },
    )
    assert (loaded.admin_token, loaded.admin_token_metrics) == ("t0ken", False)
    operator = operator_config.OperatorConfig.from_environment({signals.ADMIN_TOKEN_ENV: "t0ken"})
    assert operator.gateway_admin_token == "t0ken"


def test_an_existing_secret_or_no_admin_auth() -> None:
    objects = render({"gateway": {"adminAuth": {"existingSecret": "mine"}}})
    assert not [item for item in objects if item["metadata"]["name"].endswith("admin-token")]
    reference = env(find(objects, "Deployment", "kubefal-operator"))[signals.ADMIN_TOKEN_ENV]
    assert reference["valueFrom"]["secretKeyRef"]["name"] == "mine"
    off = render({"gateway": {"adminAuth": {"enabled": False}}})
    assert "KUBEFAL_GATEWAY_ADMIN_TOKEN" not in env(find(off, "Deployment", "kubefal-gateway"))
    assert signals.ADMIN_TOKEN_ENV not in env(find(off, "Deployment", "kubefal-operator"))


def test_the_gateway_network_policy_is_on_by_default_and_admits_the_operator_to_admin() -> None:
    objects = render({})
    policy = find(objects, "NetworkPolicy", "kubefal-gateway")
    gateway = find(objects, "Deployment", "kubefal-gateway")
    operator = find(objects, "Deployment", "kubefal-operator")
    gateway_labels = gateway["spec"]["template"]["metadata"]["labels"]
    operator_labels = operator["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= gateway_labels.items()
    controlplane_labels = find(objects, "Deployment", "kubefal-controlplane")["spec"]["template"][
        "metadata"
    ]["labels"]
    rules = {
        tuple(port["port"] for port in rule["ports"]): rule.get("from")
        for rule in policy["spec"]["ingress"]
    }
    assert rules[("queue", "run")] is None  # clients, ingress controllers, runners: anyone
    assert rules[("rest",)] is None  # uploads from clients and runners, file URLs: anyone
    operator_peer, controlplane_peer = rules[("admin",)]
    for peer, labels in (
        (operator_peer, operator_labels),
        (controlplane_peer, controlplane_labels),
    ):
        assert set(peer) == {"podSelector"}
        selector = peer["podSelector"]["matchLabels"]
        assert selector.items() <= labels.items()
        assert not selector.items() <= gateway_labels.items()
    assert not operator_peer["podSelector"]["matchLabels"].items() <= controlplane_labels.items()
    container_ports = {port["name"] for port in container(gateway)["ports"]}
    admitted = {port for ports in rules for port in ports}
    assert container_ports == admitted, "every gateway port needs a rule (or none is reachable)"


def test_webhook_allow_and_deny_lists_reach_the_gateway() -> None:
    objects = render(
        {"gateway": {"webhooks": {"allow": ["10.20.0.0/16", "hooks.internal"], "deny": []}}}
    )
    gateway_env = env(find(objects, "Deployment", "kubefal-gateway"))
    allow = gateway_env["KUBEFAL_GATEWAY_WEBHOOK_ALLOW"]["value"]
    assert "KUBEFAL_GATEWAY_WEBHOOK_DENY" not in gateway_env
    loaded = gateway_settings.load(
        [], environ={"KUBEFAL_GATEWAY_WEBHOOK_ALLOW": allow, "KUBEFAL_GATEWAY_KEY_NAMESPACE": "k"}
    )
    assert loaded.webhook_allow == "10.20.0.0/16,hooks.internal"
