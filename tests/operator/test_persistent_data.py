"""persistentData: the namespace's share of the operator's data volume at /data, the model and
package caches and the requirements cache on it; an emptyDir when no volume is configured."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubefal_api.machines import MachineCatalogue
from kubefal_operator import config
from kubefal_operator.render import common, deployment
from tests.operator.conftest import MakeApp

NFS = {"nfs": {"server": "nfs.storage.svc", "path": "/exports/kubefal-data"}}


def _pod(make_app: MakeApp, catalogue: MachineCatalogue, settings: common.RenderSettings,
         **spec: Any) -> dict[str, Any]:  # fmt: skip
    manifest = deployment.deployment(make_app(**spec), catalogue=catalogue, settings=settings)
    pod: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return pod


def _env(pod: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in pod["containers"][0]["env"]}


def test_persistent_data_mounts_the_namespaces_share_with_the_caches_on_it(
    make_app: MakeApp, catalogue: MachineCatalogue
) -> None:
    settings = common.RenderSettings(data_volume=json.dumps(NFS))
    pod = _pod(make_app, catalogue, settings, persistentData=True)
    namespace = make_app(persistentData=True).metadata.namespace
    volume = next(v for v in pod["volumes"] if v["name"] == deployment.DATA_VOLUME)
    assert volume == {"name": deployment.DATA_VOLUME, **NFS}
    mount = next(
        m for m in pod["containers"][0]["volumeMounts"] if m["name"] == deployment.DATA_VOLUME
    )
    assert mount == {"name": deployment.DATA_VOLUME, "mountPath": "/data", "subPath": namespace}
    env = _env(pod)
    assert env["HF_HOME"] == "/data/.cache/huggingface"
    assert env["TORCHINDUCTOR_CACHE_DIR"].startswith("/data/")
    assert env["KUBEFAL_REQUIREMENTS_CACHE"] == "/data/.kubefal/requirements"


def test_without_persistent_data_nothing_changes_and_without_a_volume_it_is_an_empty_dir(
    make_app: MakeApp, catalogue: MachineCatalogue
) -> None:
    settings = common.RenderSettings(data_volume=json.dumps(NFS))
    plain = _pod(make_app, catalogue, settings)
    assert deployment.DATA_VOLUME not in {v["name"] for v in plain["volumes"]}
    assert "HF_HOME" not in _env(plain)
    assert _env(plain)["KUBEFAL_REQUIREMENTS_CACHE"] == deployment.REQUIREMENTS_CACHE_PATH
    unconfigured = _pod(make_app, catalogue, common.RenderSettings(), persistentData=True)
    volume = next(v for v in unconfigured["volumes"] if v["name"] == deployment.DATA_VOLUME)
    assert volume == {"name": deployment.DATA_VOLUME, "emptyDir": {}}


def test_the_operator_reads_the_data_volume_and_refuses_nonsense() -> None:
    settings = config.OperatorConfig.from_environment(
        {"KUBEFAL_RUNNER_DATA_VOLUME": json.dumps(NFS)}
    ).render
    assert json.loads(settings.data_volume or "") == NFS
    for bad in ("{", '{"emptyDir": {}}', '{"nfs": {}, "hostPath": {}}', '{"nfs": 1}', "[]"):
        with pytest.raises(config.ConfigError):
            config.OperatorConfig.from_environment({"KUBEFAL_RUNNER_DATA_VOLUME": bad})
