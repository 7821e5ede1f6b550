"""Helpers of the storage tests: a gateway with its REST listener, and a Python environment
where fal_client sits beside the kubefal hosts hook (client/kubefal_hosts), installed the way
the wheel installs it: the package and its `.pth` file in site-packages."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from typing import Any

import pytest

from tests.gateway import gwharness

ROOT = pathlib.Path(__file__).resolve().parents[2]
FILES_APP = f"{gwharness.APPS_DIR / 'files_app.py'}::FilesApp"


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
    """Like gwharness.run_client, with another interpreter."""
    prelude = textwrap.dedent(
        """
        import json, sys
        def emit(value):
            sys.stdout.write("\\n@@RESULT@@" + json.dumps(value) + "\\n")
        """
    )
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("FAL_", "KUBEFAL_")) and key not in ("SSL_CERT_FILE", "PYTHONPATH")
    }
    environment.update(env)
    completed = subprocess.run(
        [str(python), "-c", prelude + textwrap.dedent(script)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@") :])
    pytest.fail(
        f"script failed (exit {completed.returncode}):\n{completed.stdout[-3000:]}\n"
        f"{completed.stderr[-6000:]}"
    )
