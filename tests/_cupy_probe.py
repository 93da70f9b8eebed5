"""What a CuPy looks like where gpu_backprop meets it, as JSON: run once with a real CuPy, once with the stand-in.

    python tests/_cupy_probe.py [--stand-in] < calls.json > facts.json

Needs no GPU (and no CUDA driver): names, ``sys.modules`` after ``import cupy``, constants, messages of
checks made before any device is touched, and the CUDA source ``ElementwiseKernel`` generates for each
call described on stdin. For a real CuPy the source is CuPy's own ``_get_elementwise_kernel_code`` fed
with CuPy's own type decisions (``_decide_params_type``), broadcasting (``cupy.broadcast``) and
``_ArgInfo`` of device-free ``cupy.ndarray`` objects (arrays on a pointer never dereferenced); only
``_reduced_view_core`` (a ``cdef``) is ported, from ``cupy/_core/_kernel.pyx`` at v14.2.0.
``tests/test_fakecupy.py`` compares the two outputs.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

#: the attributes gpu_backprop (library, tools, tests' stand-in users) reaches after a plain ``import cupy``
NAMES = [
    "__version__", "ndarray", "asarray", "array", "ascontiguousarray", "asnumpy", "empty", "empty_like", "zeros",
    "zeros_like", "ones", "arange", "concatenate", "matmul", "vdot", "outer", "dot", "exp", "log", "log1p", "sqrt",
    "abs", "maximum", "minimum", "multiply", "subtract", "add", "isfinite", "argsort", "sum", "mean",
    "get_array_module", "from_dlpack", "get_default_memory_pool", "ElementwiseKernel", "RawKernel", "float32",
    "float64", "int64", "int32", "uint8", "uint32", "uint64", "bool_",
    "cuda", "cuda.Device", "cuda.Event", "cuda.Stream", "cuda.get_current_stream", "cuda.get_elapsed_time",
    "cuda.alloc_pinned_memory", "cuda.MemoryPool", "cuda.memory.OutOfMemoryError", "cuda.runtime",
    "cuda.runtime.getDeviceCount", "cuda.runtime.getDeviceProperties", "cuda.runtime.runtimeGetVersion",
    "cuda.runtime.driverGetVersion", "cuda.runtime.CUDARuntimeError", "cuda.driver",
    "cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor", "cuda.compiler.CompileException", "cuda.nccl",
    "_core", "_core._routines_linalg", "_core._routines_linalg.get_compute_type",
    "_core._routines_linalg.set_compute_type",
]
COMPUTE_TYPES = ["TBD", "DEFAULT", "PEDANTIC", "FP16", "FP32", "FP64", "BF16", "TF32"]
NCCL_NAMES = ["NCCL_SUM", "NCCL_AVG", "NCCL_INT8", "NCCL_UINT8", "NCCL_INT32", "NCCL_UINT32", "NCCL_INT64",
              "NCCL_UINT64", "NCCL_FLOAT16", "NCCL_FLOAT32", "NCCL_FLOAT64", "NcclCommunicator", "get_unique_id"]
MODULES = ["cupy.cuda", "cupy._core", "cupy._core._routines_linalg", "cupy.cuda.memory", "cupy.cuda.stream",
           "cupy.cuda.device", "cupy.cuda.compiler", "cupy.cuda.nccl", "cupy.cuda.runtime", "cupy.cuda.driver"]


def _resolve(root: Any, dotted: str) -> bool:
    obj = root
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def _message(fn: Any) -> str:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the message is the fact
        return f"{type(exc).__name__}: {exc}"
    return "no error"


# --------------------------------------------------------------------------
# Device-free arrays and the elementwise source (real CuPy)
# --------------------------------------------------------------------------
_FAKE_PTR = 0x7F0000000000


def _real_array(cupy: Any, shape: tuple, dtype: Any, strides: tuple | None) -> Any:
    dtype = np.dtype(dtype)
    nbytes = max(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, 1)
    if strides is not None:
        nbytes = max(nbytes, sum((s - 1) * abs(st) for s, st in zip(shape, strides) if s > 0) + dtype.itemsize)
    mem = cupy.cuda.memory.UnownedMemory(_FAKE_PTR, nbytes, None, device_id=0)
    return cupy.ndarray(shape, dtype, memptr=cupy.cuda.MemoryPointer(mem, 0), strides=strides)


def _reduced_view_core(args: list, params: tuple, shape: tuple) -> tuple:
    """Port of ``_kernel._reduce_dims`` / ``_reduced_view_core`` (cdef) on (dtype, shape, strides, c, idx32) tuples."""
    if len(shape) <= 1 or len(args) == 0:
        return shape, args
    if len(args) == 1:
        return shape, args  # the reduction fast path: not used by ElementwiseKernel calls with an output
    ndim = len(shape)
    array_indexes, strides_indexes = [], []
    for i, a in enumerate(args):
        if params[i].raw or not isinstance(a, tuple):
            continue
        array_indexes.append(i)
        if not a[3]:
            if ndim == 2:
                return shape, args
            strides_indexes.append(i)
    if not array_indexes:
        return shape, args
    args = list(args)
    if not strides_indexes:
        total = int(np.prod(args[array_indexes[0]][1], dtype=np.int64))
        for i in array_indexes:
            dt, _, _, c, i32 = args[i]
            args[i] = (dt, (total,), (dt.itemsize,), c, i32)
        return (total,), args
    vecshape, axes, last_ax = list(shape), [], -1
    for ax in range(ndim):
        if vecshape[ax] == 1:
            continue
        if last_ax < 0:
            last_ax = ax
            continue
        for i in strides_indexes:
            st = args[i][2]
            if st[ax] * vecshape[ax] != st[last_ax]:
                axes.append(last_ax)
                break
        else:
            vecshape[ax] *= vecshape[last_ax]
        last_ax = ax
    if last_ax >= 0:
        axes.append(last_ax)
    if len(axes) == ndim:
        return shape, args
    newshape = tuple(vecshape[ax] for ax in axes)
    for i in array_indexes:
        dt, _, st, c, i32 = args[i]
        args[i] = (dt, newshape, tuple(st[ax] for ax in axes), c, i32)
    return newshape, args


def _real_source(cupy: Any, call: dict) -> str | None:
    from cupy._core import _carray, _kernel, _scalar

    K = cupy.ElementwiseKernel(call["in_params"], call["out_params"], call["operation"], call["name"])
    args = [_real_arg(cupy, a) for a in call["args"]]
    arg_list = [a if isinstance(a, cupy.ndarray) else _scalar.CScalar(a) for a in args]
    out_args = arg_list[K.nin:]
    value = [a if not K.params[i].raw and isinstance(a, cupy.ndarray) else None for i, a in enumerate(arg_list)]
    bc = cupy.broadcast(*value)
    value = [v if v is not None else arg_list[i] for i, v in enumerate(bc.values)]
    shape = tuple(bc.shape)
    in_args = value[:K.nin]
    in_types, out_types, type_map = K._decide_params_type(
        tuple(a.dtype if isinstance(a, cupy.ndarray) else None for a in in_args), tuple(a.dtype for a in out_args))
    if not out_args:
        out_args = [_real_array(cupy, shape, t, None) for t in out_types]
    if 0 in shape:
        return None
    inout: list[Any] = []
    for i, x in enumerate(in_args + out_args):
        if isinstance(x, _scalar.CScalar):
            x.apply_dtype(in_types[i])
            inout.append(x)
        else:
            inout.append((x.dtype, x.shape, x.strides, bool(x._c_contiguous), bool(x._index_32_bits)))
    shape, inout = _reduced_view_core(inout, K.params, shape)
    infos = [_kernel._ArgInfo(3, _scalar.CScalar, x.descr, 0, True, True) if isinstance(x, _scalar.CScalar)
             else _kernel._ArgInfo(1, cupy.ndarray, x[0], len(x[1]), x[3], x[4]) for x in inout]
    infos.append(_kernel._ArgInfo(2, _carray.Indexer, None, len(shape), True,
                                  int(np.prod(shape, dtype=np.int64)) <= (1 << 31)))
    return _kernel._get_elementwise_kernel_code(tuple(infos), type_map, K.params, K.operation, K.name, K.preamble)


def _real_arg(cupy: Any, a: dict) -> Any:
    if "array" in a:
        shape, dtype, strides = a["array"]
        return _real_array(cupy, tuple(shape), dtype, tuple(strides) if strides else None)
    return scalar(a["scalar"])


def scalar(spec: list) -> Any:
    kind, value = spec
    return {"int": int, "float": float, "bool": bool}[kind](value) if kind in ("int", "float", "bool") \
        else np.dtype(kind).type(value)


def stand_in_source(cupy: Any, call: dict) -> str | None:
    """The stand-in's source for the same call (its own arrays, the same shapes and strides)."""
    K = cupy.ElementwiseKernel(call["in_params"], call["out_params"], call["operation"], call["name"])
    args = []
    for a in call["args"]:
        if "array" in a:
            shape, dtype, strides = a["array"]
            dt = np.dtype(dtype)
            span = max(int(np.prod(shape)) * dt.itemsize, 1)
            if strides:
                span = max(span, sum((s - 1) * abs(st) for s, st in zip(shape, strides) if s > 0) + dt.itemsize)
            args.append(cupy.ndarray(tuple(shape), dt, memptr=cupy.get_default_memory_pool().malloc(span),
                                     strides=tuple(strides) if strides else None))
        else:
            args.append(scalar(a["scalar"]))
    return K._source(*args)


