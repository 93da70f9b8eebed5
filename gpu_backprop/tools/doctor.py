"""``gpu-backprop doctor``: what to look at when the GPU path misbehaves, and every kernel compiled.

    python -m gpu_backprop doctor                 # on a CUDA machine: for its GPU's architecture
    python -m gpu_backprop doctor --arch sm_90    # anywhere CuPy and NVRTC install (no GPU needed)

It prints the versions the GPU path depends on (Python, NumPy, CuPy, the CUDA
runtime and driver, NVRTC and the CUDA headers it includes), the devices, NCCL,
TF32 and MPI, then compiles every kernel of the library with NVRTC exactly as
CuPy would for that architecture, and ends with one line per problem and its fix.

Exit status: 0 when every kernel compiles; 1 when one does not (the first error
line of its NVRTC log is printed); 2 when CuPy, NVRTC or the CUDA headers are
missing (one sentence on stderr), or for a bad flag.

How a kernel is compiled "as CuPy would" (CuPy 14.2, read in its source at tag
v14.2.0; a device is never needed, nothing is written to disk):

* An ``ElementwiseKernel``'s CUDA text comes from CuPy's own code generator
  (``cupy._core._kernel._get_elementwise_kernel_code``) fed with CuPy's own
  parameter parsing and type resolution, for arguments shaped like the
  library's call sites (:func:`_call_sites`): real ``cupy.ndarray`` objects on a
  pointer that is never read, broadcast by CuPy. Only ``_reduced_view_core``
  (a ``cdef``, out of reach from Python) is re-written here. NVRTC gets CuPy's
  include lines (``core._cupy_header_list``) followed by that text.
* A ``RawKernel``'s text is compiled as given (CuPy: ``prepend_cupy_headers=False``).
* The options are CuPy's: ``core.assemble_cupy_compiler_options`` (CuPy's own:
  the bundled CCCL, ``--std=c++17``, its headers, the CUDA headers), then what
  ``cupy/cuda/compiler.py`` appends: ``-ftz=true``, the debug flags under
  ``CUPY_CUDA_COMPILE_WITH_DEBUG=1``, ``-arch=sm_XY`` (a cubin; ``compute_XY``,
  PTX, under ``CUPY_COMPILE_WITH_PTX=1`` or beyond NVRTC's newest
  architecture), ``--device-as-default-execution-space``, and ``--pch`` under
  ``CUPY_NVRTC_USE_PCH=1``. ``enable_cooperative_groups=True`` (the fused
  per-sample kernel) adds no option since CuPy 14.2 — it only changes the launch
  — and added ``--device-c`` before (CuPy commit 164e4d3), which is replicated.
* The NVRTC call is CuPy's own ``compiler._NVRTCProgram(...).compile``. The
  program is named after the kernel, where CuPy names it after its cache key:
  the name only appears in messages.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import re
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache, partial
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from .. import __version__
from ..backend import cupy_part, one_line
from ._args import Parser

__all__ = ["Build", "ToolchainMissing", "compile_all", "first_error", "load_cupy", "main", "toolchain_problem"]

#: the architecture compiled for when no device answers and no ``--arch`` is given: the H100's
DEFAULT_ARCH = "90"


class Build(NamedTuple):
    """One kernel compiled for one type combination: ``ok`` and NVRTC's log (warnings or errors)."""

    kernel: str
    dtype: str
    ok: bool
    log: str


class ToolchainMissing(RuntimeError):
    """CuPy, NVRTC or the CUDA headers cannot be found: nothing can be compiled (one sentence, with the fix)."""


# --------------------------------------------------------------------------
# The toolchain: CuPy, NVRTC, the CUDA headers
# --------------------------------------------------------------------------
def _cuda_major(cp: ModuleType) -> int:
    return int(cp.cuda.runtime.runtimeGetVersion()) // 1000


def _wheel_suffix(cp: ModuleType) -> str:
    """``cu13`` / ``cu12``: the suffix of the NVIDIA wheels that match this CuPy."""
    return f"cu{_cuda_major(cp)}"


