"""The images ``make images`` builds, and podman set up to run them on this kind of machine.

Shared by the image tests and the real-node harness: image references as the chart expects them
(``<registry>/<name>:<chart appVersion>``), their OCI archives under ``dist/images/``, and a
``containers.conf`` that makes podman use runc (crun refuses hosts with hybrid cgroups) with
default ulimits of at most 16384 (a sandbox without CAP_SYS_RESOURCE cannot raise them).

Image tests run only when asked (``KUBEFAL_IMAGE_TESTS=1``, what ``make test`` sets after
``make images`` when e2e/preflight.py finds the machine able, and ``make test-images`` too).
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess

import pytest

from e2e import preflight

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DIST = REPO_ROOT / "dist" / "images"
REGISTRY = os.environ.get("IMAGE_REGISTRY", "ghcr.io/kubefal")
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=16384:16384"]
[engine]
runtime = "runc"
"""


def chart_app_version() -> str:
    text = (REPO_ROOT / "charts" / "kubefal" / "Chart.yaml").read_text()
    match = re.search(r'^appVersion:\s*"?([^"\s]+)"?\s*$', text, re.MULTILINE)
    assert match, "no appVersion in charts/kubefal/Chart.yaml"
    return match.group(1)


def image_ref(name: str) -> str:
    """The reference ``make images`` tags ``name`` with (the chart's default)."""
    return f"{REGISTRY}/{name}:{os.environ.get('IMAGE_TAG') or chart_app_version()}"


def archive(name: str) -> pathlib.Path:
    return DIST / f"{name}.oci.tar"


def require_images(*names: str) -> None:
    """Skip unless image tests were asked for; then fail if an image was not built."""
    preflight.require(
        "the image tests", "KUBEFAL_IMAGE_TESTS", "after `make images`: make test-images"
    )
    for name in names:
        if not archive(name).is_file():
            pytest.fail(f"{archive(name)} is missing: run `make images` first")
    if shutil.which("podman") is None:
        pytest.fail("podman is required (apt-get install podman runc)")


def podman_env(directory: pathlib.Path) -> dict[str, str]:
    conf = directory / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def podman(env: dict[str, str], *args: str, check: bool = True) -> str:
    result = subprocess.run(
        ["podman", *args], env=env, capture_output=True, text=True, check=False, timeout=300
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def podman_logs(env: dict[str, str], container: str) -> str:
    """A container's output (podman logs replays its stderr on stderr)."""
    result = subprocess.run(
        ["podman", "logs", container], env=env, capture_output=True, text=True, check=False
    )
    return result.stdout + result.stderr
