"""Guards on the repository's shape that no linter checks.

A top-level package named ``operator`` cannot work (the stdlib's wins), so the component
folders are plain folders that hold the ``kubefal_*`` import packages; and every module
says why it exists.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import sysconfig

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
COMPONENT_FOLDERS = ("api", "operator", "gateway", "runner", "webhook", "cli", "controlplane")


@pytest.mark.parametrize("folder", COMPONENT_FOLDERS)
def test_component_folders_are_not_packages(folder: str) -> None:
    assert not (ROOT / folder / "__init__.py").exists(), (
        f"{folder}/__init__.py must not exist: the import package lives in "
        f"{folder}/kubefal_{folder}/ (a package named 'operator' shadows the stdlib)"
    )


def _modules() -> list[pathlib.Path]:
    found: list[pathlib.Path] = []
    for folder in COMPONENT_FOLDERS:
        found += sorted((ROOT / folder).glob("kubefal_*/**/*.py"))
    return [path for path in found if "_generated" not in path.parts]


def test_every_module_opens_with_a_docstring_saying_why_it_exists() -> None:
    missing = [
        str(path.relative_to(ROOT))
        for path in _modules()
        if path.stat().st_size and not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert missing == []


def test_python_started_in_the_repository_root_imports_the_stdlib_operator_module() -> None:
    """``python -c`` puts the working directory first on sys.path, as ``pythonpath = ["."]``
    does for pytest: a fresh interpreter there must still get the stdlib's ``operator`` (this
    process imported it long before any test ran, so only a new one can tell)."""
    completed = subprocess.run(
        [sys.executable, "-c", "import operator, sysconfig; print(operator.__file__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    imported = pathlib.Path(completed.stdout.strip()).resolve()
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert imported.is_relative_to(stdlib), f"'import operator' in {ROOT} found {imported}"