def load_cupy() -> ModuleType:
    """Import CuPy (no device needed), or :class:`ToolchainMissing` saying how to install it."""
    try:
        cupy = cupy_part("cupy")  # where no device answers too (backend.cupy_module would refuse)
    except ImportError:
        raise ToolchainMissing(
            "CuPy is not installed: pip install 'gpu_backprop[cuda13]' for a CUDA 13 driver "
            "(or 'gpu_backprop[cuda12]'), plus 'nvidia-cuda-nvrtc==13.*' 'nvidia-cuda-runtime==13.*' "
            "where no CUDA toolkit is installed") from None
    except Exception as exc:  # noqa: BLE001 - a broken install raises all sorts of things
        raise ToolchainMissing(f"CuPy failed to import ({one_line(exc)}): reinstall it") from None
    if cupy.cuda.runtime.is_hip:
        raise ToolchainMissing("this CuPy is built for ROCm: the doctor compiles CUDA kernels with NVRTC only")
    return cupy


def _nvrtc_version(cp: ModuleType) -> tuple[int, int]:
    nvrtc = cupy_part("cupy_backends.cuda.libs.nvrtc")

    try:
        major, minor = nvrtc.getVersion()
    except Exception as exc:  # noqa: BLE001 - cuda.pathfinder.DynamicLibNotFoundError, OSError, ...
        major_cuda = _cuda_major(cp)
        wheel = "nvidia-cuda-nvrtc" if major_cuda >= 13 else f"nvidia-cuda-nvrtc-cu{major_cuda}"
        raise ToolchainMissing(
            f"NVRTC (libnvrtc) is not found ({one_line(exc)}): pip install '{wheel}=={major_cuda}.*' "
            f"(or cupy-cuda{major_cuda}x[ctk]), or put a CUDA {major_cuda} toolkit's lib64 on "
            "LD_LIBRARY_PATH") from None
    return int(major), int(minor)


def _cupy_options(cp: ModuleType) -> tuple[str, ...]:
    """CuPy's own include and standard options, or :class:`ToolchainMissing` when it finds no CUDA headers."""
    core = cupy_part("cupy._core.core")

    try:
        return tuple(core.assemble_cupy_compiler_options(()))
    except RuntimeError as exc:
        major = _cuda_major(cp)
        wheel = "nvidia-cuda-runtime" if major >= 13 else f"nvidia-cuda-runtime-cu{major}"
        raise ToolchainMissing(
            f"the CUDA headers are not found ({one_line(exc)}): pip install '{wheel}=={major}.*', "
            "or set CUDA_PATH to a CUDA toolkit") from None


def toolchain_problem() -> str | None:
    """Why no kernel can be compiled here (CuPy, NVRTC or the CUDA headers missing), or ``None``."""
    try:
        cp = load_cupy()
        _nvrtc_version(cp)
        _cupy_options(cp)
    except ToolchainMissing as exc:
        return str(exc)
    return None


