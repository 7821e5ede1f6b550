"""The gateway's components and their lifecycle, independent of HTTP listeners.

`Gateway.running()` is the lifespan: it opens the queue store, the upstream connection pools,
app/runner/key discovery (static file or Kubernetes), the queue worker, the webhook delivery
worker and the scaling signals, and closes them in reverse order. The HTTP layer (http_api.py)
only reads these components.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import pathlib
import secrets
import socket
from collections.abc import AsyncIterator
from typing import Any

import orjson
import yaml

from kubefal_gateway import (
    apps,
    auth,
    discovery,
    dispatch,
    metrics,
    orphans,
    queue_worker,
    queueing,
    runners,
    settings,
    signals,
    slot_ledger,
    upstream,
    webhooks,
)
from kubefal_gateway.storage import signing
from kubefal_gateway.stores import opener

LOGGER = logging.getLogger(__name__)


def load_static_config(path: pathlib.Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    data = orjson.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the static config must be a mapping with 'apps' and 'keys'")
    return data


class Gateway:
    """Everything one gateway process owns."""

    def __init__(self, config: settings.Settings) -> None:
        self.settings = config
        self.holder = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.metrics = metrics.Metrics()
        self.registry = apps.AppRegistry()
        self.keys = auth.KeyStore(limits=auth.limits_from_settings(config))
        self.metrics.registry.register(auth.Collector(self.keys))
        self.client = upstream.UpstreamClient(idle_seconds=config.upstream_idle_seconds)
        self.runners = runners.RunnerTable(
            client=self.client, probe_interval=config.runner_probe_interval
        )
        self.forwarder = dispatch.Forwarder(
            table=self.runners,
            client=self.client,
            gauges=self.metrics,
            max_attempts=config.max_attempts,
            retry_budget=config.retry_budget,
        )
        self.ready = False
        self.signer: signing.Signer | None = None
        """Signs file URLs and realtime tokens; set by storage/runtime.py once the REST
        listener has its key (realtime tokens are refused on WebSockets until then)."""
        self._store: queueing.QueueStore | None = None
        self._signals: signals.Signals | None = None
        self.discovery: discovery.KubernetesDiscovery | None = None
        """Kubernetes discovery (None with a static config): runners announce through it."""
        self.worker: queue_worker.QueueWorker | None = None

    @property
    def store(self) -> queueing.QueueStore:
        if self._store is None:
            raise RuntimeError("the gateway is not running")
        return self._store

    @property
    def signals(self) -> signals.Signals:
        if self._signals is None:
            raise RuntimeError("the gateway is not running")
        return self._signals

    async def store_unavailable(self) -> str | None:
        """Why the queue store cannot be used right now (for /readyz), or None when it answers."""
        try:
            await self.store.ping()
        except queueing.QueueError as error:
            self.metrics.store_errors.labels("readiness").inc()
            return str(error)
        return None

    def _load_static(self, path: pathlib.Path) -> None:
        """Read and check the whole file first, then apply it: an error anywhere applies none."""
        data = load_static_config(path)
        configs = [apps.from_static_entry(entry) for entry in data.get("apps") or ()]
        addresses = [runners.static_runner_addresses(config.runner_urls) for config in configs]
        records = [auth.record_from_static_entry(entry) for entry in data.get("keys") or ()]
        for config, app_runners in zip(configs, addresses, strict=True):
            self.registry.put(config)
            for url, host, port in app_runners:
                self.runners.upsert(app_id=config.app_id, runner_id=url, host=host, port=port)
        self.keys.replace_all(records)

    def reload_static(self) -> None:
        """SIGHUP with a static config: read the file again (``kubefal run``'s control plane
        rewrites it on ``fal apps scale`` and ``fal keys``). Apps and runners are upserted (an
        unchanged entry changes nothing), keys replaced; a file that does not load is logged and
        the running configuration kept."""
        path = self.settings.static_config
        if path is None:
            return
        try:
            self._load_static(path)
        except (OSError, ValueError, TypeError, KeyError, yaml.YAMLError) as error:
            LOGGER.error("static config %s not reloaded: %s", path, error)
            return
        LOGGER.info("static config %s reloaded", path)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Gateway]:
        config = self.settings
        self._store = await opener.open_store(
            config.store,
            result_ttl=config.result_ttl,
            max_attempts=config.max_attempts,
            redis_timeout=config.redis_timeout,
        )
        store = self._store
        self._signals = signals.Signals(
            store=store,
            registry=self.registry,
            table=self.runners,
            forwarder=self.forwarder,
            gauges=self.metrics,
        )
        self._signals.always_compute = bool(config.keda_port or config.external_metrics_port)
        ledger = slot_ledger.for_store(
            store,
            table=self.runners,
            forwarder=self.forwarder,
            holder=self.holder,
            on_change=self._signals.changed,
        )
        self.forwarder.ledger = ledger
        self._signals.ledger = ledger
        self.forwarder.on_change = self._signals.changed
        self.runners.listeners.append(self.forwarder.runners_changed)
        self.runners.listeners.append(self._signals.changed)
        worker = queue_worker.QueueWorker(
            store=store,
            forwarder=self.forwarder,
            registry=self.registry,
            client=self.client,
            gauges=self.metrics,
            holder=self.holder,
            lease_seconds=config.lease_seconds,
            max_result_bytes=config.max_result_bytes,
            on_change=self._signals.changed,
        )
        self.registry.listeners.append(lambda _config, app_id: worker.wake(app_id))
        self.worker = worker
        kube: discovery.KubernetesDiscovery | None = None
        if config.static_config is not None:
            self._load_static(config.static_config)
        else:
            kube = discovery.KubernetesDiscovery(
                registry=self.registry,
                keys=self.keys,
                table=self.runners,
                kubeconfig=config.kubeconfig,
                key_namespace="" if config.key_namespace == "*" else config.key_namespace,
                runner_port=config.runner_port,
            )
            kube.start()
            self.discovery = kube
        if not config.webhook_secret:
            LOGGER.warning("no --webhook-secret: webhooks are delivered unsigned")
        delivery = webhooks.WebhookWorker(
            store,
            settings=webhooks.settings_from(config),
            on_outcome=lambda outcome: self.metrics.webhook_deliveries.labels(outcome).inc(),
            on_store_error=self.metrics.store_errors.labels("webhooks").inc,
        )
        for state in ("waiting", "in_flight"):
            self.metrics.webhook_pending.labels(state).set_function(
                functools.partial(delivery.held, state)
            )
        tasks = [
            asyncio.get_running_loop().create_task(worker.run(), name="queue-worker"),
            asyncio.get_running_loop().create_task(self._signals.run(), name="scaling-signals"),
            asyncio.get_running_loop().create_task(delivery.run(), name="webhook-worker"),
        ]
        if ledger is not None:
            tasks.append(asyncio.get_running_loop().create_task(ledger.run(), name="slot-ledger"))
        if config.removed_app_grace > 0:
            reaper = orphans.OrphanReaper(
                store=store, registry=self.registry, grace=config.removed_app_grace
            )
            tasks.append(asyncio.get_running_loop().create_task(reaper.run(), name="orphans"))
        self.ready = True
        try:
            yield self
        finally:
            self.ready = False
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            await worker.close()
            await delivery.close()
            if kube is not None:
                await kube.stop()
            self._signals.close()
            self.runners.close()
            self.client.close()
            self.keys.close()
            await store.close()
