"""The generated CRD: matches crds/, is structural, and carries the validation and columns."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from kubefal_api import crds, v1alpha1

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
COMMITTED_CRD = REPO_ROOT / "crds" / crds.CRD_FILENAME


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return crds.falapp_crd()


@pytest.fixture(scope="module")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    version: dict[str, Any] = crd["spec"]["versions"][0]
    return version["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def walk(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path (properties, items and map values)."""
    if not isinstance(node, dict):
        return
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_committed_crd_matches_the_models() -> None:
    expected = crds.render_yaml(crds.falapp_crd())
    actual = COMMITTED_CRD.read_text(encoding="utf-8") if COMMITTED_CRD.exists() else ""
    assert actual == expected, (
        f"{COMMITTED_CRD.relative_to(REPO_ROOT)} is out of date with api/kubefal_api: "
        "run `make manifests` and commit the result"
    )


def test_generation_is_deterministic() -> None:
    assert crds.render_yaml(crds.falapp_crd()) == crds.render_yaml(crds.falapp_crd())


def test_main_writes_the_crd_into_the_given_directory(tmp_path: pathlib.Path) -> None:
    assert crds.main([str(tmp_path)]) == 0
    written = yaml.safe_load((tmp_path / crds.CRD_FILENAME).read_text(encoding="utf-8"))
    assert written == crds.falapp_crd()


def test_main_without_a_directory_prints_usage() -> None:
    assert crds.main([]) == 2


def test_names_group_and_short_name(crd: dict[str, Any]) -> None:
    assert crd["metadata"]["name"] == "falapps.kubefal.io"
    assert crd["spec"]["group"] == "kubefal.io"
    assert crd["spec"]["scope"] == "Namespaced"
    names = crd["spec"]["names"]
    assert names["kind"] == "FalApp"
    assert names["plural"] == "falapps"
    assert "falapp" in names["shortNames"]


def test_only_the_status_subresource_is_enabled(crd: dict[str, Any]) -> None:
    assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}


def test_schema_is_structural(schema: dict[str, Any]) -> None:
    forbidden = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "const", "uniqueItems"}
    problems = []
    for path, node in walk(schema):
        if forbidden & node.keys():
            problems.append(f"{path}: {sorted(forbidden & node.keys())}")
        if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            problems.append(f"{path}: no type")
        if node.get("nullable"):
            problems.append(f"{path}: nullable")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: properties and additionalProperties")
        if isinstance(node.get("exclusiveMinimum"), int | float) and not isinstance(
            node.get("exclusiveMinimum"), bool
        ):
            problems.append(f"{path}: numeric exclusiveMinimum")
    assert problems == []


def test_every_spec_and_status_field_is_described(schema: dict[str, Any]) -> None:
    undocumented = [
        path
        for path, node in walk(schema)
        if path.startswith((".spec", ".status")) and not path.endswith("[]")
        if not node.get("description")
    ]
    assert undocumented == []


def test_descriptions_carry_no_python_markup(schema: dict[str, Any]) -> None:
    marked = [path for path, node in walk(schema) if "``" in node.get("description", "")]
    assert marked == []


def test_spec_defaults_equal_the_model_defaults(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]["properties"]
    scaling = spec["scaling"]["properties"]
    assert spec["machineTypes"]["default"] == [v1alpha1.DEFAULT_MACHINE_TYPE]
    assert spec["auth"]["default"] == "private"
    assert spec["requestTimeout"]["default"] == v1alpha1.DEFAULT_REQUEST_TIMEOUT_SECONDS
    assert spec["startupTimeout"]["default"] == v1alpha1.DEFAULT_STARTUP_TIMEOUT_SECONDS
    assert spec["scaling"]["default"] == {}
    model_scaling = v1alpha1.ScalingSpec().to_kube()
    assert {name: field["default"] for name, field in scaling.items()} == model_scaling


def test_optional_objects_have_no_default(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]["properties"]
    assert "default" not in spec["healthCheck"]
    assert "default" not in spec["source"]
    assert "default" not in spec["numGpus"]


