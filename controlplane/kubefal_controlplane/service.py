"""The ``IsolateController`` servicer: each fal RPC mapped onto the cluster.

Served: ``ListAliases`` (``fal apps list``), ``ListAliasRunners`` (``fal apps runners``),
``ListRunners`` (``fal runners list``), ``UpdateApplication`` (``fal apps scale``),
``DeleteAlias`` (``fal apps delete``), ``CreateUserKey`` / ``ListUserKeys`` / ``RevokeUserKey``
(``fal keys``), ``SetSecret`` / ``ListSecrets`` (``fal secrets``), ``StopRunner`` /
``KillRunner`` (``fal runners stop|kill``), ``RolloutApplication`` (``fal apps rollout``),
``ListApplications`` (``fal apps list-rev``, one
revision per app), ``BuildEnvironment`` and
``RegisterApplication`` (``fal deploy``, see :mod:`kubefal_controlplane.deploy`). Every other RPC
answers ``UNIMPLEMENTED`` naming the fal command that is not supported yet.

Every served call is authenticated first (:mod:`kubefal_controlplane.auth`), then checked
against the key's namespaces. Changes are merge patches with the object's resourceVersion
(a concurrent writer makes the call retry, never lose an update), and each change leaves an
Event naming the API key that made it.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from typing import Any, Final

import grpc
import isolate_proto
from isolate_proto.controller_pb2_grpc import IsolateControllerServicer
from kubernetes.client.exceptions import ApiException

from kubefal_api import apikeys, naming, v1alpha1
from kubefal_controlplane import app_files, auth, backend, deploy, errors, mapping
from kubefal_controlplane import settings as settings_module

logger = logging.getLogger(__name__)

ANNOTATION_CHANGED_BY: Final = f"{v1alpha1.GROUP}/last-changed-by"
"""On a FalApp: the API key id behind the last change made through the control plane."""
APP_SECRETS_NAME: Final = "kubefal-secrets"
"""The Secret holding a namespace's fal secrets (one key per secret)."""
LABEL_APP_SECRETS: Final = f"{v1alpha1.GROUP}/fal-secrets"
ANNOTATION_SECRET_TIMES: Final = f"{v1alpha1.GROUP}/secret-times"
"""On that Secret: JSON object, secret name -> RFC 3339 time it was last set."""
SECRET_NAME_PATTERN: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,252}$")
MAX_SECRET_VALUE_BYTES: Final = 256 * 1024
CONFLICT_RETRIES: Final = 5
RUNNER_ID_PATTERN: Final = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


UNIMPLEMENTED: Final[dict[str, str]] = {
    "Run": "fal run",
    "InteractiveRun": "fal run",
    "Map": "fal.function(...).map",
    "DeleteApplication": "fal apps delete-rev",
    "SetAlias": "fal apps set-rev",
    "ShellRunner": "fal runners shell",
    "ListEnvironments": "fal environments list",
    "CreateEnvironment": "fal environments create",
    "DeleteEnvironment": "fal environments delete",
}


def _now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


def _api_failure(error: ApiException, what: str) -> errors.RpcFailure:
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


def _failure(error: Exception, rpc: str) -> errors.RpcFailure:
    """The status an RPC ends with when ``error`` escapes it (the unexpected ones logged)."""
    if isinstance(error, errors.RpcFailure):
        return error
    if isinstance(error, ApiException):
        return _api_failure(error, rpc)
    logger.exception("%s failed", rpc)
    return errors.RpcFailure(grpc.StatusCode.INTERNAL, f"{rpc} failed; see the control-plane log")


