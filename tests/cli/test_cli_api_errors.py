"""API server failures become one line about the action and one next step (pure mapping)."""

from __future__ import annotations

import json
import pathlib

import kubernetes.client
import kubernetes.client.exceptions
import pytest
import urllib3.exceptions

from kubefal_cli import errors, kube


def _connection() -> kube.Kube:
    configuration = kubernetes.client.Configuration()
    configuration.host = "https://127.0.0.1:6443"
    return kube.Kube(
        api_client=kubernetes.client.ApiClient(configuration),
        host=configuration.host,
        context=None,
    )


def _api_error(status: int, message: str) -> kubernetes.client.exceptions.ApiException:
    error = kubernetes.client.exceptions.ApiException(status=status, reason="Reason")
    error.body = json.dumps({"kind": "Status", "message": message})
    return error


@pytest.mark.parametrize(
    ("status", "message", "said", "next_step"),
    [
        (401, "Unauthorized", "rejected your credentials", "refresh the kubeconfig"),
        (
            403,
            'secrets is forbidden: User "bob" cannot list resource "secrets"',
            'forbidden by RBAC: secrets is forbidden: User "bob"',
            "kubectl auth can-i",
        ),
        (404, 'namespaces "x" not found', 'not found: namespaces "x" not found', "check the name"),
        (
            422,
            "spec.scaling.minConcurrency must be <= spec.scaling.maxConcurrency",
            "refused the object: spec.scaling.minConcurrency",
            "fix the field named above",
        ),
        (409, "the object has been modified", "conflict", "run the command again"),
        (500, "etcdserver: request timed out", "answered etcdserver", "retry"),
    ],
)
def test_each_api_failure_names_the_action_and_the_next_step(
    status: int, message: str, said: str, next_step: str
) -> None:
    with (
        pytest.raises(errors.CliError) as raised,
        kube.translated(_connection(), action="listing keys"),
    ):
        raise _api_error(status, message)

    assert raised.value.message.startswith("listing keys: ")
    assert said in raised.value.message
    assert next_step in raised.value.hint


def test_a_not_found_hint_given_by_the_command_replaces_the_generic_one() -> None:
    with (
        pytest.raises(errors.CliError) as raised,
        kube.translated(_connection(), action="applying", not_found_hint="install the CRDs"),
    ):
        raise _api_error(404, "the server could not find the requested resource")

    assert raised.value.hint == "install the CRDs"


def test_a_dead_connection_points_at_the_cluster_and_the_kubeconfig() -> None:
    with (
        pytest.raises(errors.CliError) as raised,
        kube.translated(_connection(), action="listing keys"),
    ):
        raise urllib3.exceptions.MaxRetryError(pool=None, url="/api")  # type: ignore[arg-type]

    assert "cannot reach the API server at https://127.0.0.1:6443" in raised.value.message
    assert "kubectl cluster-info" in raised.value.hint


def test_the_namespace_defaults_to_the_kubeconfig_context_then_default(
    tmp_path: pathlib.Path,
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [
                    {"name": "team", "context": {"cluster": "c", "user": "u", "namespace": "t-a"}},
                    {"name": "bare", "context": {"cluster": "c", "user": "u"}},
                ],
                "current-context": "team",
            }
        )
    )

    assert kube.current_namespace(kubeconfig=kubeconfig, context=None) == "t-a"
    assert kube.current_namespace(kubeconfig=kubeconfig, context="bare") == "default"
    assert kube.current_namespace(kubeconfig=tmp_path / "missing", context=None) == "default"
