"""The unmodified ``fal`` CLI against the control plane, configured by environment only.

Each command runs as a subprocess with nothing but ``FAL_GRPC_HOST``, ``FAL_KEY`` and
``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`` (and an empty HOME, so no fal profile is read), and its
effect is checked in the API server: FalApp specs, key Secrets, the fal-secrets Secret.
"""

from __future__ import annotations

import base64
import json
import pathlib
import re

from kubernetes import client as k8s

from e2e import controlplane_harness as harness
from e2e.controlplane_harness import (
    ControlPlaneProcess,
    create_falapp,
    create_key,
    create_runner_pod,
    get_falapp,
    run_fal,
    wait_pod_ready,
)
from kubefal_api import apikeys
from testkit import waiting

cp_tls = harness.cp_tls
key_namespace = harness.key_namespace
key = harness.key
plane = harness.plane


def _ok(result: object) -> str:
    assert result.returncode == 0, result.stdout + result.stderr  # type: ignore[attr-defined]
    return str(result.stdout)  # type: ignore[attr-defined]


def test_fal_apps_list_runners_scale_and_delete(
    plane: ControlPlaneProcess,
    api_client: k8s.ApiClient,
    namespace: str,
    tmp_path: pathlib.Path,
    key: apikeys.ApiKey,
) -> None:
    create_falapp(api_client, namespace=namespace, name="cli-app", machineTypes=["M"])
    create_runner_pod(api_client, namespace=namespace, app="cli-app", pod="cli-app-0")
    wait_pod_ready(api_client, namespace=namespace, pod="cli-app-0")
    app = f"{namespace}/cli-app"

    table = _ok(run_fal(plane, "apps", "list", key=key, home=tmp_path))
    listed = json.loads(_ok(run_fal(plane, "apps", "list", "--json", key=key, home=tmp_path)))
    runners = _ok(run_fal(plane, "apps", "runners", app, key=key, home=tmp_path))
    all_runners = _ok(run_fal(plane, "runners", "list", key=key, home=tmp_path))
    scaled = _ok(
        run_fal(
            plane,
            "apps",
            "scale",
            app,
            "--keep-alive",
            "30",
            "--max-concurrency",
            "9",
            key=key,
            home=tmp_path,
        )
    )

    assert app in table
    assert [(a["alias"], a["machine_types"], a["active_runners"]) for a in listed["apps"]] == [
        (app, ["M"], 1)
    ]
    assert "Runners: 1" in runners and "cli-app-0" in runners
    assert "cli-app-0" in all_runners
    assert app in scaled
    scaling = get_falapp(api_client, namespace=namespace, name="cli-app")["spec"]["scaling"]
    assert (scaling["keepAlive"], scaling["maxConcurrency"]) == (30, 9)

    revisions = _ok(run_fal(plane, "apps", "list-rev", app, key=key, home=tmp_path))
    uid = get_falapp(api_client, namespace=namespace, name="cli-app")["metadata"]["uid"]
    assert uid in revisions

    deleted = _ok(run_fal(plane, "apps", "delete", app, key=key, home=tmp_path))

    assert "deleted" in deleted
    assert _ok(run_fal(plane, "apps", "list", "--json", key=key, home=tmp_path)).count(app) == 0


def test_fal_without_a_valid_key_fails_with_the_reason(
    plane: ControlPlaneProcess, tmp_path: pathlib.Path
) -> None:
    key = apikeys.generate_key()

    result = run_fal(plane, "apps", "list", key=key, home=tmp_path)

    assert result.returncode != 0
    assert f"no key {key.id} exists" in result.stdout + result.stderr


def test_fal_keys_create_list_and_revoke(
    plane: ControlPlaneProcess,
    api_client: k8s.ApiClient,
    key_namespace: str,
    namespace: str,
    tmp_path: pathlib.Path,
) -> None:
    admin = create_key(api_client, key_namespace=key_namespace, namespaces=[namespace])

    created = _ok(
        run_fal(
            plane, "keys", "create", "--scope", "ADMIN", "--desc", "ci", key=admin, home=tmp_path
        )
    )
    match = re.search(r"FAL_KEY='(kf[0-9a-f]{16}:[A-Za-z0-9_-]+)'", created)
    assert match, created
    new_key = apikeys.parse_key(match.group(1))
    secret = k8s.CoreV1Api(api_client).read_namespaced_secret(
        apikeys.secret_name(new_key.id), key_namespace
    )
    record = apikeys.record_from_secret(api_client.sanitize_for_serialization(secret))  # type: ignore[no-untyped-call]
    assert record.namespaces == (namespace,)
    assert record.description == "ci"
    assert record.check(secret=new_key.secret, namespace=namespace) is apikeys.KeyVerdict.OK
    _ok(run_fal(plane, "apps", "list", key=new_key, home=tmp_path))

    listed = json.loads(_ok(run_fal(plane, "keys", "list", "--json", key=admin, home=tmp_path)))
    assert new_key.id in {entry["key_id"] for entry in listed["keys"]}

    _ok(run_fal(plane, "keys", "revoke", new_key.id, key=admin, home=tmp_path))

    secret = k8s.CoreV1Api(api_client).read_namespaced_secret(
        apikeys.secret_name(new_key.id), key_namespace
    )
    assert apikeys.record_from_secret(api_client.sanitize_for_serialization(secret)).revoked  # type: ignore[no-untyped-call]
    refused = run_fal(plane, "apps", "list", key=new_key, home=tmp_path)
    assert refused.returncode != 0 and "revoked" in refused.stdout + refused.stderr


