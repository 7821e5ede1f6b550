"""Domain errors of the gateway and their one mapping to HTTP.

Routes and the dispatcher raise these; `to_http` is the only place that turns an error into a
status code, headers and a JSON body, so every failure the fal client can see has one shape:
`{"detail": ..., "error_type": ...}` (docs/fal-compat.md, "Error and retry contract").
"""

from __future__ import annotations

import orjson


class GatewayError(Exception):
    """Base class: a failure with a fixed HTTP status and a fal `error_type`."""

    status: int = 500
    error_type: str | None = None

    def __init__(self, detail: str, *, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class BadRequest(GatewayError):
    status = 400
    error_type = "bad_request"


class MissingCredentials(GatewayError):
    status = 401
    error_type = "unauthorized"


class Forbidden(GatewayError):
    status = 403
    error_type = "forbidden"


class NotFound(GatewayError):
    status = 404
    error_type = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    error_type = "method_not_allowed"


class PayloadTooLarge(GatewayError):
    status = 413
    error_type = "payload_too_large"


class ResultTooLarge(GatewayError):
    """A runner's answer exceeds `--max-result-bytes`; it was not buffered past the limit."""

    status = 413
    error_type = "result_too_large"


class UriTooLong(GatewayError):
    status = 414
    error_type = "uri_too_long"


class HeadersTooLarge(GatewayError):
    """The headers a queued request would store exceed their per-job limit."""

    status = 431
    error_type = "headers_too_large"


class TooManyRequests(GatewayError):
    """A throttle or rate limit refused the request; `Retry-After` says when to come back.

    fal_client resends 429s with backoff, which is what a throttled caller should do."""

    status = 429
    error_type = "rate_limited"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, headers=((b"retry-after", str(max(1, retry_after)).encode()),))
        self.retry_after = max(1, retry_after)


class StillInProgress(GatewayError):
    status = 400
    error_type = "in_progress"


class QueueFull(GatewayError):
    """The app already has `--max-queued-per-app` queued requests; nothing was accepted, so the
    client may resend (fal_client retries 429) after `Retry-After` seconds."""

    status = 429
    error_type = "queue_full"

    def __init__(self, detail: str, *, retry_after: int = 1) -> None:
        super().__init__(detail, headers=((b"retry-after", str(retry_after).encode()),))


class QueueWaitTimeout(GatewayError):
    """The caller's `X-Fal-Request-Timeout` ran out before a runner took the request.

    The `X-Fal-Request-Timeout-Type` header tells fal_client not to retry (docs/fal-compat.md).
    """

    status = 504
    error_type = "request_timeout"

    def __init__(self, detail: str = "Request timed out waiting for a runner") -> None:
        super().__init__(detail, headers=((b"x-fal-request-timeout-type", b"user"),))


class RunnerTimeout(GatewayError):
    """The app's `requestTimeout` ran out while a runner was processing the request."""

    status = 504
    error_type = "request_timeout"

    def __init__(self, detail: str = "Request timed out on the runner") -> None:
        super().__init__(detail, headers=((b"x-fal-request-timeout-type", b"app"),))


class RunnerUnavailable(GatewayError):
    """Every attempt to reach a runner failed (connection errors, 503s) within the retry budget,
    or the queue store is down. Deliberately not 408/409/429: fal_client resends those, and a
    request that may have reached a runner or the store must not be sent twice."""

    status = 503
    error_type = "runner_unavailable"


def json_body(detail: object, error_type: str | None) -> bytes:
    """The fal error body."""
    if error_type is None:
        return orjson.dumps({"detail": detail})
    return orjson.dumps({"detail": detail, "error_type": error_type})


def to_http(error: GatewayError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Map a domain error to (status, headers, body): the one mapping function."""
    headers = [(b"content-type", b"application/json"), *error.headers]
    if error.error_type is not None:
        headers.append((b"x-fal-error-type", error.error_type.encode()))
    return error.status, headers, json_body(error.detail, error.error_type)


INTERNAL_ERROR_BODY = json_body("Internal gateway error", "internal_error")
