"""The distribution maps every folder under the one import root `facefab`."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"pipelines", "operators", "jobs", "manifests"}


def _declared_packages() -> set[str]:
    return set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def test_every_subpackage_is_declared_under_facefab():
    found = set()
    for top in ROOTS:
        for init in (REPO / top).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO).parts
            found.add(".".join(("facefab", *rel)))
    missing = found - _declared_packages()
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"


def test_declared_packages_import():
    for name in sorted(_declared_packages()):
        importlib.import_module(name)


def test_wheel_installs_only_under_facefab(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("facefab-*.whl")
    tops = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"facefab", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    names = zipfile.ZipFile(wheel).namelist()
    assert "facefab/operators/base.py" in names and "facefab/jobs/cli.py" in names


def test_cli_help_and_version():
    out = subprocess.run([sys.executable, "-m", "facefab.jobs.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("preprocess", "dub", "train", "models", "run", "verify", "report", "status"):
        assert command in out.stdout
    ver = subprocess.run([sys.executable, "-m", "facefab.jobs.cli", "--version"], capture_output=True, text=True, check=True)
    assert ver.stdout.startswith("facefab ")
