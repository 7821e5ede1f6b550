"""Local modules that `fal deploy` pickles by value reach the app in the runner pod.

The pickle is made by the SDK's own code, as `fal deploy` makes it (``fal.app.wrap_app``, the
module registered with ``include_module`` as ``local_python_modules`` does, the SDK's partial
wrapper, ``to_serialized_object``), in a separate interpreter that can import the package. The
package is then absent from the runner's disk: the app can import it only from the pickle.

We test these aspects: the app's ``import localpkg`` (and its sub-package) works in a real
runner; a pickle from another Python minor version stops the runner with exit code 5 and a
message saying what to do.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import httpx
import pytest

from testkit import runners

pytestmark = pytest.mark.slow  # starts real processes; `make unit` leaves it out

PACKAGE = pathlib.Path(__file__).parents[1] / "cli" / "apps" / "bundled" / "localpkg"
APP = pathlib.Path(__file__).parents[2] / "e2e" / "apps" / "local_modules_app.py"
PICKLE_SCRIPT = """
import runpy, sys
import fal.app, fal.sdk
from fal._serialization import include_module
from fal.api.api import _prepare_partial_func

namespace = runpy.run_path(sys.argv[1])
wrapped = fal.app.wrap_app(namespace["LocalModulesApp"])
include_module("localpkg")
serialized = fal.sdk.to_serialized_object(_prepare_partial_func(wrapped.func), "cloudpickle")
open(sys.argv[2], "wb").write(serialized.definition)
"""


def _deployed_app(tmp_path: pathlib.Path, *, python: str) -> pathlib.Path:
    """The app directory as the control plane ships it: the source, the pickle, the note."""
    client = tmp_path / "client"
    shutil.copytree(PACKAGE, client / "localpkg")
    shutil.copy(APP, client / "app.py")
    app_directory = tmp_path / "app"
    app_directory.mkdir()
    subprocess.run(
        [sys.executable, "-c", PICKLE_SCRIPT, "app.py", str(app_directory / "function.pkl")],
        cwd=client,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(client)},
        check=True,
        capture_output=True,
        timeout=120,
    )
    shutil.copy(APP, app_directory / "app.py")
    note = {"python": python, "pickle": "function.pkl", "modules": ["localpkg"]}
    (app_directory / "_kubefal_local_modules.json").write_text(json.dumps(note))
    return app_directory / "app.py"


def test_the_app_imports_the_local_package_from_the_pickled_function(
    start_runner: runners.RunnerFactory, tmp_path: pathlib.Path
) -> None:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    app_file = _deployed_app(tmp_path, python=python)

    runner = start_runner(f"{app_file}::LocalModulesApp")
    runner.wait_ready()
    answer = httpx.post(f"{runner.base_url}/", timeout=30).json()

    assert answer == {"package": "localpkg (sub.inner)"}
    assert not (app_file.parent / "localpkg").exists()


def test_a_pickle_from_another_python_minor_version_stops_the_runner_saying_why(
    start_runner: runners.RunnerFactory, tmp_path: pathlib.Path
) -> None:
    app_file = _deployed_app(tmp_path, python="3.7")

    runner = start_runner(f"{app_file}::LocalModulesApp")

    assert runner.wait_exit() == 5
    log = runner.stderr()
    assert "local_python_modules were pickled by Python 3.7" in log
    assert "kubefal deploy" in log
