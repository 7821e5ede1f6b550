"""Requirements installed at start into a cached virtual environment, with no network.

A tiny package is built as a real wheel in the test's temp dir and served to pip with
``PIP_NO_INDEX=1`` and ``PIP_FIND_LINKS`` (pip's own environment variables), so the install is the
real ``python -m venv`` + ``pip install`` path.

We test these aspects: the app imports the package from the new environment; a second start with
the same requirement set reuses the environment instead of installing; an uninstallable requirement
exits with code 4 and says what pip said.
"""

from __future__ import annotations

import base64
import hashlib
import pathlib
import zipfile

import httpx

from kubefal_runner import testing

PACKAGE = "kubefal_probe_package"
DISTRIBUTION = "kubefal_probe_package-1.0.dist-info"


def _record_line(*, name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _build_wheel(directory: pathlib.Path) -> pathlib.Path:
    """A pure-Python wheel of ``kubefal-probe-package`` 1.0 (PEP 427 layout, written directly)."""
    files = {
        f"{PACKAGE}/__init__.py": b'VALUE = "installed by the runner"\n',
        f"{DISTRIBUTION}/METADATA": (
            b"Metadata-Version: 2.1\nName: kubefal-probe-package\nVersion: 1.0\n"
        ),
        f"{DISTRIBUTION}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: kubefal-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = "\n".join(
        [
            *(_record_line(name=name, data=data) for name, data in files.items()),
            f"{DISTRIBUTION}/RECORD,,",
        ]
    )
    wheel_path = directory / "kubefal_probe_package-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel_path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr(f"{DISTRIBUTION}/RECORD", record + "\n")
    return wheel_path


def _offline_pip_env(
    *, wheels: pathlib.Path, cache: pathlib.Path, requirements: str
) -> dict[str, str]:
    return {
        "KUBEFAL_REQUIREMENTS": requirements,
        "KUBEFAL_REQUIREMENTS_CACHE": str(cache),
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheels),
    }


def test_requirements_are_installed_into_a_cached_environment_and_reused(
    start_runner: testing.RunnerFactory, tmp_path: pathlib.Path
) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _build_wheel(wheels)
    cache = tmp_path / "venvs"
    env = _offline_pip_env(
        wheels=wheels, cache=cache, requirements='["kubefal-probe-package==1.0"]'
    )

    first = start_runner("requirements_app.py::RequirementsApp", extra_env=env)
    first.wait_ready()
    first_answer = httpx.post(f"{first.base_url}/", timeout=30).json()
    first.send_signal()
    assert first.wait_exit() == 0
    second = start_runner("requirements_app.py::RequirementsApp", extra_env=env)
    second.wait_ready()
    second_answer = httpx.post(f"{second.base_url}/", timeout=30).json()
    info = second.get("/_kubefal/info")

    environments = [path for path in cache.iterdir() if path.is_dir()]
    assert len(environments) == 1
    assert first_answer["value"] == "installed by the runner"
    assert pathlib.Path(first_answer["file"]).is_relative_to(environments[0])
    assert second_answer == first_answer
    assert "requirements installed in" in first.stderr()
    assert "requirements reused from cache" in second.stderr()
    assert info is not None
    assert info.json()["runner"]["startup_seconds"]["requirements"] >= 0


def test_an_uninstallable_requirement_exits_4_with_pips_message(
    start_runner: testing.RunnerFactory, tmp_path: pathlib.Path
) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    env = _offline_pip_env(
        wheels=wheels, cache=tmp_path / "venvs", requirements="kubefal-missing-package==9.9"
    )

    runner = start_runner("requirements_app.py::RequirementsApp", extra_env=env)
    exit_code = runner.wait_exit()

    assert exit_code == 4
    log = runner.stderr()
    assert "could not install the app's requirements" in log
    assert "pip install kubefal-missing-package==9.9 failed" in log
    assert "No matching distribution found for kubefal-missing-package==9.9" in log
    assert not any((tmp_path / "venvs").glob("reqs-*/"))
