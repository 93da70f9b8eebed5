"""CuPy kernels, built lazily by name: the one place their CUDA sources are assembled.

Every kernel of :mod:`gpu_backprop.kernels` is registered here when its module
is imported — an elementwise kernel as ``(in_params, out_params, operation)``,
a raw kernel as a CUDA source with the element type written ``T`` — and built
on first use for the dtypes it meets. The registries let the tests and the
doctor compile every kernel without running one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend

Array = Any

#: every elementwise kernel: name -> (input params, output params, operation)
ELEMENTWISE: dict[str, tuple[str, str, str]] = {}
#: every raw kernel: name -> CUDA source, with ``KERNEL_NAME`` and the element type ``T`` to fill in
RAW: dict[str, str] = {}

_built: dict[str, Any] = {}


def define_elementwise(name: str, in_params: str, out_params: str, operation: str) -> None:
    """Register the ``cupy.ElementwiseKernel`` called ``name``."""
    ELEMENTWISE[name] = (in_params, out_params, operation)


def define_raw(name: str, source: str) -> None:
    """Register a raw kernel: ``source`` names its function ``KERNEL_NAME`` and its element type ``T``."""
    RAW[name] = source


def elementwise(name: str) -> Any:
    """The ``cupy.ElementwiseKernel`` called ``name``, built on first use."""
    k = _built.get(name)
    if k is None:
        cp = backend.cupy_module()
        in_params, out_params, operation = ELEMENTWISE[name]
        k = _built[name] = cp.ElementwiseKernel(in_params, out_params, operation, name)
    return k


def raw_name(name: str, dtype: Any) -> str:
    """The function name of raw kernel ``name`` for elements of ``dtype`` (``softmax_xent_float``)."""
    ctype = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}[np.dtype(dtype)]
    return f"{name}_{ctype}"


def raw_source(name: str, dtype: Any) -> str:
    """The CUDA source of raw kernel ``name`` for elements of ``dtype``, exactly as it is compiled."""
    key = raw_name(name, dtype)
    ctype = key.rsplit("_", 1)[1]
    return RAW[name].replace("KERNEL_NAME", key).replace("T ", f"{ctype} ").replace("T*", f"{ctype}*")


def raw(name: str, dtype: Any) -> Any:
    """The ``cupy.RawKernel`` ``name`` for elements of ``dtype``, built on first use."""
    key = raw_name(name, dtype)
    k = _built.get(key)
    if k is None:
        cp = backend.cupy_module()
        k = _built[key] = cp.RawKernel(raw_source(name, dtype), key)
    return k


def on_gpu(*arrays: Array) -> bool:
    """True when any of ``arrays`` is a CuPy array: the kernel runs, not the NumPy body."""
    return any(backend.is_cupy_array(a) for a in arrays)
