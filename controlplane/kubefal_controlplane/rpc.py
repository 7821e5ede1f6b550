"""What every ``IsolateController`` RPC of the control plane shares: authentication and the
mapping of failures onto gRPC statuses (the ``rpc``/``stream_rpc`` decorators), the servicer's
base class with the backend and the app/namespace resolution against the caller's key, and the
constants and helpers of more than one group of RPCs.

Why a module of its own: the RPCs are grouped by concern (:mod:`kubefal_controlplane.service`:
apps, runners and keys; :mod:`kubefal_controlplane.deploying`: ``fal deploy``;
:mod:`kubefal_controlplane.app_secrets`: ``fal secrets``), and this is what they have in common.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, TypeVar

import grpc
import isolate_proto
from google.protobuf import message
from isolate_proto.controller_pb2_grpc import IsolateControllerServicer
from kubernetes.client.exceptions import ApiException

from kubefal_api import v1alpha1
from kubefal_controlplane import auth, backend, errors, mapping
from kubefal_controlplane import settings as settings_module

logger = logging.getLogger(__name__)

ANNOTATION_CHANGED_BY: Final = f"{v1alpha1.GROUP}/last-changed-by"
"""On a FalApp: the API key id behind the last change made through the control plane."""
APP_SECRETS_NAME: Final = "kubefal-secrets"
"""The Secret holding a namespace's fal secrets (one key per secret)."""
CONFLICT_RETRIES: Final = 5


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


def api_failure(error: ApiException, what: str) -> errors.RpcFailure:
    try:
        message = json.loads(error.body or "{}").get("message") or error.reason
    except (ValueError, AttributeError):
        message = error.reason
    if error.status == 404:
        return errors.not_found(f"{what}: not found")
    if error.status == 409:
        return errors.RpcFailure(grpc.StatusCode.ABORTED, f"{what}: changed concurrently; retry")
    if error.status in (400, 422):
        return errors.RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {message}")
    if error.status == 403:
        logger.error("the control plane's ServiceAccount may not: %s (%s)", what, message)
        return errors.RpcFailure(
            grpc.StatusCode.INTERNAL,
            f"{what}: the control plane lacks the Kubernetes permission (see its log)",
        )
    logger.error("Kubernetes API error during %s: %s %s", what, error.status, message)
    return errors.RpcFailure(grpc.StatusCode.UNAVAILABLE, f"{what}: Kubernetes API error")


def failure_of(error: Exception, rpc: str) -> errors.RpcFailure:
    """The status an RPC ends with when ``error`` escapes it (the unexpected ones logged)."""
    if isinstance(error, errors.RpcFailure):
        return error
    if isinstance(error, ApiException):
        return api_failure(error, rpc)
    logger.exception("%s failed", rpc)
    return errors.RpcFailure(grpc.StatusCode.INTERNAL, f"{rpc} failed; see the control-plane log")


class Undecodable:
    """A request whose bytes are not its message (not protobuf, or a string field that is not
    UTF-8): what :class:`DecodeRequests` hands the RPC instead, which answers
    ``INVALID_ARGUMENT`` (grpc's own answer is ``INTERNAL`` and a logged traceback)."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


class DecodeRequests(grpc.ServerInterceptor):  # type: ignore[misc]
    """Every RPC's request deserializer, turning a protobuf ``DecodeError`` into
    :class:`Undecodable` for the RPC to refuse."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        deserialize = getattr(handler, "request_deserializer", None)
        if handler is None or deserialize is None or not hasattr(handler, "_replace"):
            return handler

        def decode(data: bytes) -> Any:
            try:
                return deserialize(data)
            except message.DecodeError as error:
                return Undecodable(str(error)[:500])

        replaced: grpc.RpcMethodHandler = handler._replace(request_deserializer=decode)
        return replaced


def _check_decoded(request: Any) -> None:
    if isinstance(request, Undecodable):
        raise errors.invalid_argument("request", request.problem)


Servicer = TypeVar("Servicer", bound="ControllerBase")


