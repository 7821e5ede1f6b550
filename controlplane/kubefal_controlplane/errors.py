"""gRPC failures with a status code and a message that names the field or object at fault.

Handlers raise :class:`RpcFailure`; the service turns it into the call's status, so every
refusal reaches the client as the right code (``INVALID_ARGUMENT``, ``NOT_FOUND``...) with a
message a person can act on, and nothing unexpected leaks as a stack trace.
"""

from __future__ import annotations

import grpc


class RpcFailure(Exception):
    """End the call with ``code`` and ``message``."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid_argument(field: str, problem: str) -> RpcFailure:
    return RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {problem}")


def not_found(message: str) -> RpcFailure:
    return RpcFailure(grpc.StatusCode.NOT_FOUND, message)


def already_exists(message: str) -> RpcFailure:
    return RpcFailure(grpc.StatusCode.ALREADY_EXISTS, message)


def failed_precondition(message: str) -> RpcFailure:
    return RpcFailure(grpc.StatusCode.FAILED_PRECONDITION, message)


def unauthenticated(message: str) -> RpcFailure:
    return RpcFailure(grpc.StatusCode.UNAUTHENTICATED, message)


def resource_exhausted(message: str) -> RpcFailure:
    return RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def permission_denied(message: str) -> RpcFailure:
    return RpcFailure(grpc.StatusCode.PERMISSION_DENIED, message)


def unimplemented(fal_command: str, rpc: str) -> RpcFailure:
    return RpcFailure(
        grpc.StatusCode.UNIMPLEMENTED,
        f"`{fal_command}` is not supported by kubefal yet (IsolateController.{rpc})",
    )
