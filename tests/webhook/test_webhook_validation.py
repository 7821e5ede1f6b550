"""The webhook's admission rules, one behaviour per test, without a cluster."""

from __future__ import annotations

from typing import Any

import pytest
import webhook_builders as build

from kubefal_api import machines
from kubefal_webhook import validation


def test_a_falapp_whose_references_all_exist_is_allowed_without_warnings() -> None:
    app = build.falapp(
        machineTypes=["GPU-H100"],
        numGpus=2,
        source={"configMapRef": {"name": "sdxl-files"}},
        env=[{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "t"}}}],
        envFrom=[{"secretRef": {"name": "keys"}}, {"configMapRef": {"name": "tuning"}}],
    )
    verdict = validation.review(
        build.request(app),
        build.facts(config_maps={"sdxl-files", "tuning"}, secrets={"hf", "keys"}),
    )
    assert verdict == validation.Verdict(allowed=True)


def test_an_unknown_machine_type_is_denied_naming_its_index_and_the_known_types() -> None:
    app = build.falapp(machineTypes=["GPU-H100", "GPU-X999"])
    verdict = validation.review(build.request(app), build.facts())
    assert not verdict.allowed
    assert [v.field for v in verdict.violations] == ["spec.machineTypes[1]"]
    assert "'GPU-X999'" in verdict.message
    for known in ("GPU-A100", "GPU-B200", "GPU-H100", "L", "S", "XS"):
        assert known in verdict.message
    assert verdict.message.startswith("spec.machineTypes[1]: ")


def test_the_machine_types_come_from_the_catalogue_given_not_the_defaults() -> None:
    catalogue = machines.MachineCatalogue(
        machine_types={"TPU-ISH": machines.MachineType(cpu="1", memory="1Gi")}
    )
    facts = validation.ClusterFacts(catalogue=catalogue)
    assert validation.review(build.request(build.falapp(machineTypes=["TPU-ISH"])), facts).allowed
    denied = validation.review(build.request(build.falapp(machineTypes=["S"])), facts)
    assert denied.violations[0].field == "spec.machineTypes[0]"
    assert "known: TPU-ISH" in denied.message


def test_more_gpus_than_the_largest_node_of_a_listed_type_is_denied() -> None:
    app = build.falapp(machineTypes=["GPU-H100", "GPU-A100"], numGpus=8)
    verdict = validation.review(build.request(app), build.facts())
    assert not verdict.allowed
    assert [v.field for v in verdict.violations] == ["spec.numGpus"]
    assert "GPU-A100 node has 4" in verdict.message


def test_as_many_gpus_as_the_largest_node_is_allowed() -> None:
    app = build.falapp(machineTypes=["GPU-A100"], numGpus=4, strategy="recreate")
    assert validation.review(build.request(app), build.facts()).allowed


def test_the_gpu_count_is_not_judged_when_node_capacity_is_unknown() -> None:
    app = build.falapp(machineTypes=["GPU-A100"], numGpus=8, strategy="recreate")
    verdict = validation.review(build.request(app), build.facts(gpus=None))
    assert verdict == validation.Verdict(allowed=True)


def test_a_missing_source_config_map_is_denied_with_the_commands_that_create_it() -> None:
    app = build.falapp(app="sdxl.py::Sdxl", source={"configMapRef": {"name": "sdxl-files"}})
    verdict = validation.review(build.request(app), build.facts())
    assert not verdict.allowed
    assert [v.field for v in verdict.violations] == ["spec.source.configMapRef.name"]
    assert verdict.violations[0].reason == "FieldValueNotFound"
    assert (
        f"kubectl create configmap sdxl-files --namespace {build.NAMESPACE} --from-file=sdxl.py"
        in verdict.message
    )
    assert f"kubefal deploy sdxl.py::Sdxl --name sdxl --namespace {build.NAMESPACE}" in (
        verdict.message
    )


