"""``kubefal apps`` and ``kubefal runners APP``: what runs, read straight from the API.

``apps`` tables the FalApps (spec and status); ``runners`` tables an app's runner pods (selected by
``kubefal_api.naming.runner_selector``) with the state a person needs: scheduling, image pull,
setup, ready, crash loops.
"""

from __future__ import annotations

import datetime
import pathlib
from typing import Any

import click
import rich.box
import rich.table

from kubefal_api import naming
from kubefal_cli import kube, ui
from kubefal_cli.commands import keys


def _table(*columns: str) -> rich.table.Table:
    table = rich.table.Table(box=rich.box.SIMPLE_HEAD)
    for column in columns:
        table.add_column(column)
    return table


def _namespace(
    namespace: str | None, *, kubeconfig: pathlib.Path | None, context: str | None
) -> str:
    return namespace or kube.current_namespace(kubeconfig=kubeconfig, context=context)


def _age(timestamp: str | None) -> str:
    if not timestamp:
        return "?"
    started = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int((datetime.datetime.now(tz=datetime.UTC) - started).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def falapp_row(falapp: dict[str, Any]) -> tuple[str, ...]:
    """One ``kubefal apps`` row: name, machine, GPUs, min/max, runners, ready, auth, phase."""
    spec = falapp.get("spec", {})
    status = falapp.get("status") or {}
    scaling = spec.get("scaling", {})
    machine_types = spec.get("machineTypes") or [naming.DEFAULT_MACHINE_TYPE]
    gpu = all(str(machine).startswith("GPU-") for machine in machine_types)
    gpus = str(spec.get("numGpus", 1)) if gpu else "-"
    return (
        f"{falapp['metadata'].get('namespace', '')}/{falapp['metadata']['name']}",
        status.get("machineType") or ",".join(machine_types),
        gpus,
        f"{scaling.get('minConcurrency', 0)}/{scaling.get('maxConcurrency', 10)}",
        str(status.get("replicas", 0)),
        str(status.get("readyReplicas", 0)),
        str(spec.get("auth", "private")),
        str(status.get("phase", "Pending")),
    )


@click.command("apps")
@click.option("--namespace", "-n", help="Namespace (default: the kubeconfig context's).")
@click.option("--all-namespaces", "-A", is_flag=True, help="FalApps of every namespace.")
@keys.kubeconfig_option
@keys.context_option
def apps_command(
    *,
    namespace: str | None,
    all_namespaces: bool,
    kubeconfig: pathlib.Path | None,
    context: str | None,
) -> None:
    """List FalApps: machine, GPUs, min/max runners, runners, ready, auth, phase."""
    client = kube.connect(kubeconfig=kubeconfig, context=context)
    scope = (
        None if all_namespaces else _namespace(namespace, kubeconfig=kubeconfig, context=context)
    )
    with kube.translated(
        client,
        action="listing FalApps",
        not_found_hint="install the kubefal CRDs (`make dev` locally, or the Helm chart)",
    ):
        falapps = kube.list_falapps(client, namespace=scope)
    if not falapps:
        where = "any namespace" if scope is None else f"namespace {scope}"
        ui.note(f"No FalApps in {where}. Deploy one with: kubefal deploy app.py::MyApp")
        return
    table = _table("APP", "MACHINE", "GPUS", "MIN/MAX", "RUNNERS", "READY", "AUTH", "PHASE")
    for falapp in sorted(
        falapps, key=lambda obj: (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
    ):
        table.add_row(*falapp_row(falapp))
    ui.stdout.print(table)


def pod_state(pod: dict[str, Any]) -> str:
    """What a person wants to know about a runner pod, in a few words."""
    metadata = pod.get("metadata", {})
    status = pod.get("status", {})
    if metadata.get("deletionTimestamp"):
        return "Draining"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return f"Pending: {condition.get('reason', '')} {condition.get('message', '')}".strip()
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting")
        if waiting:
            return f"{waiting.get('reason', 'Waiting')}: {waiting.get('message', '')}".rstrip(": ")
        terminated = (container.get("state") or {}).get("terminated")
        if terminated:
            return f"Terminated: {terminated.get('reason', '')} (exit {terminated.get('exitCode')})"
    ready = any(
        condition.get("type") == "Ready" and condition.get("status") == "True"
        for condition in status.get("conditions") or []
    )
    if status.get("phase") == "Running":
        return "Ready" if ready else "Setup"
    return str(status.get("phase", "Unknown"))


@click.command("runners")
@click.argument("app_name", metavar="APP")
@click.option("--namespace", "-n", help="Namespace (default: the kubeconfig context's).")
@keys.kubeconfig_option
@keys.context_option
def runners_command(
    *,
    app_name: str,
    namespace: str | None,
    kubeconfig: pathlib.Path | None,
    context: str | None,
) -> None:
    """List the runner pods of FalApp APP with their state."""
    if "/" in app_name:
        namespace, _, app_name = app_name.partition("/")
    scope = _namespace(namespace, kubeconfig=kubeconfig, context=context)
    client = kube.connect(kubeconfig=kubeconfig, context=context)
    selector = ",".join(f"{key}={value}" for key, value in naming.runner_selector(app_name).items())
    with kube.translated(client, action=f"listing runner pods of {scope}/{app_name}"):
        pods = kube.list_pods(client, namespace=scope, label_selector=selector)
    if not pods:
        ui.note(
            f"No runners for {scope}/{app_name}: scaled to zero, or no such app "
            f"(see `kubefal apps -n {scope}`)."
        )
        return
    table = _table("RUNNER", "STATE", "MACHINE", "NODE", "IP", "RESTARTS", "AGE")
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        metadata = pod["metadata"]
        status = pod.get("status", {})
        restarts = sum(c.get("restartCount", 0) for c in status.get("containerStatuses") or [])
        table.add_row(
            metadata["name"],
            pod_state(pod),
            (metadata.get("annotations") or {}).get(naming.ANNOTATION_MACHINE_TYPES, "-"),
            pod.get("spec", {}).get("nodeName") or "-",
            status.get("podIP") or "-",
            str(restarts),
            _age(metadata.get("creationTimestamp")),
        )
    ui.stdout.print(table)
