"""The Helm chart (charts/kubefal) renders what the processes expect: the checks that need only
``helm template`` and ``helm lint`` (the real helm binary of the testbin, no cluster).

The chart is checked the way platform teams use it: the real ``helm`` binary lints and renders
it, and the settings it passes are parsed by the operator's, the gateway's and the webhook's own
settings code. Contracts with other parts of the repository are checked here too: the chart's CRD
is the generated one in crds/, the default machine catalogue equals ``kubefal_api.machines``, and
gateway pods carry the labels the runners' NetworkPolicy admits. What needs the API server (dry
runs, RBAC asked of it, helm install, the real processes as their ServiceAccounts) stays in
e2e/test_chart.py.
"""

from __future__ import annotations

import base64
import json
import pathlib
import re
from typing import Any

import pytest
import yaml
from cryptography import x509

from kubefal_api import crds, machines, naming
from kubefal_controlplane import settings as controlplane_settings
from kubefal_gateway import settings as gateway_settings
from kubefal_operator import config as operator_config
from kubefal_operator import kube as operator_kube
from kubefal_webhook import settings as webhook_settings
from tests import charthelm

GENERATED_CRD = charthelm.REPO_ROOT / "crds" / crds.CRD_FILENAME
CHART_CRD_COPY = charthelm.CHART / "files" / "crds" / crds.CRD_FILENAME
SYNC_CRD_COMMAND = f"make manifests && cp crds/{crds.CRD_FILENAME} charts/kubefal/files/crds/"


@pytest.fixture(scope="module")
def helm() -> charthelm.Helm:
    return charthelm.helm()


def _values_file() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(
        (charthelm.CHART / "values.yaml").read_text(encoding="utf-8")
    )
    return document


# --- lint and the values file ---------------------------------------------------------------


@pytest.mark.parametrize("value_set", sorted(charthelm.VALUE_SETS))
def test_the_chart_passes_helm_lint_strict(helm: charthelm.Helm, value_set: str) -> None:
    result = helm.run(
        "lint",
        "--strict",
        str(charthelm.CHART),
        f"--kube-version={charthelm.kubernetes_version()}",
        values=charthelm.VALUE_SETS[value_set],
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


def test_every_key_in_values_yaml_has_a_comment_above_it() -> None:
    lines = (charthelm.CHART / "values.yaml").read_text(encoding="utf-8").splitlines()
    uncommented: list[str] = []
    list_item_indent: int | None = None
    previous = ""
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped:
            continue
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("#"):
            previous = line
            continue
        if list_item_indent is not None and indent > list_item_indent:
            previous = line
            continue  # keys inside a list item are example data, not chart settings
        list_item_indent = None
        if stripped.startswith("- "):
            list_item_indent = indent
        elif re.match(r"^[A-Za-z0-9_./-]+:", stripped):
            above_indent = len(previous) - len(previous.lstrip())
            if not (previous.strip().startswith("#") and above_indent == indent):
                uncommented.append(f"values.yaml:{number}: {stripped}")
        previous = line
    assert not uncommented, "keys without a comment line above them:\n" + "\n".join(uncommented)


def test_values_schema_covers_every_top_level_key_and_forbids_others() -> None:
    schema = json.loads((charthelm.CHART / "values.schema.json").read_text(encoding="utf-8"))
    assert schema["additionalProperties"] is False
    assert set(_values_file()) == set(schema["properties"]) - {"global"}
    assert set(_values_file()["webhook"]) == set(schema["properties"]["webhook"]["properties"])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param(
            {"gateway": {"replicas": 3}},
            "gateway.replicas=3 needs gateway.store.type=redis",
            id="replicas-3-with-sqlite",
        ),
        pytest.param(
            {"scaler": {"default": "keda"}},
            "additional properties 'scaler' not allowed",
            id="cluster-wide-default-scaler-does-not-exist",
        ),
        pytest.param(
            {"webhook": {"replicas": 1}},
            "at '/webhook/replicas': minimum: got 1, want 2",
            id="single-webhook-replica",
        ),
        pytest.param(
            {"webhook": {"tls": {"existingSecret": "my-webhook-tls"}}},
            "webhook.tls.existingSecret needs webhook.tls.caBundle",
            id="webhook-own-certificate-but-no-ca",
        ),
        pytest.param(
            {"webhook": {"replicas": 2, "podDisruptionBudget": {"minAvailable": 2}}},
            "must be below webhook.replicas=2",
            id="webhook-budget-blocking-every-drain",
        ),
        pytest.param(
            {"gateway": {"store": {"type": "redis"}}},
            "gateway.store.type=redis needs gateway.store.redis.url",
            id="redis-without-url",
        ),
        pytest.param(
            {"gateway": {"replicaz": 2}},
            "additional properties 'replicaz' not allowed",
            id="misspelt-key",
        ),
        pytest.param(
            {"machineCatalogue": {"machineTypes": {"S": {"cpu": 1, "memory": "1Gi"}}}},
            "at '/machineCatalogue/machineTypes/S/cpu': got number, want string",
            id="machine-cpu-not-a-string",
        ),
        pytest.param(
            {"machineCatalogue": {"machineTypes": {"GPU-X": {"cpu": "4", "memory": "8Gi"}}}},
            "at '/machineCatalogue/machineTypes/GPU-X': missing property 'gpuProducts'",
            id="gpu-type-without-products",
        ),
        pytest.param(
            {
                "externalMetrics": {"enabled": True},
                "gateway": {"tls": {"existingSecret": "my-tls"}},
            },
            "set externalMetrics.caBundle",
            id="hpa-with-own-certificate-but-no-ca",
        ),
        pytest.param(
            {"gateway": {"ports": {"queue": 8443, "run": 8443}}},
            "The gateway's ports must all differ",
            id="queue-and-run-on-one-port",
        ),
        pytest.param(
            {"gateway": {"tls": {"existingSecret": "a", "certManager": {"enabled": True}}}},
            "are exclusive",
            id="two-certificate-sources",
        ),
        pytest.param(
            {"build": {"registry": "registry.example/apps", "pod": {"nodeSelector": "pool"}}},
            "at '/build/pod/nodeSelector': got string, want object",
            id="build-pod-node-selector-not-a-map",
        ),
        pytest.param(
            {"build": {"registry": "registry.example/apps", "pod": {"hostNetwork": "yes"}}},
            "at '/build/pod/hostNetwork': got string, want boolean",
            id="build-pod-host-network-not-a-boolean",
        ),
    ],
)
def test_invalid_values_fail_rendering_with_a_message_naming_the_fix(
    helm: charthelm.Helm, values: dict[str, Any], message: str
) -> None:
    assert message in helm.template_error(values)