def test_each_missing_config_map_of_a_bundled_source_is_named_by_its_index() -> None:
    item = {"key": "app.py", "path": "app.py"}
    source = {
        "configMaps": [
            {"name": "sdxl-files-0", "items": [item]},
            {"name": "sdxl-files-1", "items": [{"key": "w.bin", "path": "w.bin"}]},
        ]
    }
    app = build.falapp(app="sdxl.py::Sdxl", source=source)
    references = validation.references(build.request(app))
    assert {"sdxl-files-0", "sdxl-files-1"} <= references.config_maps
    verdict = validation.review(build.request(app), build.facts(config_maps={"sdxl-files-0"}))
    assert not verdict.allowed
    assert [v.field for v in verdict.violations] == ["spec.source.configMaps[1].name"]
    assert f"kubefal deploy sdxl.py::Sdxl --name sdxl --namespace {build.NAMESPACE}" in (
        verdict.message
    )
    assert "kubectl create configmap" not in verdict.message


def test_the_create_command_suggests_app_py_when_the_app_is_a_module() -> None:
    app = build.falapp(app="pkg.models::Sdxl", source={"configMapRef": {"name": "files"}})
    verdict = validation.review(build.request(app), build.facts())
    assert "--from-file=app.py" in verdict.message


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (
            {"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}]},
            "spec.env[0].valueFrom.secretKeyRef.name",
        ),
        (
            {
                "env": [
                    {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k"}}}
                ]
            },
            "spec.env[0].valueFrom.configMapKeyRef.name",
        ),
        ({"envFrom": [{"secretRef": {"name": "gone"}}]}, "spec.envFrom[0].secretRef.name"),
        ({"envFrom": [{"configMapRef": {"name": "gone"}}]}, "spec.envFrom[0].configMapRef.name"),
    ],
)
def test_a_missing_environment_reference_is_denied_naming_its_field(
    spec: dict[str, Any], field: str
) -> None:
    verdict = validation.review(build.request(build.falapp(**spec)), build.facts())
    assert not verdict.allowed
    assert [v.field for v in verdict.violations] == [field]
    assert f"{field}: " in verdict.message
    assert "'gone' not found" in verdict.message


def test_optional_environment_references_may_be_missing() -> None:
    app = build.falapp(
        env=[
            {
                "name": "A",
                "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k", "optional": True}},
            }
        ],
        envFrom=[
            {"secretRef": {"name": "gone", "optional": True}},
            {"configMapRef": {"name": "gone-too", "optional": True}},
        ],
    )
    assert validation.review(build.request(app), build.facts()).allowed


def test_a_secret_of_the_same_name_does_not_satisfy_a_config_map_reference() -> None:
    app = build.falapp(envFrom=[{"configMapRef": {"name": "shared-name"}}])
    verdict = validation.review(build.request(app), build.facts(secrets={"shared-name"}))
    assert [v.field for v in verdict.violations] == ["spec.envFrom[0].configMapRef.name"]


def test_a_secret_key_ref_without_a_name_is_denied() -> None:
    app = build.falapp(env=[{"name": "A", "valueFrom": {"secretKeyRef": {"key": "k"}}}])
    verdict = validation.review(build.request(app), build.facts())
    assert [v.field for v in verdict.violations] == ["spec.env[0].valueFrom.secretKeyRef.name"]


def test_every_violation_is_reported_at_once() -> None:
    app = build.falapp(
        machineTypes=["GPU-X999"],
        source={"configMapRef": {"name": "files"}},
        envFrom=[{"secretRef": {"name": "keys"}}],
    )
    verdict = validation.review(build.request(app), build.facts())
    assert [v.field for v in verdict.violations] == [
        "spec.machineTypes[0]",
        "spec.source.configMapRef.name",
        "spec.envFrom[0].secretRef.name",
    ]


