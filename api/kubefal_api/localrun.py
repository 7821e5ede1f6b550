"""The files ``kubefal run`` shares with the control plane it starts for the ``fal`` CLI.

Why it exists: ``kubefal run`` (``kubefal_cli``) owns the runner and gateway processes of one
local app; the control plane (``kubefal_controlplane``, started with ``--local-run DIR``)
serves fal's ``IsolateController`` for that app. Components may not import each other
(.importlinter), so the files through which they cooperate are named and read here, in the
shared leaf:

* ``<run dir>/local-run.json`` (:class:`RunState`, written once by ``kubefal run``): the app
  id, the gateway's static config file, pid and admin URL, the run's own API key record, and
  where the persistent keys and secrets live;
* ``<run dir>/falapp.json``: the app as a FalApp object (what ``kubefal render`` would write),
  written by ``kubefal run`` at start and by the control plane on ``fal apps scale``;
* ``<run dir>/runner.json`` (:class:`RunnerProcess`): the runner process now serving, rewritten
  by ``kubefal run`` at every (re)start;
* ``<run dir>/runner-restart``: the pid of a runner the control plane is stopping
  (``fal runners stop|kill``, ``fal apps rollout``, a new ``maxMultiplexing``); ``kubefal run``
  starts a replacement when that runner exits, as a Deployment replaces a deleted pod;
* ``<local dir>/keys.json``: key records made with ``fal keys create`` (hashes only), kept
  across runs; ``<local dir>/fal-secrets.json``: the ``fal secrets`` of namespace ``local``
  (the Secret the control plane keeps on a cluster), given to the runner as environment
  variables when it (re)starts. Both mode 0600.

Every file is replaced atomically (write a temporary file, rename), so a reader never sees
half of one.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import json
import os
import pathlib
import tempfile
from typing import Any, Final

from kubefal_api import apikeys

RUN_STATE: Final = "local-run.json"
FALAPP: Final = "falapp.json"
RUNNER: Final = "runner.json"
RUNNER_RESTART: Final = "runner-restart"
KEYS: Final = "keys.json"
SECRETS: Final = "fal-secrets.json"
MAX_FILE_BYTES: Final = 4 * 1024 * 1024
"""Largest shared file read (the secrets file is the only one that can grow)."""


def process_alive(pid: int) -> bool:
    """True while ``pid`` (one these files record) runs; a zombie (exited, not yet reaped)
    counts as gone, and so do pids 0 and below (``kill(0, 0)`` signals our own group)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    return True


def write_json(path: pathlib.Path, document: Any) -> None:
    """Replace ``path`` with ``document`` as JSON, atomically, mode 0600."""
    write_private(path, json.dumps(document, indent=2, sort_keys=True))


def write_private(path: pathlib.Path, text: str) -> None:
    """Replace ``path`` with ``text``, atomically (a temporary file renamed), mode 0600."""
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


def read_json(path: pathlib.Path) -> Any:
    """The JSON document in ``path``; None when the file does not exist."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    return json.loads(data)


@dataclasses.dataclass(frozen=True)
class RunState:
    """What ``kubefal run`` decided before the control plane starts."""

    app_id: str
    """``local/<app-name>``."""
    gateway_config: str
    """The gateway's ``--static-config`` file (JSON)."""
    gateway_pid: int
    """Signalled with SIGHUP after the control plane rewrites ``gateway_config``."""
    gateway_admin_url: str
    """``http://127.0.0.1:<admin port>`` (runners' in-flight requests and idle time)."""
    run_key: dict[str, str]
    """The run's own API key record (``kubefal_api.apikeys.string_data``)."""
    local_dir: str
    """Directory of the persistent ``keys.json`` and ``fal-secrets.json``."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, document: Any) -> RunState:
        if not isinstance(document, dict):
            raise ValueError(f"{RUN_STATE}: not a JSON object")
        try:
            return cls(
                app_id=str(document["app_id"]),
                gateway_config=str(document["gateway_config"]),
                gateway_pid=int(document["gateway_pid"]),
                gateway_admin_url=str(document["gateway_admin_url"]),
                run_key={str(k): str(v) for k, v in dict(document["run_key"]).items()},
                local_dir=str(document["local_dir"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{RUN_STATE}: {error}") from error


@dataclasses.dataclass(frozen=True)
class RunnerProcess:
    """The runner process now serving the app."""

    pid: int
    url: str
    """``http://127.0.0.1:<port>``: the runner id in the gateway's static config."""
    started: str
    """RFC 3339 UTC time the process was started."""
    log: str = ""
    """The log file the process writes to (stdout and stderr); empty: unknown."""
    log_offset: int = 0
    """Where this process's lines start in ``log`` (replacements append to the same file)."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, document: Any) -> RunnerProcess:
        if not isinstance(document, dict):
            raise ValueError(f"{RUNNER}: not a JSON object")
        try:
            return cls(
                pid=int(document["pid"]),
                url=str(document["url"]),
                started=str(document["started"]),
                log=str(document.get("log", "")),
                log_offset=int(document.get("log_offset", 0)),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{RUNNER}: {error}") from error


def secret_environment(path: pathlib.Path) -> dict[str, str]:
    """The ``fal secrets`` in ``path`` (a Secret object as JSON) as environment variables;
    entries that do not decode are left out. Empty when the file does not exist."""
    document = read_json(path)
    if not isinstance(document, dict):
        return {}
    data = document.get("data")
    if not isinstance(data, dict):
        return {}
    environment: dict[str, str] = {}
    for name, value in data.items():
        if not isinstance(name, str) or not isinstance(value, str):
            continue
        with contextlib.suppress(binascii.Error, UnicodeDecodeError):
            environment[name] = base64.b64decode(value, validate=True).decode("utf-8")
    return environment


def load_keys(path: pathlib.Path) -> list[apikeys.KeyRecord]:
    """The key records in ``keys.json`` (``{"keys": [<string_data>, ...]}``); malformed
    entries are left out. Empty when the file does not exist."""
    document = read_json(path)
    entries = document.get("keys") if isinstance(document, dict) else None
    records: list[apikeys.KeyRecord] = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        with contextlib.suppress(apikeys.InvalidKeyRecordError, TypeError, ValueError):
            records.append(apikeys.record_from_fields({str(k): str(v) for k, v in entry.items()}))
    return records


def save_keys(path: pathlib.Path, records: list[apikeys.KeyRecord]) -> None:
    write_json(path, {"keys": [apikeys.string_data(record) for record in records]})


def gateway_key_entry(record: apikeys.KeyRecord) -> dict[str, Any]:
    """``record`` as an entry of the gateway's static config ``keys`` list (hash only)."""
    entry: dict[str, Any] = {
        "id": record.id,
        "hash": record.hash,
        "namespaces": ",".join(record.namespaces),
        "revoked": record.revoked,
    }
    if apikeys.ALL_SCOPES not in record.scopes:
        entry["scopes"] = list(record.scopes)
    return entry
