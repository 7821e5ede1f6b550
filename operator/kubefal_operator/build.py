"""Builds of ``spec.containerImage`` (fal ``fal.ContainerImage``): one Job per image content.

Why a module of its own: a FalApp with a container image cannot have runners until its image
exists, and building it is a job of minutes that must survive operator restarts. So the
reconcile asks :func:`resolve` first; it answers with the image to run, or with "not yet":

* the image reference is ``<registry>/<namespace>:<hash>``, the hash covering everything the
  build reads (the Dockerfile with the runner stage kubefal appends, the build arguments, the
  context ConfigMaps, the builder image; not the build secrets). Same content, same tag;
* when the registry already has that tag (a ``HEAD`` of the manifest), nothing is built
  (``status.build.phase: Cached``);
* otherwise a Job (``<app>-build-<hash>``, owned by the FalApp) runs the builder image:
  ``buildah bud`` of the Dockerfile, then ``buildah push``; its pod's log is the build log
  (``kubefal deploy`` streams it). A succeeded Job means the image is there (``Built``), a
  failed one is reported (``Failed``, with the end of its log) until the spec changes;
* while a Job runs (``Building``) the FalApp's children are left as they are: a previous
  image keeps serving until the new one exists.

The builder layers the runner in: after the user's Dockerfile it copies the runner's Python
packages (from the builder image, which is built on the runner image) into
``/opt/kubefal-runner`` and adds them to the image's own Python 3.11 through a ``.pth`` file
(docs/packaging.md). Jobs and their pods carry ``kubefal.io/build-of`` (not the runners'
``kubefal.io/app``), so no runner watch, Service or NetworkPolicy ever selects them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from typing import Any, Final

import aiohttp

from kubefal_api import naming, v1alpha1
from kubefal_operator import kube

logger = logging.getLogger(__name__)

LABEL_BUILD_OF: Final = naming.LABEL_BUILD_OF
LABEL_BUILD_HASH: Final = f"{v1alpha1.GROUP}/build"
"""On build Jobs and their pods: the content hash (the image tag)."""
BUILD_CONTAINER: Final = "build"
RUNNER_CONTEXT_DIR: Final = ".kubefal-runner"
"""Where the builder puts the runner's packages in the build context (docs/packaging.md)."""
RUNNER_PREFIX: Final = "/opt/kubefal-runner"
CONTEXT_MOUNT: Final = "/kubefal/context"
SECRETS_MOUNT: Final = "/kubefal/secrets"
AUTH_MOUNT: Final = "/kubefal/auth"
STORAGE_PATH: Final = "/var/lib/containers"
WORKSPACE_PATH: Final = "/workspace"
HASH_LENGTH: Final = 40
MAX_MESSAGE_CHARS: Final = 2000
REGISTRY_CHECK_TIMEOUT_SECONDS: Final = 10.0
MANIFEST_TYPES: Final = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
POD_OVERRIDE_TYPES: Final[Mapping[str, type]] = {
    "nodeSelector": dict,
    "tolerations": list,
    "hostNetwork": bool,
    "dnsPolicy": str,
    "priorityClassName": str,
    "serviceAccountName": str,
    "imagePullSecrets": list,
    "affinity": dict,
}
"""What ``KUBEFAL_BUILD_POD_OVERRIDES`` may set in the build pod's spec, and the JSON type of
each (checked at start-up; the API server checks the rest when it gets the first build Job)."""
POD_OVERRIDE_KEYS: Final = frozenset(POD_OVERRIDE_TYPES)
REGISTRY_PATTERN: Final = re.compile(
    r"^[a-zA-Z0-9]([-a-zA-Z0-9.]*[a-zA-Z0-9])?(:[0-9]{1,5})?(/[a-z0-9]+([._-][a-z0-9]+)*)*$"
)
RUNNER_SETUP: Final = "\n".join(
    (
        "import os, site, sys",
        "if sys.version_info[:2] != (3, 11): sys.exit('kubefal: this image runs Python %d.%d;"
        " the kubefal runner needs Python 3.11 (for example FROM python:3.11-slim)'"
        " % sys.version_info[:2])",
        "os.makedirs('{prefix}/bin', exist_ok=True)",
        "os.symlink(sys.executable, '{prefix}/bin/python')",
        "packages = site.getsitepackages()[0]",
        "os.makedirs(packages, exist_ok=True)",
        "open(os.path.join(packages, 'kubefal-runner.pth'), 'w').write("
        "\"import site; site.addsitedir('{prefix}/site-packages')\\n\")",
    )
)
"""Run with the image's own python3 (exec form: the image needs no shell): checks its
version, gives it the name ``python`` the runner command uses, and puts the runner's
packages on its path (after its own, so the image's pins win)."""
RUNNER_STAGE: Final = """
# --- added by kubefal: the kubefal runner, layered onto this image (docs/packaging.md) ---
USER 0
COPY {context_dir} {prefix}/site-packages
RUN {setup}
ENV PATH={prefix}/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER {user}
ENTRYPOINT ["python", "-m", "kubefal_runner"]
CMD []
"""