def test_a_missing_build_context_config_map_is_denied_naming_its_index() -> None:
    """Regression: it was admitted, and the build pod then waited for the volume until the
    build's timeout (30 minutes by default)."""
    items = [{"key": "req", "path": "requirements.txt"}]
    image = {
        "dockerfile": "FROM python:3.11-slim\n",
        "context": [{"name": "ctx-0", "items": items}, {"name": "ctx-1", "items": items}],
        "secretRef": {"name": "written-after-the-falapp"},
    }
    app = build.falapp(containerImage=image)
    assert {"ctx-0", "ctx-1"} <= validation.references(build.request(app)).config_maps
    verdict = validation.review(build.request(app), build.facts(config_maps={"ctx-0"}))
    assert not verdict.allowed
    assert [v.field for v in verdict.violations] == ["spec.containerImage.context[1].name"]
    assert verdict.violations[0].reason == "FieldValueNotFound"
    assert "ConfigMap 'ctx-1' not found" in verdict.message
    allowed = validation.review(build.request(app), build.facts(config_maps={"ctx-0", "ctx-1"}))
    assert allowed.allowed


def test_the_references_to_look_up_are_every_named_config_map_and_secret() -> None:
    app = build.falapp(
        source={"configMapRef": {"name": "files"}},
        env=[
            {"name": "A", "valueFrom": {"secretKeyRef": {"name": "s1", "key": "k"}}},
            {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "c1", "key": "k"}}},
            {"name": "C", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "D", "value": "plain"},
        ],
        envFrom=[{"secretRef": {"name": "s2", "optional": True}}, {"configMapRef": {"name": "c2"}}],
    )
    assert validation.references(build.request(app)) == validation.References(
        namespace=build.NAMESPACE,
        config_maps=frozenset({"files", "c1", "c2"}),
        secrets=frozenset({"s1", "s2"}),
    )


def test_no_node_with_a_listed_gpu_product_gives_a_warning_not_a_denial() -> None:
    app = build.falapp(machineTypes=["GPU-B200", "GPU-A6000"])
    verdict = validation.review(build.request(app), build.facts())
    assert verdict.allowed
    assert len(verdict.warnings) == 1
    assert "NVIDIA-B200 or NVIDIA-RTX-A6000" in verdict.warnings[0]
    assert "Pending" in verdict.warnings[0]


def test_one_listed_gpu_product_present_is_enough_to_avoid_the_capacity_warning() -> None:
    app = build.falapp(machineTypes=["GPU-B200", "GPU-H100"])
    assert validation.review(build.request(app), build.facts()).warnings == ()


def test_rolling_updates_of_runners_with_four_or_more_gpus_suggest_recreate() -> None:
    app = build.falapp(machineTypes=["GPU-H100"], numGpus=4)
    verdict = validation.review(build.request(app), build.facts())
    assert verdict.allowed
    assert len(verdict.warnings) == 1
    assert "twice the GPUs" in verdict.warnings[0]
    assert "strategy: recreate" in verdict.warnings[0]


@pytest.mark.parametrize(("gpus", "strategy"), [(3, "rolling"), (8, "recreate")])
def test_no_rolling_warning_below_four_gpus_or_with_recreate(gpus: int, strategy: str) -> None:
    app = build.falapp(machineTypes=["GPU-H100"], numGpus=gpus, strategy=strategy)
    assert validation.review(build.request(app), build.facts()).warnings == ()


def test_keep_alive_zero_with_min_concurrency_zero_warns_of_cold_starts() -> None:
    app = build.falapp(scaling={"keepAlive": 0, "minConcurrency": 0})
    verdict = validation.review(build.request(app), build.facts())
    assert verdict.allowed
    assert len(verdict.warnings) == 1
    assert "cold start" in verdict.warnings[0]


def test_keep_alive_zero_with_a_warm_runner_gives_no_warning() -> None:
    app = build.falapp(scaling={"keepAlive": 0, "minConcurrency": 1})
    assert validation.review(build.request(app), build.facts()).warnings == ()


def test_a_denial_keeps_its_warnings() -> None:
    app = build.falapp(machineTypes=["GPU-H100"], numGpus=8, envFrom=[{"secretRef": {"name": "x"}}])
    verdict = validation.review(build.request(app), build.facts())
    assert not verdict.allowed
    assert len(verdict.warnings) == 1


