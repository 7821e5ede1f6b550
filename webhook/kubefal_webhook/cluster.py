"""The one module of the webhook that talks to the Kubernetes API.

It gathers the :class:`kubefal_webhook.validation.ClusterFacts` a review needs: the machine
catalogue (its ConfigMap, or the built-in defaults when the ConfigMap is absent or invalid,
the operator's rule), which referenced ConfigMaps and Secrets exist, and the largest GPU count
a node offers per GPU product. The ``kubernetes`` client is synchronous: the app calls
:meth:`ClusterReader.facts` in a worker thread.

Existence checks read metadata only (``PartialObjectMetadata``): the webhook needs ``get`` on
Secrets but never holds their data. The catalogue and the node capacity change rarely and are
cached for a few seconds; when a refresh fails, the last good value is used. Node capacity is
advisory: if nodes cannot be listed the GPU rules are skipped rather than blocking admission.
Every failed call (a 404 of a referenced object is an answer, not a failure) is counted in
``kubefal_webhook_api_errors_total``, whether or not a cached value stood in for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, Final, Generic, TypeVar

import kubernetes.client
import kubernetes.client.exceptions
import pydantic
import urllib3.exceptions

from kubefal_api import machines
from kubefal_webhook import metrics, validation

T = TypeVar("T")

METADATA_ONLY: Final = {
    "Accept": "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
}
"""Ask the API server for an object's metadata only (no Secret data crosses the wire)."""

logger = logging.getLogger(__name__)

_TRANSPORT_ERRORS: Final = (urllib3.exceptions.HTTPError, OSError)


class ClusterStateError(RuntimeError):
    """The API server could not tell us what a review needs; the message says what failed."""


class TtlCache(Generic[T]):
    """Values by key, reused for ``ttl`` seconds; a failed refresh falls back to the last value."""

    def __init__(self, ttl: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[Hashable, tuple[float, T]] = {}

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        """The cached value for ``key``, loading it when missing or expired."""
        with self._lock:
            entry = self._entries.get(key)
        now = self._clock()
        if entry is not None and now < entry[0]:
            return entry[1]
        try:
            value = load()
        except ClusterStateError as error:
            if entry is None:
                raise
            logger.warning("using the last known value of %s: %s", key, error)
            return entry[1]
        with self._lock:
            self._entries[key] = (now + self._ttl, value)
        return value


class ClusterReader:
    """Reads the facts of a review from the API server (blocking calls: run in a thread)."""

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        *,
        catalogue_namespace: str,
        catalogue_name: str,
        cache_seconds: float,
        timeout_seconds: float,
        instruments: metrics.Metrics | None = None,
    ) -> None:
        self._core = kubernetes.client.CoreV1Api(api_client)
        self._metrics = metrics.Metrics() if instruments is None else instruments
        self._catalogue_namespace = catalogue_namespace
        self._catalogue_name = catalogue_name
        self._timeout = timeout_seconds
        self._catalogues: TtlCache[machines.MachineCatalogue] = TtlCache(cache_seconds)
        self._capacities: TtlCache[Mapping[str, int] | None] = TtlCache(cache_seconds)

    def facts(self, references: validation.References) -> validation.ClusterFacts:
        """Everything :func:`kubefal_webhook.validation.review` needs for one object."""
        catalogue = self.catalogue()
        return validation.ClusterFacts(
            catalogue=catalogue,
            config_maps=self._existing(
                kind="ConfigMap",
                read=self._core.read_namespaced_config_map,
                namespace=references.namespace,
                names=references.config_maps,
            ),
            secrets=self._existing(
                kind="Secret",
                read=self._core.read_namespaced_secret,
                namespace=references.namespace,
                names=references.secrets,
            ),
            gpus_per_node_by_product=self._capacities.get(
                ("gpu-capacity", catalogue.gpu_product_label, catalogue.gpu_resource),
                lambda: self._read_gpu_capacity(
                    label=catalogue.gpu_product_label, resource=catalogue.gpu_resource
                ),
            ),
        )

    def catalogue(self) -> machines.MachineCatalogue:
        """The machine catalogue, cached; raises :class:`ClusterStateError` if unreadable."""
        return self._catalogues.get("catalogue", self._read_catalogue)

    def _read_catalogue(self) -> machines.MachineCatalogue:
        where = f"{self._catalogue_namespace}/{self._catalogue_name}"
        try:
            config_map = self._core.read_namespaced_config_map(
                self._catalogue_name, self._catalogue_namespace, _request_timeout=self._timeout
            )
        except kubernetes.client.exceptions.ApiException as error:
            if error.status == 404:
                logger.info("machine catalogue ConfigMap %s not found: built-in defaults", where)
                return machines.default_catalogue()
            self._metrics.api_error("configmap", metrics.api_error_code(error.status))
            raise ClusterStateError(
                f"cannot read the machine catalogue ConfigMap {where}: {error.status} "
                f"{error.reason}"
            ) from error
        except _TRANSPORT_ERRORS as error:
            self._metrics.api_error("configmap", metrics.API_TRANSPORT)
            raise ClusterStateError(f"cannot reach the API server: {error}") from error
        try:
            return machines.load_from_configmap_data(config_map.data or {})
        except (KeyError, ValueError, pydantic.ValidationError) as error:
            logger.error(
                "machine catalogue %s is invalid, using built-in defaults: %s", where, error
            )
            return machines.default_catalogue()

    def _existing(
        self,
        *,
        kind: str,
        read: Callable[..., Any],
        namespace: str,
        names: Iterable[str],
    ) -> frozenset[str]:
        found = set()
        for name in sorted(names):
            try:
                response = read(
                    name,
                    namespace,
                    _preload_content=False,
                    _headers=METADATA_ONLY,
                    _request_timeout=self._timeout,
                )
            except kubernetes.client.exceptions.ApiException as error:
                if error.status == 404:
                    continue
                self._metrics.api_error(kind.lower(), metrics.api_error_code(error.status))
                raise ClusterStateError(
                    f"cannot check {kind} {namespace}/{name}: {error.status} {error.reason}"
                ) from error
            except _TRANSPORT_ERRORS as error:
                self._metrics.api_error(kind.lower(), metrics.API_TRANSPORT)
                raise ClusterStateError(f"cannot reach the API server: {error}") from error
            response.drain_conn()
            response.release_conn()
            found.add(name)
        return frozenset(found)

    def _read_gpu_capacity(self, *, label: str, resource: str) -> Mapping[str, int] | None:
        try:
            nodes = self._core.list_node(label_selector=label, _request_timeout=self._timeout)
        except (kubernetes.client.exceptions.ApiException, *_TRANSPORT_ERRORS) as error:
            code = (
                metrics.api_error_code(error.status)
                if isinstance(error, kubernetes.client.exceptions.ApiException)
                else metrics.API_TRANSPORT
            )
            self._metrics.api_error("node", code)
            logger.warning("cannot list GPU nodes, skipping the GPU capacity rules: %s", error)
            return None
        largest: dict[str, int] = {}
        for node in nodes.items:
            labels = (node.metadata.labels if node.metadata else None) or {}
            product = labels.get(label)
            allocatable = (node.status.allocatable if node.status else None) or {}
            if not product:
                continue
            try:
                gpus = int(machines.parse_quantity(allocatable.get(resource, "0")))
            except ValueError:
                gpus = 0
            largest[product] = max(largest.get(product, 0), gpus)
        return largest
