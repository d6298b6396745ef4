"""The wheel installs everything under the one namespace `fusetomo` (plus, later, the Nion
Swift plugin package), never generic top-level names such as `solver` or `ui`."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED_TOP = {"fusetomo", "nionswift_plugin"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (whl,) = out.glob("fusetomo-*.whl")
    return whl


def test_wheel_top_level_is_only_fusetomo(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top <= ALLOWED_TOP, f"unexpected top-level entries in the wheel: {top - ALLOWED_TOP}"
    for sub in ("controller", "solver", "adapters", "ui", "simulators"):
        assert f"fusetomo/{sub}/__init__.py" in names


def test_wheel_declares_console_script_and_extras(wheel: Path) -> None:
    zf = zipfile.ZipFile(wheel)
    info = next(n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt"))
    assert "fusetomo = fusetomo.cli:main" in zf.read(info).decode()
    meta = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    for extra in ("gpu", "nion", "viewer", "test"):
        assert f"Provides-Extra: {extra}" in meta


def test_wheel_ships_the_nion_swift_plug_in(wheel: Path, tmp_path: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    # Only our shim: a nionswift_plugin/__init__.py would turn Swift's namespace package
    # into a regular one and hide every other plug-in.
    assert {n for n in names if n.startswith("nionswift_plugin/")} == \
        {"nionswift_plugin/fusetomo/__init__.py"}
    for mod in ("__init__", "panel", "link", "dataitems", "state"):
        assert f"fusetomo/ui/nion/{mod}.py" in names
    zipfile.ZipFile(wheel).extractall(tmp_path)  # the site-packages layout
    code = (f"import importlib, pkgutil, sys\nsys.path[:0] = [{str(tmp_path)!r}]\n"
            f"sys.path.append({sysconfig.get_paths()['purelib']!r})\n"
            "import nionswift_plugin\n"
            "assert 'fusetomo' in [m.name for m in "
            "pkgutil.iter_modules(nionswift_plugin.__path__)]\n"
            "importlib.import_module('nionswift_plugin.fusetomo').run()\n"
            "from nion.swift import Panel\n"
            "assert 'fusetomo-panel' in Panel.PanelManager().panel_ids\n")
    # -S: skip .pth files, so the editable checkout's finder cannot stand in for the wheel
    subprocess.run([sys.executable, "-S", "-c", code], check=True, timeout=120,
                   capture_output=True)
