"""Builders of FalApps, AdmissionReviews and cluster facts for the webhook's unit tests, and
the webhook app run in-process with those facts in place of the API server."""

from __future__ import annotations

import contextlib
import copy
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import starlette.applications

from kubefal_api import machines, v1alpha1
from kubefal_webhook import cluster, validation

NAMESPACE = "team-a"
GPU_NODES = {
    "NVIDIA-H100-80GB-HBM3": 8,
    "NVIDIA-H200": 8,
    "NVIDIA-A100-SXM4-40GB": 4,
}
"""Largest GPU count per product in the fake cluster: H100 and H200 nodes, a 4-GPU A100."""


def falapp(**spec: Any) -> dict[str, Any]:
    """A FalApp document as the API server sends it (after schema defaulting)."""
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "metadata": {"name": "sdxl", "namespace": NAMESPACE},
        "spec": {"app": "app.py::MyApp", "scaling": {"keepAlive": 60}, **spec},
    }


def review_body(
    obj: dict[str, Any] | None,
    *,
    operation: str = "CREATE",
    old: dict[str, Any] | None = None,
    kind: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An AdmissionReview v1 request document."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": kind
            or {"group": v1alpha1.GROUP, "version": v1alpha1.VERSION, "kind": "FalApp"},
            "resource": {
                "group": v1alpha1.GROUP,
                "version": v1alpha1.VERSION,
                "resource": "falapps",
            },
            "operation": operation,
            "namespace": NAMESPACE,
            "name": "sdxl",
            "object": copy.deepcopy(obj),
            "oldObject": copy.deepcopy(old),
            "dryRun": False,
        },
    }


def request(obj: dict[str, Any] | None, **options: Any) -> validation.AdmissionRequest:
    return validation.parse_review(review_body(obj, **options))


def facts(
    *,
    config_maps: set[str] | None = None,
    secrets: set[str] | None = None,
    gpus: dict[str, int] | None = GPU_NODES,
) -> validation.ClusterFacts:
    return validation.ClusterFacts(
        catalogue=machines.default_catalogue(),
        config_maps=frozenset(config_maps or ()),
        secrets=frozenset(secrets or ()),
        gpus_per_node_by_product=gpus,
    )


class MemoryFacts:
    """Facts from memory; records what it was asked and can fail like an unreachable API."""

    def __init__(self, facts: validation.ClusterFacts, *, failure: str | None = None) -> None:
        self._facts = facts
        self.failure = failure
        self.asked: list[validation.References] = []

    def facts(self, references: validation.References) -> validation.ClusterFacts:
        self.asked.append(references)
        if self.failure is not None:
            raise cluster.ClusterStateError(self.failure)
        return self._facts

    def catalogue(self) -> machines.MachineCatalogue:
        if self.failure is not None:
            raise cluster.ClusterStateError(self.failure)
        return self._facts.catalogue


@contextlib.asynccontextmanager
async def in_process(
    webhook: starlette.applications.Starlette,
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``webhook`` run in-process (its lifespan included) via httpx.ASGITransport."""
    async with (
        webhook.router.lifespan_context(webhook),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=webhook), base_url="https://webhook.test"
        ) as http,
    ):
        yield http
