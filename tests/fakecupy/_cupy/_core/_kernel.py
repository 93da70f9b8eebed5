"""``cupy._core._kernel``: ``ElementwiseKernel`` (CuPy's code generation, run on the CPU) and ufuncs.

``ElementwiseKernel.__call__`` follows ``cupy/_core/_kernel.pyx`` of v14.2.0 step by step: CuPy's
argument checks and messages, scalars wrapped as ``CScalar`` (a NumPy array is an ``Unsupported
type``), broadcasting of the non-raw arrays, ``_decide_params_type`` (a fixed-type array parameter
given another dtype is ``Type is mismatched``), outputs allocated or checked, scalars cast to their
parameter's type, ``_reduce_dims``, and the kernel text of ``_get_elementwise_kernel_code`` (compared
with CuPy's own in ``tests/test_fakecupy.py``). The text then runs through :mod:`._cpu`, launched as
``linear_launch`` launches it.

The ufuncs (``cupy.add``, ``cupy.exp``, ...) compute with NumPy on the arrays underneath, after CuPy's
argument checks.
"""

from __future__ import annotations

import string
from typing import Any

import numpy as np

from .. import _fake
from ..cuda import _runtime as runtime
from ..cuda.compiler import is_valid_kernel_name
from . import _cpu
from .core import INDEX_32_LIMIT, c_contiguous, is_scalar, ndarray, unsupported

TYPENAMES = {
    np.dtype("float64"): "double", np.dtype("float32"): "float", np.dtype("float16"): "float16",
    np.dtype("complex128"): "thrust::complex<double>", np.dtype("complex64"): "thrust::complex<float>",
    np.dtype("int64"): "long long", np.dtype("int32"): "int", np.dtype("int16"): "short",
    np.dtype("int8"): "signed char", np.dtype("uint64"): "unsigned long long", np.dtype("uint32"): "unsigned int",
    np.dtype("uint16"): "unsigned short", np.dtype("uint8"): "unsigned char", np.dtype("bool"): "bool",
}
EMULATED = {dt for dt in TYPENAMES if dt.kind in "biuf" and dt != np.dtype("float16")}


def get_typename(dtype: Any) -> str:
    dt = np.dtype(dtype)
    if dt not in TYPENAMES:
        raise ValueError(f"Unsupported dtype {dtype}")
    return TYPENAMES[dt]


# --------------------------------------------------------------------------
# Scalars
# --------------------------------------------------------------------------
class CScalar:
    """A Python or NumPy scalar as a kernel argument: its dtype, cast on ``apply_dtype`` as CuPy casts."""

    def __init__(self, value: Any, dtype: Any = None) -> None:
        self.value = value
        if dtype is not None:
            self.dtype = np.dtype(dtype)
        elif type(value) is bool:
            self.dtype = np.dtype(np.bool_)
        elif type(value) is float:
            self.dtype = np.dtype(np.float64)
        elif type(value) is complex:
            self.dtype = np.dtype(np.complex128)
        elif type(value) is int:
            self.dtype = np.dtype(np.uint64 if value >= 0x8000000000000000 else np.int64)
        elif isinstance(value, np.generic):
            self.dtype = value.dtype
        else:
            raise unsupported(value)
        self._store()

    def _store(self) -> None:
        self.c = np.empty((), self.dtype)
        self.c[()] = self.value  # assignment, as CuPy's PyArray_Pack (an out-of-range integer raises)

    def apply_dtype(self, dtype: Any) -> None:
        dt = np.dtype(dtype)
        if dt != self.dtype:
            self.dtype = dt
            self._store()

    @property
    def address(self) -> int:
        return self.c.ctypes.data


# --------------------------------------------------------------------------
# Parameters and argument descriptions
# --------------------------------------------------------------------------
class ParameterInfo:
    """One parameter of ``in_params``/``out_params``: ``[raw] [_non_const] TYPE NAME``."""

    def __init__(self, param: str, is_const: bool) -> None:
        self.name: str | None = None
        self.dtype: np.dtype | None = None
        self.ctype: str | None = None
        self.raw = False
        self.is_const = is_const
        s = tuple(i for i in param.split() if len(i) != 0)
        if len(s) < 2:
            raise Exception(f"Syntax error: {param}")  # noqa: TRY002 - CuPy's
        t, self.name = s[-2:]
        if t == "CIndexer":
            pass
        elif len(t) == 1:
            self.ctype = t
        else:
            self.dtype = np.dtype(t)
            self.ctype = get_typename(self.dtype)
        for i in s[:-2]:
            if i == "raw":
                self.raw = True
            elif i == "_non_const":
                self.is_const = False
            else:
                raise Exception(f'Unknown keyword "{i}"')  # noqa: TRY002 - CuPy's