class BuildSettingsError(ValueError):
    """A build setting of the operator has a value it cannot use."""


@dataclasses.dataclass(frozen=True)
class BuildSettings:
    """Where images are built and pushed (the chart's ``build`` values)."""

    registry: str | None = None
    """``host[:port]/path`` images are pushed to (KUBEFAL_BUILD_REGISTRY); unset: FalApps with
    ``spec.containerImage`` are refused with a status saying so."""
    insecure_registry: bool = False
    """Plain HTTP to the registry, no TLS (KUBEFAL_BUILD_REGISTRY_INSECURE; a local registry)."""
    builder_image: str = "ghcr.io/kubefal/kubefal-builder:0.1.0"
    """The image of build Jobs (KUBEFAL_BUILDER_IMAGE): buildah and the runner's packages."""
    push_secret: str | None = None
    """A ``kubernetes.io/dockerconfigjson`` Secret, in the app's namespace, buildah pushes and
    pulls with (KUBEFAL_BUILD_PUSH_SECRET); unset: anonymous."""
    timeout_seconds: int = 1800
    """A build running longer fails (KUBEFAL_BUILD_TIMEOUT; the Job's activeDeadlineSeconds)."""
    finished_ttl_seconds: int = 86400
    """Finished build Jobs (and their logs) are kept this long (KUBEFAL_BUILD_JOB_TTL)."""
    pod_overrides: str | None = None
    """JSON object merged into the build pod's spec (KUBEFAL_BUILD_POD_OVERRIDES), keys from
    :data:`POD_OVERRIDE_KEYS`: where builds run (nodeSelector, tolerations, ...)."""
    runner_user: int = 10001
    """USER of the built image (the runner's, KUBEFAL_RUNNER_RUN_AS_USER)."""


def pod_overrides(value: str) -> str:
    """``KUBEFAL_BUILD_POD_OVERRIDES``: a JSON object of allowed pod-spec keys, normalised."""
    try:
        overrides = json.loads(value)
    except ValueError:
        raise BuildSettingsError("KUBEFAL_BUILD_POD_OVERRIDES: not JSON") from None
    if not isinstance(overrides, dict) or not set(overrides) <= POD_OVERRIDE_KEYS:
        raise BuildSettingsError(
            "KUBEFAL_BUILD_POD_OVERRIDES: a JSON object with keys among "
            + ", ".join(sorted(POD_OVERRIDE_KEYS))
        )
    for key, value in overrides.items():
        wanted = POD_OVERRIDE_TYPES[key]
        if not isinstance(value, wanted):
            kind = {dict: "object", list: "array", bool: "boolean", str: "string"}[wanted]
            raise BuildSettingsError(f"KUBEFAL_BUILD_POD_OVERRIDES: {key} must be a JSON {kind}")
    return json.dumps(overrides, sort_keys=True)


# --- pure logic -------------------------------------------------------------------------


def dockerfile(spec: v1alpha1.ContainerImageSpec, *, settings: BuildSettings) -> str:
    """The Dockerfile the Job builds: the user's, then the runner stage."""
    setup = json.dumps(["python3", "-c", RUNNER_SETUP.replace("{prefix}", RUNNER_PREFIX)])
    stage = RUNNER_STAGE.format(
        context_dir=RUNNER_CONTEXT_DIR,
        prefix=RUNNER_PREFIX,
        setup=setup,
        user=f"{settings.runner_user}:{settings.runner_user}",
    )
    return spec.dockerfile.rstrip("\n") + "\n" + stage


def content_hash(spec: v1alpha1.ContainerImageSpec, *, settings: BuildSettings) -> str:
    """Hash of everything the build reads, build Secrets excepted: the Dockerfile names the
    secret ids it mounts, their values (and the Secret's name, which ``kubefal deploy`` derives
    from the app's) do not count, so the same content under another app name or with a
    rotated secret is the same image; change a build argument to force a rebuild."""
    content = {
        "dockerfile": dockerfile(spec, settings=settings),
        "buildArgs": dict(sorted(spec.build_args.items())),
        "context": [cm.to_kube() for cm in spec.context or []],
        "builder": settings.builder_image,
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_LENGTH]


