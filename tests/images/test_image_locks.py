"""The images install exactly the versions pinned in images/requirements-*.txt (``--no-deps``).

So a dependency added to pyproject.toml without re-running ``images/lock.sh`` would build an
image that fails at import. These tests read the pins and pyproject.toml (no network) and
check that every direct requirement of each image's extras is pinned, at a version it accepts.
"""

from __future__ import annotations

import pathlib
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
# Markers are evaluated for the images' interpreter: CPython 3.11 on Linux x86_64.
IMAGE_ENVIRONMENT = {
    "python_version": "3.11",
    "python_full_version": "3.11.2",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


def _pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pins(lock: str) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (IMAGES / lock).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"{lock}: {line!r} is not name==version"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _image_extras() -> dict[str, set[str]]:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    extras = set(project["optional-dependencies"])
    # The kubefal image runs every server process (no CLI, no benchmarks); the runner image only
    # the runner.
    return {
        "requirements-runner.txt": {"runner"},
        "requirements-kubefal.txt": extras - {"runner", "cli", "bench", "all"},
    }


def _unsatisfied(requirements: list[str], pins: dict[str, Version]) -> list[str]:
    problems = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate(IMAGE_ENVIRONMENT):
            continue
        name = canonicalize_name(requirement.name)
        if name == "kubefal":
            continue
        pinned = pins.get(name)
        if pinned is None:
            problems.append(f"{text}: not pinned")
        elif not requirement.specifier.contains(pinned, prereleases=True):
            problems.append(f"{text}: pinned {pinned}")
    return problems


@pytest.mark.parametrize("lock", ["requirements-runner.txt", "requirements-kubefal.txt"])
def test_each_image_pins_every_requirement_of_its_extras(lock: str) -> None:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    requirements = list(project["dependencies"])
    for extra in sorted(_image_extras()[lock]):
        requirements += project["optional-dependencies"][extra]
    problems = _unsatisfied(requirements, _pins(lock))
    assert not problems, f"images/{lock} is stale (run images/lock.sh): {problems}"


def test_the_build_lock_pins_the_build_backend() -> None:
    build_system = _pyproject()["build-system"]
    assert isinstance(build_system, dict)
    problems = _unsatisfied(build_system["requires"], _pins("requirements-build.txt"))
    assert not problems, f"images/requirements-build.txt is stale (run images/lock.sh): {problems}"


def test_a_stale_pin_is_reported() -> None:
    pins = {"fal": Version("1.82.0")}
    assert _unsatisfied(["fal>=1.83,<2", "uvloop; sys_platform == 'win32'", "httpx"], pins) == [
        "fal>=1.83,<2: pinned 1.82.0",
        "httpx: not pinned",
    ]
