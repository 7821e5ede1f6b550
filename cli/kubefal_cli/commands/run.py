"""``kubefal run app.py::MyApp``: the app behind a real gateway on this machine, no cluster.

Starts three processes, each in its own process group:

* the runner, ``python -m kubefal_runner --app app.py::MyApp`` on a free loopback port
  (readiness probes bypass any HTTP(S)_PROXY of the shell);
* the gateway, ``python -m kubefal_gateway`` with TLS from a cached local CA, an SQLite queue and a
  static config naming one app, ``local/<app-name>`` (auth ``shared``), served by that runner, and
  one API key (only its hash is written to the config);
* the control plane, ``python -m kubefal_controlplane --local-run <run dir>`` (unless
  ``--no-control-plane``): fal's gRPC API for this one app, so the ``fal`` CLI and
  ``SyncServerlessClient`` list, scale and restart it (``kubefal_controlplane/local.py`` says
  what each command does; the files they share are ``kubefal_api/localrun.py``).

When all are ready it prints the lines that point the unmodified ``fal_client`` at the gateway
(``FAL_RUN_HOST``, ``FAL_QUEUE_RUN_HOST``, ``SSL_CERT_FILE``, ``FAL_KEY``) and the ``fal`` CLI at
the control plane (``FAL_GRPC_HOST``, ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``, the names ``make dev``
writes) plus ``KUBEFAL_APP``, writes them to ``--env-file`` if asked, and follows the runner's
log. Ctrl-C or SIGTERM stops every process group; if a process dies, the others are stopped and
its log tail is shown, except a runner the control plane stopped (``fal runners stop|kill``,
``fal apps rollout``, a new ``maxMultiplexing``): that one is replaced, as a Deployment replaces
a deleted pod, with the FalApp's current multiplexing and the ``fal secrets`` as environment.

``/data``: the runner sees ``<data root>/local`` (``--data-root``, default ``<state>/data``) at
``/data``, as a runner pod with ``persistentData`` sees its namespace's volume, with the Hugging
Face, torch and pip caches on it, so weights survive runner restarts and runs; the gateway serves
the same root to ``fal files`` and ``fal.sync_dir`` (``--data-root``). The mount needs a private
mount namespace (root and ``unshare``); without one the runner gets the directory's path in
``KUBEFAL_DATA_DIR`` and the caches, and a note says ``/data`` itself is not there.

The local key is kept in ``<state>/local/api-key`` (mode 0600) and the CA in
``<state>/local/local-ca/``, so exported variables stay valid across runs with the same ports.
Each run works in ``<state>/runs/run-*/`` (gateway config, logs, the queue unless ``--store``),
removed on a clean stop and kept, with its logs, when a process failed. ``<state>`` is
``$KUBEFAL_HOME``, else ``~/.cache/kubefal``.

The parts: :mod:`kubefal_cli.local.config` (ports, env lines, key, the gateway's static config),
:mod:`kubefal_cli.local.plan` (what a run is and how each process starts) and
:mod:`kubefal_cli.local.supervise` (readiness, signals, the runner's log, replacement); this
module is the command that orders them.
"""

from __future__ import annotations

import importlib.util
import pathlib
import shutil
import sys
import threading

import click
import rich.markup

from kubefal_api import localrun
from kubefal_cli import errors, paths, processes, ui
from kubefal_cli.local import config, supervise
from kubefal_cli.local import plan as local_plan

STOP_GRACE_SECONDS = 30.0


def _require_local_components() -> None:
    missing = [
        module
        for module in ("kubefal_runner", "kubefal_gateway", "fal")
        if importlib.util.find_spec(module) is None
    ]
    if missing:
        raise errors.CliError(
            f"`kubefal run` starts a runner and a gateway, but {', '.join(missing)} "
            "is not installed in this Python environment",
            hint=f"install them: {sys.executable} -m pip install 'kubefal[gateway,runner]'",
        )


def _example(app_id: str, arguments: dict[str, object]) -> str:
    return (
        'python -c "import fal_client; '
        f"print(fal_client.subscribe('{app_id}', arguments={arguments!r}, with_logs=True))\""
    )