def image_reference(namespace: str, digest: str, *, settings: BuildSettings) -> str:
    """``<registry>/<namespace>:<hash>``: one repository per namespace, one tag per content
    (namespaces never share images: their build secrets may differ)."""
    assert settings.registry is not None
    return f"{settings.registry}/{namespace}:{digest}"


def job_name(app_name: str, digest: str) -> str:
    return f"{app_name[: 63 - 6 - 10 - 1]}-build-{digest[:10]}"


def job(
    app: v1alpha1.FalApp, *, digest: str, settings: BuildSettings, reference: str
) -> kube.Manifest:
    """The build Job: the builder image runs ``kubefal-build <image> <tls-verify> <args>``."""
    spec = app.spec.container_image
    assert spec is not None
    name, namespace, uid = app.metadata.name, app.metadata.namespace, app.metadata.uid
    assert name and namespace and uid
    labels = {
        LABEL_BUILD_OF: name,
        LABEL_BUILD_HASH: digest,
        "app.kubernetes.io/component": "build",
        "app.kubernetes.io/part-of": "kubefal",
        "app.kubernetes.io/managed-by": "kubefal-operator",
    }
    arguments = [reference, "false" if settings.insecure_registry else "true"]
    for key, value in sorted(spec.build_args.items()):
        arguments += ["--build-arg", f"{key}={value}"]
    environment: list[dict[str, Any]] = [
        {"name": "KUBEFAL_DOCKERFILE", "value": dockerfile(spec, settings=settings)}
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "storage", "mountPath": STORAGE_PATH},
        {"name": "workspace", "mountPath": WORKSPACE_PATH},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "storage", "emptyDir": {}},
        {"name": "workspace", "emptyDir": {}},
    ]
    if spec.context:
        mounts.append({"name": "context", "mountPath": CONTEXT_MOUNT, "readOnly": True})
        volumes.append(
            {
                "name": "context",
                "projected": {
                    "sources": [
                        {
                            "configMap": {
                                "name": cm.name,
                                "items": [{"key": i.key, "path": i.path} for i in cm.items],
                            }
                        }
                        for cm in spec.context
                    ]
                },
            }
        )
    if spec.secret_ref is not None:
        mounts.append({"name": "secrets", "mountPath": SECRETS_MOUNT, "readOnly": True})
        volumes.append({"name": "secrets", "secret": {"secretName": spec.secret_ref.name}})
    if settings.push_secret:
        mounts.append({"name": "auth", "mountPath": AUTH_MOUNT, "readOnly": True})
        volumes.append(
            {
                "name": "auth",
                "secret": {
                    "secretName": settings.push_secret,
                    "items": [{"key": ".dockerconfigjson", "path": "auth.json"}],
                },
            }
        )
        environment.append({"name": "REGISTRY_AUTH_FILE", "value": f"{AUTH_MOUNT}/auth.json"})
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [
            {
                "name": BUILD_CONTAINER,
                "image": settings.builder_image,
                "imagePullPolicy": "IfNotPresent",
                "args": arguments,
                "env": environment,
                # buildah mounts and chroots: it needs a privileged container (docs/security.md).
                "securityContext": {"privileged": True, "runAsUser": 0},
                "volumeMounts": mounts,
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }
        ],
        "volumes": volumes,
    }
    if settings.pod_overrides:
        pod_spec.update(json.loads(settings.pod_overrides))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(name, digest),
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [naming.owner_reference(name, uid, controller=True)],
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": settings.timeout_seconds,
            "ttlSecondsAfterFinished": settings.finished_ttl_seconds,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def job_outcome(live: Mapping[str, Any]) -> tuple[bool | None, str]:
    """(True: succeeded, False: failed, None: running) and the reason of a failure."""
    for condition in (live.get("status") or {}).get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            return True, ""
        if condition.get("type") == "Failed":
            return False, str(condition.get("message") or condition.get("reason") or "failed")
    return None, ""


def manifest_url(reference: str, *, insecure: bool) -> str:
    """The registry API URL of ``reference``'s manifest (``host/path:tag``)."""
    location, _, tag = reference.rpartition(":")
    host, _, repository = location.partition("/")
    return f"{'http' if insecure else 'https'}://{host}/v2/{repository}/manifests/{tag}"


# --- effects ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Resolution:
    """What the reconcile does with a FalApp: run ``app`` (its image set), or wait."""

    app: v1alpha1.FalApp | None
    status: v1alpha1.BuildStatus | None


async def registry_has(reference: str, *, settings: BuildSettings) -> bool:
    """True when the registry answers 200 for the manifest; any failure: False (build)."""
    url = manifest_url(reference, insecure=settings.insecure_registry)
    timeout = aiohttp.ClientTimeout(total=REGISTRY_CHECK_TIMEOUT_SECONDS)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.head(url, headers={"Accept": MANIFEST_TYPES}) as response,
        ):
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError) as error:
        logger.info("registry check of %s failed (%s): building", reference, error)
        return False


