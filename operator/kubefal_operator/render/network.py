"""The runners' Service and the NetworkPolicy that fences them.

The Service is headless (``clusterIP: None``): the gateway picks a runner itself
(least-loaded, with a free multiplexing slot) from the pods it watches, so a virtual IP
that load-balances behind its back would be wrong, and a headless Service costs no address
from the cluster's Service range (hundreds of apps fit in a /24). It still gives DNS
names and a scrape target for the metrics port.

The NetworkPolicy admits the app port only from the gateway's own pods in the gateway's own
namespace (both selectors in one peer, so both must match): the gateway is where API keys
are checked, so nothing may reach a runner around it, and a pod elsewhere that copies the
gateway's labels is no gateway. The namespace is matched by its immutable
``kubernetes.io/metadata.name`` label, which only the API server sets. The metrics port is
read-only counters and cannot invoke the app, so it is admitted from any pod in the
cluster, where Prometheus usually runs in a namespace of its own.
"""

from __future__ import annotations

from kubefal_api import naming, v1alpha1
from kubefal_operator.render import common

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
"""Set by the API server on every namespace to its name; namespaces cannot change it."""


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
                            "namespaceSelector": {
                                "matchLabels": {NAMESPACE_NAME_LABEL: settings.gateway_namespace}
                            },
                            "podSelector": {"matchLabels": dict(settings.gateway_pod_labels)},
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
