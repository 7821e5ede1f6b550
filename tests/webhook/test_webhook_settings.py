"""``python -m kubefal_webhook`` flags and environment variables."""

from __future__ import annotations

import pathlib

import pytest

from kubefal_api import naming
from kubefal_webhook import settings

TLS = ["--tls-cert", "/tls/tls.crt", "--tls-key", "/tls/tls.key"]


def test_defaults_read_the_operators_catalogue_in_kubefal_system() -> None:
    loaded = settings.load(TLS, environ={})
    assert loaded.catalogue_namespace == "kubefal-system"
    assert loaded.catalogue_name == naming.MACHINE_CATALOGUE_CONFIGMAP
    assert loaded.port == 8443
    assert loaded.kubeconfig is None


def test_flags_win_over_environment_variables() -> None:
    loaded = settings.load(
        [*TLS, "--port", "9443", "--kubeconfig", "/k/config"],
        environ={
            "KUBEFAL_WEBHOOK_PORT": "1111",
            "KUBEFAL_WEBHOOK_CATALOGUE_NAMESPACE": "platform",
            "KUBEFAL_WEBHOOK_CACHE_SECONDS": "5",
        },
    )
    assert loaded.port == 9443
    assert loaded.kubeconfig == pathlib.Path("/k/config")
    assert loaded.catalogue_namespace == "platform"
    assert loaded.cache_seconds == 5.0


def test_tls_files_are_required_because_the_api_server_only_calls_https() -> None:
    with pytest.raises(SystemExit, match="https"):
        settings.load(["--tls-cert", "/tls/tls.crt"], environ={})


def test_a_non_numeric_port_names_the_flag() -> None:
    with pytest.raises(SystemExit, match="--port"):
        settings.load([*TLS, "--port", "https"], environ={})


def test_an_unknown_log_level_is_refused_at_start() -> None:
    with pytest.raises(SystemExit, match="--log-level"):
        settings.load([*TLS, "--log-level", "loud"], environ={})


def test_a_bad_environment_value_names_the_variable_and_the_flag() -> None:
    with pytest.raises(SystemExit) as exited:
        settings.load(TLS, environ={"KUBEFAL_WEBHOOK_CACHE_SECONDS": "-1"})
    assert "KUBEFAL_WEBHOOK_CACHE_SECONDS='-1'" in str(exited.value)
    assert "--cache-seconds" in str(exited.value)


def test_help_comes_from_the_field_descriptions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # one line per flag: no wrapping at a hyphen
    text = " ".join(settings.build_parser().format_help().split())
    assert "--catalogue-namespace VALUE Namespace of the machine catalogue ConfigMap." in text
    assert "[env KUBEFAL_WEBHOOK_CATALOGUE_NAMESPACE; default kubefal-system]" in text
