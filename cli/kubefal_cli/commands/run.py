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
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib.util
import json
import os
import pathlib
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import types
import uuid
from collections.abc import Iterator, Sequence

import click
import httpx
import rich.markup
import rich.progress

from kubefal_api import apikeys, localrun, naming, v1alpha1
from kubefal_cli import appref, errors, localca, manifests, paths, processes, ui

LOCAL_NAMESPACE = "local"
DEFAULT_QUEUE_PORT = 8443
READY_POLL_SECONDS = 0.25
STOP_GRACE_SECONDS = 30.0
_INTERNAL_PATH = " /_kubefal/"


@dataclasses.dataclass(frozen=True)
class Ports:
    queue: int
    run: int
    admin: int
    runner: int
    rest: int = 0
    """fal's REST/CDN API (files, realtime tokens): `FAL_REST_HOST` / `KUBEFAL_REST_HOST`."""
    grpc: int = 0
    """The control plane (fal's gRPC API): `FAL_GRPC_HOST`; 0: not started."""


@dataclasses.dataclass(frozen=True)
class EnvLines:
    run_host: str
    queue_run_host: str
    ssl_cert_file: pathlib.Path
    fal_key: str
    app_id: str
    rest_host: str = ""
    grpc_host: str = ""

    def render(self) -> str:
        # FAL_REST_HOST points the fal SDK (fal.toolkit uploads) at the gateway; the
        # kubefal_hosts hook does the same for fal_client from KUBEFAL_REST_HOST
        # (docs/fal-storage.md).
        rest = (
            f"FAL_REST_HOST={self.rest_host}\nKUBEFAL_REST_HOST={self.rest_host}\n"
            if self.rest_host
            else ""
        )
        # The fal CLI and SyncServerlessClient: gRPC to the control plane, trusting the local
        # CA through gRPC's own roots variable (the names `make dev` writes).
        grpc = (
            f"FAL_GRPC_HOST={self.grpc_host}\n"
            f"GRPC_DEFAULT_SSL_ROOTS_FILE_PATH={self.ssl_cert_file}\n"
            if self.grpc_host
            else ""
        )
        return (
            f"FAL_RUN_HOST={self.run_host}\n"
            f"FAL_QUEUE_RUN_HOST={self.queue_run_host}\n"
            f"{rest}"
            f"SSL_CERT_FILE={self.ssl_cert_file}\n"
            f"FAL_KEY={self.fal_key}\n"
            f"{grpc}"
            f"KUBEFAL_APP={self.app_id}\n"
        )


def _now_text() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _StopRequested(Exception):
    """SIGINT or SIGTERM arrived."""


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def choose_ports(requested: int, *, control_plane: bool = False) -> Ports:
    """``requested`` is the queue port, ``requested + 1`` the run port, ``requested + 2`` the
    REST (files) port and ``requested + 3`` the control plane's; 0 picks free ones."""
    if requested == 0:
        queue, run, admin, runner, rest, grpc = _free_ports(6)
        return Ports(
            queue=queue,
            run=run,
            admin=admin,
            runner=runner,
            rest=rest,
            grpc=grpc if control_plane else 0,
        )
    if not 1 <= requested <= 65532:
        raise errors.CliError(
            f"--port {requested} is out of range",
            hint="pass a port between 1024 and 65534, or --port 0 for free ports",
        )
    wanted = range(requested, requested + (4 if control_plane else 3))
    busy = [port for port in wanted if not _port_is_free(port)]
    if busy:
        raise errors.CliError(
            f"port(s) {', '.join(map(str, busy))} on 127.0.0.1 are already in use",
            hint="stop the other `kubefal run` (or whatever holds the port), or pass "
            "--port 0 to use free ports",
        )
    admin, runner = _free_ports(2)
    return Ports(
        queue=requested,
        run=requested + 1,
        admin=admin,
        runner=runner,
        rest=requested + 2,
        grpc=requested + 3 if control_plane else 0,
    )