def _rpc(
    method: Callable[[Controller, Any, auth.Caller], Any],
) -> Callable[[Controller, Any, grpc.ServicerContext], Any]:
    """Authenticate, run, and turn every failure into a status with a message."""

    @functools.wraps(method)
    def wrapper(self: Controller, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            caller = self.authenticator.authenticate(context.invocation_metadata() or ())
            return method(self, request, caller)
        except Exception as error:
            failure = _failure(error, method.__name__)
        context.abort(failure.code, failure.message)

    return wrapper


def _stream_rpc(
    method: Callable[[Controller, Any, auth.Caller, grpc.ServicerContext], Iterator[Any]],
) -> Callable[[Controller, Any, grpc.ServicerContext], Iterator[Any]]:
    """:func:`_rpc` for server-streaming calls: failures end the stream with a status."""

    @functools.wraps(method)
    def wrapper(self: Controller, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            caller = self.authenticator.authenticate(context.invocation_metadata() or ())
            yield from method(self, request, caller, context)
            return
        except Exception as error:
            failure = _failure(error, method.__name__)
        context.abort(failure.code, failure.message)

    return wrapper


class _Unfetched:
    """Marks "the gateway's runner details were not fetched yet" (None means unknown)."""


_UNFETCHED: Final = _Unfetched()


def _environment(request: Any) -> str | None:
    """The request's ``environment_name`` (kubefal: a namespace), ``None`` when unset."""
    return request.environment_name if request.HasField("environment_name") else None


BUILD_POD_WAIT_SECONDS: Final = 300.0
"""How long a deploy waits for a build Job's pod to start before it stops waiting for its
log (the first pull of the builder image takes a while)."""


def _log_readable(pod: Mapping[str, Any]) -> bool:
    """A build pod's container runs or ran: its log can be read."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        state = status.get("state") or {}
        if state.get("running") or state.get("terminated"):
            return True
    return False


def _log(message: str, *, level: Any = isolate_proto.LogLevel.INFO) -> isolate_proto.Log:
    entry = isolate_proto.Log(message=message, source=isolate_proto.LogSource.BRIDGE, level=level)
    entry.timestamp.CopyFrom(isolate_proto.timestamp_from_datetime(_now()))
    return entry


def _unimplemented(rpc: str, fal_command: str) -> Callable[..., Any]:
    def handler(self: Controller, request: Any, context: grpc.ServicerContext) -> Any:
        failure = errors.unimplemented(fal_command, rpc)
        context.abort(failure.code, failure.message)

    handler.__name__ = rpc
    return handler


class Controller(IsolateControllerServicer):
    """fal's control-plane API on top of a :class:`kubefal_controlplane.backend.Backend`: a
    cluster, or the one app of ``kubefal run``."""

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

    def _pods_by_app(
        self, scope: tuple[str, ...] | None
    ) -> dict[tuple[str, str], list[dict[str, Any]]]:
        grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for pod in self.cluster.list_runner_pods(scope):
            meta = pod.get("metadata") or {}
            key = (
                str(meta.get("namespace")),
                str((meta.get("labels") or {}).get(naming.LABEL_APP)),
            )
            grouped.setdefault(key, []).append(pod)
        return grouped

    def _alias_info(
        self, app: Mapping[str, Any], pods: list[dict[str, Any]]
    ) -> isolate_proto.AliasInfo | None:
        try:
            return mapping.alias_info(app, pods)
        except ValueError as error:
            logger.warning("FalApp %s does not parse, left out: %s", mapping.app_id(app), error)
            return None

    def _runner_infos(
        self,
        app: Mapping[str, Any] | None,
        pods: Iterable[Mapping[str, Any]],
        *,
        since: datetime.datetime | None,
        list_pending: bool,
        details: dict[str, mapping.RunnerDetail] | _Unfetched | None = _UNFETCHED,
    ) -> list[isolate_proto.RunnerInfo]:
        """``details``: the gateway's view of the app's runners when the caller fetched it
        already (None: the gateway's view is unknown); fetched here otherwise."""
        selected = [
            pod
            for pod in pods
            if mapping.runner_selected(pod, since=since, list_pending=list_pending)
        ]
        if not selected:
            return []
        if isinstance(details, _Unfetched):
            details = None
            if app is not None:
                meta = app.get("metadata") or {}
                details = self.cluster.runner_details(
                    namespace=str(meta.get("namespace")), name=str(meta.get("name"))
                )
        now = _now()
        known = details or {}
        return [
            mapping.runner_info(
                pod,
                app,
                known.get(str((pod.get("metadata") or {}).get("name"))),
                now=now,
                no_gateway=details is None,
            )
            for pod in selected
        ]

    @staticmethod
    def _since(request: Any) -> datetime.datetime | None:
        if not request.HasField("start_time"):
            return None
        started: datetime.datetime = isolate_proto.datetime_from_timestamp(request.start_time)
        return started.astimezone(datetime.UTC)

    # ---- apps ------------------------------------------------------------------------------

    @_rpc
    def ListAliases(
        self, request: isolate_proto.ListAliasesRequest, caller: auth.Caller
    ) -> isolate_proto.ListAliasesResult:
        scope = self._scope(caller, _environment(request))
        apps = self._visible_apps(caller, scope)
        pods = self._pods_by_app(scope)
        infos = []
        for app in sorted(apps, key=mapping.app_id):
            meta = app["metadata"]
            info = self._alias_info(app, pods.get((meta["namespace"], meta["name"]), []))
            if info is not None:
                infos.append(info)
        return isolate_proto.ListAliasesResult(aliases=infos)

    @_rpc
    def ListApplications(
        self, request: isolate_proto.ListApplicationsRequest, caller: auth.Caller
    ) -> isolate_proto.ListApplicationsResult:
        """``fal apps list-rev``: kubefal keeps one revision per app (its FalApp)."""
        env = _environment(request)
        if request.HasField("application_name") and request.application_name:
            app = self._resolve(caller, request.application_name, env, field="application_name")
            meta = app["metadata"]
            apps = [app]
            # that app's runner pods only, not every pod of its namespace
            pods = {
                (meta["namespace"], meta["name"]): self.cluster.list_runner_pods(
                    (meta["namespace"],), app_name=meta["name"]
                )
            }
        else:
            scope = self._scope(caller, env)
            apps = self._visible_apps(caller, scope)
            # the runner pods of the namespaces that hold the apps listed (never the cluster's)
            namespaces = tuple(sorted({str(app["metadata"]["namespace"]) for app in apps}))
            pods = self._pods_by_app(namespaces) if namespaces else {}
        infos = []
        for app in sorted(apps, key=mapping.app_id):
            meta = app["metadata"]
            try:
                infos.append(
                    mapping.application_info(app, pods.get((meta["namespace"], meta["name"]), []))
                )
            except ValueError as error:
                logger.warning("FalApp %s does not parse, left out: %s", mapping.app_id(app), error)
        return isolate_proto.ListApplicationsResult(applications=infos)

    @_rpc
    def ListAliasRunners(
        self, request: isolate_proto.ListAliasRunnersRequest, caller: auth.Caller
    ) -> isolate_proto.ListAliasRunnersResponse:
        env = _environment(request)
        app = self._resolve(caller, request.alias, env, field="alias")
        meta = app["metadata"]
        pods = self.cluster.list_runner_pods((meta["namespace"],), app_name=meta["name"])
        list_pending = request.list_pending if request.HasField("list_pending") else True
        runners = self._runner_infos(
            app, pods, since=self._since(request), list_pending=list_pending
        )
        return isolate_proto.ListAliasRunnersResponse(runners=runners)

    @_rpc
    def ListRunners(
        self, request: isolate_proto.ListRunnersRequest, caller: auth.Caller
    ) -> isolate_proto.ListRunnersResponse:
        scope = None if caller.all_namespaces else caller.namespaces
        apps = {
            (app["metadata"]["namespace"], app["metadata"]["name"]): app
            for app in self.cluster.list_falapps(scope)
        }
        list_pending = request.list_pending if request.HasField("list_pending") else True
        since = self._since(request)
        # One call to the gateway for every app's runners (not one per app).
        by_app = self.cluster.runner_details_by_app(scope)
        runners: list[isolate_proto.RunnerInfo] = []
        for key, pods in sorted(self._pods_by_app(scope).items()):
            if not caller.allows(key[0]):
                continue
            runners += self._runner_infos(
                apps.get(key),
                pods,
                since=since,
                list_pending=list_pending,
                details=None if by_app is None else by_app.get(f"{key[0]}/{key[1]}", {}),
            )
        return isolate_proto.ListRunnersResponse(runners=runners)

    @_rpc
    def UpdateApplication(
        self, request: isolate_proto.UpdateApplicationRequest, caller: auth.Caller
    ) -> isolate_proto.UpdateApplicationResult:
        env = _environment(request)
        app = self._resolve(caller, request.application_name, env, field="application_name")
        meta = app["metadata"]
        for attempt in range(CONFLICT_RETRIES):
            spec_patch = mapping.scale_patch(request, app.get("spec") or {})
            body = {
                "metadata": {
                    "resourceVersion": meta["resourceVersion"],
                    "annotations": {ANNOTATION_CHANGED_BY: caller.key_id},
                },
                "spec": spec_patch,
            }
            try:
                app = self.cluster.patch_falapp(meta["namespace"], meta["name"], body)
                break
            except ApiException as error:
                if error.status != 409 or attempt == CONFLICT_RETRIES - 1:
                    raise
                fresh = self.cluster.get_falapp(meta["namespace"], meta["name"])
                if fresh is None:
                    raise errors.not_found(f"App {mapping.app_id(app)} was deleted") from error
                app, meta = fresh, fresh["metadata"]
        self.cluster.record_event(
            namespace=meta["namespace"],
            involved=_involved(app),
            reason="Scaled",
            message=f"API key {caller.key_id} set {json.dumps(spec_patch, sort_keys=True)} "
            "through the fal API (fal apps scale)",
        )
        pods = self.cluster.list_runner_pods((meta["namespace"],), app_name=meta["name"])
        info = mapping.alias_info(app, pods)
        return isolate_proto.UpdateApplicationResult(alias_info=info)

    @_rpc
    def RolloutApplication(
        self, request: isolate_proto.RolloutApplicationRequest, caller: auth.Caller
    ) -> isolate_proto.RolloutApplicationResult:
        """``fal apps rollout``: replace the app's runners with its rollout strategy."""
        env = _environment(request)
        app = self._resolve(caller, request.application_name, env, field="application_name")
        meta = app["metadata"]
        now = _now().strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            self.cluster.restart_runners(meta["namespace"], meta["name"], at=now)
        except ApiException as error:
            if error.status == 404:
                raise errors.failed_precondition(
                    f"{mapping.app_id(app)} has no runner Deployment yet (is the operator running?)"
                ) from error
            raise
        self.cluster.record_event(
            namespace=meta["namespace"],
            involved=_involved(app),
            reason="RolloutRequested",
            message=f"API key {caller.key_id} asked to replace the runners (fal apps rollout)",
        )
        return isolate_proto.RolloutApplicationResult()

    @_rpc
    def DeleteAlias(
        self, request: isolate_proto.DeleteAliasRequest, caller: auth.Caller
    ) -> isolate_proto.DeleteAliasResult:
        env = _environment(request)
        app = self._resolve(caller, request.alias, env, field="alias")
        meta = app["metadata"]
        self.cluster.delete_falapp(meta["namespace"], meta["name"])
        self.cluster.record_event(
            namespace=meta["namespace"],
            involved=_involved(app),
            reason="Deleted",
            message=f"API key {caller.key_id} deleted the app through the fal API "
            "(fal apps delete)",
        )
        return isolate_proto.DeleteAliasResult(revision=mapping.revision(app))

    # ---- runners ---------------------------------------------------------------------------

    def _runner_pod(self, caller: auth.Caller, runner_id: str) -> dict[str, Any]:
        if not RUNNER_ID_PATTERN.fullmatch(runner_id):
            raise errors.invalid_argument(
                "runner_id", "a runner id is a runner pod's name (fal runners list shows them)"
            )
        scope = None if caller.all_namespaces else caller.namespaces
        found = [
            pod
            for pod in self.cluster.find_runner_pods(runner_id, scope)
            if caller.allows(str(pod["metadata"]["namespace"]))
        ]
        if not found:
            raise errors.not_found(
                f"runner {runner_id} not found in the namespaces API key {caller.key_id} may see"
            )
        if len(found) > 1:
            raise errors.failed_precondition(
                f"runner_id: {runner_id} names runners in several namespaces; use a key scoped "
                "to one of them"
            )
        return found[0]

    def _remove_runner(
        self,
        caller: auth.Caller,
        runner_id: str,
        *,
        grace_seconds: int | None,
        verb: str,
        past: str,
    ) -> None:
        pod = self._runner_pod(caller, runner_id)
        meta = pod["metadata"]
        self.cluster.delete_pod(meta["namespace"], meta["name"], grace_seconds=grace_seconds)
        self.cluster.record_event(
            namespace=meta["namespace"],
            involved={"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
            reason=f"Runner{past.capitalize()}",
            message=f"API key {caller.key_id} {past} runner {meta['name']} (fal runners {verb})",
        )

    @_rpc
    def StopRunner(
        self, request: isolate_proto.StopRunnerRequest, caller: auth.Caller
    ) -> isolate_proto.StopRunnerResponse:
        """Delete the runner's pod gracefully: it drains its requests within its grace period,
        and its Deployment starts a replacement at once if the app still wants the runner (so
        ``--replace`` needs nothing more)."""
        self._remove_runner(
            caller, request.runner_id, grace_seconds=None, verb="stop", past="stopped"
        )
        return isolate_proto.StopRunnerResponse()

    @_rpc
    def KillRunner(
        self, request: isolate_proto.KillRunnerRequest, caller: auth.Caller
    ) -> isolate_proto.KillRunnerResponse:
        """Delete the runner's pod with no grace period."""
        self._remove_runner(caller, request.runner_id, grace_seconds=0, verb="kill", past="killed")
        return isolate_proto.KillRunnerResponse()

    # ---- keys ------------------------------------------------------------------------------

    @staticmethod
    def _key_within(record: apikeys.KeyRecord, caller: auth.Caller) -> bool:
        return caller.all_namespaces or (
            not record.all_namespaces and set(record.namespaces) <= set(caller.namespaces)
        )

    @_rpc
    def CreateUserKey(
        self, request: isolate_proto.CreateUserKeyRequest, caller: auth.Caller
    ) -> isolate_proto.CreateUserKeyResponse:
        if request.HasField("policy"):
            raise errors.invalid_argument(
                "policy",
                "kubefal keys have no per-permission policies; create a FULL key "
                "(fal keys create --scope ADMIN), limited to your key's namespaces",
            )
        if request.HasField("policy_preset"):
            preset = request.policy_preset
        elif request.HasField("scope") and request.scope == request.Scope.API:
            preset = "API"
        else:
            preset = "FULL"
        if preset != "FULL":
            raise errors.invalid_argument(
                "policy_preset",
                f"{preset!r}: kubefal keys cannot be limited to calling apps yet; every key "
                "may manage the apps of its namespaces, so only FULL (--scope ADMIN) is offered",
            )
        description = request.alias if request.HasField("alias") else ""
        if len(description) > apikeys.MAX_DESCRIPTION_LENGTH:
            raise errors.invalid_argument(
                "alias", f"longer than {apikeys.MAX_DESCRIPTION_LENGTH} characters"
            )
        key = apikeys.generate_key()
        record = apikeys.new_record(
            key=key,
            namespaces=caller.namespaces,
            description=description or f"created by {caller.key_id} with fal keys create",
        )
        self.cluster.create_key_secret(record)
        logger.info("key %s created by key %s for %s", key.id, caller.key_id, record.namespaces)
        return isolate_proto.CreateUserKeyResponse(key_id=key.id, key_secret=key.secret)

    @_rpc
    def ListUserKeys(
        self, request: isolate_proto.ListUserKeysRequest, caller: auth.Caller
    ) -> isolate_proto.ListUserKeysResponse:
        keys = [
            isolate_proto.UserKeyInfo(
                key_id=record.id,
                created_at=isolate_proto.timestamp_from_datetime(record.created),
                scope=isolate_proto.CreateUserKeyRequest.Scope.ADMIN,
                alias=record.description,
            )
            for record in sorted(self.cluster.list_key_records(), key=lambda r: (r.created, r.id))
            if not record.revoked and self._key_within(record, caller)
        ]
        return isolate_proto.ListUserKeysResponse(user_keys=keys)

    @_rpc
    def RevokeUserKey(
        self, request: isolate_proto.RevokeUserKeyRequest, caller: auth.Caller
    ) -> isolate_proto.RevokeUserKeyResponse:
        if not apikeys.is_valid_key_id(request.key_id):
            raise errors.invalid_argument(
                "key_id", "a kubefal key id is 'kf' followed by 16 lowercase hex characters"
            )
        record = self.cluster.read_key_record(request.key_id)
        if record is None:
            raise errors.not_found(f"key {request.key_id} not found")
        if not self._key_within(record, caller):
            raise errors.permission_denied(
                f"API key {caller.key_id} may not revoke key {record.id}: it reaches namespaces "
                "outside this key's"
            )
        self.cluster.revoke_key(record.id)
        logger.info("key %s revoked by key %s", record.id, caller.key_id)
        return isolate_proto.RevokeUserKeyResponse()

    # ---- deploy ----------------------------------------------------------------------------

    @_stream_rpc
    def BuildEnvironment(
        self,
        request: isolate_proto.BuildEnvironmentRequest,
        caller: auth.Caller,
        context: grpc.ServicerContext,
    ) -> Iterator[isolate_proto.BuildEnvironmentResult]:
        self.cluster.refuse_deploy()
        env = _environment(request)
        self._secret_namespace(caller, env)
        # request.files are the app_files fal uploaded; RegisterApplication carries them.
        layers = deploy.requirement_layers(list(request.environments))
        env_id = hashlib.sha256(
            b"".join(e.SerializeToString(deterministic=True) for e in request.environments)
        ).hexdigest()
        if len(layers) > 1:
            note = (
                f"kubefal installs these requirements in {len(layers)} layers, in order, in "
                f"each runner as it starts (each layer cached on its own): {layers}"
            )
        elif layers:
            note = f"kubefal installs these requirements in each runner as it starts: {layers[0]}"
        else:
            note = "no requirements beyond kubefal's runner image"
        yield isolate_proto.BuildEnvironmentResult(
            env_id=env_id,
            logs=[_log(note)],
            status=isolate_proto.HostedRunStatus(state=isolate_proto.HostedRunStatus.State.SUCCESS),
        )

    @_stream_rpc
    def RegisterApplication(
        self,
        request: isolate_proto.RegisterApplicationRequest,
        caller: auth.Caller,
        context: grpc.ServicerContext,
    ) -> Iterator[isolate_proto.RegisterApplicationResult]:
        self.cluster.refuse_deploy()
        # A deploy holds its worker thread until the runners are ready: bounded, so a burst of
        # deploys cannot take every worker from the other calls.
        if not self._deploys.acquire(blocking=False):
            raise errors.RpcFailure(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.settings.deploy_slots} fal deploy calls are in progress on this control "
                "plane (--max-deploys); try again when one has finished",
            )
        try:
            yield from self._register(request, caller, context)
        finally:
            self._deploys.release()

    def _register(
        self,
        request: isolate_proto.RegisterApplicationRequest,
        caller: auth.Caller,
        context: grpc.ServicerContext,
    ) -> Iterator[isolate_proto.RegisterApplicationResult]:
        env = _environment(request)
        if not request.application_name:
            raise errors.invalid_argument(
                "application_name", "required: name the app (fal deploy --app-name NAME)"
            )
        ref = mapping.parse_app_ref(request.application_name, env, field="application_name")
        if ref.namespace is not None:
            caller.require(ref.namespace)
            namespace = ref.namespace
        else:
            namespace = self._secret_namespace(caller, env)
        name = ref.name
        if request.HasField("entrypoint"):
            raise errors.failed_precondition(
                "entrypoint: kubefal deploys an app from its source file; deploy "
                "path/to/app.py::MyApp"
            )
        if not request.source_code:
            raise errors.invalid_argument(
                "source_code", "required: kubefal deploys the app's source, never its pickle"
            )
        class_name = deploy.choose_class(request.source_code, request.function.definition)
        modules = deploy.local_modules(request.source_code, class_name)
        carried_files: dict[str, bytes] = {}
        if request.files:
            carried_files = app_files.fetch(
                self.settings,
                [(file.relative_path, file.hash) for file in request.files],
                authorization=app_files.caller_authorization(context.invocation_metadata() or ()),
            )
        existing = self.cluster.get_falapp(namespace, name)
        sources = deploy.source_objects(
            namespace=namespace,
            app_name=name,
            source=request.source_code,
            function=request.function.definition,
            modules=modules,
            python=deploy.client_python(list(request.environments)),
            app_files=carried_files,
            app_dir=deploy.app_files_dir(request.function.definition) if carried_files else ".",
        )
        spec = deploy.falapp_spec(
            request,
            class_name=class_name,
            source=sources.spec_source,
            existing=existing,
            secrets_name=APP_SECRETS_NAME,
            app_path=sources.app_path,
        )
        image = deploy.container_image(list(request.environments))
        if image is not None and image.secrets:
            spec["containerImage"]["secretRef"] = {"name": deploy.build_secret_name(name)}
        verb = "Updating" if existing is not None else "Creating"
        yield isolate_proto.RegisterApplicationResult(
            logs=[_log(f"{verb} FalApp {namespace}/{name} serving {spec['app']}")]
        )
        if carried_files:
            yield isolate_proto.RegisterApplicationResult(
                logs=[
                    _log(
                        f"Carrying {len(carried_files)} app_files "
                        f"({sum(len(data) for data in carried_files.values())} bytes) in "
                        f"{len(sources.config_maps)} ConfigMap(s); the app file is at "
                        f"/app/{sources.app_path}"
                    )
                ]
            )
        if modules:
            yield isolate_proto.RegisterApplicationResult(
                logs=[
                    _log(
                        f"Carrying local_python_modules {', '.join(modules)} in the pickled "
                        f"function ({len(request.function.definition)} bytes); the runner loads "
                        "them, the control plane never does"
                    )
                ]
            )
        for config_map in sources.config_maps:
            self.cluster.ensure_config_map(namespace, config_map)
        app = self._write_app(namespace, name, spec, existing, caller)
        for config_map in sources.config_maps:
            self.cluster.adopt_config_map(namespace, config_map["metadata"]["name"], app)
        if image is not None and image.secrets:
            self._write_build_secret(namespace, name, image.secrets, app)
        self.cluster.record_event(
            namespace=namespace,
            involved=_involved(app),
            reason="Deployed",
            message=f"API key {caller.key_id} deployed {spec['app']} through the fal API "
            "(fal deploy)",
        )
        app = yield from self._wait_ready(app, context)
        # Every runner now mounts the new source; earlier sources only take up space.
        self.cluster.delete_config_maps(
            namespace, label_selector=sources.stale_selector(name), keep=""
        )
        yield isolate_proto.RegisterApplicationResult(
            logs=[_log(f"{namespace}/{name} is ready")],
            result=isolate_proto.RegisterApplicationResultType(
                application_id=mapping.revision(app)
            ),
            service_urls=_service_urls(self.settings, app),
        )

    def _write_app(
        self,
        namespace: str,
        name: str,
        spec: dict[str, Any],
        existing: dict[str, Any] | None,
        caller: auth.Caller,
    ) -> dict[str, Any]:
        annotations = {ANNOTATION_CHANGED_BY: caller.key_id}
        if existing is None:
            return self.cluster.create_falapp(
                namespace,
                {
                    "apiVersion": v1alpha1.API_VERSION,
                    "kind": v1alpha1.KIND,
                    "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
                    "spec": spec,
                },
            )
        for attempt in range(CONFLICT_RETRIES):
            body = dict(existing)
            body["metadata"] = {
                **existing["metadata"],
                "annotations": {**(existing["metadata"].get("annotations") or {}), **annotations},
            }
            body["spec"] = spec
            body.pop("status", None)
            try:
                return self.cluster.replace_falapp(namespace, name, body)
            except ApiException as error:
                if error.status != 409 or attempt == CONFLICT_RETRIES - 1:
                    raise
                fresh = self.cluster.get_falapp(namespace, name)
                if fresh is None:
                    raise errors.RpcFailure(
                        grpc.StatusCode.ABORTED, f"{namespace}/{name} was deleted during deploy"
                    ) from error
                existing = fresh
        raise AssertionError("unreachable")

    def _write_build_secret(
        self, namespace: str, name: str, secrets: Mapping[str, str], app: Mapping[str, Any]
    ) -> None:
        """The fal.ContainerImage's build secrets, in a Secret owned by the FalApp (the build
        Job mounts it; docs/packaging.md)."""
        secret_name = deploy.build_secret_name(name)
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": secret_name,
                "namespace": namespace,
                "labels": {"kubefal.io/build-of": name},
                "ownerReferences": [
                    {
                        "apiVersion": v1alpha1.API_VERSION,
                        "kind": v1alpha1.KIND,
                        "name": name,
                        "uid": app["metadata"]["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "type": "Opaque",
            "data": {
                key: base64.b64encode(value.encode()).decode() for key, value in secrets.items()
            },
        }
        current = self.cluster.get_secret(namespace, secret_name)
        if current is None:
            self.cluster.create_secret(namespace, body)
            return
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        self.cluster.replace_secret(namespace, secret_name, body)

    def _build_logs(
        self, namespace: str, job: str, context: grpc.ServicerContext
    ) -> Iterator[isolate_proto.RegisterApplicationResult]:
        """The build Job's log as deploy logs, line by line, until the build ends."""
        deadline = time.monotonic() + BUILD_POD_WAIT_SECONDS
        pod: dict[str, Any] | None = None
        while context.is_active() and time.monotonic() < deadline:
            pods = self.cluster.build_pods(namespace, job)
            pod = next((p for p in pods if _log_readable(p)), None)
            if pod is not None:
                break
            time.sleep(0.5)
        if pod is None:
            return
        yield isolate_proto.RegisterApplicationResult(
            logs=[_log(f"Building the app's image in Job {namespace}/{job}:")]
        )
        stream = self.cluster.follow_build_log(namespace, pod["metadata"]["name"])
        try:
            pending = b""
            for chunk in stream.stream(4096):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                if lines:
                    yield isolate_proto.RegisterApplicationResult(
                        logs=[_log(line.decode("utf-8", "replace")) for line in lines]
                    )
                if not context.is_active():
                    return
            if pending:
                yield isolate_proto.RegisterApplicationResult(
                    logs=[_log(pending.decode("utf-8", "replace"))]
                )
        finally:
            stream.release_conn()

    def _wait_ready(
        self, app: dict[str, Any], context: grpc.ServicerContext
    ) -> Generator[isolate_proto.RegisterApplicationResult, None, dict[str, Any]]:
        """Report the operator's progress until the app is ready (or failed, or timed out)."""
        meta = app["metadata"]
        namespace, name, generation = meta["namespace"], meta["name"], meta.get("generation", 0)
        deadline = time.monotonic() + self.settings.deploy_timeout
        reported = ""
        followed: set[str] = set()
        while context.is_active():
            current = self.cluster.get_falapp(namespace, name)
            if current is None:
                raise errors.RpcFailure(
                    grpc.StatusCode.ABORTED, f"{namespace}/{name} was deleted during deploy"
                )
            status = current.get("status") or {}
            phase = str(status.get("phase") or "Pending")
            observed = status.get("observedGeneration") or 0
            conditions = {c.get("type"): c for c in status.get("conditions") or []}
            build = status.get("build") or {}
            if build and int(build.get("observedGeneration") or 0) >= generation:
                job = str(build.get("job") or "")
                if build.get("phase") == v1alpha1.BuildPhase.FAILED:
                    raise errors.failed_precondition(
                        f"the image of {namespace}/{name} could not be built: "
                        f"{build.get('message', '')}"
                    )
                if build.get("phase") == v1alpha1.BuildPhase.BUILDING and job not in followed:
                    followed.add(job)
                    yield from self._build_logs(namespace, job, context)
                    deadline = time.monotonic() + self.settings.deploy_timeout
                    continue
                if build.get("phase") == v1alpha1.BuildPhase.CACHED and "" not in followed:
                    followed.add("")
                    yield isolate_proto.RegisterApplicationResult(
                        logs=[_log(f"image {build.get('image')}: already built (cache hit)")]
                    )
            if observed >= generation:
                if phase in (v1alpha1.Phase.READY, v1alpha1.Phase.SCALED_TO_ZERO):
                    return current
                if phase == v1alpha1.Phase.DEGRADED:
                    reason = conditions.get("Degraded") or {}
                    raise errors.failed_precondition(
                        f"deploy of {namespace}/{name} failed: {reason.get('reason', phase)}: "
                        f"{reason.get('message', '')} (the previous revision keeps serving)"
                    )
            if phase != reported:
                reported = phase
                yield isolate_proto.RegisterApplicationResult(
                    logs=[_log(f"{namespace}/{name}: {phase}")]
                )
            if time.monotonic() > deadline:
                raise errors.RpcFailure(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"{namespace}/{name} was not ready within {self.settings.deploy_timeout:.0f} s "
                    f"(phase {phase}); the FalApp is applied: kubectl describe falapp {name} "
                    f"-n {namespace}",
                )
            time.sleep(0.5)
        raise errors.RpcFailure(grpc.StatusCode.CANCELLED, "the client went away")

    # ---- secrets ---------------------------------------------------------------------------

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

    @_rpc
    def SetSecret(
        self, request: isolate_proto.SetSecretRequest, caller: auth.Caller
    ) -> isolate_proto.SetSecretResponse:
        if not SECRET_NAME_PATTERN.fullmatch(request.name):
            raise errors.invalid_argument(
                "name",
                f"{request.name[:64]!r} is not an environment variable name "
                "(letters, digits and '_', not starting with a digit, at most 253 characters)",
            )
        value = request.value if request.HasField("value") else None
        if value is not None and len(value.encode("utf-8")) > MAX_SECRET_VALUE_BYTES:
            raise errors.invalid_argument("value", f"larger than {MAX_SECRET_VALUE_BYTES} bytes")
        env = _environment(request)
        namespace = self._secret_namespace(caller, env)
        for attempt in range(CONFLICT_RETRIES):
            try:
                self._write_secret(namespace, request.name, value)
                break
            except ApiException as error:
                if error.status != 409 or attempt == CONFLICT_RETRIES - 1:
                    raise
        verb = "set" if value is not None else "unset"
        self.cluster.record_event(
            namespace=namespace,
            involved={"apiVersion": "v1", "kind": "Secret", "name": APP_SECRETS_NAME},
            reason="SecretSet" if value is not None else "SecretUnset",
            message=f"API key {caller.key_id} {verb} secret {request.name} (fal secrets {verb})",
        )
        return isolate_proto.SetSecretResponse()

    def _write_secret(self, namespace: str, name: str, value: str | None) -> None:
        secret = self.cluster.get_secret(namespace, APP_SECRETS_NAME)
        now = _now().strftime("%Y-%m-%dT%H:%M:%SZ")
        if secret is None:
            if value is None:
                raise errors.not_found(f"secret {name} not found in namespace {namespace!r}")
            self.cluster.create_secret(
                namespace,
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "type": "Opaque",
                    "metadata": {
                        "name": APP_SECRETS_NAME,
                        "namespace": namespace,
                        "labels": {
                            LABEL_APP_SECRETS: "true",
                            naming.LABEL_MANAGED_BY: naming.MANAGED_BY,
                        },
                        "annotations": {ANNOTATION_SECRET_TIMES: json.dumps({name: now})},
                    },
                    "data": {name: base64.b64encode(value.encode()).decode()},
                },
            )
            return
        data = dict(secret.get("data") or {})
        meta = secret["metadata"]
        annotations = dict(meta.get("annotations") or {})
        times = _secret_times(annotations)
        if value is None:
            if name not in data:
                raise errors.not_found(f"secret {name} not found in namespace {namespace!r}")
            data.pop(name)
            times.pop(name, None)
        else:
            data[name] = base64.b64encode(value.encode()).decode()
            times[name] = now
        annotations[ANNOTATION_SECRET_TIMES] = json.dumps(times, sort_keys=True)
        secret["data"] = data
        meta["annotations"] = annotations
        self.cluster.replace_secret(namespace, APP_SECRETS_NAME, secret)

    @_rpc
    def ListSecrets(
        self, request: isolate_proto.ListSecretsRequest, caller: auth.Caller
    ) -> isolate_proto.ListSecretsResponse:
        env = _environment(request)
        scope = self._scope(caller, env)
        namespaces = scope if scope is not None else self._secret_namespaces_everywhere()
        listed: list[isolate_proto.Secret] = []
        for namespace in sorted(namespaces):
            if not caller.allows(namespace):
                continue
            secret = self.cluster.get_secret(namespace, APP_SECRETS_NAME)
            if secret is None:
                continue
            times = _secret_times((secret.get("metadata") or {}).get("annotations") or {})
            for name in sorted(secret.get("data") or {}):
                entry = isolate_proto.Secret(name=name, environment_name=namespace)
                created = mapping.timestamp(times.get(name))
                if created is not None:
                    entry.created_time.CopyFrom(isolate_proto.timestamp_from_datetime(created))
                listed.append(entry)
        return isolate_proto.ListSecretsResponse(secrets=listed)

    def _secret_namespaces_everywhere(self) -> tuple[str, ...]:
        # Every namespace, not a cluster-wide list of Secrets: listing Secrets would need the
        # right to read every Secret of the cluster; ListSecrets reads only kubefal-secrets.
        return self.cluster.list_namespace_names()


def _service_urls(
    settings: settings_module.Settings, app: Mapping[str, Any]
) -> isolate_proto.ServiceURLs:
    meta = app.get("metadata") or {}
    path = f"/{meta.get('namespace')}/{meta.get('name')}"
    endpoints = ((app.get("status") or {}).get("endpoints")) or {}
    run = f"{settings.public_run_url.rstrip('/')}{path}" if settings.public_run_url else ""
    queue = f"{settings.public_queue_url.rstrip('/')}{path}" if settings.public_queue_url else ""
    run = run or str(endpoints.get("run") or "")
    queue = queue or str(endpoints.get("queue") or "")
    websocket = run.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    return isolate_proto.ServiceURLs(playground=run, run=run, queue=queue, ws=websocket, log="")


def _secret_times(annotations: Mapping[str, str]) -> dict[str, str]:
    try:
        times = json.loads(annotations.get(ANNOTATION_SECRET_TIMES, "{}"))
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in times.items()} if isinstance(times, dict) else {}


def _involved(app: Mapping[str, Any]) -> dict[str, Any]:
    meta = app.get("metadata") or {}
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "name": meta.get("name"),
        "uid": meta.get("uid"),
    }


for _rpc_name, _fal_command in UNIMPLEMENTED.items():
    setattr(Controller, _rpc_name, _unimplemented(_rpc_name, _fal_command))
