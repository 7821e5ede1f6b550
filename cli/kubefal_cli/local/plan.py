"""The plan of a ``kubefal run``: everything decided before a process starts (the app, its
key, ports, TLS files, run directory, ``/data``) and how each process of the run is started
(runner, gateway, control plane), with the files the control plane reads.

Why a module of its own: the command (:mod:`kubefal_cli.commands.run`) only orders the steps;
supervising the processes once started is :mod:`kubefal_cli.local.supervise`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import json
import os
import pathlib
import shutil
import sys
import tempfile
import uuid

import rich.markup

from kubefal_api import apikeys, localrun, naming, v1alpha1
from kubefal_cli import appref, errors, localca, manifests, paths, processes, ui
from kubefal_cli.local.config import (
    LOCAL_NAMESPACE,
    EnvLines,
    Ports,
    choose_ports,
    load_or_create_local_key,
    static_config,
)


def now_text() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


DATA_PATH = "/data"
DATA_CACHES = (
    ("HF_HOME", ".cache/huggingface"),
    ("TORCH_HOME", ".cache/torch"),
    ("TORCHINDUCTOR_CACHE_DIR", ".cache/torchinductor"),
    ("TRITON_CACHE_DIR", ".cache/triton"),
    ("PIP_CACHE_DIR", ".cache/pip"),
    ("UV_CACHE_DIR", ".cache/uv"),
)
"""The model and package caches a runner pod with persistentData keeps on /data (the
operator's render, docs/fal-storage.md), relative to /data."""

_BIND_DATA_AND_EXEC = (
    "import os, subprocess, sys\n"
    "os.makedirs(sys.argv[2], exist_ok=True)\n"
    "subprocess.run(['mount', '--bind', sys.argv[1], sys.argv[2]], check=True)\n"
    "os.execvp(sys.argv[3], sys.argv[3:])\n"
)
"""Run inside a private mount namespace: bind the data directory at /data, then exec the
runner (same pid, so signals reach it)."""


def can_mount_data() -> bool:
    """A private mount namespace with /data bound needs root, unshare(1) and mount(8)."""
    return (
        sys.platform == "linux"
        and os.geteuid() == 0
        and shutil.which("unshare") is not None
        and shutil.which("mount") is not None
    )


@dataclasses.dataclass(frozen=True)
class LocalRun:
    """Everything decided before a process starts: app, key, ports, TLS files, run directory."""

    ref: appref.AppRef
    config: appref.AppConfig
    key: apikeys.ApiKey
    ports: Ports
    tls: localca.LocalTls
    run_dir: pathlib.Path
    store_path: pathlib.Path
    data_root: pathlib.Path | None = None
    """The gateway's --data-root; the runner's /data is its ``local`` subdirectory."""
    mount_data: bool = False
    """Bind the data directory at /data in the runner's own mount namespace."""

    @property
    def app_id(self) -> str:
        return f"{LOCAL_NAMESPACE}/{self.config.app_name}"

    @property
    def data_dir(self) -> pathlib.Path | None:
        return None if self.data_root is None else self.data_root / LOCAL_NAMESPACE

    @functools.cached_property
    def key_record(self) -> apikeys.KeyRecord:
        """The run key's record (its scrypt hash, made once): in the gateway's config and in
        the state the control plane reads."""
        return apikeys.new_record(
            key=self.key, namespaces=[LOCAL_NAMESPACE], description="kubefal run"
        )

    @property
    def runner_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.runner}"

    def falapp(self) -> dict[str, object]:
        """The app as the FalApp ``kubefal render`` would write, as this run serves it
        (``shared`` auth, the run's one key), for the control plane."""
        manifest = manifests.falapp_manifest(
            self.config,
            target=manifests.Target(
                namespace=LOCAL_NAMESPACE,
                name=self.config.app_name,
                image=f"local:{self.ref.path}",
            ),
        )
        spec = dict(manifest["spec"])
        spec["auth"] = v1alpha1.AuthMode.SHARED.value
        manifest["spec"] = spec
        metadata = dict(manifest["metadata"])
        metadata.update(
            uid=str(uuid.uuid4()),
            creationTimestamp=now_text(),
            generation=1,
            resourceVersion="1",
        )
        manifest["metadata"] = metadata
        return manifest

    def write_state(self, *, gateway: processes.Child) -> None:
        """The files the control plane reads (kubefal_api/localrun.py)."""
        state = localrun.RunState(
            app_id=self.app_id,
            gateway_config=str(self.gateway_config_path),
            gateway_pid=gateway.pid,
            gateway_admin_url=f"http://127.0.0.1:{self.ports.admin}",
            run_key=apikeys.string_data(self.key_record),
            local_dir=str(paths.local_dir()),
        )
        localrun.write_json(self.run_dir / localrun.RUN_STATE, state.to_json())
        if not (self.run_dir / localrun.FALAPP).exists():
            localrun.write_json(self.run_dir / localrun.FALAPP, self.falapp())

    def _scaled_multiplexing(self) -> int | None:
        """maxMultiplexing as `fal apps scale` last set it (None: the class's)."""
        with contextlib.suppress(ValueError, OSError):
            app = localrun.read_json(self.run_dir / localrun.FALAPP)
            value = app["spec"]["scaling"]["maxMultiplexing"] if isinstance(app, dict) else None
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None

    def restart_requested(self, runner: processes.Child) -> bool:
        """The control plane stopped this runner and wants a replacement."""
        with contextlib.suppress(OSError, ValueError):
            marker = (self.run_dir / localrun.RUNNER_RESTART).read_text().strip()
            return int(marker) == runner.pid
        return False

    @property
    def gateway_config_path(self) -> pathlib.Path:
        return self.run_dir / "gateway.json"

    def env_lines(self) -> EnvLines:
        return EnvLines(
            run_host=f"127.0.0.1:{self.ports.run}",
            queue_run_host=f"127.0.0.1:{self.ports.queue}",
            ssl_cert_file=self.tls.ca_bundle,
            fal_key=str(self.key),
            app_id=self.app_id,
            rest_host=f"127.0.0.1:{self.ports.rest}" if self.ports.rest else "",
            # localhost, not 127.0.0.1: the local CA's name constraint is DNS-only, which
            # gRPC's TLS stack accepts (kubefal_cli/localca.py).
            grpc_host=f"localhost:{self.ports.grpc}" if self.ports.grpc else "",
        )

    def runner_environment(self) -> dict[str, str]:
        """What fal.toolkit needs in the runner to upload through the gateway (Image.from_pil,
        File.from_bytes, upload_image): the REST host, an id:secret key and the CA."""
        environment = child_environment()
        # `fal secrets set` (through the control plane) reaches the runner as fal's do: as
        # environment variables when it starts.
        secrets_path = paths.local_dir() / localrun.SECRETS
        try:
            environment.update(localrun.secret_environment(secrets_path))
        except ValueError as error:
            ui.note(f"fal secrets not given to the runner: {secrets_path}: {error}")
        if self.ports.rest:
            environment.update(
                FAL_REST_HOST=f"127.0.0.1:{self.ports.rest}",
                FAL_KEY=str(self.key),
                SSL_CERT_FILE=str(self.tls.ca_bundle),
            )
        if self.data_dir is not None:
            base = DATA_PATH if self.mount_data else str(self.data_dir)
            environment["KUBEFAL_DATA_DIR"] = base
            environment.update({name: f"{base}/{path}" for name, path in DATA_CACHES})
        multiplexing = self._scaled_multiplexing()
        if multiplexing is not None:
            environment["KUBEFAL_MAX_MULTIPLEXING"] = str(multiplexing)
        return environment

    def spawn_runner(self) -> processes.Child:
        arguments = [
            *("--app", f"{self.ref.path}::{self.config.class_name}"),
            *("--host", "127.0.0.1"),
            *("--port", str(self.ports.runner)),
            *("--metrics-port", "0"),
        ]
        environment = self.runner_environment()
        # The app's requirements, installed by the runner as in a runner pod: layer by layer
        # into cached environments (the runner's default cache, ~/.cache/kubefal/venvs),
        # on top of this interpreter's packages.
        environment["KUBEFAL_REQUIREMENTS"] = json.dumps(
            [list(layer) for layer in self.config.requirement_layers]
        )
        argv = [sys.executable, "-m", "kubefal_runner", *arguments]
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            if self.mount_data:
                argv = [
                    *("unshare", "--mount", "--propagation", "private", "--"),
                    *(sys.executable, "-c", _BIND_DATA_AND_EXEC),
                    *(str(self.data_dir), DATA_PATH),
                    *argv,
                ]
        log_path = self.run_dir / "runner.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        child = processes.spawn(
            name="runner", argv=argv, log_path=log_path, env=environment, cwd=pathlib.Path.cwd()
        )
        process = localrun.RunnerProcess(
            pid=child.pid,
            url=self.runner_url,
            started=now_text(),
            log=str(log_path),
            log_offset=offset,
        )
        localrun.write_json(self.run_dir / localrun.RUNNER, process.to_json())
        return child

    def spawn_gateway(self) -> processes.Child:
        arguments = [
            *("--host", "127.0.0.1"),
            *("--queue-port", str(self.ports.queue)),
            *("--run-port", str(self.ports.run)),
            *("--admin-port", str(self.ports.admin)),
            *("--tls-cert", str(self.tls.server_cert)),
            *("--tls-key", str(self.tls.server_key)),
            *("--store", f"sqlite://{self.store_path}"),
            *("--static-config", str(self.gateway_config_path)),
            # On a laptop the webhook receiver is usually a local program; a gateway in a
            # cluster refuses loopback and private targets unless its operator allows them.
            *("--webhook-allow", "127.0.0.0/8,::1/128"),
        ]
        if self.ports.rest:
            # Files are kept across runs (with the signing key, in the store), so URLs printed
            # by one run still work in the next.
            arguments += [
                *("--rest-port", str(self.ports.rest)),
                *("--storage", str(paths.local_dir() / "files")),
            ]
            if self.data_root is not None:
                # fal files / fal.sync_dir: namespace local's /data is <data root>/local.
                arguments += ["--data-root", str(self.data_root)]
        return processes.spawn(
            name="gateway",
            argv=[sys.executable, "-m", "kubefal_gateway", *arguments],
            log_path=self.run_dir / "gateway.log",
            env=child_environment(),
        )

    def spawn_controlplane(self) -> processes.Child:
        """fal's gRPC API for this run's app (kubefal_controlplane/local.py), on the gateway's
        certificate (localhost and 127.0.0.1)."""
        arguments = [
            *("--host", "127.0.0.1"),
            *("--port", str(self.ports.grpc)),
            *("--tls-cert", str(self.tls.server_cert)),
            *("--tls-key", str(self.tls.server_key)),
            *("--local-run", str(self.run_dir)),
            *("--public-run-url", f"https://127.0.0.1:{self.ports.run}"),
            *("--public-queue-url", f"https://127.0.0.1:{self.ports.queue}"),
        ]
        environment = child_environment()
        if self.ports.rest:
            # fal files and fal.sync_dir send REST to FAL_GRPC_HOST; the control plane's
            # front door relays /files/* to the gateway's REST listener.
            environment.update(
                KUBEFAL_GATEWAY_REST_URL=f"https://127.0.0.1:{self.ports.rest}",
                KUBEFAL_GATEWAY_REST_CA=str(self.tls.ca_bundle),
            )
        return processes.spawn(
            name="control plane",
            argv=[sys.executable, "-m", "kubefal_controlplane", *arguments],
            log_path=self.run_dir / "controlplane.log",
            env=environment,
        )

    def readiness_checks(
        self,
        *,
        runner: processes.Child,
        gateway: processes.Child,
        controlplane: processes.Child | None = None,
    ) -> list[tuple[processes.Child, str, str]]:
        app = f"{rich.markup.escape(self.ref.path.name)}::{self.config.class_name}"
        grpc = (
            [
                (
                    controlplane,
                    f"tcp://127.0.0.1:{self.ports.grpc}",
                    f"control  fal CLI :{self.ports.grpc} (gRPC, TLS)",
                )
            ]
            if controlplane is not None
            else []
        )
        return [
            *grpc,
            (
                runner,
                f"http://127.0.0.1:{self.ports.runner}{naming.RUNNER_READY_PATH}",
                f"runner   {app} (import, setup())",
            ),
            (
                gateway,
                f"http://127.0.0.1:{self.ports.admin}/readyz",
                f"gateway  queue :{self.ports.queue}, run :{self.ports.run} (TLS)",
            ),
        ]


