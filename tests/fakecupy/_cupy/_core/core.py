"""``cupy.ndarray``: a device array over a NumPy array, with CuPy's rules at the boundary to the host.

The stand-in's "device memory" is host memory: ``x.data.ptr`` is the address of ``x[0]``, which is what
kernels, NCCL and MPI are handed. What CuPy refuses, this refuses with CuPy's error: implicit
conversion to NumPy (``__array__``), NumPy arrays as operands of CuPy functions (``Unsupported type``),
``get(out=)``/``set`` with the wrong dtype or shape. What CuPy allows and synchronises (``float(x)``,
``bool(x)``, ``int(x)``, ``x.get()``, ``repr(x)``, ``format(x)``, ``x.item()``) works and is counted.
"""

from __future__ import annotations

import functools
import sys
import warnings
from typing import Any

import numpy as np

from .. import _fake
from ..cuda import _runtime as runtime
from ..cuda.memory import MemoryPointer, get_default_memory_pool

IMPLICIT_CONVERSION = ("Implicit conversion to a NumPy array is not allowed. "
                       "Please use `.get()` to construct a NumPy array explicitly.")
PYTHON_SCALARS = (bool, int, float, complex)
INDEX_32_LIMIT = 1 << 31


def _top() -> Any:
    """The stand-in's top-level module (``cupy``), whatever ``sys.modules`` holds now."""
    return sys.modules[__name__.rsplit("._core", 1)[0]]


def type_name(x: Any) -> str:
    t = type(x)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def require_ndarray(a: Any, name: str = "a") -> ndarray:
    """Cython's check of an argument typed ``_ndarray_base``, with its message."""
    if not isinstance(a, ndarray):
        raise TypeError(f"Argument '{name}' has incorrect type (expected cupy._core.core._ndarray_base, "
                        f"got {type_name(a)})")
    return a


def is_scalar(x: Any) -> bool:
    return type(x) in PYTHON_SCALARS or isinstance(x, np.generic)


def unsupported(x: Any) -> TypeError:
    return TypeError(f"Unsupported type {type(x)}")


def _shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(int(s) for s in shape)


def allocate(shape: Any, dtype: Any, order: str = "C", garbage: bool = True, like: np.ndarray | None = None
             ) -> np.ndarray:
    """Device memory for an array: counted by the memory pool, and filled with 0xFF bytes (garbage, not zeros).

    With ``like``, the layout is NumPy's ``empty_like``'s, which is CuPy's (``_new_like_order_and_strides``):
    ``'A'`` column-major where ``like`` is F- and not C-contiguous, whatever the shape; ``'K'`` the order of
    ``like``'s strides kept, row-major where the number of dimensions changes. Without ``like``, ``'K'`` and
    ``'A'`` mean row-major.
    """
    dtype = np.dtype(dtype)
    if dtype.kind in "OUSMmV":
        raise TypeError(f"Unsupported dtype {dtype}")
    order = order.upper()
    if like is not None:
        buf = np.empty_like(like, dtype, order=order, subok=False, shape=_shape(shape))
    else:
        buf = np.empty(_shape(shape), dtype, order="F" if order == "F" else "C")
    get_default_memory_pool()._malloc(buf.nbytes, buf)
    if garbage and buf.nbytes:
        buf.reshape(-1, order="A").view(np.uint8)[...] = 1 if dtype == np.bool_ else 0xFF
    return buf