def first_error(log: str) -> str:
    """The first ``error`` line of an NVRTC log (else its first line), without the program's path."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    line = next((ln for ln in lines if re.search(r"\berror\b", ln)), lines[0] if lines else "(empty log)")
    return re.sub(r"^\S*\.cu\((\d+)\)", r"line \1", line)


# --------------------------------------------------------------------------
# NVRTC options and the compile call, as CuPy 14.2 makes them
# --------------------------------------------------------------------------
def _version_tuple(version: str) -> tuple[int, int]:
    major, minor = (re.findall(r"\d+", version) + ["0", "0"])[:2]
    return int(major), int(minor)


def _nvrtc_options(cp: ModuleType, user_options: Sequence[str], arch: str, *,
                   cooperative: bool = False) -> tuple[tuple[str, ...], str]:
    """(options, method): what ``compile_with_cache`` hands to NVRTC for ``arch`` (no jitify, CUDA)."""
    core = cupy_part("cupy._core.core")
    compiler = cupy_part("cupy.cuda.compiler")

    options = tuple(core.assemble_cupy_compiler_options(tuple(user_options))) + ("-ftz=true",)
    if cooperative and _version_tuple(cp.__version__) < (14, 2):
        options += ("--device-c",)  # CuPy <= 14.1: "cooperative groups require relocatable device code"
    if compiler._get_bool_env_variable("CUPY_CUDA_COMPILE_WITH_DEBUG", False):
        options += ("--device-debug", "--generate-line-info")
    if not compiler._use_ptx and int(arch) <= int(compiler._get_max_compute_capability()):
        options += (f"-arch=sm_{arch}",)
        method = "cubin"
    else:
        options += (f"-arch=compute_{arch}",)
        method = "ptx"
    options += ("--device-as-default-execution-space",)
    major, minor = compiler._get_nvrtc_version()
    if (major >= 13 or (major == 12 and minor >= 8)) and compiler._use_pch:
        options += ("--pch",)
    return options, method


@cache  # in memory only: one process compiles each text once
def _nvrtc_compile(source: str, program: str, options: tuple[str, ...], method: str) -> tuple[bool, str]:
    compiler = cupy_part("cupy.cuda.compiler")

    log = io.StringIO()
    try:
        compiler._NVRTCProgram(source, program, method=method).compile(options, log)
    except compiler.CompileException as exc:
        return False, str(exc)
    return True, log.getvalue()


# --------------------------------------------------------------------------
# ElementwiseKernel: CuPy's code generator, for given arguments, with no device
# --------------------------------------------------------------------------
_UNREAD_POINTER = 0x7F0000000000  # CuPy arrays built on it are never read: only their shapes and flags count


def _array(cp: ModuleType, shape: tuple[int, ...], dtype: Any) -> Any:
    """A real ``cupy.ndarray`` (shape, strides, contiguity, 32/64-bit indexing as CuPy computes them), no device."""
    dtype = np.dtype(dtype)
    nbytes = max(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, 1)
    mem = cp.cuda.memory.UnownedMemory(_UNREAD_POINTER, nbytes, None, device_id=0)
    return cp.ndarray(shape, dtype, memptr=cp.cuda.MemoryPointer(mem, 0))


@dataclass
class _Operand:
    """What CuPy's ``_ArgInfo`` reads from an array after broadcasting (and after ``reduce_dims``)."""

    dtype: np.dtype
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    c_contiguous: bool
    index_32_bits: bool
    array: Any = None  # the cupy.ndarray it describes, before any reduction


def _operand(a: Any) -> _Operand:
    return _Operand(a.dtype, tuple(a.shape), tuple(a.strides), bool(a._c_contiguous), bool(a._index_32_bits), a)


def _reduce_dims(operands: list[Any], params: Sequence[Any], shape: tuple[int, ...]) -> tuple[tuple[int, ...], list]:
    """CuPy's ``_kernel._reduce_dims`` / ``_reduced_view_core`` (cdef, v14.2.0): merge axes that stay contiguous.

    The flags are kept as CuPy keeps them (its views here do not update C-contiguity).
    """
    if len(shape) <= 1 or not operands:
        return shape, operands
    if len(operands) == 1:  # CuPy's fast path: its own ndarray.reduced_view
        a = operands[0]
        if params[0].raw or not isinstance(a, _Operand):
            return shape, operands
        view = a.array.reduced_view()
        if view is a.array:
            return shape, operands
        return tuple(view.shape), [_operand(view)]
    arrays = [k for k, a in enumerate(operands) if not params[k].raw and isinstance(a, _Operand)]
    if not arrays:
        return shape, operands
    strided = [k for k in arrays if not operands[k].c_contiguous]
    if strided and len(shape) == 2:  # CuPy's short cut
        return shape, operands
    operands = list(operands)
    if not strided:  # all C-contiguous: one axis, flags kept
        total = int(np.prod(shape, dtype=np.int64))
        for k in arrays:
            a = operands[k]
            operands[k] = _Operand(a.dtype, (total,), (a.dtype.itemsize,), a.c_contiguous, a.index_32_bits)
        return (total,), operands
    vecshape, axes, last = list(shape), [], -1
    for ax in range(len(shape)):
        if vecshape[ax] == 1:
            continue
        if last >= 0:
            if any(operands[k].strides[ax] * vecshape[ax] != operands[k].strides[last] for k in strided):
                axes.append(last)
            else:
                vecshape[ax] *= vecshape[last]
        last = ax
    if last >= 0:
        axes.append(last)
    if len(axes) == len(shape):
        return shape, operands
    new_shape = tuple(vecshape[ax] for ax in axes)
    for k in arrays:
        a = operands[k]
        operands[k] = _Operand(a.dtype, new_shape, tuple(a.strides[ax] for ax in axes), a.c_contiguous,
                               a.index_32_bits)
    return new_shape, operands


