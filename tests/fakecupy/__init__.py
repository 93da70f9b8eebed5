"""A stand-in for CuPy 14.2 on the CPU, for testing the CuPy path of gpu_backprop without a GPU.

    import fakecupy
    with fakecupy.installed():          # ``import cupy`` now gives the stand-in
        import cupy
        x = cupy.asarray(np.ones(3))     # a device array (host memory underneath)

or, for a whole process (a command line, an MPI rank)::

    python -m fakecupy -m gpu_backprop train --backend cupy ...

The stand-in lives in ``_cupy/`` (never on ``sys.path`` itself, so it cannot shadow a real CuPy) and is
loaded under the name ``cupy`` by a finder that :func:`install` puts first on ``sys.meta_path``; its
submodules (``cupy.cuda``, ``cupy._core._routines_linalg``, and ``cupy.cuda.nccl`` only on
``import cupy.cuda.nccl``) then load by the ordinary import machinery, as CuPy's do.

It follows CuPy 14.2 where gpu_backprop meets it (see ``tests/test_fakecupy.py``, which checks its layout
against an installed CuPy):

* ``cupy.ndarray`` is its own type over a NumPy array ("device memory" is host memory, so ``.data.ptr``
  is a real address). Implicit conversion to NumPy raises CuPy's ``TypeError``; CuPy functions given
  NumPy arrays raise where CuPy's do (``Unsupported type``, ``Argument 'a' has incorrect type``);
  ``float()``, ``int()``, ``bool()``, ``.get()``, ``repr`` and ``format`` of arrays synchronise, and are
  counted (``cupy.cuda.stream.sync_count()``). ``cupy.empty`` returns memory filled with 0xFF bytes
  (NaN, -1, 255) rather than zeros, as reused pool memory would be garbage. Layouts follow CuPy's: order
  ``'K'`` (the default of ``asarray``, ``astype`` and the ``*_like`` functions) keeps a column-major array
  column-major, and host data reaches the device little-endian.
* ``ElementwiseKernel`` generates CuPy's CUDA source text (types, broadcasting, ``reduce_dims``, 32-bit
  indexing, ``CArray``/``CIndexer`` parameters) and ``RawKernel`` takes its source as given; both are
  compiled with g++ against a small emulation of the CUDA features used (``_cupy/_core/_cpu.py``) and
  run for real, arguments passed by address as CUDA passes them. Kernels that use ``__syncthreads``
  or warp shuffles run one host thread per CUDA thread; the others run their threads one after another.
* Devices, streams, events, the memory pool (``set_limit`` raises CuPy's ``OutOfMemoryError``), the
  runtime's version and properties, TF32 compute types and NCCL (``ndev`` ranks over MPI) follow CuPy.

Settings (environment): ``FAKECUPY_DEVICES`` (GPUs, default 1), ``FAKECUPY_NCCL`` (``0``: NCCL's
library is missing), ``FAKECUPY_SMS`` (SMs per device, default 2), ``FAKECUPY_CACHE_DIR`` (where kernel
builds are cached, default a fresh temporary directory), ``FAKECUPY_CXX`` (default ``g++``).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TREE = Path(__file__).resolve().parent / "_cupy"
NAMES = ("cupy", "cupy_backends", "cupyx")  # the real CuPy's top-level modules, set aside while installed

__all__ = ["TREE", "compiler_problem", "install", "installed", "is_installed", "uninstall"]


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the top-level ``cupy`` in ``_cupy/``; its submodules come from its ``__path__``."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "cupy":
            return None
        return importlib.util.spec_from_file_location("cupy", TREE / "__init__.py",
                                                      submodule_search_locations=[str(TREE)])


_finder = _Finder()
_saved: dict[str, Any] = {}


def _ours(name: str) -> bool:
    return name == "cupy" or name.startswith("cupy.")


def is_installed() -> bool:
    return _finder in sys.meta_path


def install() -> None:
    """Make ``import cupy`` give the stand-in (a real CuPy already imported is set aside until :func:`uninstall`)."""
    if is_installed():
        return
    for name in list(sys.modules):
        if name.split(".")[0] in NAMES:
            _saved[name] = sys.modules.pop(name)
    sys.meta_path.insert(0, _finder)


def uninstall() -> None:
    """Forget the stand-in and put back whatever ``cupy`` modules were there before."""
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
    for name in list(sys.modules):
        if name.split(".")[0] in NAMES:
            del sys.modules[name]
    sys.modules.update(_saved)
    _saved.clear()


@contextlib.contextmanager
def installed() -> Iterator[Any]:
    """``import cupy`` gives the stand-in inside the block; yields the stand-in module."""
    install()
    try:
        import cupy

        yield cupy
    finally:
        uninstall()


def compiler_problem() -> str | None:
    """Why the stand-in cannot run kernels here (no C++20 compiler), or None."""
    import os

    cxx = os.environ.get("FAKECUPY_CXX", "g++")
    if shutil.which(cxx) is None:
        return f"the CuPy stand-in runs kernels through {cxx}, which is not installed"
    return None