def c_contiguous(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> bool:
    """CuPy's ``_update_c_contiguity``: sizes of 1 do not count."""
    if int(np.prod(shape, dtype=np.int64)) == 0:
        return True
    stride = itemsize
    for dim, st in zip(reversed(shape), reversed(strides)):
        if dim != 1:
            if st != stride:
                return False
            stride *= dim
    return True


class ndarray:
    """``cupy.ndarray(shape, dtype=float, memptr=None, strides=None, order='C')``."""

    __array_priority__ = 100
    __hash__ = None  # type: ignore[assignment]

    _a: np.ndarray
    _dev: int
    _idx32: bool

    def __init__(self, shape: Any, dtype: Any = float, memptr: MemoryPointer | None = None, strides: Any = None,
                 order: str = "C") -> None:
        if memptr is not None:
            owner = memptr.mem
            if not isinstance(owner, (np.ndarray, bytearray)):
                raise NotImplementedError("the CuPy stand-in builds arrays on its own memory pointers only")
            base = np.frombuffer(owner, np.uint8) if isinstance(owner, bytearray) else owner.reshape(-1).view(np.uint8)
            offset = memptr.ptr - base.ctypes.data
            self._own(np.ndarray(_shape(shape), dtype, buffer=base, offset=offset, strides=strides),
                      memptr.device_id)
        else:
            self._own(allocate(shape, dtype, order), runtime.getDevice())

    def _own(self, host: np.ndarray, device: int) -> None:
        """Make ``host`` this array's memory, on ``device``."""
        self._a, self._dev = host, device
        self._idx32 = host.nbytes <= INDEX_32_LIMIT

    # -- construction from host arrays (internal) ---------------------------
    @classmethod
    def _view(cls, host: np.ndarray, of: ndarray) -> ndarray:
        """An array over ``host``, a view of ``of``'s memory."""
        a = object.__new__(cls)
        a._a, a._dev, a._idx32 = host, of._dev, of._idx32
        return a

    @classmethod
    def _new(cls, host: Any, device: int | None = None) -> ndarray:
        """An array that owns ``host`` (a result computed on the host): counted by the pool like an allocation."""
        host = np.asarray(host)
        if host.base is not None or not host.flags.owndata:
            host = host.copy(order="K")
        get_default_memory_pool()._malloc(host.nbytes, host)
        a = object.__new__(cls)
        a._own(host, runtime.getDevice() if device is None else device)
        return a

    @classmethod
    def _fresh(cls, shape: Any, dtype: Any, order: str = "C", *, like: np.ndarray | None = None,
               garbage: bool = True, device: int | None = None) -> ndarray:
        """An array on new device memory from :func:`allocate` (which counts it; ``order`` and ``like`` as there)."""
        a = object.__new__(cls)
        a._own(allocate(shape, dtype, order, garbage, like), runtime.getDevice() if device is None else device)
        return a

    def _wrap(self, host: Any) -> ndarray:
        """A view when ``host`` shares this array's memory, else a new array."""
        if isinstance(host, np.ndarray) and np.may_share_memory(host, self._a):
            return ndarray._view(host, self)
        return ndarray._new(host, self._dev)

    # -- attributes ----------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self._a.shape

    @shape.setter
    def shape(self, value: Any) -> None:
        self._a.shape = value

    @property
    def ndim(self) -> int:
        return self._a.ndim

    @property
    def size(self) -> int:
        return self._a.size

    @property
    def dtype(self) -> np.dtype:
        return self._a.dtype

    @property
    def itemsize(self) -> int:
        return self._a.itemsize

    @property
    def nbytes(self) -> int:
        return self._a.nbytes

    @property
    def strides(self) -> tuple[int, ...]:
        return self._a.strides

    @property
    def flags(self) -> Any:
        return _Flags(self)

    @property
    def _c_contiguous(self) -> bool:
        return c_contiguous(self.shape, self.strides, self.itemsize)

    @property
    def _f_contiguous(self) -> bool:
        return c_contiguous(self.shape[::-1], self.strides[::-1], self.itemsize)

    @property
    def data(self) -> MemoryPointer:
        return MemoryPointer(self._a.__array_interface__["data"][0], self._dev, self._a)

    @property
    def device(self) -> Any:
        from ..cuda.device import Device

        return Device(self._dev)

    @property
    def T(self) -> ndarray:
        return ndarray._view(self._a.T, self)

    @property
    def mT(self) -> ndarray:
        return ndarray._view(np.swapaxes(self._a, -1, -2), self)

    @property
    def base(self) -> ndarray | None:
        return None if self._a.flags.owndata else self

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {"shape": self.shape, "typestr": self.dtype.str, "descr": self.dtype.descr,
                "data": (self.data.ptr, False), "version": 3,
                "strides": None if self._c_contiguous else self.strides, "stream": 1}

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, self._dev)  # kDLCUDA

    # -- host <-> device -----------------------------------------------------
    def get(self, stream: Any = None, order: str = "C", out: np.ndarray | None = None,
            blocking: bool = True) -> np.ndarray:
        _fake.sync()
        if out is not None:
            if not isinstance(out, np.ndarray):
                raise TypeError("Only numpy.ndarray can be obtained fromcupy.ndarray")
            if self.dtype != out.dtype:
                raise TypeError(f"{out.dtype} array cannot be obtained from {self.dtype} array")
            if self.shape != out.shape:
                raise ValueError(f"Shape mismatch. Expected shape: {self.shape}, actual shape: {out.shape}")
            if not (out.flags.c_contiguous or out.flags.f_contiguous):
                raise RuntimeError("`out` cannot be specified when copying to non-contiguous ndarray")
            out[...] = self._a
            return out
        order = order.upper()
        if order == "A":
            order = "F" if self._f_contiguous and not self._c_contiguous else "C"
        return np.array(self._a, order=order, copy=True)

    def set(self, arr: np.ndarray, stream: Any = None) -> None:
        if not isinstance(arr, np.ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if self.dtype != arr.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
        if self.shape != arr.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        if not (self._c_contiguous or self._f_contiguous):
            raise RuntimeError("Cannot set to non-contiguous array")
        _fake.upload()
        self._a[...] = arr

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError(IMPLICIT_CONVERSION)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _top().array, (self.get(order="A"),)

    # -- conversions that synchronise ---------------------------------------
    def _host_scalar(self) -> np.ndarray:
        _fake.sync()
        return self._a

    def __int__(self) -> int:
        return int(self._host_scalar())

    def __float__(self) -> float:
        return float(self._host_scalar())

    def __complex__(self) -> complex:
        return complex(self._host_scalar())

    def __bool__(self) -> bool:
        if self.size == 0:
            warnings.warn("The truth value of an empty array is ambiguous. Returning False, but in future this "
                          "will result in an error. Use `array.size > 0` to check that an array is not empty.",
                          DeprecationWarning, stacklevel=2)
            return False
        if self.size == 1:
            return bool(self._host_scalar().reshape(()))
        raise ValueError("The truth value of an array with more than one element is ambiguous. "
                         "Use a.any() or a.all()")

    def __repr__(self) -> str:
        return repr(self._host_scalar())

    def __str__(self) -> str:
        return str(self._host_scalar())

    def __format__(self, spec: str) -> str:
        return format(self._host_scalar()[()] if self.ndim == 0 else self._host_scalar(), spec)

    def item(self) -> Any:
        return self._host_scalar().item()

    def tolist(self) -> Any:
        return self._host_scalar().tolist()

    # -- shape and copies ----------------------------------------------------
    def astype(self, dtype: Any, order: str | None = "K", casting: str | None = None, subok: Any = None,
               copy: bool = True) -> ndarray:
        return self._astype(dtype, order, casting, subok, True if copy else None)

    def _astype(self, dtype: Any, order: str | None = "K", casting: Any = None, subok: Any = None,
                copy: bool | None = True) -> ndarray:
        """CuPy's ``_astype``: ``copy`` None copies only where the dtype or the asked layout differs, False never."""
        if casting is not None:
            raise TypeError("casting is not supported yet")
        if subok is not None:
            raise TypeError("subok is not supported yet")
        order = "K" if order is None else order.upper()
        dtype = np.dtype(dtype)
        if not copy and dtype == self.dtype and (
                order == "K" or order == "A" and (self._c_contiguous or self._f_contiguous)
                or order == "C" and self._c_contiguous or order == "F" and self._f_contiguous):
            return self
        if copy is False:
            raise ValueError("Unable to avoid copy while creating an array as requested.")
        out = ndarray._fresh(self.shape, dtype, order, like=self._a, garbage=False, device=self._dev)
        with np.errstate(all="ignore"):
            np.copyto(out._a, self._a, casting="unsafe")
        _fake.launches["routine:astype"] += 1
        return out

    def copy(self, order: str = "C") -> ndarray:
        _fake.launches["routine:copy"] += 1
        return ndarray._new(np.array(self._a, order=order, copy=True), self._dev)

    def reshape(self, *shape: Any, order: str = "C") -> ndarray:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return self._wrap(self._a.reshape(shape, order=order))

    def ravel(self, order: str = "C") -> ndarray:
        return self._wrap(self._a.ravel(order=order))

    def flatten(self, order: str = "C") -> ndarray:
        return self.copy(order).reshape(-1)

    def view(self, dtype: Any = None) -> ndarray:
        return ndarray._view(self._a.view() if dtype is None else self._a.view(dtype), self)

    def squeeze(self, axis: Any = None) -> ndarray:
        return ndarray._view(self._a.squeeze(axis), self)

    def transpose(self, *axes: Any) -> ndarray:
        return ndarray._view(self._a.transpose(*axes), self)

    def swapaxes(self, a: int, b: int) -> ndarray:
        return ndarray._view(self._a.swapaxes(a, b), self)

    def fill(self, value: Any) -> None:
        if isinstance(value, ndarray):
            if value.shape != ():
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
            value = value._a[()]
        elif not is_scalar(value):
            raise unsupported(value)
        _fake.launches["routine:fill"] += 1
        self._a.fill(value)

    # -- reductions (NumPy underneath; results stay on the device) -----------
    def _reduce(self, fn: Any, name: str, out: Any, **kw: Any) -> ndarray:
        _fake.launches[f"reduce:{name}"] += 1
        with np.errstate(all="ignore"):
            if out is not None:
                if not isinstance(out, ndarray):
                    raise TypeError("Output argument must be cupy.ndarray")
                fn(self._a, out=out._a, **kw)
                return out
            return ndarray._new(np.asarray(fn(self._a, **kw)), self._dev)

    def sum(self, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False) -> ndarray:
        return self._reduce(np.sum, "sum", out, axis=axis, dtype=dtype, keepdims=keepdims)

    def prod(self, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False) -> ndarray:
        return self._reduce(np.prod, "prod", out, axis=axis, dtype=dtype, keepdims=keepdims)

    def mean(self, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False) -> ndarray:
        return self._reduce(np.mean, "mean", out, axis=axis, dtype=dtype, keepdims=keepdims)

    def var(self, axis: Any = None, dtype: Any = None, out: Any = None, ddof: int = 0,
            keepdims: bool = False) -> ndarray:
        return self._reduce(np.var, "var", out, axis=axis, dtype=dtype, ddof=ddof, keepdims=keepdims)

    def std(self, axis: Any = None, dtype: Any = None, out: Any = None, ddof: int = 0,
            keepdims: bool = False) -> ndarray:
        return self._reduce(np.std, "std", out, axis=axis, dtype=dtype, ddof=ddof, keepdims=keepdims)

    def max(self, axis: Any = None, out: Any = None, keepdims: bool = False) -> ndarray:
        return self._reduce(np.max, "max", out, axis=axis, keepdims=keepdims)

    def min(self, axis: Any = None, out: Any = None, keepdims: bool = False) -> ndarray:
        return self._reduce(np.min, "min", out, axis=axis, keepdims=keepdims)

    def argmax(self, axis: Any = None, out: Any = None, dtype: Any = None, keepdims: bool = False) -> ndarray:
        r = self._reduce(np.argmax, "argmax", out, axis=axis, keepdims=keepdims)
        return r if dtype is None else r.astype(dtype, copy=False)

    def argmin(self, axis: Any = None, out: Any = None, dtype: Any = None, keepdims: bool = False) -> ndarray:
        r = self._reduce(np.argmin, "argmin", out, axis=axis, keepdims=keepdims)
        return r if dtype is None else r.astype(dtype, copy=False)

    def all(self, axis: Any = None, out: Any = None, keepdims: bool = False) -> ndarray:
        return self._reduce(np.all, "all", out, axis=axis, keepdims=keepdims)

    def any(self, axis: Any = None, out: Any = None, keepdims: bool = False) -> ndarray:
        return self._reduce(np.any, "any", out, axis=axis, keepdims=keepdims)

    def cumsum(self, axis: Any = None, dtype: Any = None, out: Any = None) -> ndarray:
        return self._reduce(np.cumsum, "cumsum", out, axis=axis, dtype=dtype)

    def argsort(self, axis: int = -1, kind: Any = None) -> ndarray:
        _fake.launches["routine:argsort"] += 1
        return ndarray._new(np.argsort(self._a, axis=axis, kind="stable"), self._dev)

    def sort(self, axis: int = -1, kind: Any = None) -> None:
        _fake.launches["routine:sort"] += 1
        self._a.sort(axis=axis, kind="stable")

    def clip(self, min: Any = None, max: Any = None, out: Any = None) -> ndarray:
        return _top().clip(self, min, max, out=out)

    def dot(self, b: Any, out: Any = None) -> ndarray:
        return _top().dot(self, b, out=out)

    def conj(self) -> ndarray:
        return _top().conj(self)

    # -- indexing ------------------------------------------------------------
    def _key(self, key: Any) -> Any:
        """The key for the NumPy array underneath: device index arrays as host views, integer arrays wrapped
        around (CuPy wraps out-of-bounds integer-array indices instead of raising), host index arrays uploaded."""
        items = list(key) if isinstance(key, tuple) else [key]
        out, axis = [], 0
        explicit = 0  # the axes the key names, for what an Ellipsis stands in for
        for k in items:
            if k is None or k is Ellipsis:
                continue
            if isinstance(k, (ndarray, np.ndarray, list)):
                arr = k._a if isinstance(k, ndarray) else np.asarray(k)
                explicit += arr.ndim if arr.dtype == np.bool_ else 1
            else:
                explicit += 1
        for k in items:
            if k is Ellipsis:
                axis += self.ndim - explicit
                out.append(k)
                continue
            if k is None:
                out.append(k)
                continue
            if isinstance(k, (ndarray, np.ndarray, list)):
                if isinstance(k, ndarray):
                    arr = k._a
                else:
                    arr = np.asarray(k)
                    if arr.size:
                        _fake.upload()
                if arr.dtype == np.bool_:
                    axis += max(arr.ndim, 1)
                    out.append(arr)
                    continue
                if arr.dtype.kind not in "iu":
                    raise IndexError("arrays used as indices must be of integer (or boolean) type")
                dim = self.shape[axis] if axis < self.ndim else 0
                out.append(np.mod(arr, dim) if dim else arr)
                axis += 1
                continue
            out.append(k)
            axis += 1
        return tuple(out)

    def __getitem__(self, key: Any) -> ndarray:
        k = self._key(key)
        advanced = any(isinstance(x, np.ndarray) for x in k)
        if not advanced and Ellipsis not in k:
            k = (*k, Ellipsis)  # a 0-d view instead of a NumPy scalar
        res = self._a[k]
        if advanced:
            _fake.launches["routine:take"] += 1
        return self._wrap(res if isinstance(res, np.ndarray) else np.asarray(res))

    def __setitem__(self, key: Any, value: Any) -> None:
        if isinstance(value, ndarray):
            value = value._a
        elif not is_scalar(value):
            value = np.asarray(value, dtype=self.dtype)
            _fake.upload()
        _fake.launches["routine:setitem"] += 1
        with np.errstate(all="ignore"):
            self._a[self._key(key)] = value

    def __iter__(self) -> Any:
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self.shape[0]))

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    # -- NumPy's protocols: CuPy's functions, or nothing ---------------------
    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        cp = _top()
        inout = inputs
        if "out" in kwargs:
            out = kwargs["out"]
            if len(out) != 1:
                raise ValueError("The 'out' parameter must have exactly one array value")
            inout += out
            kwargs["out"] = out[0]
        if method != "__call__":
            return NotImplemented
        func = getattr(cp, ufunc.__name__, None)
        if func is None:
            return NotImplemented
        for x in inout:
            if not (is_scalar(x) or isinstance(x, (ndarray, np.ndarray))):
                return NotImplemented
        if ufunc.__name__ in ("greater", "greater_equal", "less", "less_equal", "equal", "not_equal"):
            inputs = tuple(x.item() if isinstance(x, np.ndarray) and x.ndim == 0 else x for x in inputs)
        return func(*inputs, **kwargs)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        try:
            module = functools.reduce(getattr, func.__module__.split(".")[1:], _top())
            cupy_func = getattr(module, func.__name__)
        except AttributeError:
            return NotImplemented
        if cupy_func is func:
            return NotImplemented
        if not all(issubclass(t, (ndarray, np.ndarray)) for t in types):
            return NotImplemented
        return cupy_func(*args, **kwargs)