def _elementwise_code(cp: ModuleType, kernel: Any, args: Sequence[Any]) -> str:
    """The CUDA text CuPy generates for ``kernel(*args)`` (``ElementwiseKernel.__call__``, _kernel.pyx, v14.2.0).

    ``args`` are ``cupy.ndarray`` objects from :func:`_array` or Python/NumPy scalars,
    inputs then outputs, as the library passes them. Returns the text NVRTC
    sees: CuPy's include lines, then the kernel.
    """
    _carray, _kernel, _scalar, core = (cupy_part(f"cupy._core.{m}") for m in ("_carray", "_kernel", "_scalar", "core"))

    if len(args) != kernel.nargs:
        raise TypeError(f"{kernel.name}: the call lists {len(args)} arguments, the kernel takes {kernel.nargs}")
    values = [a if isinstance(a, cp.ndarray) else _scalar.CScalar(a) for a in args]
    arrays = [a if isinstance(a, cp.ndarray) and not p.raw else None for a, p in zip(values, kernel.params)]
    bc = cp.broadcast(*arrays)  # CuPy's own broadcasting
    values = [b if b is not None else v for b, v in zip(bc.values, values)]
    shape = tuple(bc.shape)
    in_types = tuple(v.dtype if isinstance(v, cp.ndarray) else None for v in values[:kernel.nin])
    out_types = tuple(v.dtype for v in values[kernel.nin:])
    in_types, _, type_map = kernel._decide_params_type(in_types, out_types)  # CuPy's own
    operands: list[Any] = []
    for k, v in enumerate(values):
        if isinstance(v, cp.ndarray):
            operands.append(_operand(v))
        else:
            v.apply_dtype(in_types[k])  # CuPy's own scalar cast
            operands.append(v)
    if kernel.reduce_dims:
        shape, operands = _reduce_dims(operands, kernel.params, shape)
    infos = [_kernel._ArgInfo(1, cp.ndarray, o.dtype, len(o.shape), o.c_contiguous, o.index_32_bits)
             if isinstance(o, _Operand) else _kernel._ArgInfo(3, _scalar.CScalar, o.descr, 0, True, True)
             for o in operands]
    size = int(np.prod(shape, dtype=np.int64))
    infos.append(_kernel._ArgInfo(2, _carray.Indexer, None, len(shape), True, size <= (1 << 31)))
    code = _kernel._get_elementwise_kernel_code(tuple(infos), type_map, kernel.params, kernel.operation,
                                                kernel.name, kernel.preamble, **kernel.kwargs)
    return "".join(f"#include <{h}>\n" for h in core._cupy_header_list) + code


