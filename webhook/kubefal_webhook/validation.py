"""Admission rules for FalApps that need cluster state, as pure functions.

The CRD schema and its CEL rules already reject what a manifest alone shows to be wrong. What
is left needs to know the cluster: the machine catalogue, the ConfigMaps and Secrets the app
references, the GPU nodes. The app layer (``kubefal_webhook.cluster``) gathers those facts
into :class:`ClusterFacts`; this module turns an AdmissionReview request plus the facts into a
:class:`Verdict` and the AdmissionReview response. No I/O and no HTTP here, so every rule is
unit-tested without a cluster and could be wired into ``@kopf.on.validate`` too.

Denials are 422 ``Invalid`` statuses whose causes name the field (``spec.machineTypes[0]``),
the way the API server reports its own validation errors (kubebuilder's ``NewInvalid``).
Updates are validated like creates when the spec changes; an update that leaves the spec alone
(finalizers, annotations, labels) or touches an object being deleted is always allowed, so a
Secret deleted after the fact can never wedge the operator's finalizer removal.
"""

from __future__ import annotations

import dataclasses
import enum
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any, Final

import pydantic
import pydantic.alias_generators

from kubefal_api import machines, v1alpha1

ADMISSION_API_VERSION: Final = "admission.k8s.io/v1"
ADMISSION_KIND: Final = "AdmissionReview"
ROLLING_GPU_WARNING_THRESHOLD: Final = 4
"""A rolling update of runners with this many GPUs or more gets a warning."""
DEFAULT_APP_FILE: Final = "app.py"
SECRET: Final = "Secret"
CONFIG_MAP: Final = "ConfigMap"


class MalformedReviewError(ValueError):
    """The body is not an AdmissionReview v1 request; the message says what is wrong."""


class Operation(enum.StrEnum):
    """``request.operation`` of an AdmissionReview."""

    CREATE = "CREATE"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    CONNECT = "CONNECT"


class GroupVersionKind(pydantic.BaseModel):
    """``request.kind``: the type of the object under review."""

    model_config = pydantic.ConfigDict(frozen=True)

    group: str = ""
    version: str
    kind: str


class AdmissionRequest(pydantic.BaseModel):
    """The parts of ``AdmissionReview.request`` the rules read."""

    model_config = pydantic.ConfigDict(
        alias_generator=pydantic.alias_generators.to_camel,
        populate_by_name=True,
        frozen=True,
    )

    uid: str = pydantic.Field(min_length=1)
    kind: GroupVersionKind
    operation: Operation
    namespace: str = ""
    name: str = ""
    object: dict[str, Any] | None = None
    old_object: dict[str, Any] | None = None
    dry_run: bool = False


class _AdmissionReview(pydantic.BaseModel):
    api_version: str = pydantic.Field(alias="apiVersion")
    kind: str
    request: AdmissionRequest


def parse_review(body: object) -> AdmissionRequest:
    """The request of an AdmissionReview v1 document; raises :class:`MalformedReviewError`."""
    if not isinstance(body, Mapping):
        raise MalformedReviewError("the body must be a JSON object (an AdmissionReview)")
    try:
        review = _AdmissionReview.model_validate(body)
    except pydantic.ValidationError as error:
        problems = "; ".join(
            f"{_dotted(issue['loc'])}: {issue['msg']}" for issue in error.errors(include_url=False)
        )
        raise MalformedReviewError(f"not an AdmissionReview v1: {problems}") from None
    if (review.api_version, review.kind) != (ADMISSION_API_VERSION, ADMISSION_KIND):
        raise MalformedReviewError(
            f"expected apiVersion {ADMISSION_API_VERSION} kind {ADMISSION_KIND}, "
            f"got {review.api_version} {review.kind}"
        )
    return review.request


@dataclasses.dataclass(frozen=True)
class References:
    """The ConfigMaps and Secrets in the FalApp's namespace that its spec names."""

    namespace: str
    config_maps: frozenset[str] = frozenset()
    secrets: frozenset[str] = frozenset()

    @property
    def empty(self) -> bool:
        return not self.config_maps and not self.secrets


@dataclasses.dataclass(frozen=True)
class ClusterFacts:
    """What the rules need to know about the cluster, looked up by the app layer."""

    catalogue: machines.MachineCatalogue
    """The machine catalogue (the ConfigMap, or the built-in defaults when it is absent)."""
    config_maps: frozenset[str] = frozenset()
    """Names of the referenced ConfigMaps that exist in the object's namespace."""
    secrets: frozenset[str] = frozenset()
    """Names of the referenced Secrets that exist in the object's namespace."""
    gpus_per_node_by_product: Mapping[str, int] | None = None
    """Largest GPU count one node offers, by ``nvidia.com/gpu.product``; a product no node
    carries is absent. None when node capacity could not be read (the GPU rules then skip)."""