class _Flags:
    """``a.flags``: c_contiguous, f_contiguous, owndata (also as ``flags['C_CONTIGUOUS']``)."""

    def __init__(self, a: ndarray) -> None:
        self.c_contiguous = a._c_contiguous
        self.f_contiguous = a._f_contiguous
        self.owndata = bool(a._a.flags.owndata)

    def __getitem__(self, name: str) -> bool:
        return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous,
                "OWNDATA": self.owndata}[name]

    def __repr__(self) -> str:
        return (f"  C_CONTIGUOUS : {self.c_contiguous}\n  F_CONTIGUOUS : {self.f_contiguous}\n"
                f"  OWNDATA : {self.owndata}")


def _should_use_rop(x: Any, y: Any) -> bool:
    y_ufunc = getattr(y, "__array_ufunc__", _should_use_rop)
    if y_ufunc is not _should_use_rop:
        return y_ufunc is None
    return getattr(x, "__array_priority__", 0) < getattr(y, "__array_priority__", 0)


def _install_operators() -> None:
    """The arithmetic of ``cupy.ndarray``, dispatched as CuPy's Cython methods do."""
    binary = {"add": "add", "sub": "subtract", "mul": "multiply", "matmul": "matmul", "truediv": "true_divide",
              "floordiv": "floor_divide", "mod": "remainder", "pow": "power", "lshift": "left_shift",
              "rshift": "right_shift", "and": "bitwise_and", "or": "bitwise_or", "xor": "bitwise_xor"}

    def make(ufunc_name: str) -> tuple[Any, Any, Any]:
        def op(self: ndarray, other: Any) -> Any:
            if isinstance(other, ndarray):
                return getattr(_top(), ufunc_name)(self, other)
            if _should_use_rop(self, other):
                return NotImplemented
            return getattr(np, ufunc_name)(self, other)  # NumPy hands it back through __array_ufunc__

        def rop(self: ndarray, other: Any) -> Any:
            return getattr(_top(), ufunc_name)(other, self)

        def iop(self: ndarray, other: Any) -> Any:
            return getattr(_top(), ufunc_name)(self, other, self)

        return op, rop, iop

    for name, ufunc_name in binary.items():
        op, rop, iop = make(ufunc_name)
        setattr(ndarray, f"__{name}__", op)
        setattr(ndarray, f"__r{name}__", rop)
        setattr(ndarray, f"__i{name}__", iop)

    def compare(ufunc_name: str, eq: int = 0) -> Any:
        def cmp(self: ndarray, other: Any) -> Any:
            cp = _top()
            if isinstance(other, ndarray):
                return getattr(cp, ufunc_name)(self, other)
            if _should_use_rop(self, other):
                return NotImplemented
            if isinstance(other, np.ndarray) and other.ndim == 0:
                other = other.item()
            if eq and (other is None or type(other).__eq__ is object.__eq__):
                return (cp.zeros if eq == 1 else cp.ones)(self.shape, dtype=np.bool_)
            return getattr(np, ufunc_name)(self, other)

        return cmp

    for name, ufunc_name, eq in (("lt", "less", 0), ("le", "less_equal", 0), ("gt", "greater", 0),
                                 ("ge", "greater_equal", 0), ("eq", "equal", 1), ("ne", "not_equal", 2)):
        setattr(ndarray, f"__{name}__", compare(ufunc_name, eq))

    for name, ufunc_name in (("neg", "negative"), ("pos", "positive"), ("abs", "absolute"),
                             ("invert", "invert")):
        setattr(ndarray, f"__{name}__", lambda self, _u=ufunc_name: getattr(_top(), _u)(self))


