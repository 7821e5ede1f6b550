"""The chart's side of fal's files and storage (issue 11): the gateway's REST listener, its
Service and NetworkPolicy rule, the object store (embedded on a claim, or S3 with keys from a
Secret), the URL-signing key every replica shares, `/data` for the gateway and the runners, and
the REST host the operator hands runners.

Rendered with the real ``helm`` binary (``helm template``, no cluster); what the chart passes is
parsed by the gateway's and the operator's own settings code (and the S3 URL by the gateway's
own S3 store, which builds its client without a connection).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubefal_gateway import settings as gateway_settings
from kubefal_gateway.storage import s3 as s3_store
from kubefal_operator import config as operator_config
from tests.charthelm import (
    NAMESPACE,
    container,
    env_items,
    find,
    helm_template,
    pod,
    render,
)

SECRET_STUB = "value-of-a-secret-key-ref"


def process_env(deployment: dict[str, Any]) -> dict[str, str]:
    """The env as the process sees it, Secret references replaced by a stub value."""
    return {name: item.get("value", SECRET_STUB) for name, item in env_items(deployment).items()}


def gateway_of(objects: list[dict[str, Any]]) -> gateway_settings.Settings:
    return gateway_settings.load(
        [], environ=process_env(find(objects, "Deployment", "kubefal-gateway"))
    )


def operator_of(objects: list[dict[str, Any]]) -> operator_config.OperatorConfig:
    environment = process_env(find(objects, "Deployment", "kubefal-operator"))
    environment["KUBEFAL_OPERATOR_NAMESPACE"] = NAMESPACE
    return operator_config.OperatorConfig.from_environment(environment)


def mounts(deployment: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["mountPath"] for item in container(deployment)["volumeMounts"]}


def volumes(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in pod(deployment)["volumes"]}


def test_the_rest_listener_is_on_with_its_own_service_and_runners_get_its_host() -> None:
    objects = render({})
    deployment = find(objects, "Deployment", "kubefal-gateway")
    settings = gateway_of(objects)
    ports = {port["name"]: port["containerPort"] for port in container(deployment)["ports"]}
    assert settings.rest_port == ports["rest"] == 8445
    service = find(objects, "Service", "kubefal-gateway-rest")
    [port] = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (443, "rest")
    assert (
        service["spec"]["selector"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    operator = operator_of(objects)
    assert operator.render.fal_rest_host == f"kubefal-gateway-rest.{NAMESPACE}.svc"
    # The REST listener serves TLS with the certificate that covers its Service's names.
    assert settings.tls_cert is not None
    assert settings.storage_public_url == ""  # the host the uploader called


def test_the_embedded_store_is_on_a_kept_claim_and_the_gateway_is_recreated() -> None:
    objects = render({})
    deployment = find(objects, "Deployment", "kubefal-gateway")
    settings = gateway_of(objects)
    assert settings.storage == mounts(deployment)["files"] == "/var/lib/kubefal/files"
    claim = find(objects, "PersistentVolumeClaim", "kubefal-gateway-files")
    assert (
        volumes(deployment)["files"]["persistentVolumeClaim"]["claimName"]
        == "kubefal-gateway-files"
    )
    assert claim["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert (settings.storage_max_file_bytes, settings.storage_url_ttl) == (1024**3, 604800.0)
    assert (settings.storage_retention, settings.storage_sweep_interval) == (2592000.0, 600.0)
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_every_replica_signs_with_the_key_of_one_generated_secret() -> None:
    objects = render({})
    secret = find(objects, "Secret", "kubefal-gateway-storage-signing")
    assert set(secret["data"]) == {"key"}
    reference = env_items(find(objects, "Deployment", "kubefal-gateway"))[
        "KUBEFAL_GATEWAY_STORAGE_SIGNING_KEY"
    ]
    assert reference["valueFrom"]["secretKeyRef"] == {
        "name": "kubefal-gateway-storage-signing",
        "key": "key",
    }
    assert gateway_of(objects).storage_signing_key == SECRET_STUB
    own = render({"gateway": {"storage": {"signingKey": {"existingSecret": "mine"}}}})
    assert not [item for item in own if item["metadata"]["name"].endswith("storage-signing")]
    reference = env_items(find(own, "Deployment", "kubefal-gateway"))[
        "KUBEFAL_GATEWAY_STORAGE_SIGNING_KEY"
    ]
    assert reference["valueFrom"]["secretKeyRef"]["name"] == "mine"


S3_VALUES: dict[str, Any] = {
    "gateway": {
        "replicas": 3,
        "store": {"type": "redis", "redis": {"url": "redis://kubefal-redis:6379/0"}},
        "publicHosts": {"rest": "rest.kubefal.example"},
        "storage": {
            "type": "s3",
            "urlTtlSeconds": 3600,
            "s3": {
                "bucket": "kubefal-files",
                "prefix": "/prod/",
                "endpoint": "http://minio.storage.svc:9000",
                "region": "eu-central-1",
                "existingSecret": "s3-keys",
            },
        },
    }
}


def test_s3_storage_with_keys_from_a_secret_lets_several_replicas_roll() -> None:
    objects = render(S3_VALUES)
    deployment = find(objects, "Deployment", "kubefal-gateway")
    settings = gateway_of(objects)
    store = s3_store.S3BlobStore.from_url(settings.storage)
    assert (store.bucket, store.prefix) == ("kubefal-files", "prod/")
    assert store.client.meta.endpoint_url == "http://minio.storage.svc:9000"
    assert store.client.meta.region_name == "eu-central-1"
    items = env_items(deployment)
    for variable, key in (
        ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
        ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
    ):
        assert items[variable]["valueFrom"]["secretKeyRef"] == {"name": "s3-keys", "key": key}
    assert "files" not in volumes(deployment)
    assert not [item for item in objects if item["kind"] == "PersistentVolumeClaim"]
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert settings.storage_url_ttl == 3600.0
    # Returned file URLs name the public REST host, not the in-cluster one.
    assert settings.storage_public_url == "https://rest.kubefal.example"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param(
            {
                "gateway": {
                    "replicas": 2,
                    "store": {"type": "redis", "redis": {"url": "redis://r:6379/0"}},
                }
            },
            "needs a file store every replica sees",
            id="replicas-on-a-private-embedded-store",
        ),
        pytest.param(
            {"gateway": {"storage": {"type": "s3"}}},
            "gateway.storage.type=s3 needs gateway.storage.s3.bucket",
            id="s3-without-bucket",
        ),
        pytest.param(
            {"gateway": {"ports": {"rest": 9090}}},
            "The gateway's ports must all differ",
            id="rest-on-the-admin-port",
        ),
        pytest.param(
            {"persistentData": {"volume": {"emptyDir": {}}}},
            "/persistentData/volume",
            id="data-volume-that-is-not-shared",
        ),
        pytest.param(
            {"gateway": {"storage": {"type": "gcs"}}},
            "/gateway/storage/type",
            id="unknown-store",
        ),
    ],
)
def test_invalid_storage_values_fail_with_a_message_naming_the_fix(
    values: dict[str, Any], message: str
) -> None:
    completed = helm_template(values)
    assert completed.returncode != 0
    assert message in completed.stderr


def test_a_shared_claim_lets_the_embedded_store_serve_several_replicas() -> None:
    values = {
        "gateway": {
            "replicas": 2,
            "store": {"type": "redis", "redis": {"url": "redis://r:6379/0"}},
            "storage": {"embedded": {"persistence": {"accessModes": ["ReadWriteMany"]}}},
        }
    }
    objects = render(values)
    deployment = find(objects, "Deployment", "kubefal-gateway")
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert find(objects, "PersistentVolumeClaim", "kubefal-gateway-files")["spec"][
        "accessModes"
    ] == ["ReadWriteMany"]


def test_data_is_one_volume_for_the_gateway_and_every_runner() -> None:
    volume = {"nfs": {"server": "nfs.example", "path": "/kubefal"}}
    objects = render({"persistentData": {"volume": volume}})
    deployment = find(objects, "Deployment", "kubefal-gateway")
    settings = gateway_of(objects)
    assert settings.data_root == mounts(deployment)["data"] == "/var/lib/kubefal/data"
    assert volumes(deployment)["data"] == {"name": "data", **volume}
    operator = operator_of(objects)
    assert operator.render.data_volume is not None
    assert json.loads(operator.render.data_volume) == volume
    # Without a volume: no /data on the gateway, runners of persistentData apps get an emptyDir.
    plain = render({})
    assert gateway_of(plain).data_root == ""
    assert operator_of(plain).render.data_volume is None
    assert "data" not in volumes(find(plain, "Deployment", "kubefal-gateway"))


def test_the_rest_listener_can_be_turned_off() -> None:
    objects = render({"gateway": {"rest": {"enabled": False}}})
    deployment = find(objects, "Deployment", "kubefal-gateway")
    assert gateway_of(objects).rest_port == 0
    assert "rest" not in {port["name"] for port in container(deployment)["ports"]}
    names = {item["metadata"]["name"] for item in objects}
    assert (
        not {
            "kubefal-gateway-rest",
            "kubefal-gateway-files",
            "kubefal-gateway-storage-signing",
        }
        & names
    )
    assert operator_of(objects).render.fal_rest_host is None
    policy = find(objects, "NetworkPolicy", "kubefal-gateway")
    assert not [rule for rule in policy["spec"]["ingress"] if rule["ports"][0]["port"] == "rest"]