# --- contracts with the rest of the repository ------------------------------------------------


def test_the_chart_crd_copy_is_the_generated_crd() -> None:
    assert CHART_CRD_COPY.read_bytes() == GENERATED_CRD.read_bytes(), (
        f"{CHART_CRD_COPY.relative_to(charthelm.REPO_ROOT)} differs from crds/{crds.CRD_FILENAME}; "
        f"sync it with: {SYNC_CRD_COMMAND}"
    )


def test_the_rendered_crd_is_the_generated_crd_plus_release_labels_and_keep(
    helm: charthelm.Helm,
) -> None:
    rendered = charthelm.find(helm.template({}), "CustomResourceDefinition")
    generated = yaml.safe_load(GENERATED_CRD.read_text(encoding="utf-8"))
    assert rendered["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert rendered["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    for key, value in generated["metadata"].get("labels", {}).items():
        assert rendered["metadata"]["labels"][key] == value
    stripped = {**rendered, "metadata": {**rendered["metadata"]}}
    del stripped["metadata"]["annotations"]
    stripped["metadata"]["labels"] = generated["metadata"].get("labels")
    if stripped["metadata"]["labels"] is None:
        del stripped["metadata"]["labels"]
    assert stripped == generated, f"the chart's CRD drifted; sync it with: {SYNC_CRD_COMMAND}"


def test_crds_can_be_left_out_or_left_deletable(helm: charthelm.Helm) -> None:
    assert "CustomResourceDefinition" not in charthelm.kinds(
        helm.template({"crds": {"enabled": False}})
    )
    deletable = charthelm.find(helm.template({"crds": {"keep": False}}), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in deletable["metadata"].get("annotations", {})


def test_default_machine_catalogue_equals_kubefal_api_defaults(helm: charthelm.Helm) -> None:
    expected_yaml = machines.default_configmap_data()[naming.MACHINE_CATALOGUE_KEY]
    assert _values_file()["machineCatalogue"] == yaml.safe_load(expected_yaml), (
        "values.yaml machineCatalogue differs from kubefal_api.machines.default_catalogue()"
    )
    config_map = charthelm.find(helm.template({}), "ConfigMap", "kubefal-machines")
    assert machines.load_from_configmap_data(config_map["data"]) == machines.default_catalogue()


def test_a_default_machine_type_set_to_null_is_dropped_from_the_catalogue(
    helm: charthelm.Helm,
) -> None:
    config_map = charthelm.find(
        helm.template({"machineCatalogue": {"machineTypes": {"XS": None}}}),
        "ConfigMap",
        "kubefal-machines",
    )
    catalogue = machines.load_from_configmap_data(config_map["data"])
    assert "XS" not in catalogue.machine_types
    assert catalogue.machine_types["S"] == machines.default_catalogue().machine_types["S"]


def test_gateway_pods_carry_the_labels_the_runners_network_policy_admits(
    helm: charthelm.Helm,
) -> None:
    for value_set in charthelm.VALUE_SETS.values():
        gateway = charthelm.deployment(helm.template(value_set), "gateway")
        labels = gateway["spec"]["template"]["metadata"]["labels"]
        assert naming.gateway_selector().items() <= labels.items()


def test_the_operator_reads_the_settings_the_chart_gives_it(helm: charthelm.Helm) -> None:
    objects = helm.template(
        {"runner": {"image": {"repository": "registry.example/run", "tag": "7"}}}
    )
    container = charthelm.sole_container(charthelm.deployment(objects, "operator"))
    config = operator_config.OperatorConfig.from_environment(
        charthelm.environment(container, namespace="kubefal-system")
    )
    config_map = charthelm.find(objects, "ConfigMap")
    assert (config.catalogue_namespace, config.catalogue_name) == (
        config_map["metadata"]["namespace"],
        config_map["metadata"]["name"],
    )
    assert config.render.runner_image == "registry.example/run:7"
    assert config.metrics_port == charthelm.container_port(container, "metrics")
    assert config.gateway.queue_url == "https://kubefal-gateway-queue.kubefal-system.svc"
    assert config.gateway.run_url == "https://kubefal-gateway-run.kubefal-system.svc"
    assert config.gateway_admin_url == "http://kubefal-gateway-admin.kubefal-system.svc:9090"
    assert config.actuated
    liveness = container["livenessProbe"]["httpGet"]
    assert liveness == {"path": "/healthz", "port": "health"}
    health_port = charthelm.container_port(container, "health")
    assert charthelm.container_env(container)["KUBEFAL_OPERATOR_LIVENESS"].endswith(
        f":{health_port}/healthz"
    )


def test_the_gateway_reads_the_settings_the_chart_gives_it(helm: charthelm.Helm) -> None:
    objects = helm.template({})
    deployment = charthelm.deployment(objects, "gateway")
    container = charthelm.sole_container(deployment)
    settings = gateway_settings.load(
        [], environ=charthelm.environment(container, namespace="kubefal-system")
    )
    assert settings.host == "0.0.0.0"
    assert settings.queue_port == charthelm.container_port(container, "queue")
    assert settings.run_port == charthelm.container_port(container, "run")
    assert settings.admin_port == charthelm.container_port(container, "admin")
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert settings.tls_cert == pathlib.Path(mounts["tls"]) / "tls.crt"
    assert settings.tls_key == pathlib.Path(mounts["tls"]) / "tls.key"
    assert settings.store == f"sqlite://{mounts['queue']}/queue.db"
    assert settings.key_namespace == "kubefal-system"
    volumes = {
        volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]
    }
    claim = charthelm.find(objects, "PersistentVolumeClaim", "kubefal-gateway-queue")
    assert volumes["queue"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_several_gateway_replicas_share_redis_and_get_a_disruption_budget(
    helm: charthelm.Helm,
) -> None:
    objects = helm.template(charthelm.REDIS_VALUES)
    deployment = charthelm.deployment(objects, "gateway")
    container = charthelm.sole_container(deployment)
    settings = gateway_settings.load([], environ=charthelm.environment(container, namespace="ns"))
    assert settings.store == "redis://kubefal-redis:6379/0"
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert "PersistentVolumeClaim" not in charthelm.kinds(objects)
    budget = charthelm.find(objects, "PodDisruptionBudget", "kubefal-gateway")
    assert (
        budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    )
    assert not [
        item
        for item in helm.template({})
        if item["kind"] == "PodDisruptionBudget" and item["metadata"]["name"] == "kubefal-gateway"
    ]


def test_the_redis_url_can_come_from_a_secret(helm: charthelm.Helm) -> None:
    values = {
        "gateway": {
            "replicas": 2,
            "store": {"type": "redis", "redis": {"existingSecret": "r"}},
            "storage": charthelm.REDIS_VALUES["gateway"]["storage"],
        }
    }
    container = charthelm.sole_container(charthelm.deployment(helm.template(values), "gateway"))
    store = next(item for item in container["env"] if item["name"] == "KUBEFAL_GATEWAY_STORE")
    assert store["valueFrom"]["secretKeyRef"] == {"name": "r", "key": "url"}


def test_services_route_port_443_to_the_gateway_listeners(helm: charthelm.Helm) -> None:
    objects = helm.template({"keda": {"enabled": True}, "externalMetrics": {"enabled": True}})
    container = charthelm.sole_container(charthelm.deployment(objects, "gateway"))
    port_names = {port["name"] for port in container["ports"]}
    services = {
        item["metadata"]["name"]: item
        for item in objects
        if item["kind"] == "Service" and item["metadata"]["name"].startswith("kubefal-gateway-")
    }
    for name, target in [
        ("kubefal-gateway-queue", "queue"),
        ("kubefal-gateway-run", "run"),
        ("kubefal-gateway-metrics-api", "metrics-api"),
    ]:
        [port] = services[name]["spec"]["ports"]
        assert (port["port"], port["targetPort"]) == (443, target)
    admin_ports = {
        port["targetPort"] for port in services["kubefal-gateway-admin"]["spec"]["ports"]
    }
    assert admin_ports == {"admin", "keda-scaler"}
    pod_labels = charthelm.deployment(objects, "gateway")["spec"]["template"]["metadata"]["labels"]
    for service in services.values():
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names
        assert service["spec"]["selector"].items() <= pod_labels.items()
    operator_env = charthelm.container_env(
        charthelm.sole_container(charthelm.deployment(objects, "operator"))
    )
    scaler_port = charthelm.container_port(container, "keda-scaler")
    assert operator_env["KUBEFAL_KEDA_SCALER_ADDRESS"] == (
        f"kubefal-gateway-admin.kubefal-system.svc:{scaler_port}"
    )


def _verbs(role: dict[str, Any], group: str, resource: str) -> set[str]:
    return {
        verb
        for rule in role["rules"]
        if group in rule["apiGroups"] and resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_scaler_objects_are_always_watched_but_written_only_when_their_actuator_is_on(
    helm: charthelm.Helm,
) -> None:
    default = helm.template({})
    assert "APIService" not in charthelm.kinds(default)
    role = charthelm.find(default, "ClusterRole", "kubefal-operator")
    assert _verbs(role, "keda.sh", "scaledobjects") == {"list", "watch"}
    assert _verbs(role, "autoscaling", "horizontalpodautoscalers") == {"list", "watch"}
    writes = {"create", "patch", "delete"}
    keda = helm.template({"keda": {"enabled": True}})
    keda_role = charthelm.find(keda, "ClusterRole", "kubefal-operator")
    assert _verbs(keda_role, "keda.sh", "scaledobjects") == {"list", "watch", *writes}
    assert _verbs(keda_role, "autoscaling", "horizontalpodautoscalers") == {"list", "watch"}
    assert "APIService" not in charthelm.kinds(keda)
    hpa = helm.template({"externalMetrics": {"enabled": True}})
    assert (
        charthelm.find(hpa, "APIService")["metadata"]["name"] == "v1beta1.external.metrics.k8s.io"
    )
    hpa_role = charthelm.find(hpa, "ClusterRole", "kubefal-operator")
    assert _verbs(hpa_role, "autoscaling", "horizontalpodautoscalers") == {"list", "watch", *writes}
    assert _verbs(hpa_role, "keda.sh", "scaledobjects") == {"list", "watch"}


def _operator_source() -> str:
    package = charthelm.REPO_ROOT / "operator" / "kubefal_operator"
    return "\n".join(path.read_text(encoding="utf-8") for path in package.rglob("*.py"))


# Read by boto3 (the gateway's S3 store), not by the gateway's own settings.
GATEWAY_AWS_ENV = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"})


def test_every_environment_variable_the_chart_sets_is_read_by_its_process(
    helm: charthelm.Helm,
) -> None:
    """No dead settings: the operator's names are read somewhere in its package (it reads
    no KUBEFAL_DEFAULT_SCALER: spec.scaler defaults to builtin in the CRD, so a cluster-wide
    default could never apply); the gateway's and the webhook's are KUBEFAL_<PROCESS>_<FIELD>
    of a field of their Settings (the gateway's AWS keys are boto3's); the control plane's are
    among its settings' variables."""
    operator_source = _operator_source()
    operator_names = set(operator_config.OperatorSettings.env_names().values())
    gateway_names = set(gateway_settings.Settings.env_names().values())
    webhook_names = set(webhook_settings.Settings.env_names().values())
    dead: list[str] = []
    for value_set in charthelm.VALUE_SETS.values():
        objects = helm.template(value_set)
        for name in charthelm.container_env(
            charthelm.sole_container(charthelm.deployment(objects, "operator"))
        ):
            if name not in operator_names and f'"{name}"' not in operator_source:
                dead.append(f"operator: {name}")
        dead += [
            f"gateway: {name}"
            for name in charthelm.container_env(
                charthelm.sole_container(charthelm.deployment(objects, "gateway"))
            )
            if name not in gateway_names | GATEWAY_AWS_ENV
        ]
        if value_set.get("controlPlane", {}).get("enabled", True):
            dead += [
                f"controlplane: {name}"
                for name in charthelm.container_env(
                    charthelm.sole_container(charthelm.deployment(objects, "controlplane"))
                )
                if name not in controlplane_settings.Settings.env_names().values()
            ]
        if value_set.get("webhook", {}).get("enabled", True):
            dead += [
                f"webhook: {name}"
                for name in charthelm.container_env(
                    charthelm.sole_container(charthelm.deployment(objects, "webhook"))
                )
                if name not in webhook_names
            ]
    assert not dead, "environment variables no process reads:\n" + "\n".join(sorted(set(dead)))
    keda_env = charthelm.container_env(
        charthelm.sole_container(
            charthelm.deployment(helm.template({"keda": {"enabled": True}}), "operator")
        )
    )
    assert "KUBEFAL_KEDA_SCALER_ADDRESS" in keda_env
    assert "KUBEFAL_KEDA_SCALER_ADDRESS" not in charthelm.container_env(
        charthelm.sole_container(charthelm.deployment(helm.template({}), "operator"))
    )


def test_the_operator_role_covers_exactly_the_resources_its_handlers_use(
    helm: charthelm.Helm,
) -> None:
    """Every resource kopf watches for the operator can be listed and watched; the role names
    no other resource than those, their status, Events, the Secrets of the runners' keys
    (runner_keys.py, not watched) and kopf's CRD scanning."""
    scoped = helm.template({"operator": {"watchNamespaces": ["team-a"]}})
    role = charthelm.find(scoped, "ClusterRole", "kubefal-operator")
    namespace_role = next(
        item
        for item in scoped
        if item["kind"] == "Role" and item["metadata"]["namespace"] == "team-a"
    )
    watched = {(kind.group, kind.plural) for kind in operator_kube.WATCHED}
    for group, resource in watched:
        verbs = _verbs(role, group, resource) | _verbs(namespace_role, group, resource)
        assert {"list", "watch"} <= verbs, f"{group}/{resource}"
    granted = {
        (group, resource)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    kopf_scanning = {("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces")}
    per_namespace = {("", "pods")}
    runner_keys = {(operator_kube.SECRETS.group, operator_kube.SECRETS.plural)}
    assert granted == (watched - per_namespace) | kopf_scanning | runner_keys | {
        ("kubefal.io", "falapps/status"),
        ("", "events"),
    }
    assert namespace_role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch", "patch"]}
    ]
    # A FalApp's status is the only part of it the operator writes (no kopf annotations,
    # no finalizer: raw event handlers only).
    assert _verbs(role, "kubefal.io", "falapps") == {"get", "list", "watch"}
    assert _verbs(role, "kubefal.io", "falapps/status") == {"patch"}
    for rules in (role["rules"], namespace_role["rules"]):
        assert not any("update" in rule["verbs"] or "*" in rule["verbs"] for rule in rules)


def test_pod_rights_are_per_watched_namespace_when_the_operator_is_scoped(
    helm: charthelm.Helm,
) -> None:
    """Serving every namespace, the ClusterRole may patch pods anywhere (documented); scoped,
    a Role and RoleBinding in each watched namespace carry the pod rights and nothing else."""
    cluster_wide = charthelm.find(helm.template({}), "ClusterRole", "kubefal-operator")
    assert _verbs(cluster_wide, "", "pods") == {"list", "watch", "patch"}
    scoped = helm.template({"operator": {"watchNamespaces": ["team-a", "team-b"]}})
    assert _verbs(charthelm.find(scoped, "ClusterRole", "kubefal-operator"), "", "pods") == set()
    for kind in ("Role", "RoleBinding"):
        placed = {
            item["metadata"]["namespace"]
            for item in scoped
            if item["kind"] == kind and item["metadata"]["name"] == "kubefal-operator-runner-pods"
        }
        assert placed == {"team-a", "team-b"}, kind
    binding = next(
        item
        for item in scoped
        if item["kind"] == "RoleBinding"
        and item["metadata"]["name"] == "kubefal-operator-runner-pods"
    )
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kubefal-operator", "namespace": "kubefal-system"}
    ]


def test_the_operator_hardens_runners_and_points_them_at_this_gateway(helm: charthelm.Helm) -> None:
    """The NetworkPolicy settings select exactly the gateway pods of this release in its
    namespace; fal_client in runners reaches the in-cluster Services and trusts the CA in the
    gateway's TLS Secret; runner hardening follows runner.securityContext."""
    objects = helm.template(
        {
            "runner": {"securityContext": {"runAsUser": 2000, "readOnlyRootFilesystem": False}},
            "gateway": {"publicHosts": {"run": "run.example", "queue": "queue.example"}},
        },
        namespace="platform",
        release="edge",
    )
    operator = charthelm.deployment(objects, "operator")
    container = charthelm.sole_container(operator)
    config = operator_config.OperatorConfig.from_environment(
        charthelm.environment(container, namespace="platform")
    ).render
    gateway_pod_labels = charthelm.deployment(objects, "gateway")["spec"]["template"]["metadata"][
        "labels"
    ]
    assert config.gateway_namespace == "platform"
    assert dict(config.gateway_pod_labels).items() <= gateway_pod_labels.items()
    assert {"app.kubernetes.io/instance", "app.kubernetes.io/component"} <= dict(
        config.gateway_pod_labels
    ).keys()
    run_service = charthelm.find(objects, "Service", "edge-kubefal-gateway-run")
    queue_service = charthelm.find(objects, "Service", "edge-kubefal-gateway-queue")
    assert run_service["spec"]["ports"][0]["port"] == 443
    assert config.fal_run_host == "edge-kubefal-gateway-run.platform.svc"
    assert config.fal_queue_run_host == "edge-kubefal-gateway-queue.platform.svc"
    assert queue_service["metadata"]["namespace"] == "platform"
    assert (config.runner_run_as_user, config.runner_run_as_group) == (2000, 10001)
    assert config.runner_read_only_root_filesystem is False
    ca_file = charthelm.container_env(container)["KUBEFAL_GATEWAY_CA_FILE"]
    mount = next(
        item for item in container["volumeMounts"] if ca_file.startswith(item["mountPath"] + "/")
    )
    volume = next(
        item
        for item in operator["spec"]["template"]["spec"]["volumes"]
        if item["name"] == mount["name"]
    )
    tls_secret = charthelm.find(objects, "Secret", "edge-kubefal-gateway-tls")
    assert volume["secret"]["secretName"] == tls_secret["metadata"]["name"]
    assert volume["secret"]["items"] == [{"key": "ca.crt", "path": ca_file.rsplit("/", 1)[1]}]
    assert "ca.crt" in tls_secret["data"]

    plain = charthelm.container_env(
        charthelm.sole_container(
            charthelm.deployment(helm.template({"runner": {"gatewayClient": False}}), "operator")
        )
    )
    assert not {"KUBEFAL_RUNNER_FAL_RUN_HOST", "KUBEFAL_GATEWAY_CA_FILE"} & plain.keys()


def test_namespaces_are_watched_only_when_the_operator_is_scoped_to_some(
    helm: charthelm.Helm,
) -> None:
    role = charthelm.find(helm.template({}), "ClusterRole", "kubefal-operator")
    assert _verbs(role, "", "namespaces") == set()
    scoped = helm.template({"operator": {"watchNamespaces": ["team-a"]}})
    assert _verbs(charthelm.find(scoped, "ClusterRole", "kubefal-operator"), "", "namespaces") == {
        "list",
        "watch",
    }


def test_the_generated_certificate_covers_every_service_and_the_apiservice_trusts_it(
    helm: charthelm.Helm,
) -> None:
    values = {
        "externalMetrics": {"enabled": True},
        "gateway": {"publicHosts": {"run": "run.example:8443"}},
    }
    objects = helm.template(values, namespace="platform")
    secret = charthelm.find(objects, "Secret", "kubefal-gateway-tls")
    certificate = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    authority = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    certificate.verify_directly_issued_by(authority)
    names = set(
        certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)
    )
    gateway_services = (
        item
        for item in objects
        if item["kind"] == "Service" and item["metadata"]["name"].startswith("kubefal-gateway-")
    )
    for service in gateway_services:
        if service["metadata"]["name"] != "kubefal-gateway-admin":  # plain HTTP
            assert f"{service['metadata']['name']}.platform.svc" in names
    assert {"run.example", "localhost"} <= names
    apiservice = charthelm.find(objects, "APIService")
    assert apiservice["spec"]["caBundle"] == secret["data"]["ca.crt"]
    assert apiservice["spec"]["service"] == {
        "name": "kubefal-gateway-metrics-api",
        "namespace": "platform",
        "port": 443,
    }


def test_cert_manager_issues_the_certificate_and_injects_the_apiservice_ca(
    helm: charthelm.Helm,
) -> None:
    values = {
        "externalMetrics": {"enabled": True},
        "gateway": {"tls": {"certManager": {"enabled": True, "issuerRef": {"name": "ca"}}}},
    }
    objects = helm.template(values)
    certificate = charthelm.find(objects, "Certificate")
    assert "kubefal-gateway-metrics-api.kubefal-system.svc" in certificate["spec"]["dnsNames"]
    assert certificate["spec"]["secretName"] == "kubefal-gateway-tls"
    assert "Secret" not in {
        item["kind"] for item in objects if item["metadata"]["name"] == "kubefal-gateway-tls"
    }
    apiservice = charthelm.find(objects, "APIService")
    assert apiservice["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": "kubefal-system/kubefal-gateway"
    }


def test_the_webhook_reads_the_settings_the_chart_gives_it(helm: charthelm.Helm) -> None:
    objects = helm.template({"operator": {"image": {"repository": "registry.example/cp"}}})
    deployment = charthelm.deployment(objects, "webhook")
    container = charthelm.sole_container(deployment)
    assert container["command"] == ["python", "-m", "kubefal_webhook"]
    assert container["image"] == "registry.example/cp:" + _chart_app_version()
    settings = webhook_settings.load([], environ=charthelm.environment(container, namespace="ns"))
    assert settings.host == "0.0.0.0"
    assert settings.port == charthelm.container_port(container, "https")
    # Prometheus scrapes the plain-HTTP port monitoring.webhookPodMonitor names (metrics).
    assert (settings.metrics_host, settings.metrics_port) == ("0.0.0.0", 9090)
    assert settings.metrics_port == charthelm.container_port(container, "metrics")
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert settings.tls_cert == pathlib.Path(mounts["tls"]) / "tls.crt"
    assert settings.tls_key == pathlib.Path(mounts["tls"]) / "tls.key"
    catalogue = charthelm.find(objects, "ConfigMap")
    assert (settings.catalogue_namespace, settings.catalogue_name) == (
        catalogue["metadata"]["namespace"],
        catalogue["metadata"]["name"],
    )
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "https", "scheme": "HTTPS"}
    assert deployment["spec"]["replicas"] == 2
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = charthelm.find(objects, "Service", "kubefal-webhook")
    assert service["spec"]["ports"] == [
        {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    budget = charthelm.find(objects, "PodDisruptionBudget", "kubefal-webhook")
    assert budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    assert (
        budget["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    )
    secret_volume = next(
        volume
        for volume in deployment["spec"]["template"]["spec"]["volumes"]
        if volume["name"] == "tls"
    )
    assert secret_volume["secret"]["secretName"] == "kubefal-webhook-tls"


def _chart_app_version() -> str:
    chart = yaml.safe_load((charthelm.CHART / "Chart.yaml").read_text(encoding="utf-8"))
    return str(chart["appVersion"])


def test_the_webhook_configuration_sends_falapp_writes_to_a_service_it_trusts(
    helm: charthelm.Helm,
) -> None:
    objects = helm.template({}, namespace="platform")
    configuration = charthelm.find(objects, "ValidatingWebhookConfiguration")
    [webhook] = configuration["webhooks"]
    assert webhook["rules"] == [
        {
            "apiGroups": ["kubefal.io"],
            "apiVersions": ["v1alpha1"],
            "resources": ["falapps"],
            "operations": ["CREATE", "UPDATE"],
            "scope": "Namespaced",
        }
    ]
    assert (webhook["sideEffects"], webhook["failurePolicy"], webhook["timeoutSeconds"]) == (
        "None",
        "Fail",
        10,
    )
    assert webhook["admissionReviewVersions"] == ["v1"]
    assert webhook["clientConfig"]["service"] == {
        "name": "kubefal-webhook",
        "namespace": "platform",
        "path": "/validate",
        "port": 443,
    }
    secret = charthelm.find(objects, "Secret", "kubefal-webhook-tls")
    assert webhook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    certificate = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    authority = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    certificate.verify_directly_issued_by(authority)
    names = certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName)
    assert "kubefal-webhook.platform.svc" in names
    gateway_ca = charthelm.find(objects, "Secret", "kubefal-gateway-tls")["data"]["ca.crt"]
    assert gateway_ca != secret["data"]["ca.crt"], "the webhook's CA must be its own"


def test_the_webhook_certificate_can_come_from_cert_manager_or_an_existing_secret(
    helm: charthelm.Helm,
) -> None:
    issued = helm.template(
        {"webhook": {"tls": {"certManager": {"enabled": True, "issuerRef": {"name": "ca"}}}}}
    )
    certificate = charthelm.find(issued, "Certificate", "kubefal-webhook")
    assert certificate["spec"]["secretName"] == "kubefal-webhook-tls"
    assert "kubefal-webhook.kubefal-system.svc" in certificate["spec"]["dnsNames"]
    injected = charthelm.find(issued, "ValidatingWebhookConfiguration")
    assert injected["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": "kubefal-system/kubefal-webhook"
    }
    assert "caBundle" not in injected["webhooks"][0]["clientConfig"]
    own = helm.template(
        {"webhook": {"tls": {"existingSecret": "my-webhook-tls", "caBundle": "Q0E="}}}
    )
    assert not [item for item in own if item["metadata"]["name"] == "kubefal-webhook-tls"]
    [webhook] = charthelm.find(own, "ValidatingWebhookConfiguration")["webhooks"]
    assert webhook["clientConfig"]["caBundle"] == "Q0E="
    volumes = charthelm.deployment(own, "webhook")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": "my-webhook-tls"}} in volumes


def test_the_webhook_can_be_left_out(helm: charthelm.Helm) -> None:
    objects = helm.template({"webhook": {"enabled": False}})
    assert "ValidatingWebhookConfiguration" not in charthelm.kinds(objects)
    assert not [
        item
        for item in objects
        if item["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "webhook"
    ]


def test_containers_are_hardened_by_default(helm: charthelm.Helm) -> None:
    objects = helm.template({})
    for component in ("operator", "gateway", "webhook", "controlplane"):
        deployment = charthelm.deployment(objects, component)
        pod = deployment["spec"]["template"]["spec"]
        context = charthelm.sole_container(deployment)["securityContext"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
    operator = charthelm.deployment(objects, "operator")
    assert operator["spec"]["replicas"] == 1
    assert operator["spec"]["strategy"] == {"type": "Recreate"}