def load_or_create_local_key(path: pathlib.Path) -> apikeys.ApiKey:
    """The key of local runs: read from ``path`` or generated once and saved there (0600)."""
    with contextlib.suppress(OSError, apikeys.InvalidApiKeyError):
        return apikeys.parse_key(path.read_text(encoding="utf-8"))
    key = apikeys.generate_key()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_private_atomically(path, str(key) + "\n")
    return key


def _write_private_atomically(path: pathlib.Path, text: str) -> None:
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def static_config(
    *,
    config: appref.AppConfig,
    runner_url: str,
    key_record: apikeys.KeyRecord,
    more_keys: Sequence[apikeys.KeyRecord] = (),
) -> dict[str, object]:
    """The gateway's static config (format: kubefal_gateway/settings.py) for one local app."""
    app: dict[str, object] = {
        "id": f"{LOCAL_NAMESPACE}/{config.app_name}",
        "auth": "shared",
        "runners": [runner_url],
        "maxMultiplexing": config.max_multiplexing or 1,
    }
    if config.request_timeout is not None:
        app["requestTimeout"] = config.request_timeout
    if config.skip_retry_conditions:
        app["skipRetryConditions"] = list(config.skip_retry_conditions)
    # Keys made with `fal keys create` in earlier runs (kept, hashed, in keys.json) stay valid.
    others = [localrun.gateway_key_entry(k) for k in more_keys if k.id != key_record.id]
    return {
        "apps": [app],
        "keys": [
            {
                "id": key_record.id,
                "hash": key_record.hash,
                "namespaces": ",".join(key_record.namespaces),
                "revoked": False,
            },
            *others,
        ],
    }


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


def _is_ready(client: httpx.Client, url: str) -> bool:
    if url.startswith("tcp://"):
        host, _, port = url.removeprefix("tcp://").rpartition(":")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(2.0)
            return probe.connect_ex((host, int(port))) == 0
    try:
        return client.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def _failure(child: processes.Child, *, what: str, hint: str) -> errors.CliError:
    return errors.CliError(
        f"the {child.name} {what}",
        hint=f"{hint} (full log: {child.log_path})",
        details=f"last lines of the {child.name} log:\n{child.log_tail()}",
    )


def _wait_until_ready(
    *,
    checks: Sequence[tuple[processes.Child, str, str]],
    timeout_seconds: float,
    stop: threading.Event,
) -> None:
    """Poll each ``(child, ready_url, description)`` with a progress line until all are ready."""
    deadline = time.monotonic() + timeout_seconds
    with (
        httpx.Client(timeout=httpx.Timeout(2.0), trust_env=False) as client,
        rich.progress.Progress(
            rich.progress.SpinnerColumn(finished_text="[green]✓"),
            rich.progress.TextColumn("{task.description}"),
            rich.progress.TimeElapsedColumn(),
            console=ui.stderr,
            transient=False,
        ) as progress,
    ):
        pending = {
            child.name: (child, url, progress.add_task(description, total=1))
            for child, url, description in checks
        }
        while pending:
            for name, (child, url, task) in list(pending.items()):
                if not child.running():
                    raise _failure(
                        child,
                        what=f"exited with code {child.process.returncode} before it was ready",
                        hint="fix the error in the log above and run again",
                    )
                if _is_ready(client, url):
                    progress.update(task, completed=1)
                    del pending[name]
            if pending and time.monotonic() > deadline:
                child = next(iter(pending.values()))[0]
                raise _failure(
                    child,
                    what=f"was not ready after {timeout_seconds:.0f} s",
                    hint="if setup() is slow (model downloads), pass a larger --timeout",
                )
            if stop.wait(READY_POLL_SECONDS):
                raise _StopRequested


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop``; the main loop notices and shuts down in order."""

    def request_stop(signum: int, frame: types.FrameType | None) -> None:
        stop.set()

    previous = {
        signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _example(app_id: str, arguments: dict[str, object]) -> str:
    return (
        'python -c "import fal_client; '
        f"print(fal_client.subscribe('{app_id}', arguments={arguments!r}, with_logs=True))\""
    )


def readable_log_line(line: str) -> str | None:
    """A runner log line as a person wants it: None for the access log of the gateway's probes
    and log polls, ``[LEVEL] message`` for the structured lines of the app's own output."""
    if _INTERNAL_PATH in line:
        return None
    if line.startswith("{"):
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and "message" in record:
                return f"[{record.get('level', 'INFO')}] {record['message']}"
    return line