def test_an_update_that_changes_the_spec_is_validated_like_a_create() -> None:
    old = build.falapp(machineTypes=["S"])
    new = build.falapp(machineTypes=["GPU-X999"])
    verdict = validation.review(build.request(new, operation="UPDATE", old=old), build.facts())
    assert [v.field for v in verdict.violations] == ["spec.machineTypes[0]"]


def test_an_update_that_leaves_the_spec_alone_is_allowed_even_if_a_secret_is_gone() -> None:
    old = build.falapp(envFrom=[{"secretRef": {"name": "deleted-later"}}])
    new = build.falapp(envFrom=[{"secretRef": {"name": "deleted-later"}}])
    new["metadata"]["finalizers"] = []
    request = build.request(new, operation="UPDATE", old=old)
    assert not validation.needs_review(request)
    assert validation.review(request, build.facts()) == validation.Verdict(allowed=True)


def test_an_update_of_an_object_being_deleted_is_allowed() -> None:
    old = build.falapp(envFrom=[{"secretRef": {"name": "gone"}}])
    new = build.falapp(envFrom=[{"secretRef": {"name": "gone"}}, {"secretRef": {"name": "x"}}])
    new["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    verdict = validation.review(build.request(new, operation="UPDATE", old=old), build.facts())
    assert verdict.allowed


def test_delete_is_always_allowed() -> None:
    request = build.request(None, operation="DELETE", old=build.falapp(machineTypes=["GPU-X999"]))
    assert validation.review(request, build.facts()) == validation.Verdict(allowed=True)
    assert validation.references(request).empty


def test_objects_of_other_kinds_are_not_judged() -> None:
    request = build.request(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}},
        kind={"group": "", "version": "v1", "kind": "ConfigMap"},
    )
    assert validation.review(request, build.facts()).allowed


def test_an_object_the_models_reject_is_denied_with_the_field_path() -> None:
    app = build.falapp(scaling={"minConcurrency": 5, "maxConcurrency": 1})
    verdict = validation.review(build.request(app), build.facts())
    assert not verdict.allowed
    assert verdict.violations[0].field == "spec.scaling"
    assert "minConcurrency" in verdict.message


def test_the_response_of_a_denial_is_an_invalid_status_with_one_cause_per_field() -> None:
    request = build.request(build.falapp(machineTypes=["GPU-X999"]))
    verdict = validation.review(request, build.facts())
    document = validation.review_response(request, verdict)
    assert document["apiVersion"] == "admission.k8s.io/v1"
    assert document["kind"] == "AdmissionReview"
    response = document["response"]
    assert response["uid"] == request.uid
    assert response["allowed"] is False
    assert response["status"]["code"] == 422
    assert response["status"]["reason"] == "Invalid"
    assert response["status"]["message"] == verdict.message
    assert response["status"]["details"]["kind"] == "FalApp"
    assert response["status"]["details"]["name"] == "sdxl"
    causes = response["status"]["details"]["causes"]
    assert [(c["field"], c["type"]) for c in causes] == [
        ("spec.machineTypes[0]", "FieldValueNotSupported")
    ]


def test_the_response_of_an_allowed_review_carries_its_warnings() -> None:
    request = build.request(build.falapp())
    verdict = validation.Verdict(allowed=True, warnings=("careful",))
    document = validation.review_response(request, verdict)
    assert document["response"] == {"uid": request.uid, "allowed": True, "warnings": ["careful"]}


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ([], "JSON object"),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}, "request"),
        (
            {"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {}},
            "request.uid",
        ),
        (
            {
                "apiVersion": "admission.k8s.io/v1beta1",
                "kind": "AdmissionReview",
                "request": build.review_body(None)["request"],
            },
            "admission.k8s.io/v1beta1",
        ),
        (
            {
                **build.review_body(None),
                "request": {**build.review_body(None)["request"], "operation": "PATCH"},
            },
            "request.operation",
        ),
    ],
)
def test_a_body_that_is_not_an_admission_review_v1_is_malformed(body: object, problem: str) -> None:
    with pytest.raises(validation.MalformedReviewError, match=problem.replace(".", r"\.")):
        validation.parse_review(body)
