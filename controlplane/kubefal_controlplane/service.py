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

The RPCs are grouped by concern: this module holds the apps, runners and keys RPCs;
``fal deploy`` is :mod:`kubefal_controlplane.deploying`, ``fal secrets``
:mod:`kubefal_controlplane.app_secrets`, and what they share (authentication, statuses, the
base class) :mod:`kubefal_controlplane.rpc`.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import isolate_proto
from kubernetes.client.exceptions import ApiException

from kubefal_api import apikeys, naming
from kubefal_controlplane import app_secrets, auth, deploying, errors, mapping
from kubefal_controlplane.rpc import (
    ANNOTATION_CHANGED_BY,
    APP_SECRETS_NAME,
    CONFLICT_RETRIES,
    environment,
    involved,
    rpc,
    unimplemented,
    utc_now,
)

__all__ = ["ANNOTATION_CHANGED_BY", "APP_SECRETS_NAME", "Controller"]

logger = logging.getLogger(__name__)

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


class _Unfetched:
    """Marks "the gateway's runner details were not fetched yet" (None means unknown)."""


_UNFETCHED: Final = _Unfetched()


class Controller(deploying.DeployRpcs, app_secrets.SecretsRpcs):
    """fal's control-plane API on top of a :class:`kubefal_controlplane.backend.Backend`: a
    cluster, or the one app of ``kubefal run``."""

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
        now = utc_now()
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

    # ---- apps ------------------------------------------------------------------------------

    @rpc
    def ListAliases(
        self, request: isolate_proto.ListAliasesRequest, caller: auth.Caller
    ) -> isolate_proto.ListAliasesResult:
        scope = self._scope(caller, environment(request))
        apps = self._visible_apps(caller, scope)
        pods = self._pods_by_app(scope)
        infos = []
        for app in sorted(apps, key=mapping.app_id):
            meta = app["metadata"]
            info = self._alias_info(app, pods.get((meta["namespace"], meta["name"]), []))
            if info is not None:
                infos.append(info)
        return isolate_proto.ListAliasesResult(aliases=infos)

    @rpc
    def ListApplications(
        self, request: isolate_proto.ListApplicationsRequest, caller: auth.Caller
    ) -> isolate_proto.ListApplicationsResult:
        """``fal apps list-rev``: kubefal keeps one revision per app (its FalApp)."""
        env = environment(request)
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

    @rpc
    def ListAliasRunners(
        self, request: isolate_proto.ListAliasRunnersRequest, caller: auth.Caller
    ) -> isolate_proto.ListAliasRunnersResponse:
        env = environment(request)
        app = self._resolve(caller, request.alias, env, field="alias")
        meta = app["metadata"]
        pods = self.cluster.list_runner_pods((meta["namespace"],), app_name=meta["name"])
        list_pending = request.list_pending if request.HasField("list_pending") else True
        runners = self._runner_infos(
            app, pods, since=mapping.runners_since(request), list_pending=list_pending
        )
        return isolate_proto.ListAliasRunnersResponse(runners=runners)

    @rpc
    def ListRunners(
        self, request: isolate_proto.ListRunnersRequest, caller: auth.Caller
    ) -> isolate_proto.ListRunnersResponse:
        scope = None if caller.all_namespaces else caller.namespaces
        apps = {
            (app["metadata"]["namespace"], app["metadata"]["name"]): app
            for app in self.cluster.list_falapps(scope)
        }
        list_pending = request.list_pending if request.HasField("list_pending") else True
        since = mapping.runners_since(request)
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

    @rpc
    def UpdateApplication(
        self, request: isolate_proto.UpdateApplicationRequest, caller: auth.Caller
    ) -> isolate_proto.UpdateApplicationResult:
        env = environment(request)
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
            involved=involved(app),
            reason="Scaled",
            message=f"API key {caller.key_id} set {json.dumps(spec_patch, sort_keys=True)} "
            "through the fal API (fal apps scale)",
        )
        pods = self.cluster.list_runner_pods((meta["namespace"],), app_name=meta["name"])
        info = mapping.alias_info(app, pods)
        return isolate_proto.UpdateApplicationResult(alias_info=info)

    @rpc
    def RolloutApplication(
        self, request: isolate_proto.RolloutApplicationRequest, caller: auth.Caller
    ) -> isolate_proto.RolloutApplicationResult:
        """``fal apps rollout``: replace the app's runners with its rollout strategy."""
        env = environment(request)
        app = self._resolve(caller, request.application_name, env, field="application_name")
        meta = app["metadata"]
        now = utc_now().strftime("%Y-%m-%dT%H:%M:%SZ")
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
            involved=involved(app),
            reason="RolloutRequested",
            message=f"API key {caller.key_id} asked to replace the runners (fal apps rollout)",
        )
        return isolate_proto.RolloutApplicationResult()

    @rpc
    def DeleteAlias(
        self, request: isolate_proto.DeleteAliasRequest, caller: auth.Caller
    ) -> isolate_proto.DeleteAliasResult:
        env = environment(request)
        app = self._resolve(caller, request.alias, env, field="alias")
        meta = app["metadata"]
        self.cluster.delete_falapp(meta["namespace"], meta["name"])
        self.cluster.record_event(
            namespace=meta["namespace"],
            involved=involved(app),
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

    @rpc
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

    @rpc
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

    @rpc
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

    @rpc
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

    @rpc
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


for _rpc_name, _fal_command in UNIMPLEMENTED.items():
    setattr(Controller, _rpc_name, unimplemented(_rpc_name, _fal_command))
