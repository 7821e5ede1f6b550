"""``kubefal keys create|list|revoke``: API keys as Kubernetes Secrets.

A key is ``<id>:<secret>``. The Secret (layout in ``kubefal_api.apikeys``) holds only a salted
scrypt hash of the secret, so the full key is printed once, by ``create``, and never again.

``revoke ID`` keeps the Secret and sets ``revoked: "true"``: the gateway refuses the key from then
on, and ``list`` still shows who had it and when. ``revoke ID --delete`` removes the Secret
instead (the gateway then no longer knows the key at all). Either takes effect as soon as the
gateway sees the change through its watch.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import click
import rich.box
import rich.panel
import rich.table
import rich.text

from kubefal_api import apikeys
from kubefal_cli import errors, kube, ui

DEFAULT_SECRET_NAMESPACE = "kubefal-system"

kubeconfig_option = click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    help="Kubeconfig file (default: $KUBECONFIG, which may list several, else ~/.kube/config).",
)
context_option = click.option("--context", help="Kubeconfig context (default: the current one).")
secret_namespace_option = click.option(
    "--secret-namespace",
    default=DEFAULT_SECRET_NAMESPACE,
    show_default=True,
    envvar="KUBEFAL_KEY_NAMESPACE",
    help="Namespace where the gateway reads key Secrets.",
)


def _missing_namespace_hint(secret_namespace: str) -> str:
    return (
        f"create the namespace (`kubectl create namespace {secret_namespace}`) or pass "
        "--secret-namespace with the namespace the gateway reads keys from"
    )


@click.group("keys")
def keys_group() -> None:
    """Create, list and revoke API keys (FAL_KEY values) for the gateway."""


@keys_group.command("create")
@click.option(
    "--namespace",
    "-n",
    "namespaces",
    multiple=True,
    help="Namespace whose private apps the key may call (repeat for several).",
)
@click.option("--all-namespaces", "-A", is_flag=True, help="The key may call apps everywhere.")
@click.option("--description", "-d", default="", help="Who or what the key is for.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the key (for scripts).")
@secret_namespace_option
@kubeconfig_option
@context_option
def create_command(
    *,
    namespaces: tuple[str, ...],
    all_namespaces: bool,
    description: str,
    quiet: bool,
    secret_namespace: str,
    kubeconfig: pathlib.Path | None,
    context: str | None,
) -> None:
    """Create a key and print it once; only its hash is stored.

    \b
    Example:
      kubefal keys create --namespace team-a --description "ci pipeline"
      FAL_KEY=$(kubefal keys create -n team-a -q)
    """
    if all_namespaces == bool(namespaces):
        raise errors.CliError(
            "say which namespaces the key may call apps in",
            hint="pass --namespace NS (repeatable) or --all-namespaces, not both",
        )
    key = apikeys.generate_key()
    try:
        record = apikeys.new_record(
            key=key,
            namespaces=[apikeys.ALL_NAMESPACES] if all_namespaces else namespaces,
            description=description,
        )
    except apikeys.InvalidKeyRecordError as error:
        raise errors.CliError(
            str(error), hint="use Kubernetes namespace names, e.g. --namespace team-a"
        ) from error
    client = kube.connect(kubeconfig=kubeconfig, context=context)
    with kube.translated(
        client,
        action=f"creating Secret {secret_namespace}/{apikeys.secret_name(key.id)}",
        not_found_hint=_missing_namespace_hint(secret_namespace),
    ):
        kube.create_secret(
            client, manifest=apikeys.secret_manifest(record, namespace=secret_namespace)
        )
    if quiet:
        click.echo(str(key))
        return
    scope = "all namespaces" if all_namespaces else ", ".join(record.namespaces)
    body = rich.text.Text()
    body.append(str(key), style="bold green")
    body.append("\n\nThis is the only time the key is shown; store it now.\n", style="yellow")
    body.append(f"id {key.id} · may call apps in: {scope}\n", style="dim")
    body.append(f"\nexport FAL_KEY={key}", style="cyan")
    ui.stdout.print(
        rich.panel.Panel(body, title="New kubefal API key", title_align="left", expand=False)
    )


def _records(client: kube.Kube, *, secret_namespace: str) -> list[apikeys.KeyRecord]:
    with kube.translated(
        client,
        action=f"listing key Secrets in {secret_namespace}",
        not_found_hint=_missing_namespace_hint(secret_namespace),
    ):
        secrets = kube.list_secrets(
            client, namespace=secret_namespace, label_selector=apikeys.LABEL_SELECTOR
        )
    records: list[apikeys.KeyRecord] = []
    for secret in secrets:
        try:
            records.append(apikeys.record_from_secret(secret))
        except apikeys.InvalidKeyRecordError as error:
            name = secret.get("metadata", {}).get("name", "?")
            ui.note(f"[yellow]skipping Secret {name}: {error}[/yellow]")
    return sorted(records, key=lambda record: (record.created, record.id))


def _as_json(record: apikeys.KeyRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "namespaces": list(record.namespaces),
        "description": record.description,
        "created": record.created.isoformat(),
        "revoked": record.revoked,
    }


@keys_group.command("list")
@click.option(
    "--output",
    "-o",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Table for people, JSON for scripts. Secrets are never shown.",
)
@secret_namespace_option
@kubeconfig_option
@context_option
def list_command(
    *,
    output: str,
    secret_namespace: str,
    kubeconfig: pathlib.Path | None,
    context: str | None,
) -> None:
    """List keys (id, namespaces, description, created, revoked); never the secrets."""
    client = kube.connect(kubeconfig=kubeconfig, context=context)
    records = _records(client, secret_namespace=secret_namespace)
    if output == "json":
        click.echo(json.dumps([_as_json(record) for record in records], indent=2))
        return
    if not records:
        ui.note(
            f"No keys in namespace {secret_namespace}. "
            "Create one with: kubefal keys create --namespace <ns>"
        )
        return
    table = rich.table.Table(box=rich.box.SIMPLE_HEAD)
    for column in ("ID", "NAMESPACES", "DESCRIPTION", "CREATED", "REVOKED"):
        table.add_column(column)
    for record in records:
        table.add_row(
            record.id,
            ",".join(record.namespaces),
            record.description,
            record.created.strftime("%Y-%m-%d %H:%M:%SZ"),
            "[red]yes[/red]" if record.revoked else "no",
        )
    ui.stdout.print(table)


@keys_group.command("revoke")
@click.argument("key_id", metavar="ID")
@click.option(
    "--delete",
    is_flag=True,
    help="Delete the Secret instead of marking it revoked (it then vanishes from `list`).",
)
@secret_namespace_option
@kubeconfig_option
@context_option
def revoke_command(
    *,
    key_id: str,
    delete: bool,
    secret_namespace: str,
    kubeconfig: pathlib.Path | None,
    context: str | None,
) -> None:
    """Revoke key ID: the gateway refuses it from then on.

    ID is the part before the ':' (kubefal keys list shows it).
    """
    key_id = key_id.partition(":")[0]
    if not apikeys.is_valid_key_id(key_id):
        raise errors.CliError(
            f"{key_id!r} is not a key id",
            hint="pass the id shown by `kubefal keys list` (kf + 16 hex characters)",
        )
    client = kube.connect(kubeconfig=kubeconfig, context=context)
    name = apikeys.secret_name(key_id)
    not_found = (
        f"no key {key_id} in namespace {secret_namespace}; see `kubefal keys list "
        f"--secret-namespace {secret_namespace}`"
    )
    if delete:
        with kube.translated(
            client, action=f"deleting Secret {secret_namespace}/{name}", not_found_hint=not_found
        ):
            kube.delete_secret(client, namespace=secret_namespace, name=name)
        ui.stdout.print(f"Key {key_id} deleted; the gateway no longer accepts it.")
        return
    with kube.translated(
        client, action=f"reading Secret {secret_namespace}/{name}", not_found_hint=not_found
    ):
        secret = kube.read_secret(client, namespace=secret_namespace, name=name)
    if secret.get("metadata", {}).get("labels", {}).get(apikeys.LABEL_API_KEY) != "true":
        raise errors.CliError(
            f"Secret {secret_namespace}/{name} is not a kubefal API key",
            hint="check the id with `kubefal keys list`",
        )
    with kube.translated(client, action=f"revoking Secret {secret_namespace}/{name}"):
        kube.patch_secret_string_data(
            client,
            namespace=secret_namespace,
            name=name,
            string_data={apikeys.FIELD_REVOKED: "true"},
        )
    ui.stdout.print(f"Key {key_id} revoked; the gateway refuses it from now on.")
