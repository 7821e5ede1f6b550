"""Point fal.toolkit's KV store at this cluster's gateway.

`fal.toolkit.KVStore` calls `https://kv.fal.media`, a module global no environment variable
changes (`fal.toolkit.kv.FAL_KV_HOST`, read at call time). The gateway serves fal's KV protocol
under `/kv` on its REST listener, the host the operator and `kubefal run` already give runners
as `FAL_REST_HOST` for uploads, so when that is set the runner sets the global to
`https://$FAL_REST_HOST/kv` before the app is loaded.
"""

from __future__ import annotations

import collections.abc
import re

_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?")


def redirect_kv(environ: collections.abc.Mapping[str, str]) -> str | None:
    """Set fal.toolkit's KV host from `FAL_REST_HOST`; return the URL, or None when unset."""
    host = environ.get("FAL_REST_HOST", "").strip()
    if not _HOST.fullmatch(host):
        return None
    import fal.toolkit.kv

    url = f"https://{host}/kv"
    fal.toolkit.kv.FAL_KV_HOST = url
    return url
