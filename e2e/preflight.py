"""Can this machine build the images and run a real node? ``make test`` asks before it runs them.

The image builds (mmdebstrap, buildah), the image tests (podman), the real node (containerd,
runc, a kubelet) and real KEDA need root, those Debian packages, writable cgroups and overlayfs.
``python -m e2e.preflight`` prints why not, one reason per line, or nothing when everything is
there; ``make test`` then builds and runs them, or runs the rest with ``KUBEFAL_PREFLIGHT_SKIP``
set to the reasons, and :func:`require` turns them into skips whose message pytest's ``-rs``
summary shows. Only what cannot be installed by ``.ci/run`` or fixed by the caller counts: a
build or a test that fails on a capable machine fails ``make test``.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys

import pytest

SKIP_ENV = "KUBEFAL_PREFLIGHT_SKIP"
"""Set by ``make test`` to the preflight's reasons when the heavy suites cannot run here."""
TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "buildah": "buildah",
    "skopeo": "skopeo",
    "podman": "podman",
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "go": "golang-go",
}
CNI_LOOPBACK = pathlib.Path("/usr/lib/cni/loopback")


def reasons() -> list[str]:
    """Why the images and the real node cannot run on this machine (empty: they can)."""
    found = []
    if os.geteuid() != 0:
        found.append("not root (buildah, containerd and the kubelet run as root here)")
    missing = sorted({package for tool, package in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        found.append(f"missing Debian packages: {' '.join(missing)} (.ci/run installs them)")
    if not CNI_LOOPBACK.is_file():
        found.append(f"no {CNI_LOOPBACK} (apt-get install containernetworking-plugins)")
    cgroups = pathlib.Path("/sys/fs/cgroup")
    if not os.access(cgroups, os.W_OK) and not any(
        os.access(child, os.W_OK) for child in cgroups.iterdir() if child.is_dir()
    ):
        found.append("/sys/fs/cgroup is read-only (the kubelet creates the kubepods cgroups)")
    if "overlay" not in pathlib.Path("/proc/filesystems").read_text():
        found.append("the kernel has no overlayfs (buildah's and containerd's snapshotter)")
    return found


def require(what: str, env: str, how: str) -> None:
    """Skip the calling test unless ``env`` is 1, saying why: the preflight's reasons under
    ``make test``, else how to ask for it."""
    if os.environ.get(env) == "1":
        return
    skipped = os.environ.get(SKIP_ENV)
    if skipped:
        pytest.skip(f"{what} cannot run on this machine: {skipped}")
    pytest.skip(f"{what} runs with {env}=1 ({how}; make test sets it when the machine can)")


if __name__ == "__main__":
    print("; ".join(reasons()))
    sys.exit(0)
