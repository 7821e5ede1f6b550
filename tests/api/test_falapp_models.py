"""Behaviour of the FalApp models: parsing, defaults, validation, serialisation."""

from __future__ import annotations

import datetime
import re
from typing import Any

import pydantic
import pytest

from kubefal_api import v1alpha1


def manifest(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "metadata": {"name": "demo", "namespace": "team-a"},
        "spec": {"app": "app.py::MyApp", **spec},
    }


def test_a_minimal_manifest_parses_with_every_default() -> None:
    app = v1alpha1.FalApp.model_validate(manifest())
    assert app.spec.machine_types == ["S"]
    assert app.spec.auth is v1alpha1.AuthMode.PRIVATE
    assert app.spec.strategy is v1alpha1.Strategy.ROLLING
    assert app.spec.scaler is v1alpha1.Scaler.BUILTIN
    assert app.spec.scaling == v1alpha1.ScalingSpec(
        min_concurrency=0,
        max_concurrency=v1alpha1.DEFAULT_MAX_CONCURRENCY,
        keep_alive=60,
        concurrency_buffer=0,
        concurrency_buffer_perc=0,
        scaling_delay=0,
        max_multiplexing=1,
    )
    assert app.spec.health_check is None
    assert app.status is None


def test_camel_case_names_parse_and_serialise_back() -> None:
    source = manifest(
        machineTypes=["GPU-H100", "GPU-H200"],
        numGpus=2,
        scaling={"minConcurrency": 1, "maxConcurrency": 3, "concurrencyBufferPerc": 20},
        healthCheck={"path": "/healthz", "callRegularly": True},
        envFrom=[{"secretRef": {"name": "hf-token"}}],
        skipRetryConditions=["timeout"],
    )
    app = v1alpha1.FalApp.model_validate(source)
    assert app.spec.num_gpus == 2
    assert app.spec.scaling.concurrency_buffer_perc == 20
    assert app.spec.health_check is not None
    assert app.spec.health_check.call_regularly is True
    dumped = app.to_kube()
    assert dumped["spec"]["machineTypes"] == ["GPU-H100", "GPU-H200"]
    assert dumped["spec"]["healthCheck"]["startPeriodSeconds"] == 30
    assert dumped["spec"]["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
    assert v1alpha1.FalApp.model_validate(dumped) == app


def test_snake_case_names_are_accepted_in_python() -> None:
    spec = v1alpha1.FalAppSpec(app="pkg.module::MyApp", machine_types=["M"], request_timeout=30)
    assert spec.to_kube()["requestTimeout"] == 30


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(pydantic.ValidationError, match="machineType"):
        v1alpha1.FalApp.model_validate(manifest(machineType="S"))


def test_metadata_keeps_fields_kubefal_does_not_model() -> None:
    source = manifest()
    source["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    app = v1alpha1.FalApp.model_validate(source)
    assert app.to_kube()["metadata"]["creationTimestamp"] == "2026-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"app": "app.py"}, "String should match pattern"),
        ({"machineTypes": []}, "at least 1 item"),
        ({"machineTypes": ["S", "S"]}, "duplicate entries: S"),
        ({"numGpus": 1}, "spec.numGpus is allowed only"),
        ({"machineTypes": ["GPU-H100"], "numGpus": 9}, "less than or equal to 8"),
        ({"machineTypes": ["GPU-H100", "L"], "numGpus": 2}, "spec.numGpus is allowed only"),
        (
            {"scaling": {"minConcurrency": 5, "maxConcurrency": 2}},
            "spec.scaling.minConcurrency must be <= spec.scaling.maxConcurrency",
        ),
        ({"scaling": {"concurrencyBufferPerc": 101}}, "less than or equal to 100"),
        ({"scaling": {"maxMultiplexing": 0}}, "greater than or equal to 1"),
        ({"requestTimeout": 0}, "greater than or equal to 1"),
        ({"startupTimeout": -5}, "greater than or equal to 1"),
        ({"auth": "everyone"}, "'private', 'shared' or 'public'"),
        ({"strategy": "bluegreen"}, "'rolling' or 'recreate'"),
        ({"scaler": "hpa"}, "spec.scaling.minConcurrency must be >= 1 when spec.scaler is hpa"),
        ({"skipRetryConditions": ["always"]}, "'timeout', 'server_error' or 'connection_error'"),
        ({"healthCheck": {"path": "healthz"}}, "String should match pattern"),
        ({"env": [{"name": "A", "value": "1"}, {"name": "A"}]}, "duplicate env names: A"),
        (
            {"env": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {}}}]},
            "set value or valueFrom, not both",
        ),
        ({"envFrom": [{"prefix": "X_"}]}, "exactly one of configMapRef or secretRef"),
        ({"requirements": ["a"], "requirementLayers": [["b"]]}, "mutually exclusive"),
        ({"requirementLayers": [[]]}, "at least 1 item"),
        ({"source": {}}, "exactly one of configMapRef or configMaps"),
        (
            {"source": {"configMaps": [{"name": "c", "items": [{"key": "k", "path": "a/../b"}]}]}},
            "String should match pattern",
        ),
        (
            {
                "source": {
                    "configMaps": [
                        {"name": "c", "items": [{"key": "k", "path": "a.py"}]},
                        {"name": "d", "items": [{"key": "j", "path": "a.py"}]},
                    ]
                }
            },
            "paths listed twice: ['a.py']",
        ),
    ],
)
def test_invalid_specs_are_rejected_with_the_field_named(
    spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(pydantic.ValidationError, match=re.escape(message)):
        v1alpha1.FalApp.model_validate(manifest(**spec))


def test_hpa_is_accepted_with_at_least_one_runner() -> None:
    app = v1alpha1.FalApp.model_validate(manifest(scaler="hpa", scaling={"minConcurrency": 1}))
    assert app.spec.scaler is v1alpha1.Scaler.HPA


@pytest.mark.parametrize(
    ("machine_types", "num_gpus", "expected"),
    [
        (["S"], None, 0),
        (["GPU-H100"], None, 1),
        (["GPU-H100", "GPU-H200"], 4, 4),
    ],
)
def test_gpus_per_runner_follow_machine_types_and_num_gpus(
    machine_types: list[str], num_gpus: int | None, expected: int
) -> None:
    spec = v1alpha1.FalAppSpec(app="app.py::A", machine_types=machine_types, num_gpus=num_gpus)
    assert spec.gpus_per_runner == expected


def test_status_serialises_conditions_with_kubernetes_names() -> None:
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    status = v1alpha1.FalAppStatus(
        phase=v1alpha1.Phase.WAITING_FOR_CAPACITY,
        conditions=[
            v1alpha1.Condition(
                type=v1alpha1.ConditionType.SCHEDULED,
                status=v1alpha1.ConditionStatus.FALSE,
                reason="WaitingForGPUCapacity",
                message="0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                last_transition_time=when,
                observed_generation=2,
            )
        ],
        observed_generation=2,
        machine_type="GPU-H100",
    )
    dumped = status.to_kube()
    assert dumped["phase"] == "WaitingForCapacity"
    assert dumped["conditions"][0]["lastTransitionTime"] == "2026-01-02T03:04:05Z"
    assert dumped["conditions"][0]["observedGeneration"] == 2
    assert dumped["runners"] == {"pending": 0, "setup": 0, "running": 0, "idle": 0, "draining": 0}
    scheduled = status.condition(v1alpha1.ConditionType.SCHEDULED)
    assert scheduled is not None
    assert scheduled.reason == "WaitingForGPUCapacity"
    assert status.condition(v1alpha1.ConditionType.READY) is None


def test_from_kube_accepts_any_mapping() -> None:
    class Body(dict[str, Any]):
        pass

    app = v1alpha1.FalApp.from_kube(Body(manifest()))
    assert app.metadata.name == "demo"


def test_every_field_has_a_description_for_kubectl_explain() -> None:
    models: list[type[pydantic.BaseModel]] = [
        v1alpha1.FalAppSpec,
        v1alpha1.ScalingSpec,
        v1alpha1.HealthCheckSpec,
        v1alpha1.SourceSpec,
        v1alpha1.ConfigMapReference,
        v1alpha1.EnvVar,
        v1alpha1.EnvFromSource,
        v1alpha1.EnvFromReference,
        v1alpha1.FalAppStatus,
        v1alpha1.Condition,
        v1alpha1.RunnerCounts,
        v1alpha1.Endpoints,
    ]
    undocumented = [
        f"{model.__name__}.{name}"
        for model in models
        for name, field in model.model_fields.items()
        if not field.description
    ]
    assert undocumented == []


@pytest.mark.parametrize("name", ["1st-app", "My-App", "app.v2", "a" * 64, "trailing-"])
def test_names_that_are_not_dns_1035_labels_are_rejected(name: str) -> None:
    source = manifest()
    source["metadata"]["name"] = name
    with pytest.raises(pydantic.ValidationError, match="must be a DNS-1035 label"):
        v1alpha1.FalApp.model_validate(source)


def test_a_manifest_without_a_name_is_accepted_for_generate_name() -> None:
    source = manifest()
    source["metadata"] = {"generateName": "demo-"}
    assert v1alpha1.FalApp.model_validate(source).metadata.name is None


def test_a_flat_list_is_one_layer_and_layers_stay_layers() -> None:
    flat = v1alpha1.FalApp.model_validate(manifest(requirements=["a", "b"]))
    layered = v1alpha1.FalApp.model_validate(manifest(requirementLayers=[["torch"], ["a", "b"]]))
    nothing = v1alpha1.FalApp.model_validate(manifest())

    assert flat.spec.install_layers == [["a", "b"]]
    assert layered.spec.install_layers == [["torch"], ["a", "b"]]
    assert layered.spec.to_kube()["requirementLayers"] == [["torch"], ["a", "b"]]
    assert nothing.spec.install_layers == []
