"""CuPy kernels, built lazily by name: the one place their CUDA sources are assembled.

Every kernel of :mod:`gpu_backprop.kernels` is registered here when its module
is imported — an elementwise kernel as ``(in_params, out_params, operation)``,
a raw kernel as a CUDA source with the element type written ``T`` — and built
on first use for the dtypes it meets. The registries, and :func:`make_elementwise`
/ :func:`make_raw` (the objects the library itself builds), let the tests and
``gpu-backprop doctor`` compile every kernel without running one.
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


def make_elementwise(cp: Any, name: str) -> Any:
    """A new ``cp.ElementwiseKernel`` for the registered kernel ``name`` (``cp``: the cupy module)."""
    in_params, out_params, operation = ELEMENTWISE[name]
    return cp.ElementwiseKernel(in_params, out_params, operation, name)


def elementwise(name: str) -> Any:
    """The ``cupy.ElementwiseKernel`` called ``name``, built on first use."""
    k = _built.get(name)
    if k is None:
        k = _built[name] = make_elementwise(backend.cupy_module(), name)
    return k


_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def raw_name(name: str, dtype: Any) -> str:
    """The function name of raw kernel ``name`` for elements of ``dtype`` (``softmax_xent_float``)."""
    ctype = _CTYPES.get(np.dtype(dtype))
    if ctype is None:
        raise TypeError(f"raw kernel {name!r} takes float32 or float64 elements, not {np.dtype(dtype).name}")
    return f"{name}_{ctype}"


def raw_source(name: str, dtype: Any) -> str:
    """The CUDA source of raw kernel ``name`` for elements of ``dtype``, exactly as it is compiled.

    The element type is declared, not substituted: ``typedef float T;`` goes in
    front of the registered text, so every use of ``T`` — ``const T*``, ``T s``,
    the casts ``(T)1`` — names the same type, as in CuPy's own elementwise code.
    """
    key = raw_name(name, dtype)
    return f"typedef {_CTYPES[np.dtype(dtype)]} T;\n" + RAW[name].replace("KERNEL_NAME", key)


def make_raw(cp: Any, name: str, dtype: Any) -> Any:
    """A new ``cp.RawKernel`` for raw kernel ``name`` and elements of ``dtype`` (``cp``: the cupy module)."""
    return cp.RawKernel(raw_source(name, dtype), raw_name(name, dtype))


def raw(name: str, dtype: Any) -> Any:
    """The ``cupy.RawKernel`` ``name`` for elements of ``dtype``, built on first use."""
    key = raw_name(name, dtype)
    k = _built.get(key)
    if k is None:
        k = _built[key] = make_raw(backend.cupy_module(), name, dtype)
    return k


def on_gpu(*arrays: Array) -> bool:
    """True when any of ``arrays`` is a CuPy array: the kernel runs, not the NumPy body."""
    for a in arrays:  # (called several times per step: a plain ndarray answers without a lookup)
        if type(a) is not np.ndarray and backend.is_cupy_array(a):
            return True
    return False