def _announce(plan: local_plan.LocalRun, *, env_file: pathlib.Path | None) -> None:
    """Print the env lines on stdout (and write them), and how to use them on stderr."""
    lines = plan.env_lines().render()
    if env_file is not None:
        localrun.write_private(env_file, lines)
    click.echo(lines, nl=False)
    ui.stderr.print()
    if env_file is not None:
        ui.note(f"Wrote {env_file}. Load it with:  set -a; . {env_file}; set +a")
    example = _example(plan.app_id, plan.config.example_arguments)
    ui.stderr.print(f"Then call the app:  {rich.markup.escape(example)}", soft_wrap=True)
    if plan.ports.grpc:
        ui.stderr.print(
            f"Manage it with the fal CLI:  fal apps list; fal apps runners {plan.app_id}; "
            "fal runners list; fal files list",
            soft_wrap=True,
        )
    if plan.data_dir is not None:
        where = (
            "at /data" if plan.mount_data else "in $KUBEFAL_DATA_DIR (no /data mount: needs root)"
        )
        ui.note(f"The app's /data: {plan.data_dir} (the runner sees it {where}).")
    ui.note(f"Logs: {plan.run_dir}/{{runner,gateway,controlplane}}.log   Press Ctrl-C to stop.")


@click.command("run")
@click.argument("app_ref", metavar="APP.py::CLASS")
@click.option(
    "--port",
    type=int,
    default=config.DEFAULT_QUEUE_PORT,
    show_default=True,
    help="Queue API port (FAL_QUEUE_RUN_HOST); the run API (FAL_RUN_HOST) takes the next one. "
    "0 picks free ports.",
)
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    help="Also write the FAL_* lines to this file (mode 0600: it holds the key).",
)
@click.option(
    "--store",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    help="SQLite file for the queue, kept across runs (default: a temporary one).",
)
@click.option(
    "--key",
    "key_text",
    metavar="ID:SECRET",
    help="Use this API key instead of the saved local one.",
)
@click.option(
    "--timeout",
    "timeout_seconds",
    type=float,
    default=300.0,
    show_default=True,
    help="Seconds to wait for the runner (setup()) and the gateway to become ready.",
)
@click.option(
    "--control-plane/--no-control-plane",
    "control_plane",
    default=True,
    show_default=True,
    help="Also start fal's control plane for this app (FAL_GRPC_HOST: the fal CLI and "
    "SyncServerlessClient); on port --port + 3.",
)
@click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    help="Keep /data here: the runner's /data is DATA_ROOT/local, and fal files / "
    "fal.sync_dir reach it (default: <state>/data, kept across runs).",
)
@click.option(
    "--logs/--no-logs",
    "follow_logs",
    default=True,
    show_default=True,
    help="Show the app's log (stdout and stderr of setup() and requests) once ready.",
)
def run_command(
    *,
    app_ref: str,
    port: int,
    env_file: pathlib.Path | None,
    store: pathlib.Path | None,
    key_text: str | None,
    timeout_seconds: float,
    follow_logs: bool,
    control_plane: bool = True,
    data_root: pathlib.Path | None = None,
) -> None:
    """Serve a fal.App locally behind a kubefal gateway and print how to call it.

    \b
    Example:
      kubefal run app.py::MyApp --env-file .env.kubefal
      set -a; . ./.env.kubefal; set +a
      python -c "import fal_client; print(fal_client.subscribe('local/my-app', arguments={}))"
    """
    _require_local_components()
    if control_plane and importlib.util.find_spec("kubefal_controlplane") is None:
        ui.note(
            "kubefal_controlplane is not installed: no FAL_GRPC_HOST (pip install "
            "'kubefal[controlplane]', or pass --no-control-plane)"
        )
        control_plane = False
    plan = local_plan.make_plan(
        app_ref=app_ref,
        port=port,
        store=store,
        key_text=key_text,
        control_plane=control_plane,
        data_root=data_root if data_root is not None else paths.state_dir() / "data",
    )
    stop = threading.Event()
    children: list[processes.Child] = []
    failed = True
    with supervise.stop_on_signals(stop):
        try:
            runner = plan.spawn_runner()
            children.append(runner)
            gateway = plan.spawn_gateway()
            children.append(gateway)
            controlplane = None
            if plan.ports.grpc:
                plan.write_state(gateway=gateway)
                controlplane = plan.spawn_controlplane()
                children.append(controlplane)
            supervise.wait_until_ready(
                checks=plan.readiness_checks(
                    runner=runner, gateway=gateway, controlplane=controlplane
                ),
                timeout_seconds=timeout_seconds,
                stop=stop,
            )
            _announce(plan, env_file=env_file)
            supervise.serve_until_stopped(
                plan=plan, children=children, runner=runner, stop=stop, follow_logs=follow_logs
            )
            failed = False
        except supervise.StopRequested:
            failed = False
        finally:
            if children:
                with ui.stderr.status("Stopping the gateway and the runner ..."):
                    processes.stop_all(list(reversed(children)), grace_seconds=STOP_GRACE_SECONDS)
            if failed:
                ui.note(f"Logs kept in {plan.run_dir}")
            else:
                shutil.rmtree(plan.run_dir, ignore_errors=True)
    ui.note("Stopped; nothing is left running.")