def child_environment() -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1")


def make_plan(
    *,
    app_ref: str,
    port: int,
    store: pathlib.Path | None,
    key_text: str | None,
    control_plane: bool = False,
    data_root: pathlib.Path | None = None,
) -> LocalRun:
    """Read the app, settle the key, ports and TLS files, and write the gateway's config."""
    ref = appref.parse_ref(app_ref)
    if key_text is not None:
        try:
            key = apikeys.parse_key(key_text)
        except apikeys.InvalidApiKeyError as error:
            raise errors.CliError(
                f"--key is not a kubefal API key: {error}",
                hint="pass --key <id>:<secret> as `kubefal keys create` prints it, or omit --key",
            ) from error
    else:
        key = load_or_create_local_key(paths.local_dir() / "api-key")
    with ui.stderr.status(f"Reading {rich.markup.escape(str(ref))} ..."):
        config = appref.read_config(ref)
    ports = choose_ports(port, control_plane=control_plane)
    runs = paths.state_dir() / "runs"
    runs.mkdir(parents=True, exist_ok=True, mode=0o700)
    run_dir = pathlib.Path(tempfile.mkdtemp(prefix="run-", dir=runs))
    plan = LocalRun(
        ref=ref,
        config=config,
        key=key,
        ports=ports,
        tls=localca.ensure(paths.local_dir() / "local-ca"),
        run_dir=run_dir,
        store_path=store.resolve() if store is not None else run_dir / "queue.db",
        data_root=data_root.resolve() if data_root is not None else None,
        mount_data=data_root is not None and can_mount_data(),
    )
    gateway_config = static_config(
        config=config,
        runner_url=plan.runner_url,
        key_record=plan.key_record,
        more_keys=localrun.load_keys(paths.local_dir() / localrun.KEYS) if control_plane else (),
    )
    plan.gateway_config_path.write_text(json.dumps(gateway_config, indent=2), encoding="utf-8")
    return plan
