"""Helpers of the storage tests: a gateway with its REST listener, and a Python environment
where fal_client sits beside the kubefal hosts hook (client/kubefal_hosts), installed the way
the wheel installs it: the package and its `.pth` file in site-packages."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import sysconfig
from typing import Any

from kubefal_api import apikeys
from tests.gateway import gwharness

ROOT = pathlib.Path(__file__).resolve().parents[2]
FILES_APP = f"{gwharness.APPS_DIR / 'files_app.py'}::FilesApp"


class FileGateway:
    """A gateway serving files only: its REST listener and file store, no apps, and two keys
    (``key`` for the namespace ``team``, ``other_key`` for ``other``); TLS when ``tls`` is
    given, plain TCP otherwise. Not started: the caller starts it (``gwharness.cleanup``)."""

    def __init__(self, workdir: pathlib.Path, *, tls: gwharness.Tls | None) -> None:
        self.tls = tls
        self.key = apikeys.generate_key()
        self.other_key = apikeys.generate_key()
        self.rest_port = gwharness.free_port()
        self.gateway = gwharness.Gateway(
            workdir=workdir,
            tls=tls,
            static_config={
                "apps": [],
                "keys": [
                    {"key": str(self.key), "namespaces": "team"},
                    {"key": str(self.other_key), "namespaces": "other"},
                ],
            },
            extra_args=["--rest-port", str(self.rest_port), "--storage", str(workdir / "files")],
        )
        scheme = "https" if tls is not None else "http"
        self.rest_url = f"{scheme}://127.0.0.1:{self.rest_port}"


def hooked_python(directory: pathlib.Path) -> pathlib.Path:
    """A fresh venv whose site-packages holds the hook and a path entry to this environment's
    packages (fal_client, httpx, ...), so the hook is the only kubefal thing installed."""
    venv = directory / "client-venv"
    if not (venv / "bin" / "python").exists():
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
        )
    python = venv / "bin" / "python"
    site = pathlib.Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "_kubefal_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    shutil.copytree(ROOT / "client" / "kubefal_hosts", site / "kubefal_hosts", dirs_exist_ok=True)
    shutil.copy(ROOT / "client" / "kubefal-hosts.pth", site / "kubefal-hosts.pth")
    return python


def run_python(
    python: pathlib.Path, script: str, *, env: dict[str, str], timeout: float = 240.0
) -> Any:
    """Like gwharness.run_client, with another interpreter (and no import of fal_client)."""
    return gwharness.run_emitting(
        python,
        script,
        env=env,
        timeout=timeout,
        drop_prefixes=("FAL_", "KUBEFAL_"),
        drop_names=("SSL_CERT_FILE", "PYTHONPATH"),
    )
