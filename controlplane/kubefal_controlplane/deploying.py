"""``fal deploy`` on the control plane: ``BuildEnvironment`` and ``RegisterApplication``.

The SDK's app (its source, never its pickle: :mod:`kubefal_controlplane.deploy` maps it) becomes
a FalApp with its source in ConfigMaps; the stream reports the operator's progress (and an image
build's log) until the runners are ready or the deploy failed. At most ``--max-deploys`` deploys
run at once, since each holds a worker thread until its runners are ready.

Why a module of its own: the longest RPCs, with their own waits and objects; the other RPCs are
in :mod:`kubefal_controlplane.service`.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Generator, Iterator, Mapping
from typing import Any

import grpc
import isolate_proto
from kubernetes.client.exceptions import ApiException

from kubefal_api import builds, naming, v1alpha1
from kubefal_controlplane import (
    app_files,
    auth,
    deploy,
    deploy_spec,
    errors,
    mapping,
    runner_logs,
)
from kubefal_controlplane import settings as settings_module
from kubefal_controlplane.rpc import (
    ANNOTATION_CHANGED_BY,
    APP_SECRETS_NAME,
    CONFLICT_RETRIES,
    ControllerBase,
    environment,
    involved,
    log,
    stream_rpc,
)


class DeployRpcs(ControllerBase):
    """``fal deploy``'s RPCs (mixed into :class:`kubefal_controlplane.service.Controller`)."""

    @stream_rpc
    def BuildEnvironment(
        self,
        request: isolate_proto.BuildEnvironmentRequest,
        caller: auth.Caller,
        context: grpc.ServicerContext,
    ) -> Iterator[isolate_proto.BuildEnvironmentResult]:
        self.cluster.refuse_deploy()
        env = environment(request)
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
            logs=[log(note)],
            status=isolate_proto.HostedRunStatus(state=isolate_proto.HostedRunStatus.State.SUCCESS),
        )

    @stream_rpc
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
        env = environment(request)
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
        spec = deploy_spec.falapp_spec(
            request,
            class_name=class_name,
            source=sources.spec_source,
            existing=existing,
            secrets_name=APP_SECRETS_NAME,
            app_path=sources.app_path,
        )
        image = deploy.container_image(list(request.environments))
        if image is not None and image.secrets:
            spec["containerImage"]["secretRef"] = {"name": naming.build_secret_name(name)}
        verb = "Updating" if existing is not None else "Creating"
        yield isolate_proto.RegisterApplicationResult(
            logs=[log(f"{verb} FalApp {namespace}/{name} serving {spec['app']}")]
        )
        if carried_files:
            yield isolate_proto.RegisterApplicationResult(
                logs=[
                    log(
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
                    log(
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
            involved=involved(app),
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
            logs=[log(f"{namespace}/{name} is ready")],
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
        secret_name = naming.build_secret_name(name)
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": secret_name,
                "namespace": namespace,
                "labels": {naming.LABEL_BUILD_OF: name},
                "ownerReferences": [
                    naming.owner_reference(name, app["metadata"]["uid"], controller=True)
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
        deadline = time.monotonic() + builds.BUILD_POD_WAIT_SECONDS
        pod: dict[str, Any] | None = None
        while context.is_active() and time.monotonic() < deadline:
            pods = self.cluster.build_pods(namespace, job)
            pod = next((p for p in pods if builds.log_readable(p)), None)
            if pod is not None:
                break
            time.sleep(0.5)
        if pod is None:
            return
        yield isolate_proto.RegisterApplicationResult(
            logs=[log(f"Building the app's image in Job {namespace}/{job}:")]
        )
        stream = self.cluster.follow_build_log(namespace, pod["metadata"]["name"])
        try:
            pending = b""
            for chunk in stream.stream(4096):
                lines, pending = runner_logs.split_lines(pending + chunk)
                if lines:
                    yield isolate_proto.RegisterApplicationResult(
                        logs=[log(line.decode("utf-8", "replace")) for line in lines]
                    )
                if not context.is_active():
                    return
            if pending:
                yield isolate_proto.RegisterApplicationResult(
                    logs=[log(pending.decode("utf-8", "replace"))]
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
            build = builds.build_of(status, generation)
            if build is not None:
                job = build.job
                if build.phase == v1alpha1.BuildPhase.FAILED:
                    raise errors.failed_precondition(
                        f"the image of {namespace}/{name} could not be built: {build.message}"
                    )
                if build.phase == v1alpha1.BuildPhase.BUILDING and job not in followed:
                    followed.add(job)
                    yield from self._build_logs(namespace, job, context)
                    deadline = time.monotonic() + self.settings.deploy_timeout
                    continue
                if build.phase == v1alpha1.BuildPhase.CACHED and "" not in followed:
                    followed.add("")
                    yield isolate_proto.RegisterApplicationResult(
                        logs=[log(f"image {build.image}: already built (cache hit)")]
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
                    logs=[log(f"{namespace}/{name}: {phase}")]
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