def rpc(
    method: Callable[[Servicer, Any, auth.Caller], Any],
) -> Callable[[Servicer, Any, grpc.ServicerContext], Any]:
    """Authenticate, run, and turn every failure into a status with a message."""

    @functools.wraps(method)
    def wrapper(self: Servicer, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            caller = self.authenticator.authenticate_call(
                context.invocation_metadata() or (), context.peer()
            )
            _check_decoded(request)
            return method(self, request, caller)
        except Exception as error:
            failure = failure_of(error, method.__name__)
        context.abort(failure.code, failure.message)

    return wrapper


def stream_rpc(
    method: Callable[[Servicer, Any, auth.Caller, grpc.ServicerContext], Iterator[Any]],
) -> Callable[[Servicer, Any, grpc.ServicerContext], Iterator[Any]]:
    """:func:`rpc` for server-streaming calls: failures end the stream with a status."""

    @functools.wraps(method)
    def wrapper(self: Servicer, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            caller = self.authenticator.authenticate_call(
                context.invocation_metadata() or (), context.peer()
            )
            _check_decoded(request)
            yield from method(self, request, caller, context)
            return
        except Exception as error:
            failure = failure_of(error, method.__name__)
        context.abort(failure.code, failure.message)

    return wrapper


def environment(request: Any) -> str | None:
    """The request's ``environment_name`` (kubefal: a namespace), ``None`` when unset."""
    return request.environment_name if request.HasField("environment_name") else None


def log(message: str, *, level: Any = isolate_proto.LogLevel.INFO) -> isolate_proto.Log:
    entry = isolate_proto.Log(message=message, source=isolate_proto.LogSource.BRIDGE, level=level)
    entry.timestamp.CopyFrom(isolate_proto.timestamp_from_datetime(utc_now()))
    return entry


def unimplemented(rpc: str, fal_command: str) -> Callable[..., Any]:
    def handler(self: ControllerBase, request: Any, context: grpc.ServicerContext) -> Any:
        failure = errors.unimplemented(fal_command, rpc)
        context.abort(failure.code, failure.message)

    handler.__name__ = rpc
    return handler


def involved(app: Mapping[str, Any]) -> dict[str, Any]:
    meta = app.get("metadata") or {}
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "name": meta.get("name"),
        "uid": meta.get("uid"),
    }


class ControllerBase(IsolateControllerServicer):
    """What every group of RPCs uses: the backend, the key check, the settings, and how a
    request's app and namespaces are resolved against the caller's key."""

    def __init__(
        self,
        *,
        cluster: backend.Backend,
        authenticator: auth.Authenticator,
        settings: settings_module.Settings,
    ) -> None:
        self.cluster = cluster
        self.authenticator = authenticator
        self.settings = settings
        self._deploys = threading.BoundedSemaphore(settings.deploy_slots)
        """One per ``fal deploy`` in progress (settings.max_deploys)."""

    # ---- helpers ---------------------------------------------------------------------------

    def _scope(self, caller: auth.Caller, environment_name: str | None) -> tuple[str, ...] | None:
        """Namespaces a call looks at: the environment's, else all the key may see."""
        namespace = mapping.environment_namespace(environment_name, field="environment_name")
        if namespace is not None:
            caller.require(namespace)
            return (namespace,)
        return None if caller.all_namespaces else caller.namespaces

    def _resolve(
        self, caller: auth.Caller, alias: str, environment_name: str | None, *, field: str
    ) -> dict[str, Any]:
        ref = mapping.parse_app_ref(alias, environment_name, field=field)
        if ref.namespace is not None:
            caller.require(ref.namespace)
            app = self.cluster.get_falapp(ref.namespace, ref.name)
            if app is None:
                raise errors.not_found(f"App {ref} not found")
            return app
        scope = None if caller.all_namespaces else caller.namespaces
        found = [
            app
            for app in self.cluster.find_falapps_named(ref.name, scope)
            if caller.allows(str(app["metadata"]["namespace"]))
        ]
        if not found:
            raise errors.not_found(
                f"App {ref.name!r} not found in the namespaces API key {caller.key_id} may see"
            )
        if len(found) > 1:
            ids = ", ".join(sorted(mapping.app_id(app) for app in found))
            raise errors.failed_precondition(
                f"{field}: {ref.name!r} is ambiguous ({ids}); name the app as <namespace>/<name>"
            )
        return found[0]

    def _visible_apps(
        self, caller: auth.Caller, scope: tuple[str, ...] | None
    ) -> list[dict[str, Any]]:
        """The FalApps in ``scope`` whose namespace the caller's key reaches."""
        return [
            app
            for app in self.cluster.list_falapps(scope)
            if caller.allows(str(app["metadata"]["namespace"]))
        ]

    def _secret_namespace(self, caller: auth.Caller, environment_name: str | None) -> str:
        namespace = mapping.environment_namespace(environment_name, field="environment_name")
        if namespace is None:
            if caller.all_namespaces or len(caller.namespaces) != 1:
                raise errors.failed_precondition(
                    f"environment_name: API key {caller.key_id} reaches several namespaces; "
                    "choose one with --env <namespace> (environment_name)"
                )
            namespace = caller.namespaces[0]
        caller.require(namespace)
        return namespace
