"""Operator settings from the environment, and the metrics it records about its work."""

from __future__ import annotations

import pathlib

import pytest

from kubefal_operator import __main__ as entry_point
from kubefal_operator import config, metrics
from tests import charthelm


def test_environment_overrides_the_defaults() -> None:
    settings = config.OperatorConfig.from_environment(
        {
            "KUBEFAL_OPERATOR_NAMESPACE": "platform",
            "KUBEFAL_MACHINES_CONFIGMAP": "gpu-catalogue",
            "KUBEFAL_OPERATOR_METRICS_PORT": "9300",
            "KUBEFAL_RUNNER_IMAGE": "registry.local/runner:2",
            "KUBEFAL_GATEWAY_QUEUE_URL": "https://queue.example",
        }
    )
    assert settings.catalogue_namespace == "platform"
    assert settings.catalogue_name == "gpu-catalogue"
    assert settings.metrics_port == 9300
    assert settings.render.runner_image == "registry.local/runner:2"
    assert settings.gateway.queue_url == "https://queue.example"
    assert settings.gateway.run_url == "http://kubefal-gateway-run.platform.svc"


def test_runner_hardening_and_gateway_settings_come_from_the_environment(
    tmp_path: pathlib.Path,
) -> None:
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    settings = config.OperatorConfig.from_environment(
        {
            "KUBEFAL_OPERATOR_NAMESPACE": "platform",
            "KUBEFAL_RUNNER_RUN_AS_USER": "2000",
            "KUBEFAL_RUNNER_RUN_AS_GROUP": "3000",
            "KUBEFAL_RUNNER_READ_ONLY_ROOT_FILESYSTEM": "false",
            "KUBEFAL_GATEWAY_NAMESPACE": "edge",
            "KUBEFAL_GATEWAY_POD_LABELS": "app.kubernetes.io/instance=edge,"
            "app.kubernetes.io/component=gateway",
            "KUBEFAL_RUNNER_FAL_RUN_HOST": "edge-gateway-run.edge.svc:8443",
            "KUBEFAL_RUNNER_FAL_QUEUE_RUN_HOST": "edge-gateway-queue.edge.svc:8443",
            "KUBEFAL_RUNNER_FAL_REST_HOST": "edge-gateway-rest.edge.svc:8445",
            "KUBEFAL_GATEWAY_CA_FILE": str(ca_file),
        }
    ).render
    assert (settings.runner_run_as_user, settings.runner_run_as_group) == (2000, 3000)
    assert settings.runner_read_only_root_filesystem is False
    assert settings.gateway_namespace == "edge"
    assert dict(settings.gateway_pod_labels) == {
        "app.kubernetes.io/instance": "edge",
        "app.kubernetes.io/component": "gateway",
    }
    assert settings.fal_run_host == "edge-gateway-run.edge.svc:8443"
    assert settings.fal_queue_run_host == "edge-gateway-queue.edge.svc:8443"
    assert settings.fal_rest_host == "edge-gateway-rest.edge.svc:8445"
    assert settings.gateway_ca_pem == ca_file.read_text()


def test_runner_hardening_defaults_and_bad_values() -> None:
    settings = config.OperatorConfig.from_environment(
        {"KUBEFAL_OPERATOR_NAMESPACE": "platform", "KUBEFAL_GATEWAY_CA_FILE": "/nonexistent"}
    ).render
    assert (settings.runner_run_as_user, settings.runner_read_only_root_filesystem) == (10001, True)
    assert settings.gateway_namespace == "platform"
    assert dict(settings.gateway_pod_labels) == {
        "app.kubernetes.io/part-of": "kubefal",
        "app.kubernetes.io/component": "gateway",
    }
    assert (settings.fal_run_host, settings.gateway_ca_pem) == (None, None)
    for name, value in (
        ("KUBEFAL_RUNNER_RUN_AS_USER", "0"),
        ("KUBEFAL_RUNNER_RUN_AS_USER", "root"),
        ("KUBEFAL_RUNNER_READ_ONLY_ROOT_FILESYSTEM", "maybe"),
        ("KUBEFAL_GATEWAY_POD_LABELS", "component gateway"),
    ):
        with pytest.raises(config.ConfigError, match=name):
            config.OperatorConfig.from_environment({name: value})


def test_defaults_fit_a_standard_install() -> None:
    settings = config.OperatorConfig.from_environment({})
    assert (settings.catalogue_namespace, settings.catalogue_name) == (
        "kubefal-system",
        "kubefal-machines",
    )
    assert settings.metrics_port == 8000


def test_a_gateway_admin_url_turns_the_builtin_actuator_on() -> None:
    assert not config.OperatorConfig.from_environment({}).actuated
    settings = config.OperatorConfig.from_environment(
        {
            "KUBEFAL_GATEWAY_ADMIN_URL": "http://gw-admin.kubefal.svc:9090",
            "KUBEFAL_ACTUATOR_INTERVAL": "0.5",
            "KUBEFAL_KEDA_SCALER_ADDRESS": "gw-admin.kubefal.svc:9191",
        }
    )
    assert settings.actuated
    assert settings.gateway_admin_url == "http://gw-admin.kubefal.svc:9090"
    assert settings.actuator_interval_seconds == 0.5
    assert settings.render.keda_scaler_address == "gw-admin.kubefal.svc:9191"


