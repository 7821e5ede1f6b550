"""Runners get a key without the user asking (operator/kubefal_operator/runner_keys.py).

On the local control plane with the whole system (gateway, operator, pod runner): a FalApp
with no ``falKeySecretRef`` returns ``Image.from_pil`` and ``File.from_bytes`` results to the
real fal_client, because the operator gave its runner a storage-only key of its namespace. That
key stores files, but calling any app with it (its own namespace's or another's) or minting a
realtime token is refused with 403; deleting the FalApp deletes the key.
"""

from __future__ import annotations

import base64
import json
import pathlib
import textwrap

import httpx
from kubernetes import client as k8s

from e2e import system as whole
from e2e.conftest import ClusterHandle
from kubefal_api import apikeys
from testkit import waiting

APP_SOURCE = pathlib.Path(__file__).with_name("apps") / "storage_app.py"
APP = "storage-app"


def _falapp(name: str, *, auth: str, min_concurrency: int) -> dict[str, object]:
    return {
        "apiVersion": "kubefal.io/v1alpha1",
        "kind": "FalApp",
        "metadata": {"name": name},
        "spec": {
            "app": "app.py::StorageApp",
            "source": {"configMapRef": {"name": "storage-app-source"}},
            "auth": auth,
            "scaling": {"minConcurrency": min_concurrency},
        },
    }


def _source(core: k8s.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_config_map(
        namespace,
        k8s.V1ConfigMap(
            metadata=k8s.V1ObjectMeta(name="storage-app-source"),
            data={"app.py": APP_SOURCE.read_text()},
        ),
    )


def test_runner_key_uploads_without_user_key_and_calls_no_app(
    cluster: ClusterHandle,
    api_client: k8s.ApiClient,
    namespace: str,
    tmp_path: pathlib.Path,
    e2e_logs: list[pathlib.Path],
) -> None:
    core = k8s.CoreV1Api(api_client)
    custom = k8s.CustomObjectsApi(api_client)
    other = f"{namespace}-other"[:63]
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=other)))
    client_key = whole.create_key(
        api_client, key_namespace=namespace, namespaces=[namespace], description="e2e client"
    )
    try:
        with whole.running_system(
            cluster.kubeconfig,
            workdir=tmp_path / "system",
            namespaces=[namespace],
            key_namespace=namespace,
        ) as system:
            e2e_logs.extend(system.logs)
            _source(core, namespace)
            _source(core, other)
            # An app of another namespace (served by no operator here; the gateway knows it).
            custom.create_namespaced_custom_object(
                "kubefal.io", "v1alpha1", other, "falapps",
                _falapp("target", auth="shared", min_concurrency=0),
            )  # fmt: skip
            custom.create_namespaced_custom_object(
                "kubefal.io", "v1alpha1", namespace, "falapps",
                _falapp(APP, auth="private", min_concurrency=1),
            )  # fmt: skip
            whole.wait_for_runners(system, 1, timeout=240)
            call = textwrap.dedent(
                f"""
                import fal_client, json
                print(json.dumps(fal_client.run("{namespace}/{APP}", {{"text": "no key given"}})))
                """
            )
            result = json.loads(
                system.run_client(call, key=str(client_key), timeout=240).strip().splitlines()[-1]
            )
            with httpx.Client(verify=str(system.ca), timeout=60, trust_env=False) as http:
                image = http.get(result["image"]["url"])
                assert image.status_code == 200
                assert image.content.startswith(b"\x89PNG\r\n\x1a\n")
                text = http.get(result["file"]["url"])
                assert text.status_code == 200 and text.content == b"no key given"

                # The key the runner had: the operator's, storage only, this namespace only.
                secret = core.read_namespaced_secret(f"{APP}-fal-key", namespace)
                (key_id,) = secret.data
                assert key_id == result["key_id"]
                runner_key = apikeys.parse_key(base64.b64decode(secret.data[key_id]).decode())
                stored = apikeys.record_from_secret(
                    core.read_namespaced_secret(apikeys.secret_name(key_id), namespace).to_dict()
                )
                assert stored.scopes == (apikeys.SCOPE_STORAGE,)
                assert stored.namespaces == (namespace,)
                assert secret.metadata.owner_references[0].kind == "FalApp"

                headers = {"Authorization": f"Key {runner_key}"}
                rest = f"https://127.0.0.1:{system.rest_port}"
                token = http.post(f"{rest}/storage/auth/token", headers=headers, json={})
                assert token.status_code == 200 and token.json()["token"]
                run = f"https://127.0.0.1:{system.ports.run}"
                for target in (f"{other}/target", f"{namespace}/{APP}"):
                    refused = http.post(f"{run}/{target}", headers=headers, json={})
                    assert refused.status_code == 403, (target, refused.text)
                    assert "may not call apps" in refused.json()["detail"]
                realtime = http.post(
                    f"{rest}/tokens/",
                    headers=headers,
                    json={"allowed_apps": [APP], "token_expiration": 60},
                )
                assert realtime.status_code == 403 and realtime.json()["detail"]
                # the client's own key still calls the app: only the runner key is narrowed
                allowed = http.post(
                    f"{run}/{namespace}/{APP}",
                    headers={"Authorization": f"Key {client_key}"},
                    json={"text": "x"},
                )
                assert allowed.status_code == 200, allowed.text

            # Rotation: revoke the key, edit the app; a new key reaches a new runner.
            core.patch_namespaced_secret(
                apikeys.secret_name(key_id), namespace, {"stringData": {"revoked": "true"}}
            )
            custom.patch_namespaced_custom_object(
                "kubefal.io", "v1alpha1", namespace, "falapps", APP,
                {"spec": {"scaling": {"minConcurrency": 1, "keepAlive": 77}}},
            )  # fmt: skip

            def new_key_served() -> bool:
                try:
                    answer = json.loads(
                        system.run_client(call, key=str(client_key), timeout=120)
                        .strip()
                        .splitlines()[-1]
                    )
                except AssertionError:
                    return False  # the rollout is replacing the runner
                return bool(answer["key_id"] != key_id)

            waiting.wait_for(new_key_served, timeout=300, description="a runner on a new key")
            (rotated,) = core.read_namespaced_secret(f"{APP}-fal-key", namespace).data
            assert rotated != key_id
            names = {s.metadata.name for s in core.list_namespaced_secret(namespace).items}
            assert apikeys.secret_name(key_id) not in names  # the revoked record is gone
            key_id = rotated

            # Deleting the app deletes its key: the record and the Secret.
            custom.delete_namespaced_custom_object(
                "kubefal.io", "v1alpha1", namespace, "falapps", APP
            )

            def key_gone() -> bool:
                names = {s.metadata.name for s in core.list_namespaced_secret(namespace).items}
                return not names & {apikeys.secret_name(key_id), f"{APP}-fal-key"}

            waiting.wait_for(key_gone, timeout=120, description="the runner key deleted")
            e2e_logs.extend(system.pods.logs())
    finally:
        core.delete_namespace(other, propagation_policy="Background")