@dataclasses.dataclass(frozen=True)
class Violation:
    """One reason to deny, on one field (a ``metav1.StatusCause``)."""

    field: str
    message: str
    reason: str = "FieldValueInvalid"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of a review: allowed or not, why, and warnings kubectl shows either way."""

    allowed: bool
    message: str = ""
    warnings: tuple[str, ...] = ()
    violations: tuple[Violation, ...] = ()

    @classmethod
    def deny(cls, violations: list[Violation], warnings: tuple[str, ...] = ()) -> Verdict:
        message = "; ".join(f"{violation.field}: {violation.message}" for violation in violations)
        return cls(allowed=False, message=message, warnings=warnings, violations=tuple(violations))


def _dotted(location: tuple[int | str, ...]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(root)"


def is_falapp(request: AdmissionRequest) -> bool:
    return (request.kind.group, request.kind.kind) == (v1alpha1.GROUP, v1alpha1.KIND)


def _parse_falapp(document: Mapping[str, Any]) -> v1alpha1.FalApp:
    # Status is the operator's (written through the subresource): never judge a spec by it.
    return v1alpha1.FalApp.from_kube({k: v for k, v in document.items() if k != "status"})


def needs_review(request: AdmissionRequest) -> bool:
    """True for CREATE, and UPDATE of the spec of a live object, of a FalApp."""
    if request.operation not in (Operation.CREATE, Operation.UPDATE) or request.object is None:
        return False
    if not is_falapp(request):
        return False
    if request.operation is Operation.UPDATE:
        metadata = request.object.get("metadata")
        if isinstance(metadata, Mapping) and metadata.get("deletionTimestamp"):
            return False
        if request.old_object is not None and request.old_object.get("spec") == request.object.get(
            "spec"
        ):
            return False
    return True


@dataclasses.dataclass(frozen=True)
class _EnvironmentReference:
    """A ConfigMap or Secret the runner's environment reads."""

    kind: str
    """CONFIG_MAP or SECRET."""
    field: str
    """Path of the field naming it, e.g. spec.envFrom[0].secretRef.name."""
    name: str | None
    """The name, None when the reference names nothing."""
    optional: bool
    """``optional: true``: the runner starts without it."""


def _environment_references(spec: v1alpha1.FalAppSpec) -> Iterator[_EnvironmentReference]:
    for index, variable in enumerate(spec.env):
        value_from = variable.value_from or {}
        for key, kind in (("secretKeyRef", SECRET), ("configMapKeyRef", CONFIG_MAP)):
            selector = value_from.get(key)
            if isinstance(selector, Mapping):
                name = selector.get("name")
                yield _EnvironmentReference(
                    kind=kind,
                    field=f"spec.env[{index}].valueFrom.{key}.name",
                    name=name if isinstance(name, str) and name else None,
                    optional=selector.get("optional") is True,
                )
    for index, source in enumerate(spec.env_from):
        for key, kind, reference in (
            ("secretRef", SECRET, source.secret_ref),
            ("configMapRef", CONFIG_MAP, source.config_map_ref),
        ):
            if reference is not None:
                yield _EnvironmentReference(
                    kind=kind,
                    field=f"spec.envFrom[{index}].{key}.name",
                    name=reference.name,
                    optional=reference.optional is True,
                )


def references(request: AdmissionRequest) -> References:
    """What the app layer must look up before :func:`review` (nothing when no review is due)."""
    if not needs_review(request) or request.object is None:
        return References(namespace=request.namespace)
    try:
        app = _parse_falapp(request.object)
    except pydantic.ValidationError:
        return References(namespace=request.namespace)
    config_maps: set[str] = set()
    secrets: set[str] = set()
    config_maps.update(name for _, name in _source_config_maps(app.spec))
    config_maps.update(name for _, name in _build_context_config_maps(app.spec))
    for reference in _environment_references(app.spec):
        if reference.name is not None:
            (secrets if reference.kind == SECRET else config_maps).add(reference.name)
    return References(
        namespace=request.namespace,
        config_maps=frozenset(config_maps),
        secrets=frozenset(secrets),
    )


def _machine_type_violations(
    spec: v1alpha1.FalAppSpec, catalogue: machines.MachineCatalogue
) -> list[Violation]:
    known = ", ".join(sorted(catalogue.machine_types))
    return [
        Violation(
            field=f"spec.machineTypes[{index}]",
            message=f"machine type {name!r} is not in the machine catalogue (known: {known})",
            reason="FieldValueNotSupported",
        )
        for index, name in enumerate(spec.machine_types)
        if name not in catalogue.machine_types
    ]