def _call_sites(cp: ModuleType, T: Any) -> dict[str, list[tuple[str, tuple[Any, ...]]]]:
    """Arguments shaped like the library's calls of each elementwise kernel, for float type ``T``.

    ``name -> [(types, args)]``, one entry per type combination the library uses
    (gpu_backprop/kernels/*.py): a (B, F) activation matrix, (F,) per-feature
    vectors broadcast over its rows, flat parameter buffers, scalars as the
    library passes them (Python floats, ints and bools; NumPy uint64/uint32 keys).
    """
    from .. import kernels

    B, F, N = 64, 100, 500
    t = np.dtype(T).name

    def mat() -> Any:
        return _array(cp, (B, F), T)

    def vec() -> Any:
        return _array(cp, (F,), T)

    def flat() -> Any:
        return _array(cp, (B * F,), T)

    calls: dict[str, list[tuple[str, tuple[Any, ...]]]] = {}
    for kind in kernels.ACTIVATIONS:
        calls[f"{kind}_fwd"] = [(t, (0.01, mat()))]
        calls[f"bias_{kind}_fwd"] = [(t, (vec(), 0.01, mat()))]
        calls[f"{kind}_bwd"] = [(t, (mat(), 0.01, mat()))]
    calls["bn_fwd"] = [(t, (mat(), vec(), vec(), vec(), vec(), mat(), mat()))]
    calls["bn_bwd"] = [(t, (mat(), mat(), vec(), vec(), vec(), 1.0 / B, mat()))]
    calls["sgd"] = [(t, (flat(), 0.1, 0.01, 5, flat()))]
    calls["momentum_sgd"] = [(t, (flat(), 0.1, 0.9, 0.01, 5, True, flat(), flat()))]
    calls["adam"] = [(t, (flat(), 1e-3, 0.9, 0.999, 1e-8, 0.01, False, 0.1, 0.001, 5, flat(), flat(), flat()))]
    calls["dropout_fwd"] = [(t, (np.uint64(12345), np.uint32(2**31), 2.0, mat(), mat()))]
    rows = _array(cp, (B,), np.int64)
    calls["gather_scale"] = [  # uint8 images or features already in the network's dtype; a > 2 GiB data set
        (f"uint8->{t}", (_array(cp, (N, F), np.uint8), rows, F, 1 / 255, mat())),
        (f"{t}->{t}", (_array(cp, (N, F), T), rows, F, 1.0, mat())),
        (f"uint8->{t}, 64-bit index", (_array(cp, (3_000_000, 784), np.uint8), rows, 784, 1 / 255,
                                        _array(cp, (B, 784), T))),
    ]
    if t == "float32":  # no element type: once
        calls["hash_u32"] = [("uint32", (np.uint64(12345), _array(cp, (N,), np.uint32)))]
    return calls


# --------------------------------------------------------------------------
# Every kernel of the library
# --------------------------------------------------------------------------
FLOATS = (np.float32, np.float64)
#: the fused per-sample kernel is compiled for these networks (``tools.bench.suite.MODELS``) ...
PER_SAMPLE_MODELS = ("mlp-256", "mlp-1024")
#: ... and these (network dtype, data dtypes): the data set's type only changes a typedef
PER_SAMPLE_TYPES = ((np.float32, (np.uint8, np.float32)), (np.float64, (np.float64,)))


@dataclass(frozen=True)
class _Job:
    kernel: str
    dtype: str
    make_source: Callable[[], str]
    user_options: tuple[str, ...] = ()
    cooperative: bool = False
    cost: int = 1  # relative compile time, to schedule the long ones first


def _given(text: str) -> Callable[[], str]:
    return lambda: text


def _jobs(cp: ModuleType) -> list[_Job]:
    """One job per (kernel, type combination), each built as the library builds it."""
    from .. import kernels  # the registry of every kernel, and how the library builds them
    from ..experimental import persample
    from ..network import MLP
    from .bench.suite import MODELS

    jobs = []
    for T in FLOATS:
        sites = _call_sites(cp, T)
        for name in kernels.ELEMENTWISE:
            kernel = kernels.make_elementwise(cp, name)
            calls = sites.get(name)
            if calls is None:  # not yet in _call_sites: every parameter a 1-D array of its type, or T
                if T is not FLOATS[0] and not any(p.dtype is None for p in kernel.params[:-1]):
                    continue
                calls = [(f"{np.dtype(T).name} (generic arguments)",
                          tuple(_array(cp, (256,), p.dtype or T) for p in kernel.params[:-1]))]
            for types, args in calls:
                jobs.append(_Job(name, types, partial(_elementwise_code, cp, kernel, args),
                                 tuple(kernel.kwargs.get("options", ()))))
        for name in kernels.RAW:
            raw = kernels.make_raw(cp, name, T)
            jobs.append(_Job(name, np.dtype(T).name, _given(raw.code), tuple(raw.options),
                             raw.enable_cooperative_groups))
    for model in PER_SAMPLE_MODELS:
        for dtype, x_dtypes in PER_SAMPLE_TYPES:
            net = MLP(MODELS[model], activation="relu", dtype=dtype, backend="numpy")
            for x_dtype in x_dtypes:
                # as experimental.persample builds it: RawKernel(source, "per_sample_sgd", cooperative)
                raw = cp.RawKernel(persample.kernel_source(net, x_dtype), "per_sample_sgd",
                                   enable_cooperative_groups=True)
                jobs.append(_Job(f"per_sample_sgd {model}",
                                 f"{np.dtype(dtype).name}, {np.dtype(x_dtype).name} data",
                                 _given(raw.code), tuple(raw.options), raw.enable_cooperative_groups, 10))
    return jobs


