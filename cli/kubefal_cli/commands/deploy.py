"""``kubefal deploy`` and ``kubefal render``: a ``fal.App`` class → a FalApp on the cluster.

Both read the class offline (``fal.app.wrap_app``) and build the same objects
(:mod:`kubefal_cli.manifests`): the ConfigMap(s) with the app files (unless ``--image``) and the
FalApp; an app with fal ``app_files`` or ``local_python_modules`` gets a bundle of several
ConfigMaps, and what it leaves out is listed on stderr.

* ``render`` prints them as commented YAML for Git; it never contacts the cluster.
* ``deploy --dry-run`` prints them as plain YAML without contacting the cluster;
  ``deploy --server-dry-run`` sends them with ``dryRun=All`` so the API server validates them
  (schema, CEL rules, admission webhook) without storing anything.
* ``deploy`` applies them with server-side apply (field manager ``kubefal-cli``): the FalApp
  first, then the ConfigMap owned by it (so deleting the FalApp deletes its files), and waits for
  the FalApp's status: Ready or ScaledToZero, or WaitingForGPUCapacity/WaitingForCapacity with the
  scheduler's message (the runners start once capacity appears). ``--no-wait`` returns at once.
"""

from __future__ import annotations

import enum
import pathlib
import time
from typing import Any

import click
import rich.markup
import yaml

from kubefal_api import builds, bundles, v1alpha1
from kubefal_cli import appref, errors, kube, manifests, rendering, ui
from kubefal_cli.commands import keys

POLL_SECONDS = 1.0
_CAPACITY_REASONS = {"WaitingForGPUCapacity", "WaitingForCapacity", "Unschedulable"}

namespace_option = click.option(
    "--namespace", "-n", help="Namespace of the FalApp (default: the kubeconfig context's)."
)


def _target(
    *,
    config: appref.AppConfig,
    namespace: str,
    name: str | None,
    image: str | None,
    strategy: str,
) -> manifests.Target:
    return manifests.Target(
        namespace=namespace,
        name=manifests.validate_name(name or config.app_name),
        image=image,
        strategy=v1alpha1.Strategy(strategy),
    )


def _read(app_ref: str) -> appref.AppConfig:
    ref = appref.parse_ref(app_ref)
    with ui.stderr.status(f"Reading {rich.markup.escape(str(ref))} ..."):
        config = appref.read_config(ref)
    if manifests.uses_bundle(config):
        _report_bundle(manifests.app_bundle(config))
    return config


def _report_bundle(bundle: manifests.AppBundle) -> None:
    """Say what the app carries and, one by one, what it leaves out (on stderr)."""
    size = sum(len(data) for data in bundle.files.values())
    ui.note(f"App files: {len(bundle.files)} files, {size} bytes, the app at {bundle.app_path}")
    for path, reason in bundle.left_out:
        ui.note(f"[yellow]Left out:[/yellow] {rich.markup.escape(path)}: {reason}")


_common_options = [
    click.argument("app_ref", metavar="APP.py::CLASS"),
    click.option("--name", help="FalApp name (default: the class's fal app name)."),
    click.option("--image", help="Runner image with the app baked in (default: generic image)."),
    click.option(
        "--strategy",
        type=click.Choice([strategy.value for strategy in v1alpha1.Strategy]),
        default=v1alpha1.Strategy.ROLLING.value,
        show_default=True,
        help="rolling: new runners before old ones go; recreate: never doubles GPUs.",
    ),
]


def _with_common_options(function: Any) -> Any:
    for option in reversed(_common_options):
        function = option(function)
    return function


@click.command("render")
@_with_common_options
@click.option(
    "--namespace", "-n", default="default", show_default=True, help="Namespace of the FalApp."
)
def render_command(
    *, app_ref: str, name: str | None, image: str | None, strategy: str, namespace: str
) -> None:
    """Print the FalApp (and ConfigMap) for a class as commented YAML, for Git.

    \b
    Example:
      kubefal render app.py::MyApp -n team-a > falapp.yaml
      kubectl apply -f falapp.yaml
    """
    config = _read(app_ref)
    target = _target(config=config, namespace=namespace, name=name, image=image, strategy=strategy)
    objects = manifests.manifests(config, target=target)
    command = f"kubefal render {config.ref.path.name}::{config.class_name} -n {namespace}"
    click.echo(rendering.render(config=config, objects=objects, command=command), nl=False)


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c.get("type") == kind), {})


def _conditions_summary(status: dict[str, Any]) -> str:
    return "\n".join(
        f"{c.get('type')}={c.get('status')} {c.get('reason', '')}: {c.get('message', '')}"
        for c in status.get("conditions", [])
    )


class Outcome(enum.Enum):
    """Where a rollout stands, as far as ``kubefal deploy`` waits for it."""

    WAITING = "waiting"
    READY = "ready"
    WAITING_FOR_CAPACITY = "waiting_for_capacity"
    DEGRADED = "degraded"


