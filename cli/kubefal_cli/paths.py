"""Where ``kubefal`` keeps local state: the local CA, the local API key, run directories.

``$KUBEFAL_HOME`` wins; otherwise ``$XDG_CACHE_HOME/kubefal`` (``~/.cache/kubefal``).
"""

from __future__ import annotations

import os
import pathlib


def state_dir() -> pathlib.Path:
    explicit = os.environ.get("KUBEFAL_HOME")
    if explicit:
        return pathlib.Path(explicit).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(pathlib.Path.home() / ".cache")
    return pathlib.Path(cache_home) / "kubefal"


def local_dir() -> pathlib.Path:
    """State of ``kubefal run``: ``local-ca/`` files and the local API key."""
    return state_dir() / "local"
