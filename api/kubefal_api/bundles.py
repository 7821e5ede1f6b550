"""An app's files (any paths, text or binary) carried in ConfigMaps, for ``spec.source.configMaps``.

An app with more than its own directory's ``.py`` files (fal ``app_files``, packages named by
``local_python_modules``, sub-directories) needs paths, binary files and more than the 1 MiB one
ConfigMap holds. The files are packed, in path order, into as few ConfigMaps as fit; each key is
listed with its path, and the runner pod mounts all of them as one projected volume at the app
directory, so the files are exactly where the app expects them.

Why ConfigMaps and not the gateway's file store: the bundle then lives where the FalApp lives
(``kubefal render`` writes it into Git, ``kubectl get`` shows it, deleting the FalApp deletes
it), the runner needs no init step, no network path to the gateway and no key to fetch it (a
file-store fetch would need a namespace-scoped key in every runner pod, which runs user code),
and the kubelet checks nothing more than it does for one ConfigMap. The price: etcd holds the
bytes, so a bundle is limited to ``MAX_BUNDLE_BYTES`` and one file to ``MAX_FILE_BYTES``; model
weights and data belong in ``/data`` (``persistentData``) or an image, and :func:`pack` says so.

ConfigMap names carry a hash of their content, so new files make a new pod template and roll
the runners, while unchanged parts keep their names. Pure functions; nothing here talks to the
cluster.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
from collections.abc import Mapping
from typing import Any, Final

from kubefal_api import naming, v1alpha1

MAX_CONFIG_MAP_PAYLOAD: Final = 900 * 1024
"""Bytes of file content per ConfigMap as stored (binary files base64-encoded): a ConfigMap
holds at most 1 MiB, and its metadata needs some room."""
MAX_FILE_BYTES: Final = 600 * 1024
"""Largest single binary file (base64 makes it 4/3 as large); text files may reach
MAX_CONFIG_MAP_PAYLOAD."""
MAX_BUNDLE_BYTES: Final = v1alpha1.MAX_SOURCE_CONFIG_MAPS * MAX_CONFIG_MAP_PAYLOAD
"""Everything one app may carry (about 56 MiB)."""
MAX_FILES: Final = v1alpha1.MAX_SOURCE_CONFIG_MAPS * v1alpha1.MAX_SOURCE_FILES_PER_CONFIG_MAP
LABEL_SOURCE_OF: Final = f"{v1alpha1.GROUP}/source-of"
"""Label naming the app a source ConfigMap belongs to."""
HASH_LENGTH: Final = 10
_PATH = re.compile(v1alpha1.SOURCE_PATH_PATTERN)
_KEY_UNSAFE = re.compile(r"[^-._a-zA-Z0-9]")


class BundleError(ValueError):
    """The files cannot be carried in ConfigMaps; the message says which and what to do."""


@dataclasses.dataclass(frozen=True)
class Bundle:
    """The ConfigMaps to create and the ``spec.source`` that mounts them."""

    config_maps: list[dict[str, Any]]
    source: dict[str, Any]
    """``spec.source`` in Kubernetes form (``{"configMaps": [...]}``)."""
    total_bytes: int


def is_valid_path(path: str) -> bool:
    """True for a relative path below the app directory that a FalApp can carry."""
    return len(path) <= 1024 and _PATH.fullmatch(path) is not None


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def stored_size(data: bytes) -> int:
    """Bytes a file takes in a ConfigMap: as is for UTF-8 text, base64 for the rest."""
    return len(data) if _is_text(data) else 4 * ((len(data) + 2) // 3)


def _key(index: int, path: str) -> str:
    name = _KEY_UNSAFE.sub("_", path.rsplit("/", 1)[-1])[:200]
    return f"f{index:05d}-{name}"


def config_map_name(app_name: str, digest: str) -> str:
    """``<app>-src-<hash>``, at most 63 characters."""
    return f"{app_name[: 63 - HASH_LENGTH - 5]}-src-{digest[:HASH_LENGTH]}"


def pack(files: Mapping[str, bytes], *, namespace: str, app_name: str) -> Bundle:
    """Pack ``files`` (relative path -> content) into ConfigMaps, in path order."""
    bad = sorted(path for path in files if not is_valid_path(path))
    if bad:
        raise BundleError(
            f"these paths cannot be carried (relative, no '.' or '..' parts, letters, digits, "
            f"'-', '_' and '.' only): {', '.join(bad[:10])}"
        )
    if len(files) > MAX_FILES:
        raise BundleError(f"{len(files)} files; an app carries at most {MAX_FILES}")
    too_large = sorted(
        path
        for path, data in files.items()
        if stored_size(data)
        > (MAX_CONFIG_MAP_PAYLOAD if _is_text(data) else MAX_FILE_BYTES * 4 // 3)
    )
    if too_large:
        raise BundleError(
            f"too large for a ConfigMap (binary files up to {MAX_FILE_BYTES} bytes, text up to "
            f"{MAX_CONFIG_MAP_PAYLOAD}): {', '.join(too_large[:10])}; put model weights and data "
            "in /data (persistentData, fal.toolkit downloads) or bake them into an image "
            "(spec.image)"
        )
    total = sum(stored_size(data) for data in files.values())
    if total > MAX_BUNDLE_BYTES:
        raise BundleError(
            f"the app's files take {total} bytes in ConfigMaps; an app carries at most "
            f"{MAX_BUNDLE_BYTES}; put large files in /data (persistentData) or an image "
            "(spec.image)"
        )
    chunks: list[list[str]] = [[]]
    used = 0
    for path in sorted(files):
        size = stored_size(files[path])
        if chunks[-1] and (
            used + size > MAX_CONFIG_MAP_PAYLOAD
            or len(chunks[-1]) >= v1alpha1.MAX_SOURCE_FILES_PER_CONFIG_MAP
        ):
            chunks.append([])
            used = 0
        chunks[-1].append(path)
        used += size
    if len(chunks) > v1alpha1.MAX_SOURCE_CONFIG_MAPS:
        raise BundleError(
            f"the app's files need {len(chunks)} ConfigMaps; an app carries at most "
            f"{v1alpha1.MAX_SOURCE_CONFIG_MAPS}"
        )
    config_maps: list[dict[str, Any]] = []
    sources: list[dict[str, Any]] = []
    index = 0
    for chunk in chunks:
        if not chunk:
            continue
        data: dict[str, str] = {}
        binary: dict[str, str] = {}
        items: list[dict[str, str]] = []
        digest = hashlib.sha256()
        for path in chunk:
            content = files[path]
            key = _key(index, path)
            index += 1
            digest.update(f"{len(path)}:{path}:{len(content)}:".encode())
            digest.update(content)
            if _is_text(content):
                data[key] = content.decode("utf-8")
            else:
                binary[key] = base64.b64encode(content).decode("ascii")
            items.append({"key": key, "path": path})
        name = config_map_name(app_name, digest.hexdigest())
        manifest: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {LABEL_SOURCE_OF: app_name, naming.LABEL_MANAGED_BY: naming.MANAGED_BY},
            },
        }
        if data:
            manifest["data"] = data
        if binary:
            manifest["binaryData"] = binary
        config_maps.append(manifest)
        sources.append({"name": name, "items": items})
    if not config_maps:
        raise BundleError("no files to carry")
    return Bundle(config_maps=config_maps, source={"configMaps": sources}, total_bytes=total)


def unpack(config_maps: list[Mapping[str, Any]], source: Mapping[str, Any]) -> dict[str, bytes]:
    """The files a ``spec.source.configMaps`` puts in the app directory (for tests and
    ``kubefal`` checks): path -> content."""
    by_name = {str(cm["metadata"]["name"]): cm for cm in config_maps}
    files: dict[str, bytes] = {}
    for entry in source["configMaps"]:
        config_map = by_name[entry["name"]]
        data = config_map.get("data") or {}
        binary = config_map.get("binaryData") or {}
        for item in entry["items"]:
            key = item["key"]
            files[item["path"]] = (
                data[key].encode("utf-8") if key in data else base64.b64decode(binary[key])
            )
    return files