def rollout_outcome(falapp: dict[str, Any], *, generation: int) -> Outcome:
    """Judge a FalApp's status; a status older than ``generation`` is still WAITING."""
    status = falapp.get("status") or {}
    if int(status.get("observedGeneration") or 0) < generation:
        return Outcome.WAITING
    phase = status.get("phase")
    if phase in (v1alpha1.Phase.READY, v1alpha1.Phase.SCALED_TO_ZERO):
        return Outcome.READY
    if (
        phase == v1alpha1.Phase.WAITING_FOR_CAPACITY
        or _condition(status, "Scheduled").get("reason") in _CAPACITY_REASONS
    ):
        return Outcome.WAITING_FOR_CAPACITY
    if phase == v1alpha1.Phase.DEGRADED:
        return Outcome.DEGRADED
    return Outcome.WAITING


def _wait(
    client: kube.Kube, *, namespace: str, name: str, generation: int, timeout_seconds: float
) -> None:
    deadline = time.monotonic() + timeout_seconds
    describe = f"kubectl describe falapp -n {namespace} {name}"
    followed: set[str] = set()
    with ui.stderr.status(f"Waiting for FalApp {namespace}/{name} ...") as status_line:
        while True:
            with kube.translated(client, action=f"reading FalApp {namespace}/{name}"):
                falapp = kube.read_falapp(client, namespace=namespace, name=name)
            status = falapp.get("status") or {}
            build = builds.build_of(status, generation)
            if build is not None:
                job = build.job
                if build.phase == v1alpha1.BuildPhase.FAILED:
                    raise errors.CliError(
                        f"the image of FalApp {namespace}/{name} could not be built: "
                        f"{build.message}",
                        hint=f"the build log: kubectl logs -n {namespace} job/{job}"
                        if job
                        else "see the operator's settings (build.* in the chart's values)",
                    )
                if build.phase == v1alpha1.BuildPhase.BUILDING and job not in followed:
                    followed.add(job)
                    status_line.stop()
                    follow_build(client, namespace=namespace, job=job)
                    status_line.start()
                    # The build's own time does not count against --timeout.
                    deadline = time.monotonic() + timeout_seconds
                    continue
                if build.phase == v1alpha1.BuildPhase.CACHED and "cached" not in followed:
                    followed.add("cached")
                    ui.note(f"Image {build.image}: already built (cache hit), no build")
            phase = str(status.get("phase", "Pending"))
            ready = status.get("readyReplicas", 0)
            desired = status.get("desiredRunners", 0)
            progressing = _condition(status, "Progressing").get("message", "")
            status_line.update(
                f"FalApp {namespace}/{name}: {phase}, {ready}/{desired} runners ready"
                + (f" ({progressing})" if progressing else "")
            )
            outcome = rollout_outcome(falapp, generation=generation)
            if outcome is Outcome.READY:
                ui.stdout.print(
                    f"[green]✓[/green] FalApp {namespace}/{name} is {phase} "
                    f"({ready}/{desired} runners ready). "
                    f"Call it as {namespace}/{name} through the gateway."
                )
                endpoints = status.get("endpoints") or {}
                for kind in ("queue", "run"):
                    if endpoints.get(kind):
                        ui.stdout.print(f"  {kind:<5} {endpoints[kind]}")
                return
            if outcome is Outcome.WAITING_FOR_CAPACITY:
                scheduled = _condition(status, "Scheduled")
                ui.stdout.print(
                    f"[yellow]![/yellow] FalApp {namespace}/{name} is waiting for capacity "
                    f"({scheduled.get('reason')}): {scheduled.get('message', '')}\n"
                    "Runners start as soon as a node of a listed machine type has room; "
                    "requests queue meanwhile."
                )
                return
            if outcome is Outcome.DEGRADED:
                degraded = _condition(status, "Degraded")
                raise errors.CliError(
                    f"FalApp {namespace}/{name} is Degraded: "
                    f"{degraded.get('reason', '')} {degraded.get('message', '')}".strip(),
                    hint=f"see `kubefal runners {name} -n {namespace}` and `{describe}`",
                    details=_conditions_summary(status),
                )
            if time.monotonic() > deadline:
                raise errors.CliError(
                    f"FalApp {namespace}/{name} is still {phase} after {timeout_seconds:.0f} s",
                    hint=f"check `{describe}` and `kubefal runners {name} -n {namespace}`; "
                    "if status stays empty, is the kubefal operator running? "
                    "(or pass a larger --timeout, or --no-wait)",
                    details=_conditions_summary(status),
                )
            time.sleep(POLL_SECONDS)


