"""The CuPy stand-in's top level (loaded as ``cupy``; see ``fakecupy/__init__.py``).

Module functions check their arguments as CuPy's do — ufuncs and ``matmul`` refuse NumPy arrays
(``Unsupported type``), ``ascontiguousarray``, ``vdot``, ``outer``, ``dot`` and ``concatenate`` want
``cupy.ndarray`` — and functions that CuPy writes as ``a.method(...)`` (``sum``, ``mean``, ``argsort``,
...) call the method, so that they run on the host for NumPy input, as CuPy's do.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core, _fake, cuda  # noqa: F401 - cupy._core and cupy.cuda, as in CuPy
from ._core import _routines_linalg
from ._core._kernel import ElementwiseKernel, make_ufuncs, ufunc
from ._core.core import array, asarray, ascontiguousarray, is_scalar, ndarray, require_ndarray, unsupported
from ._core.raw import RawKernel
from .cuda.memory import get_default_memory_pool  # noqa: F401 - cupy.get_default_memory_pool
from .cuda.pinned_memory import get_default_pinned_memory_pool  # noqa: F401

__version__ = "14.2.0"

globals().update(make_ufuncs())
# the scalar types are NumPy's, as in CuPy
bool_, bool8, dtype = np.bool_, np.bool_, np.dtype
float16, float32, float64, complex64, complex128 = np.float16, np.float32, np.float64, np.complex64, np.complex128
int8, int16, int32, int64 = np.int8, np.int16, np.int32, np.int64
uint8, uint16, uint32, uint64 = np.uint8, np.uint16, np.uint32, np.uint64
newaxis = None
inf, nan, pi, e = np.inf, np.nan, np.pi, np.e

__all__ = ["ElementwiseKernel", "RawKernel", "array", "asarray", "ascontiguousarray", "cuda", "ndarray", "ufunc"]


# --------------------------------------------------------------------------
# Creation
# --------------------------------------------------------------------------
def empty(shape: Any, dtype: Any = float, order: str = "C") -> ndarray:
    return ndarray(shape, dtype, order=order)


def _filled(shape: Any, dtype: Any, value: Any, order: str = "C", like: np.ndarray | None = None) -> ndarray:
    """New memory filled with ``value`` (a scalar, or a device array's value)."""
    a = ndarray._fresh(shape, dtype, order, like=like, garbage=False)
    a._a.fill(value._a[()] if isinstance(value, ndarray) else value)
    _fake.launches["routine:fill"] += 1
    return a


def zeros(shape: Any, dtype: Any = float, order: str = "C") -> ndarray:
    return _filled(shape, dtype, 0, order)


def ones(shape: Any, dtype: Any = float, order: str = "C") -> ndarray:
    return _filled(shape, dtype, 1, order)


def full(shape: Any, fill_value: Any, dtype: Any = None, order: str = "C") -> ndarray:
    if dtype is None:  # as CuPy's: a device array's dtype, else NumPy's for the value
        dtype = fill_value.dtype if isinstance(fill_value, ndarray) else np.asarray(fill_value).dtype
    return _filled(shape, dtype, fill_value, order)


def _like(prototype: Any, dtype: Any, shape: Any, subok: Any) -> tuple[Any, Any, np.ndarray]:
    """A ``*_like``'s shape, dtype and layout: ``prototype``'s unless given (order 'K' or 'A' keeps its layout)."""
    if subok is not None:
        raise TypeError("subok is not supported yet")
    # as CuPy's: any array will do as the prototype (a NumPy one too), and an empty shape means the prototype's
    return ((shape if shape else prototype.shape), (prototype.dtype if dtype is None else dtype),
            prototype._a if isinstance(prototype, ndarray) else np.asarray(prototype))


def empty_like(prototype: Any, dtype: Any = None, order: str = "K", subok: Any = None, shape: Any = None) -> ndarray:
    s, d, like = _like(prototype, dtype, shape, subok)
    return ndarray._fresh(s, d, order, like=like)


def zeros_like(a: Any, dtype: Any = None, order: str = "K", subok: Any = None, shape: Any = None) -> ndarray:
    s, d, like = _like(a, dtype, shape, subok)
    return _filled(s, d, 0, order, like)


def ones_like(a: Any, dtype: Any = None, order: str = "K", subok: Any = None, shape: Any = None) -> ndarray:
    s, d, like = _like(a, dtype, shape, subok)
    return _filled(s, d, 1, order, like)


def full_like(a: Any, fill_value: Any, dtype: Any = None, order: str = "K", subok: Any = None,
              shape: Any = None) -> ndarray:
    s, d, like = _like(a, dtype, shape, subok)
    return _filled(s, d, fill_value, order, like)


def arange(start: Any, stop: Any = None, step: Any = 1, dtype: Any = None) -> ndarray:
    _fake.launches["routine:arange"] += 1
    return ndarray._new(np.arange(start, stop, step, dtype=dtype))


def linspace(start: Any, stop: Any, num: int = 50, endpoint: bool = True, retstep: bool = False,
             dtype: Any = None, axis: int = 0) -> ndarray:
    return ndarray._new(np.linspace(start, stop, num, endpoint, dtype=dtype, axis=axis))


def asnumpy(a: Any, stream: Any = None, order: str = "C", out: Any = None, *, blocking: bool = True) -> np.ndarray:
    if isinstance(a, ndarray):
        return a.get(stream=stream, order=order, out=out, blocking=blocking)
    return np.asarray(a, order=order)


def from_dlpack(array: Any, *, device: Any = None, copy: Any = None) -> ndarray:
    if isinstance(array, ndarray):
        return array
    if isinstance(array, np.ndarray):
        raise TypeError("CPU arrays cannot be directly imported to CuPy. Use `cupy.array(numpy.from_dlpack(input))` "
                        "instead.")
    if not hasattr(array, "__dlpack__"):
        raise AttributeError(f"'{type(array).__name__}' object has no attribute '__dlpack__'")
    kind = array.__dlpack_device__()[0] if hasattr(array, "__dlpack_device__") else 1
    if kind == 1:
        raise TypeError("CPU arrays cannot be directly imported to CuPy. Use `cupy.array(numpy.from_dlpack(input))` "
                        "instead.")
    raise NotImplementedError("the CuPy stand-in cannot read another library's device memory")


def get_array_module(*args: Any) -> Any:
    import sys

    for a in args:
        if isinstance(a, ndarray):
            return sys.modules[__name__]
    return np


# --------------------------------------------------------------------------
# Methods as functions (CuPy: ``a.method(...)``, so NumPy input runs on the host, as in CuPy)
# --------------------------------------------------------------------------
def sum(a: Any, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False) -> Any:
    return a.sum(axis, dtype, out, keepdims)


def prod(a: Any, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False) -> Any:
    return a.prod(axis, dtype, out, keepdims)


def mean(a: Any, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False) -> Any:
    return a.mean(axis, dtype, out, keepdims)


def var(a: Any, axis: Any = None, dtype: Any = None, out: Any = None, ddof: int = 0, keepdims: bool = False) -> Any:
    return a.var(axis=axis, dtype=dtype, out=out, ddof=ddof, keepdims=keepdims)


def std(a: Any, axis: Any = None, dtype: Any = None, out: Any = None, ddof: int = 0, keepdims: bool = False) -> Any:
    return a.std(axis=axis, dtype=dtype, out=out, ddof=ddof, keepdims=keepdims)


def amax(a: Any, axis: Any = None, out: Any = None, keepdims: bool = False) -> Any:
    return a.max(axis=axis, out=out, keepdims=keepdims)


def amin(a: Any, axis: Any = None, out: Any = None, keepdims: bool = False) -> Any:
    return a.min(axis=axis, out=out, keepdims=keepdims)


max = amax
min = amin


def argmax(a: Any, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False) -> Any:
    return a.argmax(axis=axis, dtype=dtype, out=out, keepdims=keepdims)


def argmin(a: Any, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False) -> Any:
    return a.argmin(axis=axis, dtype=dtype, out=out, keepdims=keepdims)


def all(a: Any, axis: Any = None, out: Any = None, keepdims: bool = False) -> Any:
    return a.all(axis=axis, out=out, keepdims=keepdims)


def any(a: Any, axis: Any = None, out: Any = None, keepdims: bool = False) -> Any:
    return a.any(axis=axis, out=out, keepdims=keepdims)


def argsort(a: Any, axis: int = -1, kind: Any = None) -> Any:
    return a.argsort(axis=axis, kind=kind)


def sort(a: Any, axis: int = -1, kind: Any = None) -> Any:
    ret = a.copy()
    ret.sort(axis=axis, kind=kind)
    return ret


def clip(a: Any, a_min: Any, a_max: Any, out: Any = None) -> ndarray:
    require_ndarray(a)
    for v in (a_min, a_max):
        if not (v is None or is_scalar(v) or isinstance(v, ndarray)):
            raise unsupported(v)
    lo = a_min._a if isinstance(a_min, ndarray) else a_min
    hi = a_max._a if isinstance(a_max, ndarray) else a_max
    _fake.launches["ufunc:clip"] += 1
    if out is not None:
        np.clip(a._a, lo, hi, out=require_ndarray(out, "out")._a)
        return out
    return ndarray._new(np.clip(a._a, lo, hi))


def where(condition: Any, x: Any = None, y: Any = None) -> Any:
    require_ndarray(condition, "condition")
    if x is None and y is None:
        return tuple(ndarray._new(i) for i in np.nonzero(condition._a))
    parts = []
    for v in (x, y):
        if isinstance(v, ndarray):
            parts.append(v._a)
        elif is_scalar(v):
            parts.append(v)
        else:
            raise unsupported(v)
    _fake.launches["ufunc:where"] += 1
    return ndarray._new(np.where(condition._a, *parts))


def conj(a: Any) -> ndarray:
    return ndarray._new(np.conj(require_ndarray(a)._a))


# --------------------------------------------------------------------------
# Joining
# --------------------------------------------------------------------------
def concatenate(tup: Any, axis: int = 0, out: Any = None, *, dtype: Any = None, casting: str = "same_kind") -> ndarray:
    arrays = list(tup)
    if not arrays:
        raise ValueError("need at least one array to concatenate")
    for a in arrays:
        if not isinstance(a, ndarray):
            raise TypeError("Only cupy arrays can be concatenated")
    _fake.launches["routine:concatenate"] += 1
    if out is not None:
        np.concatenate([a._a for a in arrays], axis=axis, out=require_ndarray(out, "out")._a, dtype=dtype,
                       casting=casting)
        return out
    return ndarray._new(np.concatenate([a._a for a in arrays], axis=axis, dtype=dtype, casting=casting))


def stack(tup: Any, axis: int = 0, out: Any = None, *, dtype: Any = None, casting: str = "same_kind") -> ndarray:
    return concatenate([expand_dims(a, axis) for a in tup], axis, out, dtype=dtype, casting=casting)


def expand_dims(a: Any, axis: int) -> ndarray:
    return require_ndarray(a).reshape(np.expand_dims(np.empty(a.shape, np.uint8), axis).shape)


# --------------------------------------------------------------------------
# Products (cuBLAS in CuPy; TF32 as the compute type says)
# --------------------------------------------------------------------------
def _tf32(x: np.ndarray) -> np.ndarray:
    """Round float32 to TF32 (10 explicit mantissa bits, to nearest even), as tensor cores read their inputs."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0xFFF + ((u >> 13) & 1)) & 0xFFFFE000
    return u.astype(np.uint32).view(np.float32).reshape(x.shape)


def _operands(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    for x in (a, b):
        if not isinstance(x, ndarray):
            raise unsupported(x)
    x, y = a._a, b._a
    if x.dtype == np.float32 and y.dtype == np.float32 and \
            _routines_linalg.get_compute_type(np.float32) == _routines_linalg.COMPUTE_TYPE_TF32:
        x, y = _tf32(x), _tf32(y)
    return x, y


def matmul(a: Any, b: Any, out: Any = None, **kwargs: Any) -> ndarray:
    x, y = _operands(a, b)
    _fake.launches["gemm"] += 1
    if out is not None:
        np.matmul(x, y, out=require_ndarray(out, "out")._a, **kwargs)
        return out
    return ndarray._new(np.matmul(x, y, **kwargs))


def dot(a: Any, b: Any, out: Any = None) -> ndarray:
    require_ndarray(a)
    x, y = _operands(a, b)
    _fake.launches["gemm"] += 1
    if out is not None:
        np.dot(x, y, out=require_ndarray(out, "out")._a)
        return out
    return ndarray._new(np.asarray(np.dot(x, y)))


def vdot(a: Any, b: Any) -> ndarray:
    require_ndarray(a)
    require_ndarray(b, "b")
    if a.size != b.size:
        raise ValueError("Axis dimension mismatch")
    x, y = _operands(a, b)
    _fake.launches["gemm"] += 1
    return ndarray._new(np.asarray(np.vdot(x, y)))


def outer(a: Any, b: Any, out: Any = None) -> ndarray:
    require_ndarray(a)
    require_ndarray(b, "b")
    x, y = _operands(a, b)
    _fake.launches["gemm"] += 1
    if out is not None:
        np.outer(x, y, out=require_ndarray(out, "out")._a)
        return out
    return ndarray._new(np.outer(x, y))


# --------------------------------------------------------------------------
# Shapes and types (NumPy's answers, for CuPy arrays as for anything else)
# --------------------------------------------------------------------------
def ndim(a: Any) -> int:
    return a.ndim if isinstance(a, ndarray) else np.ndim(a)


def shape(a: Any) -> tuple[int, ...]:
    return a.shape if isinstance(a, ndarray) else np.shape(a)


def size(a: Any, axis: int | None = None) -> int:
    if isinstance(a, ndarray):
        return a.size if axis is None else a.shape[axis]
    return np.size(a, axis)


result_type = np.result_type
can_cast = np.can_cast
isscalar = np.isscalar


def reshape(a: Any, newshape: Any, order: str = "C") -> ndarray:
    return require_ndarray(a).reshape(newshape, order=order)


def ravel(a: Any, order: str = "C") -> ndarray:
    return require_ndarray(a).ravel(order)


def transpose(a: Any, axes: Any = None) -> ndarray:
    return require_ndarray(a).transpose(*(axes or ()))


def squeeze(a: Any, axis: Any = None) -> ndarray:
    return require_ndarray(a).squeeze(axis)


def may_share_memory(a: Any, b: Any, max_work: Any = None) -> bool:
    return np.may_share_memory(require_ndarray(a)._a, require_ndarray(b, "b")._a)


def shares_memory(a: Any, b: Any, max_work: Any = None) -> bool:
    return np.shares_memory(require_ndarray(a)._a, require_ndarray(b, "b")._a)


def copyto(dst: Any, src: Any, casting: str = "same_kind", where: Any = None) -> None:
    require_ndarray(dst, "dst")
    if not (isinstance(src, ndarray) or is_scalar(src)):
        raise unsupported(src)
    _fake.launches["routine:copy"] += 1
    np.copyto(dst._a, src._a if isinstance(src, ndarray) else src, casting=casting,
              where=True if where is None else require_ndarray(where, "where")._a)
