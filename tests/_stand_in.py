"""gpu_backprop on the CuPy stand-in (tests/fakecupy): install it for a test, or for a subprocess.

    with stand_in() as cp:            # gpu_backprop's backend now finds "CuPy" and a "GPU"
        net = gb.MLP([4, 3], backend="cupy")

Inside, ``import cupy`` gives the stand-in and gpu_backprop's cached CuPy state (the probed module, the
backends, the built kernels, the fused kernel's plans) starts empty; afterwards all of it is put back
as it was, a real CuPy included.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))

import fakecupy

from gpu_backprop import backend
from gpu_backprop.experimental import persample
from gpu_backprop.kernels import _cuda

COMPILER_PROBLEM = fakecupy.compiler_problem()
needs_compiler = pytest.mark.skipif(COMPILER_PROBLEM is not None, reason=COMPILER_PROBLEM or "")
if "FAKECUPY_CACHE_DIR" not in os.environ:  # kernel builds shared by this test session and its subprocesses
    os.environ["FAKECUPY_CACHE_DIR"] = tempfile.mkdtemp(prefix="fakecupy-builds-")
    atexit.register(shutil.rmtree, os.environ["FAKECUPY_CACHE_DIR"], True)


_STATE = ("_cupy", "_cupy_problem", "_cupy_probed")


@contextlib.contextmanager
def stand_in(**settings: Any) -> Iterator[Any]:
    """The stand-in as ``cupy`` and gpu_backprop's CuPy state fresh; ``settings`` set ``cupy._fake``'s knobs."""
    saved = {k: getattr(backend, k) for k in _STATE}
    saved_cache = dict(backend._cache)
    fakecupy.install()
    try:
        backend._cupy, backend._cupy_problem, backend._cupy_probed = None, None, False
        backend._cache.clear()
        _cuda._built.clear()
        persample._plans.clear()
        import cupy

        for k, v in settings.items():
            setattr(cupy._fake, k, v)
        yield cupy
    finally:
        _cuda._built.clear()
        persample._plans.clear()
        backend._cache.clear()
        backend._cache.update(saved_cache)
        for k, v in saved.items():
            setattr(backend, k, v)
        fakecupy.uninstall()


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for ``python -m fakecupy ...``: this checkout and tests/ first on the path."""
    path = os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, "OPENBLAS_NUM_THREADS": "1", **extra}


def stand_in_command(*args: str) -> list[str]:
    """``python -c ...`` that installs the stand-in, then runs ``args`` (``-m module ...`` or ``script ...``)
    as ``python`` would."""
    code = ("import sys, runpy, fakecupy; fakecupy.install(); "
            "a = sys.argv[1:]; "
            "sys.argv = a[1:] if a[0] == '-m' else a; "
            "runpy.run_module(a[1], run_name='__main__', alter_sys=True) if a[0] == '-m' "
            "else runpy.run_path(a[0], run_name='__main__')")
    return [sys.executable, "-c", code, *args]