def test_fal_keys_create_refuses_a_narrower_preset_it_cannot_honour(
    plane: ControlPlaneProcess,
    api_client: k8s.ApiClient,
    key_namespace: str,
    namespace: str,
    tmp_path: pathlib.Path,
) -> None:
    admin = create_key(api_client, key_namespace=key_namespace, namespaces=[namespace])

    result = run_fal(plane, "keys", "create", "--scope", "API", key=admin, home=tmp_path)

    assert result.returncode != 0
    assert "policy_preset" in result.stdout + result.stderr


def test_fal_secrets_set_list_and_unset(
    plane: ControlPlaneProcess,
    api_client: k8s.ApiClient,
    namespace: str,
    tmp_path: pathlib.Path,
    key: apikeys.ApiKey,
) -> None:
    core = k8s.CoreV1Api(api_client)

    _ok(run_fal(plane, "secrets", "set", "HF_TOKEN=hf_123", "OTHER=x", key=key, home=tmp_path))
    listed = _ok(run_fal(plane, "secrets", "list", key=key, home=tmp_path))

    data = core.read_namespaced_secret("kubefal-secrets", namespace).data
    assert {name: base64.b64decode(value).decode() for name, value in data.items()} == {
        "HF_TOKEN": "hf_123",
        "OTHER": "x",
    }
    assert "HF_TOKEN" in listed and "OTHER" in listed and "hf_123" not in listed

    _ok(run_fal(plane, "secrets", "unset", "HF_TOKEN", key=key, home=tmp_path))

    assert set(core.read_namespaced_secret("kubefal-secrets", namespace).data) == {"OTHER"}
    bad = run_fal(plane, "secrets", "set", "1BAD=x", key=key, home=tmp_path)
    assert bad.returncode != 0 and "name: " in bad.stdout + bad.stderr


def test_fal_runners_stop_and_kill_delete_the_runner_pod(
    plane: ControlPlaneProcess,
    api_client: k8s.ApiClient,
    key_namespace: str,
    namespace: str,
    tmp_path: pathlib.Path,
    key: apikeys.ApiKey,
) -> None:
    create_falapp(api_client, namespace=namespace, name="stoppable")
    for pod in ("stoppable-0", "stoppable-1"):
        create_runner_pod(api_client, namespace=namespace, app="stoppable", pod=pod)
    wait_pod_ready(api_client, namespace=namespace, pod="stoppable-0")
    outsider = create_key(api_client, key_namespace=key_namespace, namespaces=["team-elsewhere"])
    core = k8s.CoreV1Api(api_client)

    refused = run_fal(plane, "runners", "stop", "stoppable-0", key=outsider, home=tmp_path)
    _ok(run_fal(plane, "runners", "stop", "stoppable-0", key=key, home=tmp_path))
    _ok(run_fal(plane, "runners", "kill", "stoppable-1", key=key, home=tmp_path))

    assert refused.returncode != 0 and "not found" in refused.stdout + refused.stderr

    def gone_or_terminating(pod: str) -> bool:
        try:
            return core.read_namespaced_pod(pod, namespace).metadata.deletion_timestamp is not None
        except k8s.ApiException as error:
            return error.status == 404

    for pod in ("stoppable-0", "stoppable-1"):
        waiting.wait_for(
            lambda pod=pod: gone_or_terminating(pod), timeout=60, description=f"{pod} deleted"
        )
    events = core.list_namespaced_event(namespace).items
    reasons = {e.reason for e in events if key.id in (e.message or "")}
    assert {"RunnerStopped", "RunnerKilled"} <= reasons


def test_fal_secrets_list_with_a_key_for_every_namespace_finds_each_namespaces_secrets(
    plane: ControlPlaneProcess,
    api_client: k8s.ApiClient,
    key_namespace: str,
    namespace: str,
    tmp_path: pathlib.Path,
) -> None:
    """A key valid everywhere lists the kubefal-secrets of every namespace (read namespace by
    namespace, so the control plane needs no right to list every Secret of the cluster), and
    only kubefal's: another Secret of the namespace is not listed."""
    scoped = create_key(api_client, key_namespace=key_namespace, namespaces=[namespace])
    everywhere = create_key(
        api_client, key_namespace=key_namespace, namespaces=[apikeys.ALL_NAMESPACES]
    )
    k8s.CoreV1Api(api_client).create_namespaced_secret(
        namespace,
        {"metadata": {"name": "not-kubefals"}, "stringData": {"UNRELATED_NAME": "x"}},
    )
    _ok(run_fal(plane, "secrets", "set", "WIDE_TOKEN=w1", key=scoped, home=tmp_path))

    listed = _ok(run_fal(plane, "secrets", "list", key=everywhere, home=tmp_path))

    assert "WIDE_TOKEN" in listed and namespace in listed
    assert "UNRELATED_NAME" not in listed and "w1" not in listed
