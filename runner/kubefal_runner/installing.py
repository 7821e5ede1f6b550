"""Install an app's pip requirements at start, into a virtual environment cached per set.

An app whose requirements are not baked into its image gets them here, before `fal` and the app are
imported, so the app sees them exactly as on fal. The environment is created with
``python -m venv --system-site-packages`` and keyed by a hash of the requirement set (and of the
interpreter), so a restarted pod with the same cache volume reuses it instead of installing again.
A ``.pth`` file makes the runner's own site directories visible inside the new environment, which
lets pip skip what the runner already has even when the runner itself lives in a virtual
environment. The time spent here is part of the app's startup budget; the caller logs and counts it.

Layers (fal ``requirements`` as a list of lists) are kept as layers: layer *k* gets an environment
of its own, keyed by layers 1..k, whose ``.pth`` chains to layer *k-1*'s site directory (then to
the runner's). pip installing layer *k* sees what the layers below hold and skips it; a package a
later layer pins differently is installed in the later layer's directory, which comes first on
the path, so later layers win, as in fal. Apps whose leading layers agree (say torch first)
share those environments and install only the layers where they differ.

Only the standard library is imported: nothing of the app's world may be loaded yet.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import pathlib
import platform
import shutil
import site
import subprocess
import sys
import sysconfig
import time

COMPLETE_MARKER = ".kubefal-complete"
"""Written last: an environment without it is a leftover of an interrupted install."""
PARENT_SITE_PTH = "_kubefal_runner_parent.pth"
PIP_OUTPUT_TAIL_LINES = 40


class RequirementsInstallError(RuntimeError):
    """The requirements could not be installed; the message says what pip said."""


@dataclasses.dataclass(frozen=True)
class PreparedEnvironment:
    """A ready virtual environment holding the requirements."""

    path: pathlib.Path
    site_packages: pathlib.Path
    reused: bool
    """True when an earlier start had already installed the same requirement set."""
    seconds: float
    """Wall time spent here, counted against the startup budget."""
    reused_layers: int = 0
    """How many of the layers were found installed (by this app or one sharing them)."""


def environment_key(layers: collections.abc.Sequence[collections.abc.Sequence[str]]) -> str:
    """Stable name of the environment for this requirement set on this interpreter."""
    identity = {
        "layers": [list(layer) for layer in layers],
        "python": platform.python_version(),
        "implementation": sys.implementation.cache_tag,
        "platform": sysconfig.get_platform(),
        "prefix": sys.prefix,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return f"reqs-{digest[:24]}"


def _site_packages_of(venv_path: pathlib.Path) -> pathlib.Path:
    purelib = sysconfig.get_path("purelib", vars={"base": str(venv_path)})
    return pathlib.Path(purelib)


def _runner_site_directories() -> list[str]:
    directories = [*site.getsitepackages()]
    if site.ENABLE_USER_SITE and site.USER_SITE:
        directories.append(site.USER_SITE)
    return [directory for directory in directories if pathlib.Path(directory).is_dir()]


def _run_tool(command: list[str], *, what: str) -> None:
    completed = subprocess.run(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        tail = "\n".join(completed.stdout.splitlines()[-PIP_OUTPUT_TAIL_LINES:])
        raise RequirementsInstallError(
            f"{what} failed with exit code {completed.returncode}:\n{tail}"
        )


def _create_environment(
    *,
    venv_path: pathlib.Path,
    layers: collections.abc.Sequence[collections.abc.Sequence[str]],
    parents: collections.abc.Sequence[str],
) -> None:
    _run_tool(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv_path)],
        what="creating the virtual environment",
    )
    site_packages = _site_packages_of(venv_path)
    site_packages.mkdir(parents=True, exist_ok=True)
    # One executable .pth line: the layer below (whose own .pth chains further down) or the
    # runner's site directories come after the environment's, so what is installed here wins.
    parent_directories = json.dumps(list(parents))
    (site_packages / PARENT_SITE_PTH).write_text(
        # map(), not a comprehension: site exec()s the line in a function, and a
        # comprehension's own scope would not see the name ``site`` the import bound there.
        f"import site; list(map(site.addsitedir, {parent_directories}))\n"
    )
    venv_python = venv_path / "bin" / "python"
    for layer in layers:
        _run_tool(
            [
                str(venv_python),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                *layer,
            ],
            what=f"pip install {' '.join(layer)}",
        )


@contextlib.contextmanager
def _exclusive_lock(lock_path: pathlib.Path) -> collections.abc.Iterator[None]:
    """Serialize installs of the same set by runners sharing the cache (one node, one volume)."""
    with lock_path.open("a") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def _prepare_layer(
    *,
    layers: collections.abc.Sequence[collections.abc.Sequence[str]],
    cache_directory: pathlib.Path,
    parents: collections.abc.Sequence[str],
) -> tuple[pathlib.Path, bool]:
    """The environment of the last of ``layers`` on top of ``parents``; True if it existed."""
    key = environment_key(layers)
    venv_path = cache_directory / key
    with _exclusive_lock(cache_directory / f"{key}.lock"):
        if (venv_path / COMPLETE_MARKER).is_file():
            return venv_path, True
        shutil.rmtree(venv_path, ignore_errors=True)
        try:
            _create_environment(venv_path=venv_path, layers=layers[-1:], parents=parents)
        except BaseException:
            shutil.rmtree(venv_path, ignore_errors=True)
            raise
        (venv_path / COMPLETE_MARKER).write_text(
            json.dumps({"layers": [list(layer) for layer in layers]})
        )
    return venv_path, False


def prepare_environment(
    *,
    layers: collections.abc.Sequence[collections.abc.Sequence[str]],
    cache_directory: pathlib.Path,
) -> PreparedEnvironment:
    """Return the cached environment for ``layers`` (the last layer's, chained to the ones
    below), installing each layer that is missing first, in order."""
    if not layers:
        raise ValueError("prepare_environment needs at least one layer")
    started = time.monotonic()
    try:
        cache_directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RequirementsInstallError(
            f"cannot create the requirements cache {cache_directory}: {error}"
        ) from error
    parents: list[str] = _runner_site_directories()
    venv_path = cache_directory
    reused_layers = 0
    for depth in range(1, len(layers) + 1):
        venv_path, existed = _prepare_layer(
            layers=layers[:depth], cache_directory=cache_directory, parents=parents
        )
        reused_layers += existed
        parents = [str(_site_packages_of(venv_path))]
    return PreparedEnvironment(
        path=venv_path,
        site_packages=_site_packages_of(venv_path),
        reused=reused_layers == len(layers),
        seconds=time.monotonic() - started,
        reused_layers=reused_layers,
    )


def activate_environment(environment: PreparedEnvironment) -> None:
    """Put the environment first on this process's import path and on PATH for subprocesses."""
    before = list(sys.path)
    site.addsitedir(str(environment.site_packages))
    added = [entry for entry in sys.path if entry not in before]
    sys.path[:] = added + before
    os.environ["VIRTUAL_ENV"] = str(environment.path)
    os.environ["PATH"] = os.pathsep.join(
        [str(environment.path / "bin"), os.environ.get("PATH", "")]
    )