def test_the_default_keda_scaler_address_names_the_charts_service_and_port() -> None:
    """Without KUBEFAL_KEDA_SCALER_ADDRESS the operator points KEDA at the Service and port the
    chart (release ``kubefal``) creates for the gateway's external scaler, in its namespace."""
    objects = charthelm.render({"keda": {"enabled": True}})
    address = config.OperatorConfig.from_environment(
        {"KUBEFAL_OPERATOR_NAMESPACE": charthelm.NAMESPACE}
    ).render.keda_scaler_address
    host, _, port = address.rpartition(":")
    service_name, namespace, suffix = host.split(".")
    assert (namespace, suffix) == (charthelm.NAMESPACE, "svc")
    service = charthelm.find(objects, "Service", service_name)
    keda_ports = [p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc-keda"]
    assert keda_ports == [int(port)]
    chart_value = charthelm.env_items(charthelm.find(objects, "Deployment", "kubefal-operator"))
    assert chart_value["KUBEFAL_KEDA_SCALER_ADDRESS"]["value"] == address
    elsewhere = config.OperatorConfig.from_environment({"KUBEFAL_OPERATOR_NAMESPACE": "platform"})
    assert elsewhere.render.keda_scaler_address == f"{service_name}.platform.svc:{port}"


def test_the_gateway_admin_url_flag_is_parsed() -> None:
    arguments = entry_point.parse_arguments(
        ["-n", "team-a", "--gateway-admin-url", "http://127.0.0.1:9090"]
    )
    assert arguments.gateway_admin_url == "http://127.0.0.1:9090"
    assert arguments.namespace == ["team-a"]


def test_a_flag_wins_over_its_variable_and_an_admin_url_flag_derives_the_announce_url() -> None:
    arguments = entry_point.parse_arguments(
        [
            "--runner-image",
            "flag/runner:1",
            "--gateway-admin-url",
            "http://gw:9090",
            "--peering",
            "p",
        ]
    )
    settings = config.OperatorSettings.read(
        vars(arguments),
        {"KUBEFAL_RUNNER_IMAGE": "env/runner:1", "KUBEFAL_OPERATOR_LIVENESS": "http://0:1/h"},
    )
    assert (settings.operator_peering, settings.operator_liveness) == ("p", "http://0:1/h")
    loaded = config.OperatorConfig.from_settings(settings)
    assert loaded.render.runner_image == "flag/runner:1"
    assert loaded.actuated
    assert loaded.render.runner_announce_url == "http://gw:9090/_kubefal/runners/ready"


def test_a_bad_flag_stops_the_operator_naming_the_flag_and_its_variable() -> None:
    with pytest.raises(SystemExit) as exited:
        entry_point.main(["--runner-run-as-user", "0"])
    assert "--runner-run-as-user='0'" in str(exited.value)
    assert "KUBEFAL_RUNNER_RUN_AS_USER" in str(exited.value)


def test_help_lists_every_variable_the_operator_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")
    text = entry_point.build_parser().format_help()
    for name in (
        "KUBEFAL_MACHINES_CONFIGMAP",
        "KUBEFAL_GATEWAY_ADMIN_TOKEN",
        "KUBEFAL_BUILD_JOB_TTL",
    ):
        assert f"[env {name};" in text
    assert "--liveness VALUE kopf's liveness endpoint URL." in " ".join(text.split())


def _sample(instruments: metrics.Metrics, name: str, **labels: str) -> float:
    value = instruments.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_reconciles_are_counted_by_kind_and_result_and_timed() -> None:
    instruments = metrics.Metrics.create()
    with instruments.reconciling("FalApp") as result:
        result.append(metrics.RESULT_CHANGED)
    with instruments.reconciling("FalApp"):
        pass
    with pytest.raises(TimeoutError), instruments.reconciling("Service"):
        raise TimeoutError("API too slow")
    total = "kubefal_operator_reconciles_total"
    assert _sample(instruments, total, kind="FalApp", result="changed") == 1
    assert _sample(instruments, total, kind="FalApp", result="unchanged") == 1
    assert _sample(instruments, total, kind="Service", result="error") == 1
    errors = "kubefal_operator_reconcile_errors_total"
    assert _sample(instruments, errors, kind="Service", error="TimeoutError") == 1
    durations = "kubefal_operator_reconcile_duration_seconds_count"
    assert _sample(instruments, durations, kind="FalApp") == 2


def test_each_instance_has_its_own_registry() -> None:
    first, second = metrics.Metrics.create(), metrics.Metrics.create()
    with first.reconciling("FalApp"):
        pass
    assert (
        _sample(second, "kubefal_operator_reconciles_total", kind="FalApp", result="unchanged") == 0
    )


def test_the_limits_on_signals_for_unknown_apps_are_settings() -> None:
    defaults = config.OperatorConfig.from_environment({})
    assert (defaults.unclaimed_signals_limit, defaults.unclaimed_signal_seconds) == (1000, 60.0)
    settings = config.OperatorConfig.from_environment(
        {"KUBEFAL_UNCLAIMED_SIGNALS_LIMIT": "5", "KUBEFAL_UNCLAIMED_SIGNAL_SECONDS": "2.5"}
    )
    assert (settings.unclaimed_signals_limit, settings.unclaimed_signal_seconds) == (5, 2.5)
