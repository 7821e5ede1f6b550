"""Point an unmodified `fal_client` at a kubefal gateway's REST listener, by environment only.

fal_client hard-codes two hosts no environment variable changes: `REST_URL`
(`https://rest.fal.ai`: upload tokens, upload initiation, realtime tokens) and `CDN_URL`
(`https://v3.fal.media`: uploads); its methods read both module globals at call time. This
package ships a `.pth` file (`kubefal-hosts.pth`), which Python runs at start-up; when
`KUBEFAL_REST_HOST` (`host[:port]` of the gateway's `--rest-port`) is set, it puts an import
hook in `sys.meta_path` that, right after `fal_client.client` is first imported, sets both
globals to `https://$KUBEFAL_REST_HOST`. Nothing is imported early and nothing happens when the
variable is unset, so the package is inert for anyone not using kubefal.

Why a `.pth` hook rather than a TLS-terminating proxy for `rest.fal.ai` and `v3.fal.media`: a
proxy needs the client to trust a CA that may sign fal's own names and a proxy setting that
also captures `fal.run`, and fails opaquely when absent; the hook changes exactly two strings
in one module, keeps TLS with kubefal's own CA (`SSL_CERT_FILE`) end to end, and needs only
`pip install kubefal` beside fal_client.

Limits: it works for programs started by the interpreter that has the package installed (not
for `python -S`, nor for other environments); a program that assigns `REST_URL`/`CDN_URL`
itself wins; `fal_client` in other languages (JS) is not covered.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import re
import sys
import types
from collections.abc import Sequence

ENV_VAR = "KUBEFAL_REST_HOST"
TARGET = "fal_client.client"
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def rest_url(environ: dict[str, str] | os._Environ[str] | None = None) -> str | None:
    """`https://<KUBEFAL_REST_HOST>`, or None when unset or not a `host[:port]`."""
    value = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
    if not value or not _HOST.fullmatch(value):
        return None
    return f"https://{value}"


def redirect(module: types.ModuleType, url: str) -> None:
    module.REST_URL = url  # type: ignore[attr-defined]
    module.CDN_URL = url  # type: ignore[attr-defined]


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader, url: str) -> None:
        self.inner = inner
        self.url = url

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self.inner.exec_module(module)
        redirect(module, self.url)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, url: str) -> None:
        self.url = url

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader, self.url)
                return spec
        return None


def install() -> None:
    """Called by the `.pth` file at interpreter start-up."""
    url = rest_url()
    if url is None:
        return
    module = sys.modules.get(TARGET)
    if module is not None:
        redirect(module, url)
        return
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder(url))
