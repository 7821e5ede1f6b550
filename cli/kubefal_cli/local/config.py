"""What a ``kubefal run`` is configured with before anything starts: its ports (and the env
lines that name them), its API key, and the gateway's static config.

Why a module of its own: these are decisions without processes (free ports, a key file, a config
dict) that tests check on their own; :mod:`kubefal_cli.local.plan` turns them into the processes
of a run, :mod:`kubefal_cli.commands.run` is the command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import shlex
import socket
from collections.abc import Sequence

from kubefal_api import apikeys, localrun
from kubefal_cli import appref, errors

LOCAL_NAMESPACE = "local"
DEFAULT_QUEUE_PORT = 8443


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
        """The ``NAME=value`` lines, each value shell-quoted when it needs it (a path under a
        ``$KUBEFAL_HOME`` with spaces, ``$`` or a newline), since the file is sourced by a shell
        (``set -a; . FILE``): a value never runs as a command or spills into another line."""
        return "".join(f"{name}={shlex.quote(value)}\n" for name, value in self._pairs())

    def _pairs(self) -> list[tuple[str, str]]:
        # FAL_REST_HOST points the fal SDK (fal.toolkit uploads) at the gateway; the
        # kubefal_hosts hook does the same for fal_client from KUBEFAL_REST_HOST
        # (docs/fal-storage.md).
        rest = (
            [("FAL_REST_HOST", self.rest_host), ("KUBEFAL_REST_HOST", self.rest_host)]
            if self.rest_host
            else []
        )
        # The fal CLI and SyncServerlessClient: gRPC to the control plane, trusting the local
        # CA through gRPC's own roots variable (the names `make dev` writes).
        grpc = (
            [
                ("FAL_GRPC_HOST", self.grpc_host),
                ("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", str(self.ssl_cert_file)),
            ]
            if self.grpc_host
            else []
        )
        return [
            ("FAL_RUN_HOST", self.run_host),
            ("FAL_QUEUE_RUN_HOST", self.queue_run_host),
            *rest,
            ("SSL_CERT_FILE", str(self.ssl_cert_file)),
            ("FAL_KEY", self.fal_key),
            *grpc,
            ("KUBEFAL_APP", self.app_id),
        ]


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
    localrun.write_private(path, str(key) + "\n")
    return key


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
