"""Generate the FalApp CustomResourceDefinition from the pydantic models.

``python -m kubefal_api.crds crds/`` (what ``make manifests`` runs) writes
``crds/kubefal.io_falapps.yaml``. The generator is pure: the same models give the same bytes,
so a test can fail when ``crds/`` drifts from the models.

Pydantic emits JSON Schema (draft 2020-12); Kubernetes wants a *structural* OpenAPI v3 schema.
The translation, in :func:`to_structural`:

* ``$ref``/``$defs`` are inlined (the API server resolves no references);
* ``Optional[X]`` (``anyOf: [X, null]``) becomes plain ``X``, left out of ``required``: in
  Kubernetes an unset field is absent, not null;
* ``additionalProperties: false`` (pydantic's ``extra="forbid"``) is dropped: the API server
  prunes unknown fields and ``kubectl --validate=strict`` rejects them;
* ``additionalProperties: true`` (a free-form ``dict[str, Any]``) becomes
  ``x-kubernetes-preserve-unknown-fields: true``;
* a numeric ``exclusiveMinimum``/``exclusiveMaximum`` becomes OpenAPI v3.0's boolean form;
* titles go, descriptions stay (with reStructuredText quoting removed), because they are what
  ``kubectl explain`` prints;
* status fields carry no defaults: only the operator writes status.

CEL rules (``x-kubernetes-validations``), list types and the defaults pydantic cannot express
(``default_factory``) live next to the fields in :mod:`kubefal_api.v1alpha1`, so the Python
validators and the CEL rules are read side by side.
"""

from __future__ import annotations

import copy
import pathlib
import re
import sys
from collections.abc import Sequence
from typing import Any, Final

import yaml

from kubefal_api import naming, v1alpha1

CRD_FILENAME: Final = f"{v1alpha1.GROUP}_{v1alpha1.PLURAL}.yaml"
"""File name under crds/, in controller-gen's ``<group>_<plural>.yaml`` convention."""
CATEGORIES: Final = ("kubefal",)
"""``kubectl get kubefal`` lists every kubefal resource."""

_HEADER: Final = (
    "# Generated from api/kubefal_api/v1alpha1.py by `make manifests`\n"
    "# (python -m kubefal_api.crds crds/). Do not edit by hand.\n"
)
_UNSUPPORTED_KEYWORDS: Final = frozenset(
    {"$ref", "$defs", "anyOf", "oneOf", "allOf", "const", "uniqueItems", "title", "examples"}
)
"""Keywords that must not survive the translation (not structural, or not OpenAPI v3.0)."""


class StructuralSchemaError(ValueError):
    """The models produced a schema this generator cannot make structural."""


def _clean_description(text: str) -> str:
    """One paragraph per blank line, no hard wraps, no reST quoting: what kubectl explain
    shows best."""
    paragraphs = re.split(r"\n\s*\n", text.strip())
    joined = "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)
    return joined.replace("``", "")


def _resolve_ref(ref: str, defs: dict[str, Any]) -> dict[str, Any]:
    prefix = "#/$defs/"
    if not ref.startswith(prefix):
        raise StructuralSchemaError(f"unsupported $ref {ref!r}")
    target = defs[ref.removeprefix(prefix)]
    if not isinstance(target, dict):
        raise StructuralSchemaError(f"$ref {ref!r} is not a schema")
    return target


def _without_null(options: list[Any]) -> Any:
    """The one non-null branch of ``anyOf: [X, null]``; anything else is not structural."""
    non_null = [option for option in options if option != {"type": "null"}]
    if len(non_null) != 1 or len(non_null) == len(options):
        raise StructuralSchemaError(f"anyOf other than Optional[X] is not structural: {options}")
    return non_null[0]


def _translate(node: Any, defs: dict[str, Any], *, in_status: bool) -> Any:
    if isinstance(node, list):
        return [_translate(item, defs, in_status=in_status) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    # Merge a referenced or Optional schema under the keys of the node that points at it, so
    # a field's description and default win over the referenced model's.
    while "$ref" in node or "anyOf" in node:
        if "$ref" in node:
            base = copy.deepcopy(_resolve_ref(node.pop("$ref"), defs))
        else:
            base = copy.deepcopy(_without_null(node.pop("anyOf")))
            if node.get("default", ...) is None:
                del node["default"]
        node = {**base, **node}
    node.pop("title", None)
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    elif node.get("additionalProperties") is True:
        del node["additionalProperties"]
        node["type"] = "object"
        node["x-kubernetes-preserve-unknown-fields"] = True
    for bound, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), int | float) and not isinstance(node[bound], bool):
            node[inclusive] = node[bound]
            node[bound] = True
    if in_status:
        node.pop("default", None)
    if isinstance(node.get("description"), str):
        node["description"] = _clean_description(node["description"])
    translated: dict[str, Any] = {}
    for key, value in node.items():
        if key in {"properties", "patternProperties"}:
            translated[key] = {
                name: _translate(schema, defs, in_status=in_status)
                for name, schema in value.items()
            }
        elif key in {"items", "additionalProperties"}:
            translated[key] = _translate(value, defs, in_status=in_status)
        else:
            translated[key] = value
    return translated


