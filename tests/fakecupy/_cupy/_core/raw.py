"""``cupy._core.raw``: ``RawKernel``, its source compiled as given and run on the CPU (see :mod:`._cpu`).

Arguments are passed as CuPy's ``Function.__call__`` passes them (``cupy/cuda/function.pyx``): a
``cupy.ndarray`` as its data pointer — whatever its dtype, strides or contiguity, as CUDA sees them —
a NumPy scalar by value in its own dtype, a Python ``int`` as a 64-bit integer, a ``float`` as a double,
a NumPy array of one element by value, ``None`` as a null pointer; a larger NumPy array is refused.
``grid`` and ``block`` must be tuples. A cooperative launch that asks for more blocks than fit on the
device at once is cut down, with CuPy's warning.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .. import _fake
from ..cuda import _driver as driver
from ..cuda import _runtime as runtime
from ..cuda.memory import MemoryPointer
from . import _cpu
from ._kernel import CScalar
from .core import ndarray


class Function:
    """A compiled kernel: ``ptr`` (its address), and ``__call__(grid, block, args, shared_mem=0, stream=None,
    enable_cooperative_groups=False)``."""

    def __init__(self, module: _cpu.Module, name: str) -> None:
        self.module, self.name, self.ptr = module, name, module.ptr

    def __call__(self, grid: tuple, block: tuple, args: Any, shared_mem: int = 0, stream: Any = None,
                 enable_cooperative_groups: bool = False) -> None:
        for what, value in (("grid", grid), ("block", block)):
            if not isinstance(value, tuple):
                raise TypeError(f"Argument '{what}' has incorrect type (expected tuple, got {type(value).__name__})")
        g = tuple(max(1, int(v)) for v in (grid + (1, 1))[:3])
        b = tuple(max(1, int(v)) for v in (block + (1, 1))[:3])
        if b[0] * b[1] * b[2] > 1024:
            raise driver.CUDADriverError("CUDA_ERROR_INVALID_VALUE: invalid argument")
        keep = [_pointer(a) for a in args]
        if enable_cooperative_groups:
            limit = driver.occupancyMaxActiveBlocksPerMultiprocessor(self.ptr, b[0] * b[1] * b[2], shared_mem) \
                * _fake.SMS
            if g[0] * g[1] * g[2] > limit:
                if g[1] == g[2] == 1:
                    warnings.warn(f"The grid size will be reduced from {g[0]} to {limit}, as the specified grid "
                                  "size exceeds the limit.", stacklevel=3)
                    g = (limit, 1, 1)
                else:
                    raise ValueError(f"The specified grid size ({g[0]} * {g[1]} * {g[2]}) exceeds the limit "
                                     f"({limit}).")
        _fake.launches[self.name] += 1
        self.module.launch(g, b, [k.ctypes.data for k in keep])


def _pointer(x: Any) -> np.ndarray:
    """Where the launcher reads argument ``x`` from (a buffer kept alive for the launch)."""
    if x is None:
        return np.zeros(1, np.uintp)
    if isinstance(x, ndarray):
        if x._dev != runtime.getDevice():
            raise ValueError(f"an array on device {x._dev} passed to a kernel on device {runtime.getDevice()}")
        return np.array([x.data.ptr], np.uintp)
    if isinstance(x, MemoryPointer):
        return np.array([x.ptr], np.uintp)
    if isinstance(x, np.ndarray):
        if x.size == 1:
            return np.array(x.reshape(()))
        raise TypeError(f"You are trying to pass a numpy.ndarray of shape {x.shape} as a kernel parameter. Only "
                        "numpy.ndarrays of size one can be passed by value. If you meant to pass a pointer to "
                        "__global__ memory, you need to pass a cupy.ndarray instead.")
    return CScalar(x).c


class RawKernel:
    """``RawKernel(code, name, options=(), backend='nvrtc', *, translate_cucomplex=False,
    enable_cooperative_groups=False, jitify=None)``: compiled on first use, then launched."""

    def __init__(self, code: str, name: str, options: tuple = (), backend: str = "nvrtc", *,
                 translate_cucomplex: bool = False, enable_cooperative_groups: bool = False,
                 jitify: Any = None) -> None:
        for what, value, kind in (("code", code, str), ("name", name, str), ("options", options, tuple)):
            if not isinstance(value, kind):
                raise TypeError(f"Argument '{what}' has incorrect type (expected {kind.__name__}, "
                                f"got {type(value).__name__})")
        self.code, self.name, self.options, self.backend = code, name, options, backend
        self.translate_cucomplex = translate_cucomplex
        self.enable_cooperative_groups = enable_cooperative_groups
        self.jitify = jitify
        self.__name__ = name
        self._kernels: dict[int, Function] = {}

    @property
    def kernel(self) -> Function:
        dev = runtime.getDevice()
        if dev not in self._kernels:
            self._kernels[dev] = Function(_cpu.compile_module(self.code, self.name, self.options), self.name)
        return self._kernels[dev]

    def __call__(self, grid: tuple, block: tuple, args: Any, **kwargs: Any) -> None:
        self.kernel(grid, block, args, enable_cooperative_groups=self.enable_cooperative_groups, **kwargs)
