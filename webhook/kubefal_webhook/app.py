"""The webhook's HTTP surface: a Starlette app the API server calls with AdmissionReviews.

``create_app(settings)`` builds the app; its lifespan owns the Kubernetes client and puts
the :class:`Reviewer` on ``app.state``. Routes are
thin: ``POST /validate`` hands the body to :class:`Reviewer` (which knows nothing of HTTP)
and returns its AdmissionReview. ``GET /healthz`` says the process serves; ``GET /readyz``
says it can read the machine catalogue. Errors become HTTP responses in one place
(:func:`_error_response`): a body that is not an AdmissionReview gets 400 with a JSON
``detail``, never a 500, and a review whose facts cannot be read is denied with a 503 status
inside a well-formed AdmissionReview, so ``kubectl`` shows why.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

import anyio.to_thread
import kubernetes.client
import kubernetes.config
import starlette.applications
import starlette.exceptions
import starlette.requests
import starlette.responses
import starlette.routing

from kubefal_api import machines
from kubefal_webhook import cluster, settings, validation

logger = logging.getLogger(__name__)


class FactsSource(Protocol):
    """Where a review's cluster facts come from (:class:`cluster.ClusterReader` in production)."""

    def facts(self, references: validation.References) -> validation.ClusterFacts: ...

    def catalogue(self) -> machines.MachineCatalogue: ...


class RequestTooLargeError(ValueError):
    """The body is larger than ``Settings.max_body_bytes``."""


class Reviewer:
    """Turns an AdmissionReview body into the AdmissionReview answer (no HTTP in here)."""

    def __init__(self, source: FactsSource) -> None:
        self._source = source

    async def answer(self, body: bytes) -> dict[str, Any]:
        """The response document; raises :class:`validation.MalformedReviewError` on bad input."""
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            raise validation.MalformedReviewError(f"the body is not JSON: {error}") from None
        request = validation.parse_review(document)
        if not validation.needs_review(request):
            return validation.review_response(request, validation.Verdict(allowed=True))
        try:
            facts = await anyio.to_thread.run_sync(
                self._source.facts, validation.references(request)
            )
        except cluster.ClusterStateError as error:
            logger.warning("review %s undecided: %s", request.uid, error)
            return validation.unavailable_response(
                request.uid, f"the kubefal webhook cannot check this FalApp now: {error}"
            )
        verdict = validation.review(request, facts)
        if not verdict.allowed:
            logger.info(
                "denied %s %s/%s: %s",
                request.operation,
                request.namespace,
                request.name,
                verdict.message,
            )
        return validation.review_response(request, verdict)

    async def ready(self) -> None:
        """Raise :class:`cluster.ClusterStateError` when the catalogue cannot be read."""
        await anyio.to_thread.run_sync(self._source.catalogue)


def _reviewer(request: starlette.requests.Request) -> Reviewer:
    reviewer: Reviewer = request.app.state.reviewer
    return reviewer


async def _read_body(request: starlette.requests.Request, *, limit: int) -> bytes:
    """The body, refused as soon as it grows past ``limit`` bytes (never buffered whole)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestTooLargeError(f"the AdmissionReview is larger than {limit} bytes")
    return bytes(body)


async def validate(request: starlette.requests.Request) -> starlette.responses.Response:
    body = await _read_body(request, limit=request.app.state.max_body_bytes)
    return starlette.responses.JSONResponse(await _reviewer(request).answer(body))


async def healthz(request: starlette.requests.Request) -> starlette.responses.Response:
    return starlette.responses.JSONResponse({"status": "ok"})


async def readyz(request: starlette.requests.Request) -> starlette.responses.Response:
    await _reviewer(request).ready()
    return starlette.responses.JSONResponse({"status": "ready"})


_STATUS_BY_ERROR: dict[type[Exception], int] = {
    validation.MalformedReviewError: 400,
    RequestTooLargeError: 413,
    cluster.ClusterStateError: 503,
}


async def _error_response(
    request: starlette.requests.Request, error: Exception
) -> starlette.responses.Response:
    """Every error that reaches HTTP, as a status code and a JSON ``detail``."""
    if isinstance(error, starlette.exceptions.HTTPException):
        return starlette.responses.JSONResponse(
            {"detail": error.detail}, status_code=error.status_code, headers=error.headers
        )
    status = next((code for kind, code in _STATUS_BY_ERROR.items() if isinstance(error, kind)), 500)
    return starlette.responses.JSONResponse({"detail": str(error)}, status_code=status)


def _api_client(config: settings.Settings) -> kubernetes.client.ApiClient:
    """A client from --kubeconfig, else the pod's service account, else ~/.kube/config."""
    configuration = kubernetes.client.Configuration()
    if config.kubeconfig is None:
        try:
            kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
            return kubernetes.client.ApiClient(configuration)
        except kubernetes.config.ConfigException:
            pass
    kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=None if config.kubeconfig is None else str(config.kubeconfig),
        client_configuration=configuration,
    )
    return kubernetes.client.ApiClient(configuration)


def create_app(
    config: settings.Settings, *, source: FactsSource | None = None
) -> starlette.applications.Starlette:
    """The webhook app; ``source`` replaces the API server (unit tests), else the lifespan
    builds a :class:`cluster.ClusterReader` from ``config``."""

    @contextlib.asynccontextmanager
    async def lifespan(app: starlette.applications.Starlette) -> AsyncIterator[None]:
        if source is not None:
            app.state.reviewer = Reviewer(source)
            yield
            return
        api_client = _api_client(config)
        reader = cluster.ClusterReader(
            api_client,
            catalogue_namespace=config.catalogue_namespace,
            catalogue_name=config.catalogue_name,
            cache_seconds=config.cache_seconds,
            timeout_seconds=config.api_timeout_seconds,
        )
        app.state.reviewer = Reviewer(reader)
        try:
            yield
        finally:
            api_client.close()  # type: ignore[no-untyped-call]

    errors: list[type[Exception]] = [starlette.exceptions.HTTPException, *_STATUS_BY_ERROR]
    webhook = starlette.applications.Starlette(
        routes=[
            starlette.routing.Route("/validate", validate, methods=["POST"]),
            starlette.routing.Route("/healthz", healthz, methods=["GET"]),
            starlette.routing.Route("/readyz", readyz, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers=dict.fromkeys(errors, _error_response),
    )
    webhook.state.max_body_bytes = config.max_body_bytes
    return webhook
