"""The app_files of a ``fal deploy``, read back from the gateway with the deploying caller's key.

The fal SDK uploads an app's ``app_files`` by content hash to the app-files REST API before it
calls ``RegisterApplication``, whose ``files`` then list ``(relative_path, hash)``. The
gateway keeps them per namespace (the namespace of the key that uploaded them); the control
plane fetches each with ``GET <gateway REST>/files/app/<hash>``, sending the caller's own
``Authorization: Key`` (the key in the call's metadata), so it can read nothing that caller
could not, then checks every byte against the hash (fal's SHA-256 of content and mode) before
it goes into the app's bundle (:func:`kubefal_controlplane.deploy.source_objects`).
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterable, Sequence
from typing import Any, Final

import grpc
import httpx

from kubefal_api import bundles
from kubefal_controlplane import errors
from kubefal_controlplane import settings as settings_module

MAX_FILE_BYTES: Final = 1024 * 1024
"""The gateway's own limit for one app file; bundles are stricter (docs/packaging.md)."""
HASH_CHARS: Final = frozenset("0123456789abcdef")


def _check(relative_path: str, file_hash: str) -> None:
    if not bundles.is_valid_path(relative_path):
        raise errors.invalid_argument(
            "files.relative_path",
            f"{relative_path[:200]!r} is not a plain relative path ([-._a-zA-Z0-9/], no "
            "'..'); rename it or leave it out with app_files_ignore",
        )
    if len(file_hash) != 64 or not set(file_hash) <= HASH_CHARS:
        raise errors.invalid_argument("files.hash", "a file hash is 64 lowercase hex characters")


def fal_hash(data: bytes, mode: int) -> str:
    digest = hashlib.sha256(data)
    digest.update(f"{mode}".encode())
    return digest.hexdigest()


def gateway_verify(settings: settings_module.Settings) -> ssl.SSLContext | bool:
    """How the gateway's REST certificate is checked: ``--gateway-rest-ca`` when that file
    exists (the chart points it at the TLS Secret's ``ca.crt``, which a Secret holding a
    publicly trusted certificate may lack), else the system CAs; never not at all."""
    ca = settings.gateway_rest_ca
    if ca is not None and ca.is_file():
        return ssl.create_default_context(cafile=str(ca))
    return True


def caller_authorization(metadata: Iterable[tuple[str, Any]]) -> str:
    """``Key <id>:<secret>`` from the call's metadata (already verified by auth.py)."""
    values = {name: value for name, value in metadata if isinstance(value, str)}
    return f"Key {values.get('auth-key-id', '')}:{values.get('auth-key', '')}"


def fetch(
    settings: settings_module.Settings,
    files: Sequence[tuple[str, str]],
    *,
    authorization: str,
) -> dict[str, bytes]:
    """``relative_path -> bytes`` of every ``(relative_path, hash)``; FAILED_PRECONDITION when
    a file cannot be had, naming it and what to do. No more than a bundle holds is fetched
    (:data:`kubefal_api.bundles.MAX_FILES` files, :data:`~kubefal_api.bundles.MAX_BUNDLE_BYTES`
    bytes in all): the list is the caller's, and may name one large file many times."""
    if len(files) > bundles.MAX_FILES:
        raise errors.invalid_argument(
            "files", f"{len(files)} files; an app carries at most {bundles.MAX_FILES}"
        )
    for relative_path, file_hash in files:
        _check(relative_path, file_hash)
    if len({path for path, _ in files}) != len(files):
        raise errors.invalid_argument("files", "two files have the same relative_path")
    if settings.gateway_rest_url is None:
        raise errors.failed_precondition(
            "files: this control plane has no --gateway-rest-url, so it cannot read the "
            "app_files fal uploaded; deploy with `kubefal deploy app.py::MyApp`"
        )
    verify = gateway_verify(settings)
    found: dict[str, bytes] = {}
    total = 0
    with httpx.Client(
        base_url=settings.gateway_rest_url.rstrip("/"),
        verify=verify,
        trust_env=False,
        headers={"Authorization": authorization},
        timeout=httpx.Timeout(30.0, connect=settings.gateway_timeout * 5),
    ) as client:
        for relative_path, file_hash in files:
            found[relative_path] = _one(client, relative_path, file_hash)
            total += len(found[relative_path])
            if total > bundles.MAX_BUNDLE_BYTES:
                raise errors.failed_precondition(
                    f"files: the app_files add up to more than {bundles.MAX_BUNDLE_BYTES} bytes, "
                    "more than an app's bundle holds; put large files in /data "
                    "(persistentData) or an image"
                )
    return found


def _one(client: httpx.Client, relative_path: str, file_hash: str) -> bytes:
    try:
        with client.stream("GET", f"/files/app/{file_hash}") as response:
            if response.status_code == 404:
                raise errors.failed_precondition(
                    f"files: {relative_path} ({file_hash[:12]}…) was not uploaded to this "
                    "cluster's gateway; the SDK uploads app_files to FAL_REST_HOST (or, "
                    "unset, to FAL_GRPC_HOST): point it at the gateway's REST address or "
                    "unset it, then deploy again"
                )
            if response.status_code != 200:
                raise errors.RpcFailure(
                    grpc.StatusCode.UNAVAILABLE,
                    f"files: the gateway answered {response.status_code} for {relative_path}",
                )
            data = b""
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > MAX_FILE_BYTES:
                    raise errors.failed_precondition(
                        f"files: {relative_path} is larger than {MAX_FILE_BYTES} bytes"
                    )
            mode_header = response.headers.get("x-fal-file-mode", "")
    except httpx.HTTPError as error:
        raise errors.RpcFailure(
            grpc.StatusCode.UNAVAILABLE,
            f"files: the gateway's file API cannot be reached ({error}); try again",
        ) from None
    if (
        not (mode_header.isascii() and mode_header.isdigit())
        or fal_hash(data, int(mode_header[:12])) != file_hash
    ):
        raise errors.failed_precondition(
            f"files: {relative_path}: the bytes the gateway holds do not match its hash"
        )
    return data
