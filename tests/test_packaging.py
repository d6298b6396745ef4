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
    # this interpreter's site-packages (a --system-site-packages venv has two), whose .pth
    # files -S leaves unread
    sites = [sysconfig.get_paths()["purelib"], *(p for p in sys.path
                                                 if p.endswith("site-packages"))]
    code = (f"import sys\nsys.path[:0] = [{str(tmp_path)!r}]\n"
            f"sys.path += {sites!r}\n" + SWIFT_LOADS)
    # -S: skip .pth files, so the editable checkout's finder cannot stand in for the wheel
    out = subprocess.run([sys.executable, "-S", "-c", code], check=True, timeout=120,
                         capture_output=True, text=True)
    assert out.stdout.strip() == str(tmp_path / "nionswift_plugin" / "fusetomo" / "__init__.py")


# What Swift's plug-in loader does (nion.swift.model.PlugInManager.load_plug_ins): list the
# modules of the `nionswift_plugin` namespace package with pkgutil, load each through a
# ModuleAdapter, call its `run()`. Prints where the plug-in was loaded from.
SWIFT_LOADS = """
import pkgutil, nionswift_plugin
from nion.swift.model import PlugInManager
found = [m for m in pkgutil.iter_modules(nionswift_plugin.__path__) if m.name == "fusetomo"]
assert found, [m.name for m in pkgutil.iter_modules(nionswift_plugin.__path__)]
adapter = PlugInManager.ModuleAdapter(nionswift_plugin.__name__, found[0])
adapter.load()
adapter.loaded_module.run()
from nion.swift import Panel
assert "fusetomo-panel" in Panel.PanelManager().panel_ids
print(adapter.loaded_module.__file__)
"""


@pytest.mark.slow
def test_strict_editable_install_is_seen_by_swifts_plug_in_search(tmp_path: Path) -> None:
    """A default editable install maps the packages with an import hook that pkgutil cannot
    list, so Swift never finds the plug-in; setuptools' strict editable mode (a tree of
    links under build/) is listed like an installed package. This is the README's install."""
    pytest.importorskip("nion.swift")
    env = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env)],
                   check=True, timeout=120, capture_output=True)
    python = env / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "-e", str(ROOT),
                    "--config-settings", "editable_mode=strict"],
                   check=True, timeout=300, capture_output=True)
    out = subprocess.run([str(python), "-c", SWIFT_LOADS], check=True, timeout=120,
                         capture_output=True, text=True, cwd=tmp_path)
    loaded = Path(out.stdout.strip())
    # from the link tree, which points at the checkout's file
    assert loaded.name == "__init__.py" and loaded.parts[-3:-1] == ("nionswift_plugin",
                                                                    "fusetomo")
    assert loaded.resolve() == ROOT / "ui" / "nionswift_plugin" / "fusetomo" / "__init__.py"


def test_readme_and_ci_install_in_strict_editable_mode() -> None:
    """The README's test command is what .ci/run runs, with the install Swift can see."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    (command,) = [line for line in ci.splitlines() if line.startswith("python3 -m pip")]
    assert "--config-settings editable_mode=strict" in command
    assert f"\n{command}\n" in readme