def main() -> None:
    stand_in = "--stand-in" in sys.argv
    if stand_in:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import fakecupy

        fakecupy.install()
    calls = json.loads(sys.stdin.read() or "[]")
    import cupy

    facts: dict[str, Any] = {"version": cupy.__version__, "names": {n: _resolve(cupy, n) for n in NAMES}}
    facts["modules"] = {m: m in sys.modules for m in MODULES}
    lin = cupy._core._routines_linalg
    facts["compute_types"] = {t: getattr(lin, f"COMPUTE_TYPE_{t}") for t in COMPUTE_TYPES}
    facts["ndarray"] = {"module": cupy.ndarray.__module__, "hashable": cupy.ndarray.__hash__ is not None,
                        "index": hasattr(cupy.ndarray, "__index__")}
    facts["messages"] = {
        "ascontiguousarray(numpy)": _message(lambda: cupy.ascontiguousarray(np.zeros(3))),
        "OutOfMemoryError": str(cupy.cuda.memory.OutOfMemoryError(1024, 2048)),
        "OutOfMemoryError(limit)": str(cupy.cuda.memory.OutOfMemoryError(1024, 2048, 4096)),
        "cuda.nccl": _message(lambda: cupy.cuda.nccl),
        "get_compute_type(int64)": _message(lambda: lin.get_compute_type(np.int64)),
        "set_compute_type(99)": _message(lambda: lin.set_compute_type(np.float32, 99)),
        "kernel arguments": _message(lambda: cupy.ElementwiseKernel("T x", "T y", "y = x", "k")(1, 2, 3)),
        "kernel name": _message(lambda: cupy.ElementwiseKernel("T x", "T y", "y = x", "1k")),
        "kernel param i": _message(lambda: cupy.ElementwiseKernel("T i", "T y", "y = i", "k")),
        "type mismatch": _message(lambda: cupy.ElementwiseKernel("raw int64 rows", "T y", "y = rows[i]", "k")
                                  ._decide_params_type((np.dtype(np.int32),), (np.dtype(np.float32),))),
        "implicit conversion": _message(lambda: np.asarray(
            stand_in_array(cupy) if stand_in else _real_array(cupy, (3,), np.float32, None))),
        "from_dlpack(numpy)": _message(lambda: cupy.from_dlpack(np.zeros(3))),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from cupy.cuda import nccl
    facts["nccl"] = {"attribute after import": hasattr(cupy.cuda, "nccl"), "available": bool(nccl.available)}
    if nccl.available:
        facts["nccl"]["names"] = {n: (getattr(nccl, n) if n.startswith("NCCL_") else True) if hasattr(nccl, n)
                                  else None for n in NCCL_NAMES}
        facts["nccl"]["tuple id"] = _message(lambda: nccl.NcclCommunicator(1, tuple(range(128)), 0))
        facts["nccl"]["short id"] = _message(lambda: nccl.NcclCommunicator(1, b"x" * 5, 0))
    facts["sources"] = [stand_in_source(cupy, c) if stand_in else _real_source(cupy, c) for c in calls]
    json.dump(facts, sys.stdout, indent=1, sort_keys=True)


def stand_in_array(cupy: Any) -> Any:
    return cupy.zeros(3, np.float32)


if __name__ == "__main__":
    main()
