"""The runners' Service and the NetworkPolicy that fences them.

The Service is headless (``clusterIP: None``): the gateway picks a runner itself
(least-loaded, with a free multiplexing slot) from the pods it watches, so a virtual IP
that load-balances behind its back would be wrong, and a headless Service costs no address
from the cluster's Service range (hundreds of apps fit in a /24). It still gives DNS
names and a scrape target for the metrics port.

The NetworkPolicy admits the app port only from gateway pods (any namespace): the gateway
is where API keys are checked, so nothing may reach a runner around it. The metrics port is
read-only counters and cannot invoke the app, so it is admitted from any pod in the
cluster, where Prometheus usually runs in a namespace of its own.
"""

from __future__ import annotations

from kubefal_api import naming, v1alpha1
from kubefal_operator.render import common


def service(app: v1alpha1.FalApp, *, settings: common.RenderSettings) -> common.Manifest:
    owner = common.Owner.of(app)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": common.metadata(owner, name=naming.service_name(owner.name)),
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "None",
            "selector": naming.runner_selector(owner.name),
            "ports": [
                {
                    "name": "http",
                    "port": settings.runner_port,
                    "targetPort": "http",
                    "protocol": "TCP",
                },
                {
                    "name": "metrics",
                    "port": settings.metrics_port,
                    "targetPort": "metrics",
                    "protocol": "TCP",
                },
            ],
        },
    }


def network_policy(app: v1alpha1.FalApp, *, settings: common.RenderSettings) -> common.Manifest:
    owner = common.Owner.of(app)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": common.metadata(owner, name=naming.network_policy_name(owner.name)),
        "spec": {
            "podSelector": {"matchLabels": naming.runner_selector(owner.name)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {},
                            "podSelector": {"matchLabels": naming.gateway_selector()},
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": settings.runner_port}],
                },
                {
                    "from": [{"namespaceSelector": {}}],
                    "ports": [{"protocol": "TCP", "port": settings.metrics_port}],
                },
            ],
        },
    }
