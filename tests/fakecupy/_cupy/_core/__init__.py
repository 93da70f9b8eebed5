"""``cupy._core``: the array type, kernels, and the compute types of matrix products."""

from __future__ import annotations

from . import _routines_linalg, core
from ._kernel import ElementwiseKernel, ufunc
from .core import array, asarray, ascontiguousarray, ndarray
from .raw import RawKernel

__all__ = [
           "ElementwiseKernel",
           "RawKernel",
           "_routines_linalg",
           "array",
           "asarray",
           "ascontiguousarray",
           "core",
           "ndarray",
           "ufunc",
]