def _largest_gpu_node(
    machine: machines.MachineType, gpus_per_node_by_product: Mapping[str, int]
) -> int | None:
    counts = [
        gpus_per_node_by_product[product]
        for product in machine.gpu_products
        if gpus_per_node_by_product.get(product, 0) > 0
    ]
    return max(counts) if counts else None


def _gpu_count_violations(spec: v1alpha1.FalAppSpec, facts: ClusterFacts) -> list[Violation]:
    if facts.gpus_per_node_by_product is None or not spec.uses_gpu:
        return []
    violations = []
    wanted = spec.gpus_per_runner
    for name in spec.machine_types:
        machine = facts.catalogue.machine_types.get(name)
        if machine is None:
            continue
        largest = _largest_gpu_node(machine, facts.gpus_per_node_by_product)
        if largest is not None and wanted > largest:
            violations.append(
                Violation(
                    field="spec.numGpus",
                    message=f"{wanted} GPUs per runner, but the largest {name} node has "
                    f"{largest}: a runner could never be scheduled there",
                )
            )
    return violations


def _missing_object_message(kind: str, name: str, namespace: str) -> str:
    return f"{kind} {name!r} not found in namespace {namespace!r}"


def _source_config_maps(spec: v1alpha1.FalAppSpec) -> list[tuple[str, str]]:
    """(field, name) of every ConfigMap the app's source names: configMapRef or configMaps."""
    source = spec.source
    if source is None:
        return []
    if source.config_map_ref is not None:
        return [("spec.source.configMapRef.name", source.config_map_ref.name)]
    return [
        (f"spec.source.configMaps[{index}].name", config_map.name)
        for index, config_map in enumerate(source.config_maps or ())
    ]


def _build_context_config_maps(spec: v1alpha1.FalAppSpec) -> list[tuple[str, str]]:
    """(field, name) of every ConfigMap the build context of ``spec.containerImage`` names.
    Not its build Secret: ``fal deploy`` writes that after the FalApp (owned by it)."""
    image = spec.container_image
    if image is None:
        return []
    return [
        (f"spec.containerImage.context[{index}].name", config_map.name)
        for index, config_map in enumerate(image.context or ())
    ]


def _build_context_violations(
    spec: v1alpha1.FalAppSpec, facts: ClusterFacts, *, namespace: str
) -> list[Violation]:
    """A missing context ConfigMap would hold the build pod in ContainerCreating until the
    build's timeout: refuse it now."""
    return [
        Violation(
            field=field,
            message=f"{_missing_object_message(CONFIG_MAP, name, namespace)}; create it "
            "before the FalApp: the build Job mounts it",
            reason="FieldValueNotFound",
        )
        for field, name in _build_context_config_maps(spec)
        if name not in facts.config_maps
    ]


def _source_violations(
    spec: v1alpha1.FalAppSpec, facts: ClusterFacts, *, namespace: str, app_name: str
) -> list[Violation]:
    app_file = spec.app.split("::", 1)[0]
    from_file = app_file if pathlib.PurePosixPath(app_file).suffix == ".py" else DEFAULT_APP_FILE
    violations = []
    for field, name in _source_config_maps(spec):
        if name in facts.config_maps:
            continue
        create = (
            f"create it with `kubectl create configmap {name} --namespace {namespace}"
            f" --from-file={from_file}` or run"
            if field.startswith("spec.source.configMapRef")
            else "run"
        )
        violations.append(
            Violation(
                field=field,
                message=f"{_missing_object_message(CONFIG_MAP, name, namespace)}; {create}"
                f" `kubefal deploy {spec.app} --name {app_name} --namespace {namespace}`,"
                " which uploads the app files itself",
                reason="FieldValueNotFound",
            )
        )
    return violations


def _environment_violations(
    spec: v1alpha1.FalAppSpec, facts: ClusterFacts, namespace: str
) -> list[Violation]:
    violations = []
    for reference in _environment_references(spec):
        if reference.name is None:
            violations.append(
                Violation(
                    field=reference.field,
                    message=f"must name a {reference.kind}",
                    reason="FieldValueRequired",
                )
            )
            continue
        existing = facts.secrets if reference.kind == SECRET else facts.config_maps
        if reference.name in existing or reference.optional:
            continue
        create = "secret generic" if reference.kind == SECRET else "configmap"
        violations.append(
            Violation(
                field=reference.field,
                message=f"{_missing_object_message(reference.kind, reference.name, namespace)}; "
                f"create it (`kubectl create {create} {reference.name} --namespace {namespace} "
                "...`) or mark the reference optional: true",
                reason="FieldValueNotFound",
            )
        )
    return violations


