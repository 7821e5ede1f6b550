"""The only module of the CLI that talks to the Kubernetes API.

Uses the ``kubernetes`` package with the current kubeconfig (``--kubeconfig``, else
``$KUBECONFIG``, else ``~/.kube/config``) and turns every API failure into a
:class:`kubefal_cli.errors.CliError` that names the next step: no kubeconfig, API server
unreachable, credentials rejected, RBAC forbidden, object or CRD not found, invalid object.
Objects travel as plain dicts (what ``kubectl get -o json`` shows).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import typing
from collections.abc import Iterator
from typing import Any

import kubernetes.client
import kubernetes.client.exceptions
import kubernetes.config
import kubernetes.config.config_exception
import urllib3.exceptions

from kubefal_api import v1alpha1
from kubefal_cli import errors

FIELD_MANAGER = "kubefal-cli"
REQUEST_TIMEOUT_SECONDS = 30
MAX_LOG_LINE_BYTES = 16 * 1024
"""A followed log line longer than this (a progress bar without newlines) comes in pieces of this
size, so the CLI never holds more than one piece of it."""


@dataclasses.dataclass(frozen=True)
class Kube:
    """A connection to one cluster."""

    api_client: kubernetes.client.ApiClient
    host: str
    context: str | None

    @property
    def core(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(self.api_client)

    @property
    def custom(self) -> kubernetes.client.CustomObjectsApi:
        return kubernetes.client.CustomObjectsApi(self.api_client)

    def to_dict(self, obj: Any) -> dict[str, Any]:
        """A typed client object (V1Secret, ...) as the plain dict the API server sent."""
        result = self.api_client.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
        return typing.cast(dict[str, Any], result)


def connect(*, kubeconfig: pathlib.Path | None, context: str | None) -> Kube:
    """Load the kubeconfig and build a client; no request is made yet."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig) if kubeconfig is not None else None,
            context=context,
            client_configuration=configuration,
            persist_config=False,
        )
    except (kubernetes.config.config_exception.ConfigException, OSError) as error:
        where = str(kubeconfig) if kubeconfig else "$KUBECONFIG or ~/.kube/config"
        raise errors.CliError(
            f"no usable kubeconfig ({where}): {error}",
            hint="point --kubeconfig (or KUBECONFIG) at your cluster's kubeconfig; "
            "for the local control plane run `make dev` first",
        ) from error
    configuration.retries = 1
    return Kube(
        api_client=kubernetes.client.ApiClient(configuration),
        host=str(configuration.host),
        context=context,
    )


def _api_message(error: kubernetes.client.exceptions.ApiException) -> str:
    with contextlib.suppress(ValueError, TypeError):
        body = json.loads(error.body or "")
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    return f"{error.status} {error.reason}"


@contextlib.contextmanager
def translated(kube: Kube, *, action: str, not_found_hint: str | None = None) -> Iterator[None]:
    """Turn client failures inside the block into :class:`errors.CliError` about ``action``."""
    try:
        yield
    except kubernetes.client.exceptions.ApiException as error:
        message = _api_message(error)
        if error.status == 401:
            raise errors.CliError(
                f"{action}: the API server at {kube.host} rejected your credentials",
                hint="refresh the kubeconfig credentials (check with `kubectl get ns`)",
            ) from error
        if error.status == 403:
            raise errors.CliError(
                f"{action}: forbidden by RBAC: {message}",
                hint="ask a cluster admin to grant your user the verb and resource named above "
                "(check with `kubectl auth can-i ...`), or use a context that has it "
                "(--context)",
            ) from error
        if error.status == 404:
            raise errors.CliError(
                f"{action}: not found: {message}",
                hint=not_found_hint or "check the name and the namespace",
            ) from error
        if error.status == 422 or error.status == 400:
            raise errors.CliError(
                f"{action}: the API server refused the object: {message}",
                hint="fix the field named above (`kubefal render` shows what is sent)",
            ) from error
        if error.status == 409:
            raise errors.CliError(
                f"{action}: conflict: {message}",
                hint="someone else changed the object; run the command again",
            ) from error
        raise errors.CliError(
            f"{action}: the API server answered {message}",
            hint="retry; if it persists check the API server (`kubectl get --raw /readyz`)",
        ) from error
    except (urllib3.exceptions.HTTPError, OSError) as error:
        raise errors.CliError(
            f"{action}: cannot reach the API server at {kube.host} ({type(error).__name__})",
            hint="check that the cluster is up (`kubectl cluster-info`) and that --kubeconfig / "
            "--context name the right one",
        ) from error


