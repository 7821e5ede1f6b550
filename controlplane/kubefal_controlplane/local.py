"""The control plane of one ``kubefal run``: fal's API for the app on this machine, no Kubernetes.

Why it exists: ``kubefal run`` serves one ``fal.App`` with a local runner process and gateway;
the ``fal`` CLI and ``SyncServerlessClient`` should manage it with the same commands as an app
on a cluster. :class:`LocalRun` is a :class:`kubefal_controlplane.backend.Backend` over the
files ``kubefal run`` writes (:mod:`kubefal_api.localrun`): the app is a FalApp object kept in
the run directory, the runner process shows as one runner pod named ``<app>-runner-<pid>``,
API keys are the run's own key plus those made with ``fal keys create`` (kept in the local
state directory), and ``fal secrets`` are kept there too.

What each command does here:

* ``fal apps list|runners``, ``fal runners list``: the app and its runner process, with the
  gateway's live in-flight count and idle time;
* ``fal apps scale``: writes the FalApp and the gateway's static config, then SIGHUPs the
  gateway, which applies ``maxMultiplexing``, ``requestTimeout`` and the scaling fields at once
  (its scaling signal uses them; ``kubefal run`` keeps one runner whatever they say). A new
  ``maxMultiplexing`` also replaces the runner, which enforces it itself (on a cluster it rolls
  the runners too); machine types, regions and ``startupTimeout`` are recorded only;
* ``fal runners stop|kill``, ``fal apps rollout``: SIGTERM or SIGKILL to the runner, after
  noting its pid in ``runner-restart`` so that ``kubefal run`` starts a replacement, as a
  Deployment replaces a deleted pod;
* ``fal keys create|list|revoke``: the run's key and ``keys.json``; the gateway is told at
  once (the run's own key cannot be revoked while it runs);
* ``fal secrets set|list|unset``: ``fal-secrets.json``, given to the runner as environment
  variables when it next starts (``fal apps rollout`` restarts it);
* ``fal deploy``, ``fal apps delete``: ``FAILED_PRECONDITION`` naming what to use instead.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import logging
import os
import pathlib
import signal
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from typing import Any

import grpc
import pydantic

from kubefal_api import apikeys, localrun, naming, v1alpha1
from kubefal_controlplane import errors, gateway_admin, local_logs, mapping
from kubefal_controlplane import settings as settings_module

logger = logging.getLogger(__name__)

SECRETS_NAME = "kubefal-secrets"
"""The Secret name ``fal secrets`` uses on a cluster (the only one served here)."""


def _now_text() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _merge(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """JSON merge patch (RFC 7386) of ``patch`` into ``base``."""
    for key, value in patch.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(base.get(key), dict):
            base[key] = _merge(dict(base[key]), value)
        else:
            base[key] = copy.deepcopy(value)
    return base


class LocalRun:
    """The one app of a ``kubefal run``, as FalApp, pod, key and Secret dicts."""

    def __init__(self, run_dir: pathlib.Path, settings: settings_module.Settings) -> None:
        document = localrun.read_json(run_dir / localrun.RUN_STATE)
        if document is None:
            raise ValueError(f"{run_dir / localrun.RUN_STATE} does not exist")
        self.run_dir = run_dir
        self.settings = settings
        self.state = localrun.RunState.from_json(document)
        self.namespace, _, self.app_name = self.state.app_id.partition("/")
        self.local_dir = pathlib.Path(self.state.local_dir)
        self.run_key = apikeys.record_from_fields(self.state.run_key)
        self.node = socket.gethostname()
        self._lock = threading.Lock()

    def close(self) -> None:
        """Nothing to release: every call reads the files afresh."""

    # ---- API keys -------------------------------------------------------------------------

    @property
    def _keys_path(self) -> pathlib.Path:
        return self.local_dir / localrun.KEYS

    def _stored_keys(self) -> list[apikeys.KeyRecord]:
        return [k for k in localrun.load_keys(self._keys_path) if k.id != self.run_key.id]

    def read_key_record(self, key_id: str) -> apikeys.KeyRecord | None:
        if key_id == self.run_key.id:
            return self.run_key
        return next((k for k in self._stored_keys() if k.id == key_id), None)

    def list_key_records(self) -> list[apikeys.KeyRecord]:
        return [self.run_key, *self._stored_keys()]

    def create_key_secret(self, record: apikeys.KeyRecord) -> None:
        with self._lock:
            self.local_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            localrun.save_keys(self._keys_path, [*self._stored_keys(), record])
            self._sync_gateway()

    def revoke_key(self, key_id: str) -> None:
        if key_id == self.run_key.id:
            raise errors.failed_precondition(
                f"key_id: {key_id} is the key this `kubefal run` serves with (its FAL_KEY); "
                "stop it and start it with another key (--key) to retire this one"
            )
        with self._lock:
            records = self._stored_keys()
            if not any(k.id == key_id for k in records):
                raise errors.not_found(f"key {key_id} not found")
            revoked = [
                dataclasses.replace(k, revoked=True) if k.id == key_id else k for k in records
            ]
            localrun.save_keys(self._keys_path, revoked)
            self._sync_gateway()

    # ---- the gateway ----------------------------------------------------------------------

    def _sync_gateway(self) -> None:
        """Write the app's FalApp spec and the keys into the gateway's static config, then
        SIGHUP the gateway to apply them (caller holds the lock)."""
        path = pathlib.Path(self.state.gateway_config)
        config = localrun.read_json(path)
        if not isinstance(config, dict):
            raise errors.RpcFailure(
                grpc.StatusCode.UNAVAILABLE, "the local gateway's config is missing"
            )
        spec = self._read_app()["spec"]
        scaling = dict(spec.get("scaling") or {})
        for entry in config.get("apps") or []:
            if isinstance(entry, dict) and entry.get("id") == self.state.app_id:
                entry["scaling"] = scaling
                if "maxMultiplexing" in scaling:
                    entry["maxMultiplexing"] = scaling["maxMultiplexing"]
                if "requestTimeout" in spec:
                    entry["requestTimeout"] = spec["requestTimeout"]
        config["keys"] = [localrun.gateway_key_entry(k) for k in self.list_key_records()]
        localrun.write_json(path, config)
        try:
            os.kill(self.state.gateway_pid, signal.SIGHUP)
        except OSError as error:
            logger.warning(
                "could not signal the gateway (pid %d): %s", self.state.gateway_pid, error
            )

    # ---- FalApps ---------------------------------------------------------------------------

    def _read_app(self) -> dict[str, Any]:
        app = localrun.read_json(self.run_dir / localrun.FALAPP)
        if not isinstance(app, dict):
            raise errors.RpcFailure(grpc.StatusCode.UNAVAILABLE, "the local run's app is missing")
        return app

    def _app_in(self, namespaces: tuple[str, ...] | None) -> list[dict[str, Any]]:
        if namespaces is not None and self.namespace not in namespaces:
            return []
        return [self._read_app()]

    def list_falapps(self, namespaces: tuple[str, ...] | None) -> list[dict[str, Any]]:
        return self._app_in(namespaces)

    def find_falapps_named(
        self, name: str, namespaces: tuple[str, ...] | None
    ) -> list[dict[str, Any]]:
        return [app for app in self._app_in(namespaces) if app["metadata"]["name"] == name]

    def get_falapp(self, namespace: str, name: str) -> dict[str, Any] | None:
        if (namespace, name) != (self.namespace, self.app_name):
            return None
        return self._read_app()

    def patch_falapp(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """``fal apps scale``: merge the spec, apply it to the gateway (and a new
        maxMultiplexing to the runner, by replacing it)."""
        if self.get_falapp(namespace, name) is None:
            raise errors.not_found(f"App {namespace}/{name} not found")
        with self._lock:
            app = self._read_app()
            before = (app.get("spec") or {}).get("scaling", {}).get("maxMultiplexing")
            meta = app["metadata"]
            meta["annotations"] = {
                **(meta.get("annotations") or {}),
                **((patch.get("metadata") or {}).get("annotations") or {}),
            }
            spec = _merge(dict(app.get("spec") or {}), patch.get("spec") or {})
            try:
                v1alpha1.FalAppSpec.model_validate(spec)
            except pydantic.ValidationError as error:
                raise errors.invalid_argument(
                    "application_name", str(error.errors()[0].get("msg", error))
                ) from error
            app["spec"] = spec
            meta["generation"] = int(meta.get("generation") or 1) + 1
            meta["resourceVersion"] = str(int(meta.get("resourceVersion") or 1) + 1)
            localrun.write_json(self.run_dir / localrun.FALAPP, app)
            self._sync_gateway()
        after = spec.get("scaling", {}).get("maxMultiplexing")
        if after != before:
            runner = self._runner()
            if runner is not None and localrun.process_alive(runner.pid):
                self._replace(runner, signal.SIGTERM)
        return app

    def _no_deploy(self) -> errors.RpcFailure:
        return errors.failed_precondition(
            f"`kubefal run` serves the one app it was started with ({self.state.app_id}); "
            "it does not deploy apps. Deploy to a cluster's control plane instead (`make dev` "
            "locally, or the Helm chart; then FAL_GRPC_HOST is that control plane), or serve "
            "another app locally with `kubefal run other.py::OtherApp`"
        )

    def refuse_deploy(self) -> None:
        raise self._no_deploy()

    def create_falapp(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        raise self._no_deploy()

    def replace_falapp(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        raise self._no_deploy()

    def build_pods(self, namespace: str, job: str) -> list[dict[str, Any]]:
        raise self._no_deploy()  # no deploy, so no image build either

    def follow_build_log(self, namespace: str, name: str) -> Any:
        raise self._no_deploy()

    def ensure_config_map(self, namespace: str, body: dict[str, Any]) -> None:
        raise self._no_deploy()

    def delete_config_maps(self, namespace: str, *, label_selector: str, keep: str) -> None:
        raise self._no_deploy()

    def adopt_config_map(self, namespace: str, name: str, owner: dict[str, Any]) -> None:
        raise self._no_deploy()

    def delete_falapp(self, namespace: str, name: str) -> None:
        raise errors.failed_precondition(
            f"alias: {namespace}/{name} is the app of a `kubefal run`; stop it with Ctrl-C "
            "(or SIGTERM) instead of fal apps delete"
        )

    # ---- the runner process ----------------------------------------------------------------

    def _runner(self) -> localrun.RunnerProcess | None:
        try:
            document = localrun.read_json(self.run_dir / localrun.RUNNER)
            return None if document is None else localrun.RunnerProcess.from_json(document)
        except ValueError as error:
            logger.warning("runner file unreadable: %s", error)
            return None

    def _stopping(self, runner: localrun.RunnerProcess) -> bool:
        with contextlib.suppress(OSError, ValueError):
            marker = (self.run_dir / localrun.RUNNER_RESTART).read_text().strip()
            return int(marker) == runner.pid
        return False

    def _ready(self, runner: localrun.RunnerProcess) -> bool:
        request = urllib.request.Request(runner.url + naming.RUNNER_READY_PATH)
        # The runner is on loopback: never through a proxy of the environment.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=self.settings.gateway_timeout) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _pod_name(self, runner: localrun.RunnerProcess) -> str:
        return f"{self.app_name}-runner-{runner.pid}"

    def _pod(self) -> dict[str, Any] | None:
        """The runner process as a runner pod (what :mod:`mapping` reads of one)."""
        runner = self._runner()
        if runner is None:
            return None
        alive = localrun.process_alive(runner.pid)
        stopping = self._stopping(runner)
        ready = alive and not stopping and self._ready(runner)
        metadata: dict[str, Any] = {
            "name": self._pod_name(runner),
            "namespace": self.namespace,
            "uid": f"pid-{runner.pid}",
            "creationTimestamp": runner.started,
            "labels": {
                naming.LABEL_APP: self.app_name,
                naming.LABEL_COMPONENT: naming.COMPONENT_RUNNER,
            },
        }
        if stopping and alive:
            metadata["deletionTimestamp"] = _now_text()
        return {
            "metadata": metadata,
            "spec": {"nodeName": self.node},
            "status": {
                "phase": "Running" if alive else "Failed",
                "startTime": runner.started,
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            },
        }

    def list_runner_pods(
        self, namespaces: tuple[str, ...] | None, *, app_name: str | None = None
    ) -> list[dict[str, Any]]:
        if namespaces is not None and self.namespace not in namespaces:
            return []
        if app_name is not None and app_name != self.app_name:
            return []
        pod = self._pod()
        return [] if pod is None else [pod]

    def find_runner_pods(
        self, pod_name: str, namespaces: tuple[str, ...] | None
    ) -> list[dict[str, Any]]:
        return [
            pod for pod in self.list_runner_pods(namespaces) if pod["metadata"]["name"] == pod_name
        ]

    def runner_details(
        self, *, namespace: str, name: str
    ) -> dict[str, mapping.RunnerDetail] | None:
        """The gateway knows the runner by its URL; the control plane shows it by pod name."""
        runner = self._runner()
        if runner is None:
            return {}
        details = gateway_admin.runner_details(
            self.state.gateway_admin_url,
            namespace=namespace,
            name=name,
            timeout=self.settings.gateway_timeout,
        )
        if details is None:
            return None
        # The gateway names a static runner by its address (host:port).
        detail = details.get(runner.url) or details.get(urllib.parse.urlsplit(runner.url).netloc)
        return {} if detail is None else {self._pod_name(runner): detail}

    def runner_details_by_app(
        self, namespaces: tuple[str, ...] | None
    ) -> dict[str, dict[str, mapping.RunnerDetail]] | None:
        """The one app's :meth:`runner_details` (a local run has one app)."""
        if namespaces is not None and self.namespace not in namespaces:
            return {}
        details = self.runner_details(namespace=self.namespace, name=self.app_name)
        return None if details is None else {f"{self.namespace}/{self.app_name}": details}

    def _replace(self, runner: localrun.RunnerProcess, signum: signal.Signals) -> None:
        """Stop the runner; ``kubefal run`` sees the note and starts a replacement."""
        (self.run_dir / localrun.RUNNER_RESTART).write_text(f"{runner.pid}\n", encoding="utf-8")
        # The runner leads its own process group (kubefal run starts it in a new session).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(runner.pid, signum)

    def delete_pod(self, namespace: str, name: str, *, grace_seconds: int | None) -> None:
        runner = self._runner()
        if (
            runner is None
            or self._pod_name(runner) != name
            or not localrun.process_alive(runner.pid)
        ):
            raise errors.not_found(f"runner {name} is not running")
        self._replace(runner, signal.SIGKILL if grace_seconds == 0 else signal.SIGTERM)

    def restart_runners(self, namespace: str, app_name: str, *, at: str) -> None:
        runner = self._runner()
        if runner is None or not localrun.process_alive(runner.pid):
            raise errors.failed_precondition(
                f"{namespace}/{app_name} has no runner process right now; kubefal run starts one"
            )
        self._replace(runner, signal.SIGTERM)

    # ---- runner logs (fal runners logs) ----------------------------------------------------

    def _runner_named(self, namespace: str, name: str) -> localrun.RunnerProcess:
        runner = self._runner()
        if namespace != self.namespace or runner is None or self._pod_name(runner) != name:
            raise errors.not_found(f"runner {name} is not running")
        if not runner.log:
            raise errors.not_found(f"runner {name} has no log file")
        return runner

    def read_runner_log(
        self,
        namespace: str,
        name: str,
        *,
        since_seconds: int | None,
        tail_lines: int,
        limit_bytes: int,
    ) -> bytes:
        """The runner's lines as ``<RFC 3339> <line>``, as Kubernetes serves a pod's log with
        timestamps: the last ``limit_bytes`` of this process's part of its log file."""
        runner = self._runner_named(namespace, name)
        try:
            with open(runner.log, "rb") as file:
                size = file.seek(0, os.SEEK_END)
                start = max(runner.log_offset, size - limit_bytes)
                file.seek(start)
                data = file.read(limit_bytes)
        except OSError as error:
            raise errors.not_found(f"runner {name}: log unreadable ({error})") from error
        lines = data.decode("utf-8", "replace").split("\n")
        if start > runner.log_offset:
            lines = lines[1:]  # the first line was cut
        stamped = local_logs.LogStamper(local_logs.timestamp(runner.started)).stamp(
            [line for line in lines if line][-tail_lines:]
        )
        if since_seconds is not None:
            try:
                cutoff = datetime.datetime.now(tz=datetime.UTC) - datetime.timedelta(
                    seconds=since_seconds
                )
            except OverflowError:
                cutoff = None  # before year 1 (the caller's since): every line
            stamped = [(at, line) for at, line in stamped if cutoff is None or at >= cutoff]
        return "".join(f"{local_logs.rfc3339(at)} {line}\n" for at, line in stamped).encode()

    def follow_runner_log(self, namespace: str, name: str, *, since_seconds: int | None) -> Any:
        """New lines of the runner's log as they come (``.stream()``, like the Kubernetes
        client's response), after those of the last ``since_seconds``; ends with the process."""
        runner = self._runner_named(namespace, name)
        history = self.read_runner_log(
            namespace,
            name,
            since_seconds=since_seconds,
            tail_lines=self.settings.log_max_lines,
            limit_bytes=self.settings.log_max_bytes,
        )
        return local_logs.LogTail(runner, history)

    # ---- secrets ---------------------------------------------------------------------------

    @property
    def _secrets_path(self) -> pathlib.Path:
        return self.local_dir / localrun.SECRETS

    def list_namespace_names(self) -> tuple[str, ...]:
        return (self.namespace,)

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        if (namespace, name) != (self.namespace, SECRETS_NAME):
            return None
        document = localrun.read_json(self._secrets_path)
        return document if isinstance(document, dict) else None

    def _write_secret(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        if (namespace, name) != (self.namespace, SECRETS_NAME):
            raise errors.failed_precondition(
                f"environment_name: `kubefal run` keeps secrets for namespace "
                f"{self.namespace!r} only"
            )
        with self._lock:
            self.local_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            stored = copy.deepcopy(body)
            stored.setdefault("metadata", {})["uid"] = str(uuid.uuid4())
            localrun.write_json(self._secrets_path, stored)

    def create_secret(self, namespace: str, body: dict[str, Any]) -> None:
        self._write_secret(namespace, str((body.get("metadata") or {}).get("name")), body)

    def replace_secret(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        self._write_secret(namespace, name, body)

    # ---- audit -----------------------------------------------------------------------------

    def record_event(
        self, *, namespace: str, involved: dict[str, Any], reason: str, message: str
    ) -> None:
        logger.info("%s %s/%s: %s", reason, namespace, involved.get("name"), message)