def test_status_carries_no_defaults(schema: dict[str, Any]) -> None:
    defaulted = [path for path, node in walk(schema["properties"]["status"]) if "default" in node]
    assert defaulted == []


def test_cel_rules_name_the_field_they_check(schema: dict[str, Any]) -> None:
    rules = [
        (path, rule)
        for path, node in walk(schema)
        for rule in node.get("x-kubernetes-validations", [])
    ]
    assert {rule["message"].split(" ")[0] for _, rule in rules} <= {
        "spec.scaling.minConcurrency",
        "spec.numGpus",
        "spec.machineTypes",
        "spec.env[].value",
        "spec.envFrom[]",
        "spec.requirements",
        "spec.source",
        "spec.image",
        "spec.containerImage.buildArgs",
        "spec.containerImage.dockerfile",
    }
    by_message = {rule["message"]: (path, rule) for path, rule in rules}
    path, min_max = by_message["spec.scaling.minConcurrency must be <= spec.scaling.maxConcurrency"]
    assert path == ".spec.scaling"
    assert min_max["fieldPath"] == ".minConcurrency"
    gpu_rules = [rule for _, rule in rules if rule.get("fieldPath") == ".numGpus"]
    assert len(gpu_rules) == 1
    assert "self.machineTypes.all(m, m.startsWith('GPU-'))" in gpu_rules[0]["rule"]


def test_enums_and_bounds_are_in_the_schema(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]["properties"]
    assert spec["auth"]["enum"] == ["private", "shared", "public"]
    assert spec["strategy"]["enum"] == ["rolling", "recreate"]
    assert spec["scaler"]["enum"] == ["builtin", "keda", "hpa"]
    assert spec["skipRetryConditions"]["items"]["enum"] == [
        "timeout",
        "server_error",
        "connection_error",
    ]
    assert (spec["numGpus"]["minimum"], spec["numGpus"]["maximum"]) == (1, 8)
    perc = spec["scaling"]["properties"]["concurrencyBufferPerc"]
    assert (perc["minimum"], perc["maximum"]) == (0, 100)
    assert spec["requestTimeout"]["minimum"] == 1
    assert spec["startupTimeout"]["minimum"] == 1
    assert spec["app"]["pattern"] == v1alpha1.APP_REFERENCE_PATTERN


def test_lists_declare_their_merge_semantics(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]["properties"]
    assert spec["machineTypes"]["x-kubernetes-list-type"] == "atomic"
    assert spec["regions"]["x-kubernetes-list-type"] == "set"
    assert spec["env"]["x-kubernetes-list-map-keys"] == ["name"]
    conditions = schema["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_free_form_env_sources_preserve_unknown_fields(schema: dict[str, Any]) -> None:
    value_from = schema["properties"]["spec"]["properties"]["env"]["items"]["properties"][
        "valueFrom"
    ]
    assert value_from == {
        "description": value_from["description"],
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }


def test_printer_columns_show_machine_gpus_scaling_runners_auth_and_age(
    crd: dict[str, Any],
) -> None:
    columns = {
        column["name"]: column["jsonPath"]
        for column in crd["spec"]["versions"][0]["additionalPrinterColumns"]
    }
    assert columns == {
        "Machine": ".status.machineType",
        "Machines": ".spec.machineTypes",
        "GPUs": ".spec.numGpus",
        "Min": ".spec.scaling.minConcurrency",
        "Max": ".spec.scaling.maxConcurrency",
        "Desired": ".status.desiredRunners",
        "Runners": ".status.replicas",
        "Ready": ".status.readyReplicas",
        "Auth": ".spec.auth",
        "Scaler": ".spec.scaler",
        "Phase": ".status.phase",
        "Age": ".metadata.creationTimestamp",
    }


def test_translation_turns_optional_into_absent_and_inlines_references() -> None:
    structural = crds.to_structural(v1alpha1.FalAppSpec)
    health_check = structural["properties"]["healthCheck"]
    assert health_check["type"] == "object"
    assert health_check["required"] == ["path"]
    assert "healthCheck" not in structural["required"]
