"""Public experimental files for the tests, taken from package wheels into a cache.

    python tests/realdata.py            # fetch everything now (tests fetch on first use)

The files ship inside two wheels on PyPI, fetched with `pip download --no-deps` (the
ordinary client) and unzipped; only the members below are kept:

- etspy 1.3.0 (NIST, public domain): a needle tilt series as MRC (int16, 77 tilts of
  256 x 256, vacuum near -31880), its IMOD `.rawtlt`, an `.ali` copy, etspy's curated
  alignment `HAADF_Aligned.hspy`, a DM3 stack with a degree axis, and a folder of
  per-tilt DM3 files;
- hyperspy 1.7.6 (GPL-3, test data): Velox EMD spectrum images with HAADF (one with four
  EDS detectors), a Bruker `test_TEM.bcf`, TIA SER/EMI files.

The cache is `$FUSETOMO_TESTDATA`, else `~/.cache/fusetomo-testdata`. `require(name)`
returns a file's path, or skips the calling test with the reason the cache could not be
built (no network, pip missing, ...).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEELS: dict[str, dict[str, str]] = {
    # wheel requirement -> {member path in the wheel: name in the cache}
    "etspy==1.3.0": {
        "etspy/tests/test_data/HAADF.mrc": "etspy/HAADF.mrc",
        "etspy/tests/test_data/HAADF.rawtlt": "etspy/HAADF.rawtlt",
        "etspy/tests/test_data/HAADF.ali": "etspy/HAADF.ali",
        "etspy/tests/test_data/HAADF_Aligned.hspy": "etspy/HAADF_Aligned.hspy",
        "etspy/tests/test_data/HAADF.dm3": "etspy/HAADF.dm3",
        "etspy/tests/test_data/DM_Series_Test/BF_001.dm3": "etspy/DM_Series_Test/BF_001.dm3",
        "etspy/tests/test_data/DM_Series_Test/BF_002.dm3": "etspy/DM_Series_Test/BF_002.dm3",
        "etspy/tests/test_data/DM_Series_Test/BF_003.dm3": "etspy/DM_Series_Test/BF_003.dm3",
    },
    "hyperspy==1.7.6": {
        "hyperspy/tests/io/emd_files/fei_emd_files.zip": "hyperspy/fei_emd_files.zip",
        "hyperspy/tests/io/bruker_data/test_TEM.bcf": "hyperspy/test_TEM.bcf",
        "hyperspy/tests/io/FEI_new/16x16-spectrum_image_5x5x4000-not_square.emi":
            "hyperspy/tia/16x16-spectrum_image_5x5x4000-not_square.emi",
        "hyperspy/tests/io/FEI_new/16x16-spectrum_image_5x5x4000-not_square_1.ser":
            "hyperspy/tia/16x16-spectrum_image_5x5x4000-not_square_1.ser",
        "hyperspy/tests/io/FEI_old/64x64x5_TEM_preview.emi":
            "hyperspy/tia/64x64x5_TEM_preview.emi",
        "hyperspy/tests/io/FEI_old/64x64x5_TEM_preview_1.ser":
            "hyperspy/tia/64x64x5_TEM_preview_1.ser",
    },
}
# Members of hyperspy's fei_emd_files.zip kept (Velox EMD files).
VELOX = ("fei_SI_EDS-HAADF-4detectors_2frames.emd", "fei_SI_SuperX-HAADF_10frames_10x50.emd")


def cache_dir() -> Path:
    return Path(os.environ.get("FUSETOMO_TESTDATA", Path.home() / ".cache" /
                               "fusetomo-testdata"))


def _fetch(requirement: str, members: dict[str, str], root: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        "--disable-pip-version-check", "--dest", tmp, requirement],
                       check=True, capture_output=True, text=True, timeout=900)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for member, name in members.items():
                out = root / name
                out.parent.mkdir(parents=True, exist_ok=True)
                part = out.with_name(out.name + ".part")
                part.write_bytes(z.read(member))
                part.replace(out)


def _unpack_velox(root: Path) -> None:
    with zipfile.ZipFile(root / "hyperspy" / "fei_emd_files.zip") as z:
        for name in VELOX:
            out = root / "hyperspy" / "velox" / name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(name))


def build() -> Path:
    """Fetch whatever is missing; returns the cache folder. Raises on failure."""
    root = cache_dir()
    for requirement, members in WHEELS.items():
        if not all((root / n).is_file() for n in members.values()):
            _fetch(requirement, members, root)
    if not all((root / "hyperspy" / "velox" / n).is_file() for n in VELOX):
        _unpack_velox(root)
    return root


_FAILED: list[str] = []


def require(name: str) -> Path:
    """The cached file `name` (relative to the cache), building the cache when needed; the
    calling test is skipped with the reason when it cannot be built."""
    import pytest

    path = cache_dir() / name
    if path.exists():
        return path
    if _FAILED:
        pytest.skip(_FAILED[0])
    try:
        build()
    except (OSError, subprocess.SubprocessError, zipfile.BadZipFile, KeyError,
            StopIteration) as e:
        detail = getattr(e, "stderr", "") or ""
        _FAILED.append(f"public test data could not be fetched into {cache_dir()} "
                       f"(pip download of the etspy/hyperspy wheels): {type(e).__name__}: "
                       f"{e} {detail.strip()[-300:]}")
        pytest.skip(_FAILED[0])
    if not path.exists():
        pytest.skip(f"{name} is not in the test-data cache {cache_dir()}")
    return path


if __name__ == "__main__":
    print(build())