async def resolve(
    client: kube.KubeClient, settings: BuildSettings, app: v1alpha1.FalApp
) -> Resolution:
    """The app to render (with ``spec.image`` set to the built image), or None while the
    image is being built or cannot be; the build status either way (None: no build)."""
    spec = app.spec.container_image
    if spec is None:
        return Resolution(app=app, status=None)
    namespace = app.metadata.namespace or ""
    if not settings.registry:
        return Resolution(
            app=None,
            status=v1alpha1.BuildStatus(
                phase=v1alpha1.BuildPhase.FAILED,
                image="",
                message="spec.containerImage needs a registry to push built images to: "
                "set build.registry in the chart's values (KUBEFAL_BUILD_REGISTRY)",
            ),
        )
    digest = content_hash(spec, settings=settings)
    reference = image_reference(namespace, digest, settings=settings)
    name = job_name(app.metadata.name or "", digest)
    ready = app.model_copy(update={"spec": app.spec.model_copy(update={"image": reference})})
    live = await client.get(kube.JOBS, namespace=namespace, name=name)
    if live is not None:
        succeeded, reason = job_outcome(live)
        if succeeded:
            status = v1alpha1.BuildStatus(
                phase=v1alpha1.BuildPhase.BUILT, image=reference, job=name
            )
            return Resolution(app=ready, status=status)
        if succeeded is False:
            status = v1alpha1.BuildStatus(
                phase=v1alpha1.BuildPhase.FAILED,
                image=reference,
                job=name,
                message=(
                    f"the build failed: {reason}; `kubectl logs -n {namespace} job/{name}` "
                    "has the build log; delete the Job to build again"
                )[:MAX_MESSAGE_CHARS],
            )
            return Resolution(app=None, status=status)
        status = v1alpha1.BuildStatus(phase=v1alpha1.BuildPhase.BUILDING, image=reference, job=name)
        return Resolution(app=None, status=status)
    previous = app.status.build if app.status else None
    if (
        previous is not None
        and previous.image == reference
        and previous.phase
        in (
            v1alpha1.BuildPhase.BUILT,
            v1alpha1.BuildPhase.CACHED,
        )
    ):
        return Resolution(app=ready, status=previous)  # its Job expired; the image stays
    if await registry_has(reference, settings=settings):
        status = v1alpha1.BuildStatus(phase=v1alpha1.BuildPhase.CACHED, image=reference)
        return Resolution(app=ready, status=status)
    manifest = job(app, digest=digest, settings=settings, reference=reference)
    try:
        await client.apply(manifest)
    except kube.ApiError as error:
        if error.status not in (400, 422):
            raise
        # Refused as invalid (two context ConfigMaps with one path, a build pod override the
        # API server rejects): retrying cannot help; the message names the field.
        status = v1alpha1.BuildStatus(
            phase=v1alpha1.BuildPhase.FAILED,
            image=reference,
            message=f"the API server refused the build Job: {error.message}"[:MAX_MESSAGE_CHARS],
        )
        return Resolution(app=None, status=status)
    logger.info("%s/%s: building %s in Job %s", namespace, app.metadata.name, reference, name)
    status = v1alpha1.BuildStatus(phase=v1alpha1.BuildPhase.BUILDING, image=reference, job=name)
    return Resolution(app=None, status=status)


async def write_status(
    client: kube.KubeClient, body: Mapping[str, Any], status: v1alpha1.BuildStatus | None
) -> None:
    """``status.build`` (a merge patch of that field only), when it changed."""
    current = (body.get("status") or {}).get("build")
    if current is not None:
        current = {"job": None, "message": None, "observedGeneration": None, **current}
    # Every key, unset ones as null: a merge patch keeps keys it does not name.
    document = (
        None
        if status is None
        else {"job": None, "message": None, "observedGeneration": None, **status.to_kube()}
    )
    if current == document:
        return
    meta = body["metadata"]
    await client.patch_status(
        kube.FALAPPS,
        namespace=meta["namespace"],
        name=meta["name"],
        status={"build": document},
    )


async def prepare(
    client: kube.KubeClient,
    settings: BuildSettings,
    *,
    app: v1alpha1.FalApp,
    body: Mapping[str, Any],
) -> v1alpha1.FalApp | None:
    """For the reconcile: the app to render with its built image, or None (not yet); the
    build's status is written either way."""
    resolution = await resolve(client, settings, app)
    status = resolution.status
    if status is not None:
        status = status.model_copy(update={"observed_generation": app.metadata.generation})
    await write_status(client, body, status)
    return resolution.app