_install_operators()
ndarray.__module__ = "cupy"  # as CuPy's (backend.is_cupy_array reads it)


# --------------------------------------------------------------------------
# Host -> device
# --------------------------------------------------------------------------
def array(obj: Any, dtype: Any = None, copy: bool | None = True, order: str = "K", subok: bool = False,
          ndmin: int = 0, *, blocking: bool = False) -> ndarray:
    order = "K" if order is None else order
    if isinstance(obj, ndarray):  # CuPy's _array_from_cupy_ndarray (one device)
        out = obj._astype(obj.dtype if dtype is None else dtype, order, copy=copy)
        if ndmin > out.ndim:
            out = out.reshape((1,) * (ndmin - out.ndim) + out.shape)
        return out
    if hasattr(obj, "__cuda_array_interface__") or (hasattr(obj, "__dlpack_device__")
                                                     and obj.__dlpack_device__()[0] == 2):
        raise NotImplementedError("the CuPy stand-in cannot read another library's device memory")
    if copy is False:
        raise ValueError("Unable to avoid copy while creating an array as requested.")
    if order.upper() in ("K", "A"):  # CuPy's _array_default: a NumPy array F- and not C-contiguous stays column-major
        order = "F" if isinstance(obj, np.ndarray) and obj.flags.fnc else "C"
    host = np.array(obj, dtype=dtype, order=order, ndmin=ndmin)
    if host.dtype.kind in "OUSV":
        raise ValueError(f"Unsupported dtype {host.dtype}")
    host = host.astype(host.dtype.newbyteorder("<"), copy=False)  # the device's byte order
    _fake.upload()
    # (np.array laid it out already; np.ascontiguousarray would turn a 0-d array into shape (1,), as CuPy's
    # ascontiguousarray does, but cupy.array and cupy.asarray keep a scalar 0-d)
    return ndarray._new(host)


def asarray(a: Any, dtype: Any = None, order: str | None = None, *, copy: bool | None = None,
            blocking: bool = False) -> ndarray:
    return array(a, dtype, copy, order, blocking=blocking)


def ascontiguousarray(a: Any, dtype: Any = None) -> ndarray:
    """As CuPy's: ``a`` must be a ``cupy.ndarray``; a 0-d array comes back with shape (1,)."""
    require_ndarray(a)
    dtype = a.dtype if dtype is None else np.dtype(dtype)
    if dtype == a.dtype and a._c_contiguous:
        return a.reshape(1) if a.ndim == 0 else a
    out = ndarray._fresh((1,) if a.ndim == 0 else a.shape, dtype, garbage=False, device=a._dev)
    with np.errstate(all="ignore"):
        np.copyto(out._a, a._a.reshape(out.shape), casting="unsafe")
    _fake.launches["routine:copy"] += 1
    return out
