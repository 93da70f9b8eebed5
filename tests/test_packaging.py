"""The sdist holds what its own tests need, the wheel what the package needs at run time.

Both are built here as pip and ``python -m build`` build them — the sdist from the source tree,
the wheel from the unpacked sdist — by calling setuptools' PEP 517 backend in a subprocess, with
no build isolation and so no network (the ``test`` extra brings setuptools >= 77). The source
tree is copied first, so that the build leaves nothing in it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import gpu_backprop

ROOT = Path(__file__).resolve().parent.parent
IGNORED = (".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis",
           ".mypy_cache", ".ruff_cache", "runs", "out", ".data", "*.pyc")


def _setuptools_major() -> int:
    try:
        import setuptools
    except ImportError:
        return 0
    return int(setuptools.__version__.split(".")[0])


pytestmark = pytest.mark.skipif(_setuptools_major() < 77, reason="building needs setuptools >= 77 (the SPDX "
                                "license field): pip install -e '.[test]'")


def _backend(hook: str, source: Path, dist: Path) -> Path:
    code = f"import sys\nfrom setuptools import build_meta\nprint(build_meta.{hook}(sys.argv[1]))"
    proc = subprocess.run([sys.executable, "-c", code, str(dist)], cwd=source, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dist / proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel): the sdist from a copy of the tree, the wheel from the unpacked sdist."""
    tmp = tmp_path_factory.mktemp("packaging")
    source, dist = tmp / "source", tmp / "dist"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*IGNORED))
    dist.mkdir()
    sdist = _backend("build_sdist", source, dist)
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "unpacked", filter="data")
    (unpacked,) = (tmp / "unpacked").iterdir()
    return sdist, _backend("build_wheel", unpacked, dist)


def _sdist_files(sdist: Path) -> set[str]:
    with tarfile.open(sdist) as tar:
        return {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}


def test_the_sdist_holds_the_tests_with_their_helpers_the_docs_benchmarks_and_scripts(built: tuple[Path, Path]) -> None:
    files = _sdist_files(built[0])
    tests = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").rglob("*.py") if "__pycache__" not in p.parts}
    assert {"tests/conftest.py", "tests/_checkpoint_worker.py", "tests/_distributed_worker.py"} <= tests
    assert not tests - files, f"missing from the sdist: {sorted(tests - files)}"
    for name in ("LICENSE", "README.md", "pyproject.toml", "docs/api.md", "docs/derivation.md", "benchmarks/run.py",
                 "benchmarks/scaling.py", "benchmarks/README.md", "scripts/train_mnist.py", "scripts/gpu_check.sh",
                 "gpu_backprop/experimental/persample.cu", "gpu_backprop/py.typed"):
        assert name in files, name
    results = {p.relative_to(ROOT).as_posix() for p in (ROOT / "benchmarks" / "results").iterdir()}
    assert results <= files  # the committed measurements, plots included (a few hundred kB)
    assert not [f for f in files if f.endswith((".pyc", ".tmp"))]


def test_the_wheel_holds_the_kernel_source_the_sample_data_the_type_marker_and_the_license(
        built: tuple[Path, Path]) -> None:
    names = set(zipfile.ZipFile(built[1]).namelist())
    data = {f"gpu_backprop/_data/{p.name}" for p in (ROOT / "gpu_backprop" / "_data").glob("*.npz")}
    assert data and data <= names
    assert {"gpu_backprop/experimental/persample.cu", "gpu_backprop/py.typed", "gpu_backprop/tools/bench/suite.py"} <= names
    dist_info = f"gpu_backprop-{gpu_backprop.__version__}.dist-info"
    assert f"{dist_info}/licenses/LICENSE" in names
    assert {n.split("/")[0] for n in names} == {"gpu_backprop", dist_info}  # no tests or benchmarks installed


def test_the_metadata_has_one_version_an_spdx_license_and_the_cuda_extras(built: tuple[Path, Path]) -> None:
    wheel = zipfile.ZipFile(built[1])
    meta = Parser().parsestr(wheel.read(f"gpu_backprop-{gpu_backprop.__version__}.dist-info/METADATA").decode())
    assert meta["Version"] == gpu_backprop.__version__  # taken from gpu_backprop/__init__.py, written nowhere else
    project = re.search(r"^\[project\]\n(.*?)^\[", (ROOT / "pyproject.toml").read_text(), re.MULTILINE | re.DOTALL)[1]
    assert not re.search(r"^version\s*=", project, re.MULTILINE) and re.search(r'^dynamic = \["version"\]', project, re.MULTILINE)
    assert meta["License-Expression"] == "MIT" and meta["License-File"] == "LICENSE"
    assert "Copyright (c) 2026 the gpu_backprop authors" in (ROOT / "LICENSE").read_text()
    assert not [c for c in meta.get_all("Classifier") if c.startswith("License ::")]  # PEP 639: the SPDX field only
    requires = meta.get_all("Requires-Dist")
    for cuda in ("12", "13"):  # CuPy with the CUDA toolkit wheels, and NCCL: a driver is all the machine needs
        assert f'cupy-cuda{cuda}x[ctk]>=14; extra == "cuda{cuda}"' in requires
        assert any(r.startswith(f"nvidia-nccl-cu{cuda}") and f'extra == "cuda{cuda}"' in r for r in requires)