def _param_info(s: str, is_const: bool) -> tuple[ParameterInfo, ...]:
    if len(s) == 0:
        return ()
    return tuple(ParameterInfo(i, is_const) for i in s.strip().split(","))


ARG_NDARRAY, ARG_INDEXER, ARG_SCALAR = 1, 2, 3


class ArrayArg:
    """An array as a kernel sees it (a view after broadcasting or ``reduce_dims``): CArray's fields and flags."""

    def __init__(self, ptr: int, dtype: np.dtype, shape: tuple[int, ...], strides: tuple[int, ...],
                 c_contig: bool, idx32: bool) -> None:
        self.ptr, self.dtype, self.shape, self.strides = ptr, dtype, tuple(shape), tuple(strides)
        self.c_contiguous, self.index_32_bits = c_contig, idx32

    @classmethod
    def of(cls, a: ndarray) -> ArrayArg:
        return cls(a.data.ptr, a.dtype, a.shape, a.strides, a._c_contiguous, a._idx32)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def packed(self) -> np.ndarray:
        """``CArray<T, ndim, ...>``: data, size, shape[ndim], strides[ndim] (bytes)."""
        return np.array([self.ptr, self.size, *self.shape, *self.strides], dtype=np.int64)


class Indexer:
    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(shape)
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self.index_32_bits = self.size <= INDEX_32_LIMIT

    def packed(self) -> np.ndarray:
        """``CIndexer<ndim, ...>``: size, shape[ndim], index[ndim]."""
        return np.array([self.size, *self.shape, *([0] * len(self.shape))], dtype=np.int64)


def _arginfo(x: Any) -> tuple[int, np.dtype | None, int, bool, bool]:
    if isinstance(x, ArrayArg):
        return ARG_NDARRAY, x.dtype, x.ndim, x.c_contiguous, x.index_32_bits
    if isinstance(x, CScalar):
        return ARG_SCALAR, x.dtype, 0, True, True
    return ARG_INDEXER, None, len(x.shape), True, x.index_32_bits


def _c_type(info: tuple[int, np.dtype | None, int, bool, bool]) -> str:
    kind, dtype, ndim, c_contig, idx32 = info
    if kind == ARG_NDARRAY:
        return f"CArray<{get_typename(dtype)}, {ndim}, {int(c_contig)}, {int(idx32)}>"
    if kind == ARG_SCALAR:
        return get_typename(dtype)
    return f"CIndexer<{ndim}, {int(idx32)}>"


def elementwise_kernel_code(arginfos: tuple, type_map: tuple, params: tuple, operation: str, name: str,
                            preamble: str, loop_prep: str = "", after_loop: str = "") -> str:
    """CuPy's ``_get_elementwise_kernel_code``: the CUDA source of one specialisation."""
    op = []
    for p, info in zip(params, arginfos):
        if info[0] == ARG_NDARRAY and not p.raw:
            fmt = "const {t} &{n} = _raw_{n}[_ind.get()];" if p.is_const else "{t} &{n} = _raw_{n}[_ind.get()];"
            op.append(fmt.format(t=p.ctype, n=p.name))
    op.append(operation)
    operation = "\n".join(op)
    lst = []
    for p, info in zip(params, arginfos):
        ctyp = _c_type(info)
        if p.is_const:
            ctyp = "const " + ctyp
        var = "_raw_" + p.name if info[0] == ARG_NDARRAY and not p.raw else p.name
        lst.append(f"{ctyp} {var}")
    typedef_preamble = "".join(f"typedef {get_typename(t)} {c};\n" for c, t in type_map)
    return string.Template('''
    ${type_decls}${typedef_preamble}
    ${preamble}
    extern "C" __global__ void ${name}(${params}) {
      ${loop_prep};
      #pragma unroll 1
      CUPY_FOR(i, _ind.size()) {
        _ind.set(i);
        ${operation};
      }
      ${after_loop};
    }
    ''').substitute(typedef_preamble=typedef_preamble, params=", ".join(lst), type_decls="", operation=operation,
                    name=name, preamble=preamble, loop_prep=loop_prep, after_loop=after_loop)