def compile_all(arch: str = DEFAULT_ARCH, *, workers: int | None = None) -> list[Build]:
    """Compile every kernel of the library for ``arch`` (``"90"``: sm_90) as CuPy would; no device needed.

    Every registered elementwise kernel for the type combinations the library
    calls it with, every raw kernel for float and double, and the fused
    per-sample kernel for :data:`PER_SAMPLE_MODELS`. NVRTC runs in ``workers``
    threads (it releases the GIL; default: the cores, at most 8). Raises
    :class:`ToolchainMissing` when CuPy, NVRTC or the CUDA headers are missing.
    """
    problem = toolchain_problem()  # also loads libnvrtc once, before the threads
    if problem is not None:
        raise ToolchainMissing(problem)
    cp = load_cupy()
    jobs = _jobs(cp)

    def build(job: _Job) -> Build:
        try:
            source = job.make_source()
            options, method = _nvrtc_options(cp, job.user_options, arch, cooperative=job.cooperative)
        except Exception as exc:  # noqa: BLE001 - a kernel whose text CuPy refuses to generate is a failure too
            return Build(job.kernel, job.dtype, False, f"error: {one_line(exc)}")
        ok, log = _nvrtc_compile(source, re.sub(r"\W", "_", job.kernel) + ".cu", options, method)
        return Build(job.kernel, job.dtype, ok, log)

    pool = ThreadPoolExecutor(max_workers=max(1, workers or min(os.cpu_count() or 1, 8)))
    try:
        # the fused kernels take ~10x longer than the others: start them first, so that no thread finishes alone
        started = {k: pool.submit(build, jobs[k]) for k in sorted(range(len(jobs)), key=lambda k: -jobs[k].cost)}
        return [started[k].result() for k in range(len(jobs))]
    finally:  # on Ctrl-C too: what has not started never will
        pool.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------
def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def _parse_arch(p: argparse.ArgumentParser, text: str) -> str:
    m = re.fullmatch(r"(?:sm_|compute_)?(\d{2,3})", text.strip())
    if m is None:
        p.error(f"--arch takes a GPU architecture like sm_90 (H100) or sm_80 (A100), got {text!r}")
    return str(int(m.group(1)))  # type: ignore[union-attr]  # ('sm_090' is sm_90, as NVRTC spells it)


class _Report:
    def __init__(self) -> None:
        self.problems: list[str] = []

    @staticmethod
    def line(key: str, value: str) -> None:
        print(f"{key:<9} {value}", flush=True)

    def problem(self, what: str, fix: str) -> None:
        self.problems.append(f"{what}: {fix}")


def _report_devices(cp: ModuleType, r: _Report) -> str | None:
    """Print the CUDA versions and the devices; return the first device's architecture (None: no device)."""
    rt = cp.cuda.runtime
    built, driver = int(rt.runtimeGetVersion()), int(rt.driverGetVersion())
    try:
        local = f", local runtime {_cuda_version(int(cp.cuda.get_local_runtime_version()))}"
    except Exception:  # noqa: BLE001 - no libcudart beside CuPy: nothing to report
        local = ""
    r.line("cuda", f"runtime {_cuda_version(built)} (CuPy's){local}, driver "
                   + (_cuda_version(driver) if driver else "none"))
    if driver and driver // 1000 < built // 1000:
        r.problem(f"the driver supports CUDA {_cuda_version(driver)}, CuPy needs CUDA {built // 1000}",
                  f"update the NVIDIA driver, or install cupy-cuda{driver // 1000}x")
    try:
        count = int(rt.getDeviceCount())
    except Exception as exc:  # noqa: BLE001 - CUDARuntimeError without a driver
        r.line("device", f"none ({one_line(exc)})")
        return None
    if count < 1:
        r.line("device", "none (CUDA reports no device)")
        return None
    for i in range(count):
        props = rt.getDeviceProperties(i)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        r.line("device", f"{i}: {name}, compute capability {props['major']}.{props['minor']}, "
                         f"{props['totalGlobalMem'] / 2**30:.1f} GiB, {props['multiProcessorCount']} SMs"
                         + ("" if props.get("cooperativeLaunch", 1) else ", no cooperative launch"))
    compiler = cupy_part("cupy.cuda.compiler")

    return str(compiler._get_arch())  # CuPy's own choice: min(device, NVRTC's newest)