def follow_build(client: kube.Kube, *, namespace: str, job: str) -> None:
    """Print the build Job's log on stderr as it comes, until the build ends."""
    ui.note(f"Building the app's image in Job {namespace}/{job}:")
    selector = f"job-name={job}"
    deadline = time.monotonic() + builds.BUILD_POD_WAIT_SECONDS
    pod: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        with kube.translated(client, action=f"reading the pods of Job {namespace}/{job}"):
            pods = kube.list_pods(client, namespace=namespace, label_selector=selector)
        pod = next((p for p in pods if builds.log_readable(p)), None)
        if pod is not None:
            break
        time.sleep(POLL_SECONDS)
    if pod is None:
        ui.note(
            f"No build pod started within {builds.BUILD_POD_WAIT_SECONDS} s; waiting for the status"
        )
        return
    try:
        for line in kube.follow_pod_log(client, namespace=namespace, name=pod["metadata"]["name"]):
            ui.stderr.print(f"[dim]build |[/dim] {rich.markup.escape(line)}", highlight=False)
    except Exception as error:  # the log is a courtesy: the status decides
        ui.note(f"The build log stopped ({type(error).__name__}: {error}); waiting for the status")


@click.command("deploy")
@_with_common_options
@namespace_option
@click.option(
    "--dry-run", is_flag=True, help="Print the objects that would be applied; change nothing."
)
@click.option(
    "--server-dry-run",
    is_flag=True,
    help="Send the objects with dryRun=All: the API server validates them, stores nothing.",
)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the status.")
@click.option(
    "--timeout",
    "timeout_seconds",
    type=float,
    default=600.0,
    show_default=True,
    help="Seconds to wait for the FalApp to be Ready (or waiting for capacity).",
)
@keys.kubeconfig_option
@keys.context_option
def deploy_command(
    *,
    app_ref: str,
    name: str | None,
    image: str | None,
    strategy: str,
    namespace: str | None,
    dry_run: bool,
    server_dry_run: bool,
    wait: bool,
    timeout_seconds: float,
    kubeconfig: pathlib.Path | None,
    context: str | None,
) -> None:
    """Deploy a fal.App class as a FalApp (server-side apply) and wait until it is Ready.

    \b
    Example:
      kubefal deploy app.py::MyApp -n team-a
      kubefal deploy app.py::MyApp -n team-a --dry-run > falapp.yaml
    """
    config = _read(app_ref)
    if namespace is None:
        namespace = (
            "default" if dry_run else kube.current_namespace(kubeconfig=kubeconfig, context=context)
        )
    target = _target(config=config, namespace=namespace, name=name, image=image, strategy=strategy)
    objects = manifests.manifests(config, target=target)
    if dry_run:
        click.echo(yaml.safe_dump_all(objects, sort_keys=False), nl=False)
        return
    client = kube.connect(kubeconfig=kubeconfig, context=context)
    falapp_manifest = objects[-1]
    with kube.translated(
        client,
        action=f"applying FalApp {namespace}/{target.name}",
        not_found_hint="install the kubefal CRDs and control plane first (`make dev` locally, "
        "or the Helm chart), and check that the namespace exists",
    ):
        applied = kube.apply_falapp(client, manifest=falapp_manifest, dry_run=server_dry_run)
    owner_uid = None if server_dry_run else applied["metadata"]["uid"]
    config_maps = manifests.source_config_maps(config, target=target, owner_uid=owner_uid)
    build_secret = manifests.build_secret_manifest(config, target=target, owner_uid=owner_uid)
    if build_secret is not None:
        with kube.translated(
            client, action=f"applying Secret {namespace}/{build_secret['metadata']['name']}"
        ):
            kube.apply_secret(client, manifest=build_secret, dry_run=server_dry_run)
    for config_map in config_maps:
        with kube.translated(
            client,
            action=f"applying ConfigMap {namespace}/{config_map['metadata']['name']}",
        ):
            kube.apply_config_map(client, manifest=config_map, dry_run=server_dry_run)
    if server_dry_run:
        ui.stdout.print(
            f"[green]✓[/green] The API server accepts FalApp {namespace}/{target.name} "
            "(dry run: nothing was stored)."
        )
        return
    ui.stdout.print(f"FalApp {namespace}/{target.name} applied.")
    if wait:
        _wait(
            client,
            namespace=namespace,
            name=target.name,
            generation=int(applied["metadata"].get("generation", 1)),
            timeout_seconds=timeout_seconds,
        )
        if manifests.uses_bundle(config) and target.image is None:
            # The new runners mount the new bundle; earlier bundles only take up etcd space.
            with kube.translated(client, action=f"removing earlier files of {target.name}"):
                removed = kube.delete_config_maps_except(
                    client,
                    namespace=namespace,
                    label_selector=f"{bundles.LABEL_SOURCE_OF}={target.name}",
                    keep={config_map["metadata"]["name"] for config_map in config_maps},
                )
            if removed:
                ui.note(f"Removed the earlier app-file ConfigMaps: {', '.join(sorted(removed))}")