def decide_params_type(in_params: tuple, out_params: tuple, in_args_dtype: tuple,
                       out_args_dtype: tuple) -> tuple[tuple, tuple, tuple]:
    """CuPy's ``_decide_params_type_core``: placeholder types from the arrays, fixed types checked."""
    type_dict: dict[str, np.dtype] = {}

    def bind(p: Any, a: Any) -> None:  # a fixed type must match; a placeholder takes the first array's
        if p.dtype is not None:
            if np.dtype(a) != p.dtype:
                raise TypeError(f"Type is mismatched. {p.name} {a} {p.dtype}")
        elif p.ctype in type_dict:
            t = type_dict[p.ctype]
            if np.dtype(t) != np.dtype(a):
                raise TypeError(f"Type is mismatched. {p.name} {a} {t} {p.ctype}")
        else:
            type_dict[p.ctype] = a

    if out_args_dtype:  # outputs first, as CuPy does
        for p, a in zip(out_params, out_args_dtype):
            if a is None:
                raise TypeError("Output arguments must be cupy.ndarray")
            bind(p, a)
    for p, a in zip(in_params, in_args_dtype):
        if a is not None:
            bind(p, a)
    in_types = tuple(type_dict[p.ctype] if p.dtype is None else p.dtype for p in in_params)
    out_types = tuple(type_dict[p.ctype] if p.dtype is None else p.dtype for p in out_params)
    return in_types, out_types, tuple(sorted((k, np.dtype(v)) for k, v in type_dict.items()))


def broadcast_shape(arrays: list[ArrayArg]) -> tuple[int, ...]:
    nd = max(a.ndim for a in arrays)
    shape = []
    for i in range(nd):
        s = 1
        for a in arrays:
            if i < nd - a.ndim:
                continue
            sh = a.shape[i - (nd - a.ndim)]
            if sh == s or sh == 1:
                continue
            if s == 1:
                s = sh
                continue
            raise ValueError("operands could not be broadcast together with shapes " +
                             " ".join(str(x.shape) for x in arrays))
        shape.append(s)
    return tuple(shape)


def broadcast_to(a: ArrayArg, shape: tuple[int, ...]) -> ArrayArg:
    """CuPy's ``_broadcast_core`` for one array: zero strides where it is broadcast."""
    if a.shape == shape:
        return a
    nd, strides = len(shape), [0] * len(shape)
    for j in range(a.ndim):
        if a.shape[j] == shape[j + nd - a.ndim]:
            strides[j + nd - a.ndim] = a.strides[j]
    itemsize = a.dtype.itemsize
    size = int(np.prod(shape, dtype=np.int64))
    return ArrayArg(a.ptr, a.dtype, shape, tuple(strides), c_contiguous(shape, tuple(strides), itemsize),
                    a.index_32_bits and size * itemsize <= INDEX_32_LIMIT)


def reduce_dims(args: list, params: tuple, shape: tuple[int, ...]) -> tuple[int, ...]:
    """CuPy's ``_reduce_dims`` / ``_reduced_view_core``: merge axes that are contiguous in every array."""
    if len(shape) <= 1 or len(args) == 0:
        return shape
    ndim = len(shape)
    array_indexes, strides_indexes = [], []
    for i, a in enumerate(args):
        if params[i].raw:
            continue
        if isinstance(a, ArrayArg):
            array_indexes.append(i)
            if not a.c_contiguous:
                if ndim == 2:
                    return shape
                strides_indexes.append(i)
    if not array_indexes:
        return shape
    if not strides_indexes:
        total = args[array_indexes[0]].size
        for i in array_indexes:
            a = args[i]
            args[i] = ArrayArg(a.ptr, a.dtype, (total,), (a.dtype.itemsize,), a.c_contiguous, a.index_32_bits)
        return (total,)
    vecshape, axes, last_ax = list(shape), [], -1
    for ax in range(ndim):
        if vecshape[ax] == 1:
            continue
        if last_ax < 0:
            last_ax = ax
            continue
        for i in strides_indexes:
            if args[i].strides[ax] * vecshape[ax] != args[i].strides[last_ax]:
                axes.append(last_ax)
                break
        else:
            vecshape[ax] *= vecshape[last_ax]
        last_ax = ax
    if last_ax >= 0:
        axes.append(last_ax)
    if len(axes) == ndim:
        return shape
    newshape = tuple(vecshape[ax] for ax in axes)
    for i in array_indexes:
        a = args[i]
        args[i] = ArrayArg(a.ptr, a.dtype, newshape, tuple(a.strides[ax] for ax in axes), a.c_contiguous,
                           a.index_32_bits)
    return newshape