def _check_structural(node: Any, path: str) -> None:
    """Raise unless every level has a type (or preserves unknown fields) and no keyword
    Kubernetes rejects is left."""
    if not isinstance(node, dict):
        return
    leftover = _UNSUPPORTED_KEYWORDS & node.keys()
    if leftover:
        raise StructuralSchemaError(f"{path}: unsupported keywords {sorted(leftover)}")
    if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        raise StructuralSchemaError(f"{path}: no type")
    for name, schema in node.get("properties", {}).items():
        _check_structural(schema, f"{path}.{name}")
    if "items" in node:
        _check_structural(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        _check_structural(node["additionalProperties"], f"{path}{{}}")


def to_structural(model: type[v1alpha1.KubeModel], *, in_status: bool = False) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a model (see the module docstring)."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    defs = schema.pop("$defs", {})
    structural = _translate(schema, defs, in_status=in_status)
    if not isinstance(structural, dict):
        raise StructuralSchemaError(f"{model.__name__} did not give an object schema")
    _check_structural(structural, model.__name__)
    return structural


def falapp_schema() -> dict[str, Any]:
    """The openAPIV3Schema of FalApp: apiVersion, kind, metadata, spec and status."""
    spec = to_structural(v1alpha1.FalAppSpec)
    status = to_structural(v1alpha1.FalAppStatus, in_status=True)
    return {
        "type": "object",
        "description": _clean_description(v1alpha1.FalApp.__doc__ or ""),
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "APIVersion defines the versioned schema of this representation "
                "of an object.",
            },
            "kind": {
                "type": "string",
                "description": "Kind is a string value representing the REST resource this "
                "object represents.",
            },
            # Structural schemas may restrict only metadata.name and generateName. Every child
            # is named after the FalApp and a Service name must be a DNS-1035 label.
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {
                        "type": "string",
                        "maxLength": naming.MAX_APP_NAME_LENGTH,
                        "pattern": naming.APP_NAME_PATTERN,
                    },
                },
            },
            "spec": spec,
            "status": status,
        },
    }


def _printer_columns() -> list[dict[str, Any]]:
    return [
        {
            "name": "Machine",
            "type": "string",
            "jsonPath": ".status.machineType",
            "description": "Machine type the runners run on",
        },
        {
            "name": "Machines",
            "type": "string",
            "jsonPath": ".spec.machineTypes",
            "description": "Acceptable machine types, first choice first",
            "priority": 1,
        },
        {
            "name": "GPUs",
            "type": "integer",
            "jsonPath": ".spec.numGpus",
            "description": "GPUs per runner",
        },
        {
            "name": "Min",
            "type": "integer",
            "jsonPath": ".spec.scaling.minConcurrency",
            "description": "Minimum runners",
        },
        {
            "name": "Max",
            "type": "integer",
            "jsonPath": ".spec.scaling.maxConcurrency",
            "description": "Maximum runners",
        },
        {
            "name": "Desired",
            "type": "integer",
            "jsonPath": ".status.desiredRunners",
            "description": "Runners the scaler wants now (from the gateway's queue)",
        },
        {
            "name": "Runners",
            "type": "integer",
            "jsonPath": ".status.replicas",
            "description": "Runner pods that exist",
        },
        {
            "name": "Ready",
            "type": "integer",
            "jsonPath": ".status.readyReplicas",
            "description": "Runner pods that are ready",
        },
        {
            "name": "Auth",
            "type": "string",
            "jsonPath": ".spec.auth",
            "description": "Who may call the app",
        },
        {
            "name": "Scaler",
            "type": "string",
            "jsonPath": ".spec.scaler",
            "description": "What sets the runner count: builtin, keda or hpa",
            "priority": 1,
        },
        {
            "name": "Phase",
            "type": "string",
            "jsonPath": ".status.phase",
            "description": "One-word state of the app",
        },
        {
            "name": "Age",
            "type": "date",
            "jsonPath": ".metadata.creationTimestamp",
        },
    ]


def falapp_crd() -> dict[str, Any]:
    """The FalApp CustomResourceDefinition (``apiextensions.k8s.io/v1``).

    It has the status subresource (only the operator writes status) and no scale subresource:
    the scaler (builtin, KEDA or HPA) owns the Deployment's replicas, and a ``/scale`` on the
    FalApp would let ``kubectl scale`` or a second autoscaler fight it. Users bound scaling
    with ``spec.scaling.minConcurrency`` and ``maxConcurrency``.
    """
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": v1alpha1.CRD_NAME,
            "labels": {naming.LABEL_PART_OF: naming.PART_OF},
        },
        "spec": {
            "group": v1alpha1.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": v1alpha1.KIND,
                "listKind": v1alpha1.LIST_KIND,
                "plural": v1alpha1.PLURAL,
                "singular": v1alpha1.SINGULAR,
                "shortNames": list(v1alpha1.SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "versions": [
                {
                    "name": v1alpha1.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _printer_columns(),
                    "schema": {"openAPIV3Schema": falapp_schema()},
                }
            ],
        },
    }


def render_yaml(crd: dict[str, Any]) -> str:
    """Deterministic YAML of a CRD: sorted keys, block style, a do-not-edit header."""
    body = yaml.safe_dump(crd, sort_keys=True, default_flow_style=False, width=100)
    return _HEADER + body


def write_crds(directory: pathlib.Path) -> list[pathlib.Path]:
    """Write every CRD of kubefal into ``directory``; return the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CRD_FILENAME
    path.write_text(render_yaml(falapp_crd()), encoding="utf-8")
    return [path]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kubefal_api.crds DIRECTORY``: regenerate the CRDs into DIRECTORY."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        sys.stderr.write("usage: python -m kubefal_api.crds DIRECTORY\n")
        return 2
    for path in write_crds(pathlib.Path(args[0])):
        sys.stdout.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