def _report_nvrtc(cp: ModuleType, r: _Report) -> list[int]:
    from cuda import pathfinder
    nvrtc = cupy_part("cupy_backends.cuda.libs.nvrtc")

    major, minor = _nvrtc_version(cp)
    try:
        lib = pathfinder.load_nvidia_dynamic_lib("nvrtc")
        where = f"{lib.abs_path}, found via {lib.found_via}"
    except Exception as exc:  # noqa: BLE001 - loaded some other way: the version is what counts
        where = one_line(exc)
    archs = [int(a) for a in nvrtc.getSupportedArchs()]
    r.line("nvrtc", f"{major}.{minor} ({where}); sm_{archs[0]} to sm_{archs[-1]}")
    headers = pathfinder.find_nvidia_header_directory("cudart")
    found = headers is not None and os.path.isfile(os.path.join(headers, "cuda_runtime.h"))
    r.line("headers", f"{headers} ({'cuda_runtime.h found' if found else 'cuda_runtime.h missing'})"
           if headers else "not found")
    return archs


def _report_nccl(cp: ModuleType, r: _Report) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # CuPy warns when libnccl is missing: said below, once
            nccl = cupy_part("cupy.cuda.nccl")
        available = bool(getattr(nccl, "available", False))
    except Exception as exc:  # noqa: BLE001 - a broken NCCL wheel
        available, nccl = False, None
        r.line("nccl", f"not importable ({one_line(exc)})")
    if nccl is not None:
        version = ""
        if available and hasattr(nccl, "get_version"):
            v = int(nccl.get_version())
            version = f" ({v // 10000}.{v // 100 % 100}.{v % 100})"
        r.line("nccl", f"available{version}" if available else "not available")
    if not available:
        r.problem("NCCL is not available (only --distributed nccl needs it)",
                  f"pip install 'nvidia-nccl-{_wheel_suffix(cp)}>=2.27.7,<3'")


def _report_tf32(cp: ModuleType, r: _Report) -> None:
    env = os.environ.get("CUPY_TF32")
    setting = f"CUPY_TF32={env}" if env is not None else "CUPY_TF32 unset"
    try:
        linalg = cupy_part("cupy._core._routines_linalg")

        ct = int(linalg.get_compute_type(np.float32))
    except Exception as exc:  # noqa: BLE001 - with CUPY_TF32 set, CuPy asks the device
        r.line("tf32", f"unknown ({setting}; CuPy cannot tell without a device: {one_line(exc)})")
        return
    names = {getattr(linalg, n): n[len("COMPUTE_TYPE_"):] for n in dir(linalg) if n.startswith("COMPUTE_TYPE_")}
    on = ct == getattr(linalg, "COMPUTE_TYPE_TF32", -1)
    r.line("tf32", f"{'on' if on else 'off'} (CuPy's compute type for float32 products: {names.get(ct, ct)}; "
                   f"{setting})")
    if env not in (None, "", "0") and not on:
        r.problem(f"{setting} but CuPy computes float32 products as {names.get(ct, ct)}",
                  "TF32 needs a GPU of compute capability 8.0 or newer")


def _report_mpi(r: _Report) -> None:
    import importlib.util

    from ..distributed import mpiexec_path

    mpiexec = mpiexec_path()
    if importlib.util.find_spec("mpi4py") is None:
        r.line("mpi", f"mpi4py not installed; mpiexec {mpiexec or 'not found'}")
        r.problem("mpi4py is not installed (only --distributed needs it)", "pip install 'gpu_backprop[mpi]'")
        return
    import mpi4py  # the package only: MPI itself is not started

    r.line("mpi", f"mpi4py {mpi4py.__version__}; mpiexec {mpiexec or 'not found'}")
    if mpiexec is None:
        r.problem("mpiexec is not on PATH (only --distributed needs it)", "pip install mpich, or load your MPI")