# --------------------------------------------------------------------------
# ElementwiseKernel
# --------------------------------------------------------------------------
class ElementwiseKernel:
    """``ElementwiseKernel(in_params, out_params, operation, name='kernel', reduce_dims=True, preamble='',
    no_return=False, return_tuple=False, **kwargs)``."""

    def __init__(self, in_params: str, out_params: str, operation: str, name: str = "kernel",
                 reduce_dims: bool = True, preamble: str = "", no_return: bool = False, return_tuple: bool = False,
                 **kwargs: Any) -> None:
        if not is_valid_kernel_name(name):
            raise ValueError(f'Invalid kernel name: "{name}"')
        self.in_params = _param_info(in_params, True)
        self.out_params = _param_info(out_params, False)
        self.nin, self.nout = len(self.in_params), len(self.out_params)
        self.nargs = self.nin + self.nout
        self.params = self.in_params + self.out_params + _param_info("CIndexer _ind", False)
        self.operation, self.name, self.reduce_dims, self.preamble = operation, name, reduce_dims, preamble
        self.no_return, self.return_tuple, self.kwargs = no_return, return_tuple, kwargs
        self.__name__ = name
        if "i" in [p.name for p in self.in_params + self.out_params]:
            raise ValueError("Can not use 'i' as a parameter name")
        self._codes: dict[tuple, str] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        ret, launch = self._specialise(args, kwargs)
        if launch is not None:
            code, inout, n, block_size = launch
            module = _cpu.compile_module(code, self.name, tuple(self.kwargs.get("options", ())))
            # linear_launch
            grid = (min(0x7FFFFFFF, (n + block_size - 1) // block_size), 1, 1)
            block = (min(block_size, n), 1, 1)
            keep = [x.c if isinstance(x, CScalar) else x.packed() for x in inout]
            _fake.launches[self.name] += 1
            module.launch(grid, block, [k.ctypes.data for k in keep])
        return ret

    def _decide_params_type(self, in_args_dtype: tuple, out_args_dtype: tuple) -> tuple:
        return decide_params_type(self.in_params, self.out_params, in_args_dtype, out_args_dtype)

    def _source(self, *args: Any, size: int = -1) -> str | None:
        """The CUDA source this call compiles (as CuPy generates it), or None where nothing is launched."""
        _, launch = self._specialise(args, {"size": size})
        return None if launch is None else launch[0]

    def _specialise(self, args: tuple, kwargs: dict) -> tuple[Any, Any]:
        """What ``__call__`` returns, and ``(code, arguments, size, block size)`` for the launch (or None)."""
        size = kwargs.pop("size", -1)
        kwargs.pop("stream", None)
        block_size = kwargs.pop("block_size", 128)
        if len(kwargs):
            raise TypeError(f"Wrong arguments {kwargs}")
        if block_size <= 0:
            raise ValueError("block_size must be greater than zero")
        n_args = len(args)
        if n_args != self.nin and n_args != self.nargs:
            raise TypeError(f"Wrong number of arguments for {self.name!r}. It must be either {self.nin} or "
                            f"{self.nargs} (with outputs), but given {n_args}.")
        dev = runtime.getDevice()
        arg_list: list[Any] = []
        for a in args:  # _preprocess_args
            if isinstance(a, ndarray):
                if a._dev != dev:
                    raise ValueError(f"The device where the array resides ({a._dev}) is different from the current "
                                     f"device ({dev}). Peer access is unavailable between these devices.")
                arg_list.append(a)
            else:
                arg_list.append(CScalar(a))
        out_args = arg_list[self.nin:]
        # _broadcast: the non-raw arrays (outputs included) set the shape
        nonraw = [i for i, a in enumerate(arg_list) if not self.params[i].raw and isinstance(a, ndarray)]
        if size != -1:
            if nonraw:
                raise ValueError("Specified 'size' can be used only if all of the ndarray are 'raw'.")
        elif not nonraw:
            raise ValueError("Loop size is undecided.")
        views: list[Any] = [ArrayArg.of(a) if isinstance(a, ndarray) else a for a in arg_list]
        shape: tuple[int, ...] = ()
        if nonraw:
            shape = broadcast_shape([views[i] for i in nonraw])
            for i in nonraw:
                views[i] = broadcast_to(views[i], shape)
        in_args = views[:self.nin]
        in_dtypes = tuple(a.dtype if isinstance(a, ArrayArg) else None for a in in_args)
        out_dtypes = tuple(a.dtype for a in out_args)
        in_types, out_types, type_map = decide_params_type(self.in_params, self.out_params, in_dtypes, out_dtypes)
        if size != -1:
            shape = (int(size),)
        if not out_args:
            for p in self.out_params:
                if p.raw and size == -1:
                    raise ValueError("Output array size is Undecided")
            out_args = [ndarray(shape, t) for t in out_types]
        else:
            for p, a in zip(self.out_params, out_args):
                if not isinstance(a, ndarray):
                    raise TypeError("Output arguments type must be cupy.ndarray")
                if not p.raw and a.shape != shape:
                    raise ValueError("Out shape is mismatched")
        if self.no_return:
            ret = None
        elif not self.return_tuple and self.nout == 1:
            ret = out_args[0]
        else:
            ret = tuple(out_args)
        if 0 in shape:
            return ret, None
        for i, x in enumerate(in_args):
            if isinstance(x, CScalar):
                x.apply_dtype(in_types[i])
        inout = in_args + [ArrayArg.of(a) for a in out_args]
        if self.reduce_dims:
            shape = reduce_dims(inout, self.params, shape)
        indexer = Indexer(shape)
        inout.append(indexer)
        arginfos = tuple(_arginfo(x) for x in inout)
        for info in arginfos:
            if info[1] is not None and info[1] not in EMULATED:
                raise TypeError(f"the CuPy stand-in does not run kernels on {info[1]} arrays")
        key = (arginfos, type_map)
        code = self._codes.get(key)
        if code is None:
            code = self._codes[key] = elementwise_kernel_code(
                arginfos, type_map, self.params, self.operation, self.name, self.preamble,
                self.kwargs.get("loop_prep", ""), self.kwargs.get("after_loop", ""))
        return ret, (code, inout, indexer.size, block_size)


# --------------------------------------------------------------------------
# ufuncs
# --------------------------------------------------------------------------
class ufunc:
    """A CuPy ufunc: CuPy's argument checks, then NumPy's ufunc on the arrays underneath."""

    def __init__(self, name: str, np_ufunc: Any) -> None:
        self.name = name
        self.__name__ = f"cupy_{name}"
        self._np = np_ufunc
        self.nin, self.nout = np_ufunc.nin, np_ufunc.nout
        self.nargs = self.nin + self.nout

    def __repr__(self) -> str:
        return f"<ufunc '{self.__name__}'>"

    def __call__(self, *args: Any, out: Any = None, dtype: Any = None, casting: str = "same_kind",
                 **kwargs: Any) -> Any:
        if kwargs:
            raise TypeError(f"Wrong arguments {kwargs}")
        if len(args) not in (self.nin, self.nargs):
            raise TypeError(f"Wrong number of arguments for {self.name!r}. It must be either {self.nin} or "
                            f"{self.nargs} (with outputs), but given {len(args)}.")
        outs = list(args[self.nin:])
        if out is not None:
            if outs:
                raise ValueError("Cannot specify 'out' as both a positional and keyword argument")
            outs = list(out) if isinstance(out, tuple) else [out]
        hosts = []
        for a in args[:self.nin]:
            if isinstance(a, ndarray):
                hosts.append(a._a)
            elif is_scalar(a):
                hosts.append(a)
            else:
                raise unsupported(a)
        for o in outs:
            if not isinstance(o, ndarray):
                raise TypeError("Output arguments type must be cupy.ndarray")
        _fake.launches[f"ufunc:{self.name}"] += 1
        with np.errstate(all="ignore"):
            res = self._np(*hosts, *(o._a for o in outs), dtype=dtype, casting=casting)
        if outs:
            return outs[0] if self.nout == 1 else tuple(outs)
        if self.nout == 1:
            return ndarray._new(np.asarray(res))
        return tuple(ndarray._new(np.asarray(r)) for r in res)


UFUNCS = ("add", "subtract", "multiply", "divide", "true_divide", "floor_divide", "remainder", "mod", "power",
          "negative", "positive", "absolute", "maximum", "minimum", "fmax", "fmin", "exp", "exp2", "expm1", "log",
          "log2", "log10", "log1p", "sqrt", "square", "reciprocal", "sign", "tanh", "sinh", "cosh", "tan", "sin",
          "cos", "arctan", "floor", "ceil", "rint", "trunc", "isfinite", "isnan", "isinf", "equal", "not_equal",
          "less", "less_equal", "greater", "greater_equal", "logical_and", "logical_or", "logical_not",
          "logical_xor", "bitwise_and", "bitwise_or", "bitwise_xor", "invert", "left_shift", "right_shift",
          "copysign", "signbit")


def make_ufuncs() -> dict[str, ufunc]:
    out = {name: ufunc(name, getattr(np, name)) for name in UFUNCS}
    out["abs"] = out["absolute"]
    return out
