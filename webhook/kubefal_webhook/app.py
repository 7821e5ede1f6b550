"""The webhook's HTTP surface: a Starlette app the API server calls with AdmissionReviews.

``create_app(settings)`` builds the app; its lifespan owns the Kubernetes client and puts
the :class:`Reviewer` on ``app.state``. Routes are
thin: ``POST /validate`` hands the body to :class:`Reviewer` (which knows nothing of HTTP)
and returns its AdmissionReview. ``GET /healthz`` says the process serves; ``GET /readyz``
says it can read the machine catalogue. Errors become HTTP responses in one place
(:func:`_error_response`): a body that is not an AdmissionReview gets 400 with a JSON
``detail``, never a 500, and a review whose facts cannot be read is denied with a 503 status
inside a well-formed AdmissionReview, so ``kubectl`` shows why. Every answer, a 4xx
included, is counted in :class:`kubefal_webhook.metrics.Metrics` (served on a port of its own
by ``__main__``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
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
from kubefal_webhook import cluster, metrics, settings, validation

logger = logging.getLogger(__name__)


class FactsSource(Protocol):
    """Where a review's cluster facts come from (:class:`cluster.ClusterReader` in production)."""

    def facts(self, references: validation.References) -> validation.ClusterFacts: ...

    def catalogue(self) -> machines.MachineCatalogue: ...


class RequestTooLargeError(ValueError):
    """The body is larger than ``Settings.max_body_bytes``."""


def metric_kind(request: validation.AdmissionRequest) -> str:
    """The ``kind`` label of a review: FalApp or other (the caller's kind is never a label)."""
    if validation.is_falapp(request):
        return metrics.KIND_FALAPP
    return metrics.KIND_OTHER


class Reviewer:
    """Turns an AdmissionReview body into the AdmissionReview answer (no HTTP in here)."""

    def __init__(self, source: FactsSource, instruments: metrics.Metrics | None = None) -> None:
        self._source = source
        self._metrics = metrics.Metrics() if instruments is None else instruments

    async def answer(self, body: bytes, *, started: float | None = None) -> dict[str, Any]:
        """The response document; raises :class:`validation.MalformedReviewError` on bad input.

        Counts the answer, or the refusal, in the metrics; ``started`` is when the request
        arrived (a :func:`time.perf_counter` value; default: now)."""
        begun = time.perf_counter() if started is None else started
        try:
            request = _parse(body)
        except validation.MalformedReviewError:
            self._metrics.invalid_request(metrics.INVALID_MALFORMED, started=begun)
            raise
        kind, operation = metric_kind(request), request.operation.value
        result = metrics.RESULT_ERROR
        try:
            answer, result = await self._decide(request)
        finally:
            # An unexpected exception (a bug) is counted as an error before it propagates.
            self._metrics.reviewed(kind=kind, operation=operation, result=result, started=begun)
        return answer

    async def _decide(self, request: validation.AdmissionRequest) -> tuple[dict[str, Any], str]:
        """The response document and its ``result`` label."""
        if not validation.needs_review(request):
            allowed = validation.review_response(request, validation.Verdict(allowed=True))
            return allowed, metrics.RESULT_ALLOWED
        try:
            facts = await anyio.to_thread.run_sync(
                self._source.facts, validation.references(request)
            )
        except cluster.ClusterStateError as error:
            logger.warning("review %s undecided: %s", request.uid, error)
            unavailable = validation.unavailable_response(
                request.uid, f"the kubefal webhook cannot check this FalApp now: {error}"
            )
            return unavailable, metrics.RESULT_ERROR
        verdict = validation.review(request, facts)
        if not verdict.allowed:
            logger.info(
                "denied %s %s/%s: %s",
                request.operation,
                request.namespace,
                request.name,
                verdict.message,
            )
        result = metrics.RESULT_ALLOWED if verdict.allowed else metrics.RESULT_DENIED
        return validation.review_response(request, verdict), result

    def refused_too_large(self, *, started: float) -> None:
        """Count a body refused for its size before it was read whole."""
        self._metrics.invalid_request(metrics.INVALID_TOO_LARGE, started=started)

    async def ready(self) -> None:
        """Raise :class:`cluster.ClusterStateError` when the catalogue cannot be read."""
        await anyio.to_thread.run_sync(self._source.catalogue)


def _parse(body: bytes) -> validation.AdmissionRequest:
    """The AdmissionReview request in ``body``; :class:`validation.MalformedReviewError` if not.

    JSON nested deeper than Python's recursion limit is malformed too (``json.loads`` raises
    RecursionError on it, which would otherwise be a 500)."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise validation.MalformedReviewError(f"the body is not JSON: {error}") from None
    except RecursionError:
        raise validation.MalformedReviewError("the body is JSON nested too deeply") from None
    return validation.parse_review(document)


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
    started = time.perf_counter()
    reviewer = _reviewer(request)
    try:
        body = await _read_body(request, limit=request.app.state.max_body_bytes)
    except RequestTooLargeError:
        reviewer.refused_too_large(started=started)
        raise
    return starlette.responses.JSONResponse(await reviewer.answer(body, started=started))


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
    config: settings.Settings,
    *,
    source: FactsSource | None = None,
    instruments: metrics.Metrics | None = None,
) -> starlette.applications.Starlette:
    """The webhook app; ``source`` replaces the API server (unit tests), else the lifespan
    builds a :class:`cluster.ClusterReader` from ``config``. Counts go to ``instruments``
    (default: a registry of its own, on ``app.state.metrics``)."""
    counted = metrics.Metrics() if instruments is None else instruments

    @contextlib.asynccontextmanager
    async def lifespan(app: starlette.applications.Starlette) -> AsyncIterator[None]:
        if source is not None:
            app.state.reviewer = Reviewer(source, counted)
            yield
            return
        api_client = _api_client(config)
        reader = cluster.ClusterReader(
            api_client,
            catalogue_namespace=config.catalogue_namespace,
            catalogue_name=config.catalogue_name,
            cache_seconds=config.cache_seconds,
            timeout_seconds=config.api_timeout_seconds,
            instruments=counted,
        )
        app.state.reviewer = Reviewer(reader, counted)
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
    webhook.state.metrics = counted
    return webhook