# -- Secrets (API keys) ---------------------------------------------------------------------


def create_secret(kube: Kube, *, manifest: dict[str, Any]) -> None:
    namespace = manifest["metadata"]["namespace"]
    # The client coerces the plain dict into its V1Secret model.
    kube.core.create_namespaced_secret(
        namespace=namespace,
        body=typing.cast(kubernetes.client.V1Secret, manifest),
        _request_timeout=REQUEST_TIMEOUT_SECONDS,
    )


def list_secrets(kube: Kube, *, namespace: str, label_selector: str) -> list[dict[str, Any]]:
    listing = kube.core.list_namespaced_secret(
        namespace=namespace,
        label_selector=label_selector,
        _request_timeout=REQUEST_TIMEOUT_SECONDS,
    )
    return [kube.to_dict(item) for item in listing.items]


def read_secret(kube: Kube, *, namespace: str, name: str) -> dict[str, Any]:
    return kube.to_dict(
        kube.core.read_namespaced_secret(
            name=name, namespace=namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
    )


def patch_secret_string_data(
    kube: Kube, *, namespace: str, name: str, string_data: dict[str, str]
) -> None:
    kube.core.patch_namespaced_secret(
        name=name,
        namespace=namespace,
        body={"stringData": string_data},
        _request_timeout=REQUEST_TIMEOUT_SECONDS,
    )


def delete_secret(kube: Kube, *, namespace: str, name: str) -> None:
    kube.core.delete_namespaced_secret(
        name=name, namespace=namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
    )


def _apply_options(dry_run: bool) -> dict[str, Any]:
    """The generated client's keyword arguments for a server-side apply by ``kubefal-cli``
    (conflicts forced; the raw response kept, see `_json_body`)."""
    return {
        "field_manager": FIELD_MANAGER,
        "force": True,
        "dry_run": "All" if dry_run else None,
        "_content_type": "application/apply-patch+yaml",
        "_request_timeout": REQUEST_TIMEOUT_SECONDS,
        "_preload_content": False,
    }


def apply_secret(kube: Kube, *, manifest: dict[str, Any], dry_run: bool) -> None:
    """Server-side apply of a Secret (a ContainerImage's build secrets)."""
    kube.core.patch_namespaced_secret(
        name=manifest["metadata"]["name"],
        namespace=manifest["metadata"]["namespace"],
        body=manifest,
        **_apply_options(dry_run),
    )


# -- FalApps and their pods -------------------------------------------------------------------


def _json_body(response: Any) -> dict[str, Any]:
    # The generated client maps only a 200 answer to a model; an apply that creates the object
    # answers 201 and would come back as None, so the body is decoded here.
    return typing.cast(dict[str, Any], json.loads(response.data))


def apply_config_map(kube: Kube, *, manifest: dict[str, Any], dry_run: bool) -> dict[str, Any]:
    """Server-side apply of a ConfigMap (field manager ``kubefal-cli``, conflicts forced)."""
    response = kube.core.patch_namespaced_config_map(
        name=manifest["metadata"]["name"],
        namespace=manifest["metadata"]["namespace"],
        body=manifest,
        **_apply_options(dry_run),
    )
    return _json_body(response)


def delete_config_maps_except(
    kube: Kube, *, namespace: str, label_selector: str, keep: set[str]
) -> list[str]:
    """Delete the ConfigMaps matching ``label_selector`` whose names are not in ``keep``;
    return the names deleted (one already gone counts as deleted)."""
    listed = kube.core.list_namespaced_config_map(
        namespace, label_selector=label_selector, _request_timeout=REQUEST_TIMEOUT_SECONDS
    )
    deleted: list[str] = []
    for item in listed.items:
        if item.metadata is None or item.metadata.name is None:
            continue
        name = str(item.metadata.name)
        if name in keep:
            continue
        try:
            kube.core.delete_namespaced_config_map(
                name, namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
        except kubernetes.client.exceptions.ApiException as error:
            if error.status != 404:
                raise
        deleted.append(name)
    return deleted


def apply_falapp(kube: Kube, *, manifest: dict[str, Any], dry_run: bool) -> dict[str, Any]:
    """Server-side apply of a FalApp (field manager ``kubefal-cli``, conflicts forced)."""
    response = kube.custom.patch_namespaced_custom_object(
        group=v1alpha1.GROUP,
        version=v1alpha1.VERSION,
        namespace=manifest["metadata"]["namespace"],
        plural=v1alpha1.PLURAL,
        name=manifest["metadata"]["name"],
        body=manifest,
        **_apply_options(dry_run),
    )
    return _json_body(response)


def read_falapp(kube: Kube, *, namespace: str, name: str) -> dict[str, Any]:
    result = kube.custom.get_namespaced_custom_object(
        group=v1alpha1.GROUP,
        version=v1alpha1.VERSION,
        namespace=namespace,
        plural=v1alpha1.PLURAL,
        name=name,
        _request_timeout=REQUEST_TIMEOUT_SECONDS,
    )
    return typing.cast(dict[str, Any], result)


def list_falapps(kube: Kube, *, namespace: str | None) -> list[dict[str, Any]]:
    if namespace is None:
        listing = kube.custom.list_cluster_custom_object(
            group=v1alpha1.GROUP,
            version=v1alpha1.VERSION,
            plural=v1alpha1.PLURAL,
            _request_timeout=REQUEST_TIMEOUT_SECONDS,
        )
    else:
        listing = kube.custom.list_namespaced_custom_object(
            group=v1alpha1.GROUP,
            version=v1alpha1.VERSION,
            namespace=namespace,
            plural=v1alpha1.PLURAL,
            _request_timeout=REQUEST_TIMEOUT_SECONDS,
        )
    return typing.cast(list[dict[str, Any]], typing.cast(dict[str, Any], listing).get("items", []))


def list_pods(kube: Kube, *, namespace: str, label_selector: str) -> list[dict[str, Any]]:
    listing = kube.core.list_namespaced_pod(
        namespace=namespace,
        label_selector=label_selector,
        _request_timeout=REQUEST_TIMEOUT_SECONDS,
    )
    return [kube.to_dict(item) for item in listing.items]


def current_namespace(*, kubeconfig: pathlib.Path | None, context: str | None) -> str:
    """The namespace of the kubeconfig context, else ``default`` (as kubectl does)."""
    with contextlib.suppress(kubernetes.config.config_exception.ConfigException, OSError):
        contexts, active = kubernetes.config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig) if kubeconfig is not None else None
        )
        if context is not None:
            active = next((c for c in contexts if c.get("name") == context), active)
        namespace = (active or {}).get("context", {}).get("namespace")
        if namespace:
            return str(namespace)
    return "default"


def follow_pod_log(kube: Kube, *, namespace: str, name: str) -> Iterator[str]:
    """The lines of a pod's log as they come, until its container ends (a build's log)."""
    # Not preloaded: a urllib3 response (the generated type says str).
    response: Any = kube.core.read_namespaced_pod_log(
        name=name, namespace=namespace, follow=True, _preload_content=False
    )
    try:
        pending = b""
        for chunk in response.stream(4096):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield from _pieces(line)
            while len(pending) >= MAX_LOG_LINE_BYTES:
                yield pending[:MAX_LOG_LINE_BYTES].decode("utf-8", "replace")
                pending = pending[MAX_LOG_LINE_BYTES:]
        if pending:
            yield pending.decode("utf-8", "replace")
    finally:
        response.release_conn()


def _pieces(line: bytes) -> Iterator[str]:
    """``line`` decoded, in pieces of at most `MAX_LOG_LINE_BYTES` (an empty line stays one)."""
    for start in range(0, max(len(line), 1), MAX_LOG_LINE_BYTES):
        yield line[start : start + MAX_LOG_LINE_BYTES].decode("utf-8", "replace")
