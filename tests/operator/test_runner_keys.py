"""The manifests of a runner key (runner_keys.py): which apps get one, what the record may do,
where it lives, and how the Deployment reads it. The API calls are exercised against a real
API server in e2e/test_runner_keys.py."""

from __future__ import annotations

import base64

from kubefal_api import apikeys, v1alpha1
from kubefal_api.machines import MachineCatalogue
from kubefal_operator import config, runner_keys
from kubefal_operator.render import common, deployment
from tests.operator.conftest import MakeApp


def test_only_apps_without_their_own_key_get_one(make_app: MakeApp) -> None:
    assert runner_keys.wants_key(make_app().spec)
    assert not runner_keys.wants_key(make_app(falKeySecretRef={"name": "mine"}).spec)
    assert not runner_keys.wants_key(make_app(env=[{"name": "FAL_KEY", "value": "a:b"}]).spec)
    assert runner_keys.wants_key(make_app(env=[{"name": "OTHER", "value": "x"}]).spec)


def test_the_record_is_storage_only_for_the_apps_namespace(make_app: MakeApp) -> None:
    owner = common.Owner.of(make_app(name="demo", namespace="team-a"))
    key = apikeys.generate_key()
    record = runner_keys.new_record(key, owner)
    assert record.namespaces == ("team-a",) and record.scopes == (apikeys.SCOPE_STORAGE,)
    assert apikeys.verify_secret(secret=key.secret, encoded_hash=record.hash)
    elsewhere = runner_keys.record_manifest(record, key_namespace="kubefal-system", owner=owner)
    assert elsewhere["metadata"]["namespace"] == "kubefal-system"
    labels = elsewhere["metadata"]["labels"]
    assert labels[apikeys.LABEL_API_KEY] == "true"  # the gateway verifies it like any key
    assert labels[runner_keys.LABEL_APP_NAMESPACE] == "team-a"
    assert labels[runner_keys.LABEL_APP] == "demo"
    assert "ownerReferences" not in elsewhere["metadata"]  # no cross-namespace owners
    assert apikeys.record_from_secret(elsewhere).scopes == (apikeys.SCOPE_STORAGE,)
    beside = runner_keys.record_manifest(record, key_namespace="team-a", owner=owner)
    assert beside["metadata"]["ownerReferences"][0]["uid"] == owner.uid


def test_the_deployment_reads_fal_key_from_the_apps_secret_under_the_key_id(
    make_app: MakeApp, catalogue: MachineCatalogue, settings: common.RenderSettings
) -> None:
    app = make_app(name="demo")
    owner = common.Owner.of(app)
    key = apikeys.generate_key()
    secret = runner_keys.key_secret_manifest(key, owner=owner)
    assert secret["metadata"]["name"] == "demo-fal-key"
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "FalApp"
    assert base64.b64decode(secret["data"][key.id]).decode() == str(key)
    reference = v1alpha1.SecretKeyReference(name=runner_keys.secret_name("demo"), key=key.id)
    with_key = app.model_copy(
        update={"spec": app.spec.model_copy(update={"fal_key_secret_ref": reference})}
    )
    env = deployment.deployment(with_key, catalogue=catalogue, settings=settings)["spec"][
        "template"
    ]["spec"]["containers"][0]["env"]
    (fal_key,) = [item for item in env if item["name"] == "FAL_KEY"]
    assert fal_key["valueFrom"]["secretKeyRef"] == {"name": "demo-fal-key", "key": key.id}
    # a rotated key is another pod template: the runners roll onto it
    other = apikeys.generate_key()
    rotated = with_key.model_copy(
        update={
            "spec": with_key.spec.model_copy(
                update={"fal_key_secret_ref": reference.model_copy(update={"key": other.id})}
            )
        }
    )
    first = deployment.deployment(with_key, catalogue=catalogue, settings=settings)
    second = deployment.deployment(rotated, catalogue=catalogue, settings=settings)
    assert first["spec"]["template"] != second["spec"]["template"]


def test_runner_keys_follow_the_rest_host_unless_set() -> None:
    assert not config.OperatorConfig.from_environment({}).runner_keys
    rest = {"KUBEFAL_RUNNER_FAL_REST_HOST": "gw:8445"}
    assert config.OperatorConfig.from_environment(rest).runner_keys
    off = config.OperatorConfig.from_environment({**rest, "KUBEFAL_RUNNER_KEYS": "false"})
    assert not off.runner_keys
    assert config.OperatorConfig.from_environment({}).key_namespace == "kubefal-system"
    assert (
        config.OperatorConfig.from_environment({"KUBEFAL_KEY_NAMESPACE": "*"}).key_namespace == "*"
    )
