"""The runner Deployment rendered from a FalApp: container, resources, probes, rollout, and
the hardening of the pod (security contexts, writable scratch, no token, gateway env)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from kubefal_api import machines, naming, v1alpha1
from kubefal_operator import annotations as operator_annotations
from kubefal_operator.render import common, deployment

MakeApp = Callable[..., v1alpha1.FalApp]
"""The ``make_app`` fixture (tests/operator/conftest.py)."""


def _render(
    make_app: MakeApp,
    catalogue: machines.MachineCatalogue,
    settings: common.RenderSettings,
    **spec: Any,
) -> dict[str, Any]:
    return deployment.deployment(make_app(**spec), catalogue=catalogue, settings=settings)


def _container(manifest: dict[str, Any]) -> dict[str, Any]:
    containers = manifest["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _env(manifest: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in _container(manifest)["env"]}


def test_runner_container_runs_the_runner_module_with_its_configuration(
    make_app: MakeApp, catalogue: machines.MachineCatalogue, settings: common.RenderSettings
) -> None:
    manifest = _render(
        make_app,
        catalogue,
        settings,
        requirements=["numpy==2.1.0", "scikit-learn"],
        scaling={"maxMultiplexing": 4},
        requestTimeout=120,
    )
    container = _container(manifest)
    env = _env(manifest)
    assert container["name"] == naming.RUNNER_CONTAINER
    assert container["command"] == ["python", "-m", "kubefal_runner"]
    assert env["KUBEFAL_RUNNER_APP"] == "app.py::Demo"
    assert env["KUBEFAL_RUNNER_PORT"] == "8080"
    assert env["KUBEFAL_RUNNER_METRICS_PORT"] == "9090"
    assert env["KUBEFAL_MAX_MULTIPLEXING"] == "4"
    assert json.loads(env["KUBEFAL_REQUIREMENTS"]) == ["numpy==2.1.0", "scikit-learn"]
    assert env["KUBEFAL_DRAIN_TIMEOUT"] == "120"
    assert {port["name"]: port["containerPort"] for port in container["ports"]} == {
        "http": 8080,
        "metrics": 9090,
    }


def test_source_config_map_is_mounted_at_app_and_the_app_path_points_into_it(
    make_app: MakeApp, catalogue: machines.MachineCatalogue, settings: common.RenderSettings
) -> None:
    manifest = _render(
        make_app, catalogue, settings, source={"configMapRef": {"name": "demo-source"}}
    )
    pod = manifest["spec"]["template"]["spec"]
    assert {"name": "app-source", "configMap": {"name": "demo-source"}} in pod["volumes"]
    assert {"name": "app-source", "mountPath": "/app", "readOnly": True} in _container(manifest)[
        "volumeMounts"
    ]
    assert _env(manifest)["KUBEFAL_RUNNER_APP"] == "/app/app.py::Demo"


def test_requirement_layers_reach_the_runner_as_a_list_of_lists(
    make_app: MakeApp, catalogue: machines.MachineCatalogue, settings: common.RenderSettings
) -> None:
    manifest = _render(
        make_app, catalogue, settings, requirementLayers=[["torch==2.5.0"], ["diffusers"]]
    )

    assert json.loads(_env(manifest)["KUBEFAL_REQUIREMENTS"]) == [["torch==2.5.0"], ["diffusers"]]


def test_several_source_config_maps_are_projected_into_one_app_directory(
    make_app: MakeApp, catalogue: machines.MachineCatalogue, settings: common.RenderSettings
) -> None:
    source = {
        "configMaps": [
            {"name": "demo-src-a", "items": [{"key": "f0", "path": "app.py"}]},
            {"name": "demo-src-b", "items": [{"key": "f1", "path": "helpers/__init__.py"}]},
        ]
    }
    manifest = _render(make_app, catalogue, settings, source=source)

    pod = manifest["spec"]["template"]["spec"]
    volume = next(volume for volume in pod["volumes"] if volume["name"] == "app-source")
    assert volume == {
        "name": "app-source",
        "projected": {
            "sources": [
                {"configMap": {"name": "demo-src-a", "items": [{"key": "f0", "path": "app.py"}]}},
                {
                    "configMap": {
                        "name": "demo-src-b",
                        "items": [{"key": "f1", "path": "helpers/__init__.py"}],
                    }
                },
            ]
        },
    }
    assert _env(manifest)["KUBEFAL_RUNNER_APP"] == "/app/app.py::Demo"
    assert _container(manifest)["workingDir"] == "/app"


def test_an_app_below_its_context_directory_runs_in_its_own_directory_as_on_fal(
    make_app: MakeApp, catalogue: machines.MachineCatalogue, settings: common.RenderSettings
) -> None:
    source = {"configMaps": [{"name": "c", "items": [{"key": "f0", "path": "svc/app.py"}]}]}
    manifest = _render(make_app, catalogue, settings, app="svc/app.py::Demo", source=source)

    assert _env(manifest)["KUBEFAL_RUNNER_APP"] == "/app/svc/app.py::Demo"
    assert _container(manifest)["workingDir"] == "/app/svc"


def test_image_defaults_to_the_generic_runner_and_a_spec_image_wins(
    make_app: MakeApp, catalogue: machines.MachineCatalogue
) -> None:
    settings = common.RenderSettings(runner_image="registry.local/runner:7")
    assert _container(_render(make_app, catalogue, settings))["image"] == "registry.local/runner:7"
    custom = _render(make_app, catalogue, settings, image="registry.local/my-app:1")
    assert _container(custom)["image"] == "registry.local/my-app:1"


def test_user_env_and_env_from_are_passed_through_after_the_runner_settings(
    make_app: MakeApp, catalogue: machines.MachineCatalogue, settings: common.RenderSettings
) -> None:
    manifest = _render(
        make_app,
        catalogue,
        settings,
        env=[
            {"name": "MODEL", "value": "small"},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
        ],
        envFrom=[{"secretRef": {"name": "hf-credentials"}}],
    )
    container = _container(manifest)
    names = [item["name"] for item in container["env"]]
    assert names[-2:] == ["MODEL", "TOKEN"]
    assert container["env"][-1]["valueFrom"] == {"secretKeyRef": {"name": "s", "key": "token"}}
    assert container["envFrom"] == [{"secretRef": {"name": "hf-credentials"}}]


def test_cpu_app_requests_its_machine_type_and_gets_no_gpu_or_toleration(
    make_app: MakeApp, catalogue: machines.MachineCatalogue, settings: common.RenderSettings
) -> None:
    manifest = _render(make_app, catalogue, settings, machineTypes=["M"])
    resources = _container(manifest)["resources"]
    assert resources == {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}
    assert "tolerations" not in manifest["spec"]["template"]["spec"]


def test_gpu_app_gets_num_gpus_in_limits_and_the_gpu_toleration(
    make_app: MakeApp, catalogue: machines.MachineCatalogue, settings: common.RenderSettings
) -> None:
    manifest = _render(make_app, catalogue, settings, machineTypes=["GPU-H100"], numGpus=2)
    resources = _container(manifest)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "2"
    assert resources["requests"]["nvidia.com/gpu"] == "2"
    assert resources["requests"]["cpu"] == "12"
    assert manifest["spec"]["template"]["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]


def test_gpu_app_without_num_gpus_gets_one_gpu(
    make_app: MakeApp, catalogue: machines.MachineCatalogue, settings: common.RenderSettings
) -> None:
    manifest = _render(make_app, catalogue, settings, machineTypes=["GPU-H200"])
    assert _container(manifest)["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_resources_come_from_the_smallest_listed_type(
    make_app: MakeApp, catalogue: machines.MachineCatalogue, settings: common.RenderSettings
) -> None:
    manifest = _render(make_app, catalogue, settings, machineTypes=["GPU-H100", "GPU-A100"])
    requests = _container(manifest)["resources"]["requests"]
    assert (requests["cpu"], requests["memory"]) == ("12", "60Gi")


def test_probes_follow_startup_timeout_and_health_check(
    make_app: MakeApp, catalogue: machines.MachineCatalogue, settings: common.RenderSettings
) -> None:
    manifest = _render(
        make_app,
        catalogue,
        settings,
        startupTimeout=301,
        healthCheck={"path": "/healthy", "timeoutSeconds": 7, "failureThreshold": 5},
    )
    container = _container(manifest)
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/_kubefal/ready", "port": "http"}
    assert startup["periodSeconds"] == 2
    assert startup["failureThreshold"] == math.ceil(301 / 2)
    assert container["readinessProbe"]["httpGet"]["path"] == "/_kubefal/ready"
    liveness = container["livenessProbe"]
    assert liveness["httpGet"] == {"path": "/_kubefal/health", "port": "http"}
    assert liveness["failureThreshold"] == 5
    assert liveness["timeoutSeconds"] == 8
    assert json.loads(_env(manifest)["KUBEFAL_HEALTH_CHECK"])["path"] == "/healthy"


def test_grace_period_covers_the_request_timeout_plus_the_drain_margin(
    make_app: MakeApp, catalogue: machines.MachineCatalogue
) -> None:
    settings = common.RenderSettings(drain_margin_seconds=45)
    manifest = _render(make_app, catalogue, settings, requestTimeout=900)
    assert manifest["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 945


def test_rolling_strategy_surges_one_and_recreate_never_doubles(
    make_app: MakeApp, catalogue: machines.MachineCatalogue, settings: common.RenderSettings
) -> None:
    rolling = _render(make_app, catalogue, settings)["spec"]["strategy"]
    assert rolling == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    recreate = _render(make_app, catalogue, settings, strategy="recreate")["spec"]["strategy"]
    assert recreate == {"type": "Recreate"}


def test_replicas_are_left_to_the_scaler(
    make_app: MakeApp, catalogue: machines.MachineCatalogue, settings: common.RenderSettings
) -> None:
    manifest = _render(make_app, catalogue, settings, scaling={"minConcurrency": 2})
    assert "replicas" not in manifest["spec"]


def test_labels_owner_reference_and_generation_annotation(
    make_app: MakeApp, catalogue: machines.MachineCatalogue, settings: common.RenderSettings
) -> None:
    app = make_app(name="fast", generation=7)
    manifest = deployment.deployment(app, catalogue=catalogue, settings=settings)
    meta = manifest["metadata"]
    assert meta["labels"][naming.LABEL_APP] == "fast"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "kubefal"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "kubefal.io/v1alpha1",
            "kind": "FalApp",
            "name": "fast",
            "uid": "uid-fast",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert meta["annotations"][operator_annotations.GENERATION] == "7"
    assert manifest["spec"]["selector"]["matchLabels"] == naming.runner_selector("fast")
    template_labels = manifest["spec"]["template"]["metadata"]["labels"]
    assert naming.runner_selector("fast").items() <= template_labels.items()


def test_template_hash_changes_with_rendered_inputs_only(
    make_app: MakeApp, catalogue: machines.MachineCatalogue, settings: common.RenderSettings
) -> None:
    def template_hash(**spec: Any) -> str:
        manifest = _render(make_app, catalogue, settings, **spec)
        value: str = manifest["spec"]["template"]["metadata"]["annotations"][
            naming.ANNOTATION_SPEC_HASH
        ]
        return value

    base = template_hash(scaling={"maxConcurrency": 3})
    assert template_hash(scaling={"maxConcurrency": 9}) == base
    assert template_hash(scaling={"maxConcurrency": 3}, requestTimeout=30) != base


def test_scaling_bounds_change_does_not_touch_the_pod_template(
    make_app: MakeApp, catalogue: machines.MachineCatalogue, settings: common.RenderSettings
) -> None:
    one = _render(make_app, catalogue, settings, scaling={"maxConcurrency": 2})
    other = _render(make_app, catalogue, settings, scaling={"maxConcurrency": 20})
    assert one["spec"]["template"] == other["spec"]["template"]


def test_runner_pod_is_non_root_without_privileges_capabilities_or_token(
    make_app: MakeApp, catalogue: machines.MachineCatalogue, settings: common.RenderSettings
) -> None:
    manifest = _render(make_app, catalogue, settings)
    pod = manifest["spec"]["template"]["spec"]
    container = _container(manifest)

    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod
    # The read-only root leaves /tmp and the requirements cache writable, and HOME points there.
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for path in ("/tmp", "/var/cache/kubefal"):
        assert volumes[mounts[path]]["emptyDir"] == {}
    env = _env(manifest)
    assert env["KUBEFAL_REQUIREMENTS_CACHE"].startswith("/var/cache/kubefal/")
    assert env["HOME"] == "/tmp"


def test_a_falapp_asks_for_its_service_account_and_token(
    make_app: MakeApp, catalogue: machines.MachineCatalogue, settings: common.RenderSettings
) -> None:
    manifest = _render(
        make_app,
        catalogue,
        settings,
        serviceAccountName="model-reader",
        automountServiceAccountToken=True,
    )
    pod = manifest["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "model-reader"
    assert pod["automountServiceAccountToken"] is True


def test_hardening_follows_the_operator_settings(
    make_app: MakeApp, catalogue: machines.MachineCatalogue
) -> None:
    settings = common.RenderSettings(
        runner_run_as_user=2000, runner_run_as_group=3000, runner_read_only_root_filesystem=False
    )
    manifest = _render(make_app, catalogue, settings)
    pod = manifest["spec"]["template"]["spec"]
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["fsGroup"]) == (2000, 3000)
    assert _container(manifest)["securityContext"]["readOnlyRootFilesystem"] is False
    assert "HOME" not in _env(manifest)


def test_fal_client_in_the_runner_reaches_the_gateway_with_its_ca_and_only_a_named_key(
    make_app: MakeApp, catalogue: machines.MachineCatalogue
) -> None:
    settings = common.RenderSettings(
        fal_run_host="kubefal-gateway-run.kubefal-system.svc:8443",
        fal_queue_run_host="kubefal-gateway-queue.kubefal-system.svc:8443",
        fal_rest_host="kubefal-gateway-rest.kubefal-system.svc:8445",
        gateway_ca_pem="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    without_key = _container(_render(make_app, catalogue, settings))
    env = {item["name"]: item for item in without_key["env"]}
    assert env["FAL_REST_HOST"]["value"] == "kubefal-gateway-rest.kubefal-system.svc:8445"
    assert env["FAL_RUN_HOST"]["value"] == "kubefal-gateway-run.kubefal-system.svc:8443"
    assert env["FAL_QUEUE_RUN_HOST"]["value"] == "kubefal-gateway-queue.kubefal-system.svc:8443"
    assert env["KUBEFAL_GATEWAY_CA"]["value"].startswith("-----BEGIN CERTIFICATE-----")
    assert "FAL_KEY" not in env

    with_key = _container(
        _render(make_app, catalogue, settings, falKeySecretRef={"name": "caller-key"})
    )
    key = next(item for item in with_key["env"] if item["name"] == "FAL_KEY")
    assert key == {
        "name": "FAL_KEY",
        "valueFrom": {"secretKeyRef": {"name": "caller-key", "key": "FAL_KEY"}},
    }


def test_gateway_variables_are_unset_without_settings_and_spec_env_overrides_them(
    make_app: MakeApp, catalogue: machines.MachineCatalogue, settings: common.RenderSettings
) -> None:
    env = _env(_render(make_app, catalogue, settings))
    assert not {
        "FAL_RUN_HOST",
        "FAL_QUEUE_RUN_HOST",
        "FAL_REST_HOST",
        "KUBEFAL_GATEWAY_CA",
        "FAL_KEY",
    } & set(env)

    configured = common.RenderSettings(fal_run_host="gateway.internal")
    container = _container(
        _render(
            make_app,
            catalogue,
            configured,
            env=[{"name": "FAL_RUN_HOST", "value": "elsewhere.example"}],
        )
    )
    names = [item["name"] for item in container["env"]]
    assert names.count("FAL_RUN_HOST") == 1
    assert (
        _env({"spec": {"template": {"spec": {"containers": [container]}}}})["FAL_RUN_HOST"]
        == "elsewhere.example"
    )


def test_a_health_check_called_only_on_request_restarts_the_runner_on_one_failure(
    make_app: MakeApp, catalogue: machines.MachineCatalogue, settings: common.RenderSettings
) -> None:
    regular = _container(
        _render(
            make_app,
            catalogue,
            settings,
            healthCheck={"path": "/healthz", "failureThreshold": 4, "startPeriodSeconds": 40},
        )
    )
    assert (
        regular["livenessProbe"]["failureThreshold"],
        regular["livenessProbe"]["initialDelaySeconds"],
    ) == (4, 40)
    on_request = _container(
        _render(
            make_app,
            catalogue,
            settings,
            healthCheck={"path": "/healthz", "failureThreshold": 4, "callRegularly": False},
        )
    )
    assert (
        on_request["livenessProbe"]["failureThreshold"],
        on_request["livenessProbe"]["initialDelaySeconds"],
    ) == (1, 0)


def test_runners_announce_readiness_to_the_gateway_admin_url_from_their_pod_ip(
    make_app: MakeApp, catalogue: machines.MachineCatalogue
) -> None:
    from kubefal_operator import config

    loaded = config.OperatorConfig.from_environment(
        {"KUBEFAL_GATEWAY_ADMIN_URL": "http://kubefal-gateway-admin.kubefal-system.svc:9090/"}
    )
    announcing = _container(_render(make_app, catalogue, loaded.render))
    env = {item["name"]: item for item in announcing["env"]}
    silent = _env(_render(make_app, catalogue, common.RenderSettings()))
    disabled = config.OperatorConfig.from_environment(
        {
            "KUBEFAL_GATEWAY_ADMIN_URL": "http://kubefal-gateway-admin.kubefal-system.svc:9090",
            "KUBEFAL_RUNNER_ANNOUNCE_URL": "off",
        }
    )

    assert env["KUBEFAL_GATEWAY_ANNOUNCE_URL"]["value"] == (
        "http://kubefal-gateway-admin.kubefal-system.svc:9090/_kubefal/runners/ready"
    )
    assert env["KUBEFAL_POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["KUBEFAL_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "KUBEFAL_GATEWAY_ANNOUNCE_URL" not in silent
    assert disabled.render.runner_announce_url is None