def main(argv: list[str] | None = None) -> int:
    """``python -m gpu_backprop doctor [--arch sm_XY] [--verbose]``; returns the exit status."""
    p = Parser(prog="python -m gpu_backprop doctor",
               description="What the GPU path depends on (Python, NumPy, CuPy, CUDA, the devices, NVRTC and the "
                           "CUDA headers, NCCL, TF32, MPI), then every kernel compiled with NVRTC as CuPy would.",
               epilog="Exit status: 0 every kernel compiles, 1 one does not, 2 CuPy, NVRTC or the CUDA headers "
                      "are missing.")
    p.add_argument("--arch", help="compile for this architecture, e.g. sm_90 (default: the device's; "
                                  f"sm_{DEFAULT_ARCH} without one)")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per kernel, and the whole log of a failure")
    args = p.parse_args(argv)
    arch = _parse_arch(p, args.arch) if args.arch else None

    r = _Report()
    print(f"gpu_backprop {__version__} doctor", flush=True)
    r.line("python", f"{platform.python_version()} ({sys.executable})")
    r.line("numpy", np.__version__)
    try:
        cp = load_cupy()
        dists = [d for d in _cupy_distributions()]
        r.line("cupy", f"{cp.__version__} ({', '.join(dists) or 'distribution unknown'})")
        if len(dists) > 1:
            r.problem(f"several CuPy packages are installed ({', '.join(dists)})",
                      "pip uninstall all but the one matching your CUDA driver")
        device_arch = _report_devices(cp, r)
        archs = _report_nvrtc(cp, r)
        _cupy_options(cp)
    except ToolchainMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _report_nccl(cp, r)
    _report_tf32(cp, r)
    _report_mpi(r)

    if arch is not None and int(arch) not in archs:
        print(f"error: this NVRTC compiles for sm_{archs[0]} to sm_{archs[-1]} ({', '.join(map(str, archs))}), "
              f"not sm_{arch}; pass one of those to --arch", file=sys.stderr)
        return 2
    if arch is None:
        arch = device_arch
        if arch is None:
            arch = DEFAULT_ARCH
            r.problem(f"no CUDA device answers, so the kernels were compiled for sm_{arch} (an H100)",
                      "check the driver with `nvidia-smi`, or pass --arch for another GPU")
    t0 = time.perf_counter()
    builds = compile_all(arch)
    seconds = time.perf_counter() - t0
    failed = [b for b in builds if not b.ok]
    options, _ = _nvrtc_options(cp, (), arch)
    r.line("kernels", f"{len(builds) - len(failed)} of {len(builds)} compiled for sm_{arch} in {seconds:.1f} s "
                      f"(NVRTC options: {' '.join(o for o in options if not o.startswith('-I'))})")
    if args.verbose:
        for b in builds:
            print(f"  {'ok    ' if b.ok else 'FAILED'} {b.kernel} [{b.dtype}]"
                  + (f": {first_error(b.log)}" if b.log.strip() else ""))
            if not b.ok:
                print("    " + b.log.strip().replace("\n", "\n    "))
    for b in failed:
        r.problem(f"kernel {b.kernel} [{b.dtype}] does not compile: {first_error(b.log)}",
                  "a bug of gpu_backprop or of this CuPy/NVRTC: report it with the output of "
                  "`python -m gpu_backprop doctor --verbose`")
    r.line("problems", str(len(r.problems)) if r.problems else "none")
    for line in r.problems:
        print(f"  - {line}")
    return 1 if failed else 0


def _cupy_distributions() -> list[str]:
    """The installed CuPy distributions (``cupy-cuda13x``, ...): two at once break each other."""
    import importlib.metadata as md

    names = {(d.metadata["Name"] or "") for d in md.distributions()}
    return sorted(n for n in names if re.fullmatch(r"cupy(-cuda\w+|-rocm[\w-]+)?", n.lower()))
