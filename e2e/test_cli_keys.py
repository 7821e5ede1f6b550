"""`kubefal keys` against a real API server: Secrets hold only a hash that verifies the key.

The CLI runs as a real subprocess with the session's kubeconfig, the way an operator would run it,
and the Secrets are read back with the kubernetes client to check what is (and is not) stored.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from e2e.conftest import ClusterHandle
from kubefal_api import apikeys


def _kubefal(*args: str, kubeconfig: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubefal_cli", *args, "--kubeconfig", str(kubeconfig)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={
            **{
                name: value
                for name, value in os.environ.items()
                if name != "KUBECONFIG" and not name.startswith("KUBEFAL_")
            },
            "COLUMNS": "200",
        },
    )


def _succeeds(*args: str, kubeconfig: pathlib.Path) -> str:
    result = _kubefal(*args, kubeconfig=kubeconfig)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _secret(api_client: k8s.ApiClient, *, namespace: str, key_id: str) -> dict[str, Any]:
    secret = k8s.CoreV1Api(api_client).read_namespaced_secret(
        name=apikeys.secret_name(key_id), namespace=namespace
    )
    document: dict[str, Any] = api_client.sanitize_for_serialization(secret)  # type: ignore[no-untyped-call]
    return document


def _listed(*, kubeconfig: pathlib.Path, namespace: str) -> dict[str, dict[str, Any]]:
    output = _succeeds(
        "keys", "list", "-o", "json", "--secret-namespace", namespace, kubeconfig=kubeconfig
    )
    return {entry["id"]: entry for entry in json.loads(output)}


def test_a_created_key_is_stored_as_a_hash_only_and_verifies(
    cluster: ClusterHandle, namespace: str, api_client: k8s.ApiClient
) -> None:
    output = _succeeds(
        "keys",
        "create",
        "--namespace",
        "team-a",
        "--namespace",
        "team-b",
        "--description",
        "e2e pipeline",
        "--quiet",
        "--secret-namespace",
        namespace,
        kubeconfig=cluster.kubeconfig,
    )
    key = apikeys.parse_key(output.strip())

    secret = _secret(api_client, namespace=namespace, key_id=key.id)

    decoded = {name: base64.b64decode(value).decode() for name, value in secret["data"].items()}
    assert set(decoded) == {"id", "hash", "namespaces", "description", "created", "revoked"}
    assert key.secret not in json.dumps(secret)
    assert decoded["id"] == key.id
    assert decoded["namespaces"] == "team-a,team-b"
    assert decoded["revoked"] == "false"
    assert secret["metadata"]["labels"][apikeys.LABEL_API_KEY] == "true"
    record = apikeys.record_from_secret(secret)
    assert record.check(secret=key.secret, namespace="team-b") is apikeys.KeyVerdict.OK
    assert record.check(secret=key.secret, namespace="team-c") is (
        apikeys.KeyVerdict.NAMESPACE_NOT_ALLOWED
    )
    assert record.check(secret="guess", namespace="team-a") is apikeys.KeyVerdict.WRONG_SECRET


def test_create_shows_the_key_once_and_list_never_shows_it(
    cluster: ClusterHandle, namespace: str
) -> None:
    created = _succeeds(
        "keys",
        "create",
        "--all-namespaces",
        "--secret-namespace",
        namespace,
        kubeconfig=cluster.kubeconfig,
    )
    key_text = next(word for word in created.split() if word.startswith("kf") and ":" in word)
    key = apikeys.parse_key(key_text)

    table = _succeeds(
        "keys", "list", "--secret-namespace", namespace, kubeconfig=cluster.kubeconfig
    )
    listed = _listed(kubeconfig=cluster.kubeconfig, namespace=namespace)

    assert "only time the key is shown" in created
    assert key.id in table
    assert key.secret not in table
    assert listed[key.id]["namespaces"] == ["*"]
    assert listed[key.id]["revoked"] is False
    assert key.secret not in json.dumps(listed)


def test_a_revoked_key_is_kept_but_never_verifies_again(
    cluster: ClusterHandle, namespace: str, api_client: k8s.ApiClient
) -> None:
    key = apikeys.parse_key(
        _succeeds(
            "keys",
            "create",
            "-n",
            "team-a",
            "-q",
            "--secret-namespace",
            namespace,
            kubeconfig=cluster.kubeconfig,
        ).strip()
    )

    _succeeds(
        "keys", "revoke", key.id, "--secret-namespace", namespace, kubeconfig=cluster.kubeconfig
    )

    record = apikeys.record_from_secret(_secret(api_client, namespace=namespace, key_id=key.id))
    assert record.revoked
    assert record.check(secret=key.secret, namespace="team-a") is apikeys.KeyVerdict.REVOKED
    assert _listed(kubeconfig=cluster.kubeconfig, namespace=namespace)[key.id]["revoked"] is True


def test_revoke_with_delete_removes_the_secret(
    cluster: ClusterHandle, namespace: str, api_client: k8s.ApiClient
) -> None:
    key = apikeys.parse_key(
        _succeeds(
            "keys",
            "create",
            "-n",
            "team-a",
            "-q",
            "--secret-namespace",
            namespace,
            kubeconfig=cluster.kubeconfig,
        ).strip()
    )

    _succeeds(
        "keys",
        "revoke",
        key.id,
        "--delete",
        "--secret-namespace",
        namespace,
        kubeconfig=cluster.kubeconfig,
    )

    with pytest.raises(k8s.exceptions.ApiException) as missing:
        _secret(api_client, namespace=namespace, key_id=key.id)
    assert missing.value.status == 404
    assert key.id not in _listed(kubeconfig=cluster.kubeconfig, namespace=namespace)


def test_revoking_an_unknown_key_says_how_to_find_the_right_id(
    cluster: ClusterHandle, namespace: str
) -> None:
    result = _kubefal(
        "keys",
        "revoke",
        "kf0000000000000000",
        "--secret-namespace",
        namespace,
        kubeconfig=cluster.kubeconfig,
    )

    assert result.returncode == 1
    assert "not found" in result.stderr
    assert f"kubefal keys list --secret-namespace {namespace}" in result.stderr


def test_creating_a_key_in_a_missing_namespace_says_to_create_it(cluster: ClusterHandle) -> None:
    result = _kubefal(
        "keys",
        "create",
        "-n",
        "team-a",
        "--secret-namespace",
        "kubefal-does-not-exist",
        kubeconfig=cluster.kubeconfig,
    )

    assert result.returncode == 1
    assert "kubectl create namespace kubefal-does-not-exist" in result.stderr


def test_a_user_without_rbac_is_told_the_request_was_forbidden(
    cluster: ClusterHandle, namespace: str, api_client: k8s.ApiClient, tmp_path: pathlib.Path
) -> None:
    core = k8s.CoreV1Api(api_client)
    core.create_namespaced_service_account(
        namespace=namespace,
        body=k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="no-rights")),
    )
    token_status = core.create_namespaced_service_account_token(
        name="no-rights",
        namespace=namespace,
        body=k8s.AuthenticationV1TokenRequest(
            spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
        ),
    ).status
    assert token_status is not None
    token = token_status.token
    kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
    kubeconfig["users"] = [{"name": "kubefal-admin", "user": {"token": token}}]
    restricted = tmp_path / "restricted-kubeconfig"
    restricted.write_text(yaml.safe_dump(kubeconfig))

    result = _kubefal("keys", "list", "--secret-namespace", namespace, kubeconfig=restricted)

    assert result.returncode == 1
    assert "forbidden by RBAC" in result.stderr
    assert "kubectl auth can-i" in result.stderr
