"""The ``kubefal`` command group and its entry point.

Commands raise :class:`kubefal_cli.errors.CliError` for anything a user can fix; the group prints
it with its next step and exits non-zero, so no traceback reaches the terminal for expected
failures.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from kubefal_cli import errors, ui
from kubefal_cli.commands import deploy, inspect, keys, run


class _Group(click.Group):
    """A click group that turns :class:`errors.CliError` into a message and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.CliError as error:
            ui.show_error(error)
            ctx.exit(error.exit_code)


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="kubefal", prog_name="kubefal")
def cli() -> None:
    """kubefal: fal.App serverless on your own Kubernetes.

    \b
    Try it locally:   kubefal run app.py::MyApp
    Ship it:          kubefal deploy app.py::MyApp --namespace team-a
    Call it:          the unmodified fal_client, with FAL_KEY from `kubefal keys create`
    """


cli.add_command(run.run_command)
cli.add_command(deploy.deploy_command)
cli.add_command(deploy.render_command)
cli.add_command(inspect.apps_command)
cli.add_command(inspect.runners_command)
cli.add_command(keys.keys_group)


def main() -> None:
    """Console script ``kubefal``."""
    # urllib3 logs each connection retry as a warning; the CLI reports the final failure itself.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    cli(prog_name="kubefal")
