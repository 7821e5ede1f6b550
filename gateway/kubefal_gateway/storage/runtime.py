"""The storage service's lifecycle in the gateway process: backend, signing key, sweeper.

`serving(gateway)` opens the backend named by `--storage` (a directory for the embedded store,
or `s3://bucket[/prefix]?endpoint=...` for an S3-compatible one) and the KV store that goes
with the queue's `--store` (kv.py), and yields the REST listener's
ASGI app (None when `--rest-port` is 0). The signing key is `--storage-signing-key`, or else a
random key kept in the store itself (`_kubefal/signing-key`), created by the first gateway
that needs it, so replicas sharing a store verify each other's URLs and tokens and a restart
keeps issued URLs valid. The key is loaded on first use, not at start-up: a gateway whose
store is down starts, answers storage requests with 503, and recovers when the store does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
import secrets
from collections.abc import AsyncIterator

from kubefal_gateway import core as gateway_core
from kubefal_gateway import settings
from kubefal_gateway.storage import (
    blobs,
    core,
    data_routes,
    datafiles,
    kv,
    local,
    routes,
    signing,
)

LOGGER = logging.getLogger(__name__)

SIGNING_KEY_OBJECT = "_kubefal/signing-key"


def open_store(spec: str) -> blobs.BlobStore:
    """`s3://...` → S3BlobStore; anything else is a directory for LocalBlobStore."""
    if spec.startswith("s3://"):
        from kubefal_gateway.storage import s3  # boto3 is only needed for this backend

        return s3.S3BlobStore.from_url(spec)
    return local.LocalBlobStore(pathlib.Path(spec.removeprefix("file://")))


async def load_signing_key(store: blobs.BlobStore, configured: str) -> bytes:
    if configured:
        return configured.encode("utf-8")
    try:
        return await blobs.read_all(store, SIGNING_KEY_OBJECT, limit=4096)
    except blobs.BlobNotFound:
        pass
    await store.write(
        SIGNING_KEY_OBJECT,
        blobs.one_chunk(secrets.token_hex(32).encode()),
        limit=4096,
        meta={"type": "text/plain"},
    )
    # Another replica may have written its own key at the same moment: whichever landed last
    # is the one every replica reads from now on.
    return await blobs.read_all(store, SIGNING_KEY_OBJECT, limit=4096)


class StorageSource:
    """The `core.Storage`, created when its signing key is first available."""

    def __init__(
        self, gateway: gateway_core.Gateway, store: blobs.BlobStore, limits: core.Limits
    ) -> None:
        self.gateway = gateway
        self.store = store
        self.limits = limits
        self._storage: core.Storage | None = None
        self._lock = asyncio.Lock()

    async def __call__(self) -> core.Storage:
        if self._storage is not None:
            return self._storage
        async with self._lock:
            if self._storage is None:
                key = await load_signing_key(self.store, self.gateway.settings.storage_signing_key)
                signer = signing.Signer(key)
                self._storage = core.Storage(self.store, signer, self.limits)
                self.gateway.signer = signer
            return self._storage


def limits_from(config: settings.Settings) -> core.Limits:
    return core.Limits(
        max_file_bytes=config.storage_max_file_bytes,
        url_ttl=config.storage_url_ttl,
        retention=config.storage_retention,
        upload_ttl=config.storage_upload_ttl,
        max_open_uploads=config.storage_max_open_uploads,
    )


@contextlib.asynccontextmanager
async def serving(gateway: gateway_core.Gateway) -> AsyncIterator[routes.RestApi | None]:
    config = gateway.settings
    if not config.rest_port:
        yield None
        return
    store = open_store(config.storage)
    kv_store = kv.open_kv(config.store)
    source = StorageSource(gateway, store, limits_from(config))
    with contextlib.suppress(blobs.BlobError):
        await source()
    data_files = (
        datafiles.DataFiles(
            pathlib.Path(config.data_root),
            datafiles.Limits(
                max_file_bytes=config.storage_max_file_bytes,
                max_open_uploads=config.data_max_open_uploads,
                upload_ttl=config.data_upload_ttl,
                max_parts=config.data_max_parts,
            ),
        )
        if config.data_root
        else None
    )
    api = routes.RestApi(
        gateway,
        source,
        public_url=config.storage_public_url,
        default_namespace=config.storage_namespace,
        realtime_max_ttl=config.realtime_token_max_ttl,
        kv_store=kv_store,
        data=data_routes.DataApi(data_files) if data_files is not None else None,
    )
    sweeper = asyncio.get_running_loop().create_task(
        _sweep_forever(source, data_files, config.storage_sweep_interval), name="storage-sweeper"
    )
    try:
        yield api
    finally:
        sweeper.cancel()
        with contextlib.suppress(BaseException):
            await sweeper
        await store.close()
        await kv_store.close()


async def _sweep_forever(
    source: StorageSource, data_files: datafiles.DataFiles | None, interval: float
) -> None:
    if interval <= 0:
        return
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)
        try:
            removed = await (await source()).sweep()
            if removed:
                LOGGER.info("storage retention removed %d objects", removed)
        except blobs.BlobError as error:
            LOGGER.warning("storage retention sweep failed: %s", error)
        if data_files is not None:
            try:
                removed = await loop.run_in_executor(None, data_files.sweep)
                if removed:
                    LOGGER.info("/data sweep removed %d abandoned uploads and files", removed)
            except OSError as error:
                LOGGER.warning("/data sweep failed: %s", error)
