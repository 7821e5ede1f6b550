"""Requirements installed at start into a cached virtual environment, with no network.

A tiny package is built as a real wheel in the test's temp dir and served to pip with
``PIP_NO_INDEX=1`` and ``PIP_FIND_LINKS`` (pip's own environment variables), so the install is the
real ``python -m venv`` + ``pip install`` path.

We test these aspects: the app imports the package from the new environment; a second start with
the same requirement set reuses the environment instead of installing; an uninstallable requirement
exits with code 4 and says what pip said; layers (fal's list of lists) are installed in order, one
cached environment each, so an app sharing the leading layer installs only the layer that differs,
and a later layer's pin wins over an earlier one's.
"""

from __future__ import annotations

import pathlib

import httpx
import pytest

from testkit import runners
from tests.offline_wheels import build_wheel as _build_wheel

pytestmark = pytest.mark.slow  # starts real processes; `make unit` leaves it out

EXTRA = "kubefal_probe_extra"


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
    start_runner: runners.RunnerFactory, tmp_path: pathlib.Path
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
    start_runner: runners.RunnerFactory, tmp_path: pathlib.Path
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


def test_layers_get_one_cached_environment_each_and_a_shared_first_layer_is_not_reinstalled(
    start_runner: runners.RunnerFactory, tmp_path: pathlib.Path
) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    first_layer_wheel = _build_wheel(wheels)
    _build_wheel(wheels, package=EXTRA, value="extra 1.0")
    _build_wheel(wheels, package=EXTRA, version="2.0", value="extra 2.0")
    cache = tmp_path / "venvs"
    first_env = _offline_pip_env(
        wheels=wheels,
        cache=cache,
        requirements='[["kubefal-probe-package==1.0"], ["kubefal-probe-extra==1.0"]]',
    )

    first = start_runner("layered_app.py::LayeredApp", extra_env=first_env)
    first.wait_ready()
    first_answer = httpx.post(f"{first.base_url}/", timeout=30).json()
    first.send_signal()
    assert first.wait_exit() == 0
    # The first layer's wheel is gone: a second app can start only if it reuses that layer.
    first_layer_wheel.unlink()
    second_env = {
        **first_env,
        "KUBEFAL_REQUIREMENTS": '[["kubefal-probe-package==1.0"], ["kubefal-probe-extra==2.0"]]',
    }
    second = start_runner("layered_app.py::LayeredApp", extra_env=second_env)
    second.wait_ready()
    second_answer = httpx.post(f"{second.base_url}/", timeout=30).json()

    base = pathlib.Path(first_answer["file"]).parents[3]
    assert first_answer["value"] == "installed by the runner"
    assert first_answer["extra"] == "extra 1.0"
    assert second_answer["extra"] == "extra 2.0"
    # The package of layer one lives in layer one's environment, shared by both apps.
    assert second_answer["file"] == first_answer["file"]
    assert not pathlib.Path(first_answer["extra_file"]).is_relative_to(base)
    assert second_answer["extra_file"] != first_answer["extra_file"]
    assert len([path for path in cache.iterdir() if path.is_dir()]) == 3
    assert "0 of 2 layers found in the cache" in first.stderr()
    assert "1 of 2 layers found in the cache" in second.stderr()


def test_a_later_layer_pins_over_an_earlier_one(
    start_runner: runners.RunnerFactory, tmp_path: pathlib.Path
) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _build_wheel(wheels)
    _build_wheel(wheels, version="2.0", value="version 2.0 from layer two")
    env = _offline_pip_env(
        wheels=wheels,
        cache=tmp_path / "venvs",
        requirements='[["kubefal-probe-package==1.0"], ["kubefal-probe-package==2.0"]]',
    )

    runner = start_runner("requirements_app.py::RequirementsApp", extra_env=env)
    runner.wait_ready()
    answer = httpx.post(f"{runner.base_url}/", timeout=30).json()

    assert answer["value"] == "version 2.0 from layer two"