def _show_app_log_line(line: str) -> None:
    readable = readable_log_line(line)
    if readable is not None:
        ui.stderr.print(rich.markup.escape(readable), soft_wrap=True, style="dim")


def _watch(plan: LocalRun, children: list[processes.Child], stop: threading.Event) -> None:
    """Until ``stop``: a runner the control plane stopped is replaced (on the same port, so
    the gateway's probe finds it); any other exit ends the run with that process's log."""
    while not stop.wait(READY_POLL_SECONDS):
        for index, child in enumerate(children):
            if child.running():
                continue
            if child.name == "runner" and plan.restart_requested(child):
                children[index] = plan.spawn_runner()
                with contextlib.suppress(OSError):
                    (plan.run_dir / localrun.RUNNER_RESTART).unlink()
                ui.note(f"Runner {child.pid} was stopped; started {children[index].pid}.")
                continue
            raise _failure(
                child,
                what=f"exited unexpectedly with code {child.process.returncode}",
                hint="fix the error in the log above and run again",
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
            creationTimestamp=_now_text(),
            generation=1,
            resourceVersion="1",
        )
        manifest["metadata"] = metadata
        return manifest

    def write_state(self, *, gateway: processes.Child) -> None:
        """The files the control plane reads (kubefal_api/localrun.py)."""
        record = apikeys.new_record(
            key=self.key, namespaces=[LOCAL_NAMESPACE], description="kubefal run"
        )
        state = localrun.RunState(
            app_id=self.app_id,
            gateway_config=str(self.gateway_config_path),
            gateway_pid=gateway.pid,
            gateway_admin_url=f"http://127.0.0.1:{self.ports.admin}",
            run_key=apikeys.string_data(record),
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
        environment = _child_environment()
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
            started=_now_text(),
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
            env=_child_environment(),
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
        environment = _child_environment()
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


def _child_environment() -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1")


def _plan(
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
    record = apikeys.new_record(key=key, namespaces=[LOCAL_NAMESPACE], description="kubefal run")
    gateway_config = static_config(
        config=config,
        runner_url=plan.runner_url,
        key_record=record,
        more_keys=localrun.load_keys(paths.local_dir() / localrun.KEYS) if control_plane else (),
    )
    plan.gateway_config_path.write_text(json.dumps(gateway_config, indent=2), encoding="utf-8")
    return plan


def _announce(plan: LocalRun, *, env_file: pathlib.Path | None) -> None:
    """Print the env lines on stdout (and write them), and how to use them on stderr."""
    lines = plan.env_lines().render()
    if env_file is not None:
        _write_private_atomically(env_file, lines)
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


def _serve_until_stopped(
    *,
    plan: LocalRun,
    children: list[processes.Child],
    runner: processes.Child,
    stop: threading.Event,
    follow_logs: bool,
) -> None:
    """Follow the runner's log until a signal arrives; a child that dies ends it with an error."""
    follower = processes.LogFollower(child=runner, emit=_show_app_log_line)
    if follow_logs:
        follower.start()
    try:
        _watch(plan, children, stop)
    finally:
        if follow_logs:
            follower.stop()


@click.command("run")
@click.argument("app_ref", metavar="APP.py::CLASS")
@click.option(
    "--port",
    type=int,
    default=DEFAULT_QUEUE_PORT,
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
    plan = _plan(
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
    with _stop_on_signals(stop):
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
            _wait_until_ready(
                checks=plan.readiness_checks(
                    runner=runner, gateway=gateway, controlplane=controlplane
                ),
                timeout_seconds=timeout_seconds,
                stop=stop,
            )
            _announce(plan, env_file=env_file)
            _serve_until_stopped(
                plan=plan, children=children, runner=runner, stop=stop, follow_logs=follow_logs
            )
            failed = False
        except _StopRequested:
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
