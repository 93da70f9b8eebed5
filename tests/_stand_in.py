"""gpu_backprop on the CuPy stand-in (tests/fakecupy): install it for a test, or for a subprocess.

    with stand_in() as cp:            # gpu_backprop's backend now finds "CuPy" and a "GPU"
        net = gb.MLP([4, 3], backend="cupy")

Inside, ``import cupy`` gives the stand-in and gpu_backprop's cached CuPy state (the probed module, the
backends, the built kernels, the fused kernel's plans) starts empty; afterwards all of it is put back
as it was, a real CuPy included.

``raw_source`` of the project's registry leaves ``(T)`` in the softmax kernel, which no CUDA compiler
takes (fixed on another branch: ``raw_source`` will prepend ``typedef <ctype> T;``); while that defect
is there, :func:`stand_in` builds raw kernels the fixed way, so that the rest of the CuPy path can run.
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

import numpy as np

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))

import fakecupy

from gpu_backprop import backend
from gpu_backprop.experimental import persample
from gpu_backprop.kernels import _cuda

COMPILER_PROBLEM = fakecupy.compiler_problem()
if "FAKECUPY_CACHE_DIR" not in os.environ:  # kernel builds shared by this test session and its subprocesses
    os.environ["FAKECUPY_CACHE_DIR"] = tempfile.mkdtemp(prefix="fakecupy-builds-")
    atexit.register(shutil.rmtree, os.environ["FAKECUPY_CACHE_DIR"], True)
#: the defect of kernels._cuda.raw_source that another branch fixes: `(T)` survives in the softmax kernel
RAW_SOURCE_LEAVES_T = "(T)" in _cuda.raw_source("softmax_xent", np.float32)
RAW_SOURCE = _cuda.raw_source  #: the project's own, which stand_in() replaces while the defect is there


def raw_source_with_typedef(name: str, dtype: Any) -> str:
    """``raw_source`` as the fix builds it: ``typedef <ctype> T;`` first, the kernel's text as written."""
    key = _cuda.raw_name(name, dtype)
    return f"typedef {key.rsplit('_', 1)[1]} T;\n" + _cuda.RAW[name].replace("KERNEL_NAME", key)


_STATE = ("_cupy", "_cupy_problem", "_cupy_probed")


@contextlib.contextmanager
def stand_in(**settings: Any) -> Iterator[Any]:
    """The stand-in as ``cupy`` and gpu_backprop's CuPy state fresh; ``settings`` set ``cupy._fake``'s knobs."""
    saved = {k: getattr(backend, k) for k in _STATE}
    saved_cache = dict(backend._cache)
    saved_raw_source = _cuda.raw_source
    fakecupy.install()
    try:
        backend._cupy, backend._cupy_problem, backend._cupy_probed = None, None, False
        backend._cache.clear()
        _cuda._built.clear()
        persample._plans.clear()
        if RAW_SOURCE_LEAVES_T:
            _cuda.raw_source = raw_source_with_typedef
        import cupy

        for k, v in settings.items():
            setattr(cupy._fake, k, v)
        yield cupy
    finally:
        _cuda.raw_source = saved_raw_source
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
    """``python -c ...`` that installs the stand-in, patches ``raw_source`` while it is defective, then runs ``args``
    (``-m module ...`` or ``script ...``) as ``python`` would."""
    patch = ""
    if RAW_SOURCE_LEAVES_T:
        patch = ("import _stand_in; from gpu_backprop.kernels import _cuda; "
                 "_cuda.raw_source = _stand_in.raw_source_with_typedef; ")
    code = ("import sys, runpy, fakecupy; fakecupy.install(); " + patch +
            "a = sys.argv[1:]; "
            "sys.argv = a[1:] if a[0] == '-m' else a; "
            "runpy.run_module(a[1], run_name='__main__', alter_sys=True) if a[0] == '-m' "
            "else runpy.run_path(a[0], run_name='__main__')")
    return [sys.executable, "-c", code, *args]