def _warnings(spec: v1alpha1.FalAppSpec, facts: ClusterFacts) -> list[str]:
    warnings = []
    if spec.uses_gpu and facts.gpus_per_node_by_product is not None:
        products = sorted(
            {
                product
                for name in spec.machine_types
                if name in facts.catalogue.machine_types
                for product in facts.catalogue.machine_types[name].gpu_products
            }
        )
        if products and not any(
            facts.gpus_per_node_by_product.get(product, 0) > 0 for product in products
        ):
            warnings.append(
                f"no node carries {facts.catalogue.gpu_product_label} "
                f"{' or '.join(products)}: runners stay Pending until such a node joins"
            )
    gpus = spec.gpus_per_runner
    if spec.strategy is v1alpha1.Strategy.ROLLING and gpus >= ROLLING_GPU_WARNING_THRESHOLD:
        warnings.append(
            f"spec.strategy rolling with {gpus} GPUs per runner: a rollout briefly needs twice "
            "the GPUs; consider strategy: recreate"
        )
    if spec.scaling.keep_alive == 0 and spec.scaling.min_concurrency == 0:
        warnings.append(
            "spec.scaling.keepAlive 0 with minConcurrency 0: runners leave as soon as they are "
            "idle, so requests after a pause pay a cold start"
        )
    return warnings


def review(request: AdmissionRequest, facts: ClusterFacts) -> Verdict:
    """Allow or deny one admission request, with warnings for risky but valid specs."""
    if not needs_review(request) or request.object is None:
        return Verdict(allowed=True)
    try:
        app = _parse_falapp(request.object)
    except pydantic.ValidationError as error:
        # The CRD schema ran first, so this means the CRD and the models drifted apart: the
        # operator could not parse the object either.
        return Verdict.deny(
            [
                Violation(field=_dotted(issue["loc"]), message=issue["msg"])
                for issue in error.errors(include_url=False)
            ]
        )
    spec = app.spec
    namespace = request.namespace
    violations = [
        *_machine_type_violations(spec, facts.catalogue),
        *_gpu_count_violations(spec, facts),
        *_source_violations(
            spec, facts, namespace=namespace, app_name=app.metadata.name or request.name
        ),
        *_environment_violations(spec, facts, namespace),
        *_build_context_violations(spec, facts, namespace=namespace),
    ]
    warnings = tuple(_warnings(spec, facts))
    if violations:
        return Verdict.deny(violations, warnings)
    return Verdict(allowed=True, warnings=warnings)


def review_response(request: AdmissionRequest, verdict: Verdict) -> dict[str, Any]:
    """The AdmissionReview v1 document answering ``request``.

    A denial is the status ``apierrors.NewInvalid`` would build (422, reason Invalid, one
    cause per field, the FalApp's kind and name): ``kubectl`` prints it as it prints the API
    server's own schema errors, ``The FalApp "x" is invalid: spec...: ...``, and other clients
    read the same text in ``status.message``.
    """
    uid = request.uid
    response: dict[str, Any] = {"uid": uid, "allowed": verdict.allowed}
    if verdict.warnings:
        response["warnings"] = list(verdict.warnings)
    if not verdict.allowed:
        response["status"] = {
            "status": "Failure",
            "code": 422,
            "reason": "Invalid",
            "message": verdict.message,
            "details": {
                "name": request.name or _object_name(request),
                "group": v1alpha1.GROUP,
                "kind": v1alpha1.KIND,
                "causes": [
                    {
                        "field": violation.field,
                        "message": violation.message,
                        "type": violation.reason,
                    }
                    for violation in verdict.violations
                ],
            },
        }
    return {"apiVersion": ADMISSION_API_VERSION, "kind": ADMISSION_KIND, "response": response}


def _object_name(request: AdmissionRequest) -> str:
    metadata = (request.object or {}).get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return name if isinstance(name, str) else ""


def unavailable_response(uid: str, message: str) -> dict[str, Any]:
    """A denial because the cluster state could not be read (the API server shows ``message``)."""
    return {
        "apiVersion": ADMISSION_API_VERSION,
        "kind": ADMISSION_KIND,
        "response": {
            "uid": uid,
            "allowed": False,
            "status": {
                "status": "Failure",
                "code": 503,
                "reason": "ServiceUnavailable",
                "message": message,
            },
        },
    }
