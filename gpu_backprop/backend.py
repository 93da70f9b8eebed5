"""Array backends: NumPy everywhere, CuPy where a CUDA device answers.

This is the only module that imports :mod:`cupy`. Everything else asks it for
an array module (``xp``) and writes the same code for both::

    be = get_backend("auto")        # CuPy if it imports and a device answers
    xp = be.xp                      # numpy or cupy
    Z = xp.matmul(X, W)

The choice comes from the ``backend`` argument, else from the environment
variable ``GPU_BACKPROP_BACKEND``, else ``"auto"``.
"""

from __future__ import annotations

import importlib
import os
import platform
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendError",
    "backend_info",
    "check_same_device",
    "cupy_available",
    "cupy_nccl",
    "cupy_part",
    "get_array_module",
    "get_backend",
    "is_cupy_array",
    "set_tf32",
    "tf32_enabled",
    "to_device",
    "to_numpy",
    "use_device",
]

BACKENDS = ("auto", "numpy", "cupy")
ENV_VAR = "GPU_BACKPROP_BACKEND"


class BackendError(RuntimeError):
    """The requested backend cannot be used on this machine."""


# --------------------------------------------------------------------------
# CuPy, imported once, lazily, and never outside this module.
# --------------------------------------------------------------------------
_cupy: ModuleType | None = None
_cupy_problem: str | None = None
_cupy_probed = False


def _probe_cupy() -> None:
    """Import CuPy and ask for a device; remember the answer or the reason."""
    global _cupy, _cupy_problem, _cupy_probed
    if _cupy_probed:
        return
    _cupy_probed = True
    try:
        import cupy  # noqa: PLC0415 - the one place cupy is imported
    except ImportError:
        _cupy_problem = (
            "CuPy is not installed; install it with "
            "`pip install 'gpu_backprop[cuda12]'` (or [cuda13]) on a CUDA machine, "
            "or use backend='numpy'"
        )
        return
    except Exception as exc:  # a broken install raises all sorts of things
        _cupy_problem = f"CuPy failed to import ({type(exc).__name__}: {exc}); reinstall it or use backend='numpy'"
        return
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError, driver missing, ...
        _cupy_problem = (
            f"CuPy is installed but no CUDA device answers ({_one_line(exc)}); "
            "check the driver with `nvidia-smi` or use backend='numpy'"
        )
        return
    if count < 1:
        _cupy_problem = "CuPy is installed but reports no CUDA device; use backend='numpy'"
        return
    _cupy = cupy


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def cupy_available() -> bool:
    """True when CuPy imports and at least one CUDA device answers."""
    _probe_cupy()
    return _cupy is not None


def cupy_part(name: str = "cupy") -> ModuleType:
    """CuPy, or one of its modules (``"cupy.cuda.compiler"``, ``"cupy_backends.cuda.libs.nvrtc"``), imported
    whether or not a device answers: for tools that inspect CuPy itself, such as ``gpu-backprop doctor``.

    Raises what the import raises (ImportError when CuPy is not installed). Training asks
    :func:`cupy_module` instead, which also needs a device.
    """
    if name.split(".")[0] not in ("cupy", "cupy_backends"):
        raise ValueError(f"cupy_part imports CuPy's own modules, not {name!r}")
    return importlib.import_module(name)


def cupy_module() -> ModuleType:
    """The :mod:`cupy` module, or a :class:`BackendError` that says why not."""
    _probe_cupy()
    if _cupy is None:
        raise BackendError(_cupy_problem or "CuPy is unavailable")
    return _cupy


def cupy_nccl() -> ModuleType:
    """``cupy.cuda.nccl``, which CuPy imports only when asked (its ``available`` says whether NCCL loaded).

    Raises :class:`BackendError` where CuPy cannot run. CuPy's own warning
    about a missing NCCL library is not repeated: the caller says what to do.
    """
    cupy_module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from cupy.cuda import nccl  # the backend is where cupy is imported

    return nccl


def is_cupy_array(a: Any) -> bool:
    """True when ``a`` is a :class:`cupy.ndarray` (never imports CuPy to find out)."""
    return type(a).__module__.startswith("cupy") and hasattr(a, "device")


# --------------------------------------------------------------------------
# The backend object
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Backend:
    """One array module and the device it computes on.

    Attributes
    ----------
    name : ``"numpy"`` or ``"cupy"``.
    xp : the array module itself.
    device : a human description of the device, e.g. ``"NVIDIA H100 80GB HBM3"``.
    reason : why this backend was chosen (useful when ``"auto"`` picked it).
    """

    name: str
    xp: ModuleType
    device: str
    reason: str

    @property
    def is_gpu(self) -> bool:
        return self.name == "cupy"

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        """Put ``a`` on this backend's device (no copy when it is already there)."""
        return to_device(a, self, dtype=dtype)

    def free_cached_memory(self) -> None:
        """Give the memory pool's cached blocks back to the device (a no-op on NumPy)."""
        if self.name == "cupy":
            self.xp.get_default_memory_pool().free_all_blocks()

    def synchronize(self) -> None:
        """Wait for all queued device work (a no-op on NumPy)."""
        if self.name == "cupy":
            self.xp.cuda.get_current_stream().synchronize()

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, device={self.device!r})"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _numpy_backend(reason: str) -> Backend:
    return Backend("numpy", np, f"CPU: {_cpu_name()} ({os.cpu_count()} cores)", reason)


def _cupy_backend(reason: str) -> Backend:
    cp = cupy_module()
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    return Backend("cupy", cp, f"GPU {dev.id}: {name}", reason)


_cache: dict[str, Backend] = {}


def get_backend(name: str | Backend | None = None) -> Backend:
    """Resolve ``"auto"``, ``"numpy"`` or ``"cupy"`` to a :class:`Backend`.

    ``None`` reads ``GPU_BACKPROP_BACKEND`` and falls back to ``"auto"``.
    ``"auto"`` picks CuPy when it imports and a device answers, else NumPy.
    Asking for ``"cupy"`` where it cannot run raises :class:`BackendError`
    with one sentence that says why.
    """
    if isinstance(name, Backend):
        return name
    source = "argument"
    if name is None:
        name, source = os.environ.get(ENV_VAR, "auto"), f"${ENV_VAR}"
    key = str(name).strip().lower()
    if key not in BACKENDS:
        raise ValueError(f"unknown backend {name!r} (from {source}); choose one of {', '.join(BACKENDS)}")
    if key in _cache:
        return _cache[key]
    if key == "numpy":
        be = _numpy_backend("asked for numpy")
    elif key == "cupy":
        be = _cupy_backend("asked for cupy")
    elif cupy_available():
        be = _cupy_backend("auto: CuPy imported and a CUDA device answered")
    else:
        be = _numpy_backend(f"auto: {_cupy_problem}")
    _cache[key] = be
    return be


def use_device(n: int) -> None:
    """Make CUDA device ``n`` the one CuPy computes on (as ``cupy.cuda.Device(n).use()``), for what follows.

    The backends made afterwards describe it (``"GPU n: ..."``); one that
    cannot be used is a :class:`BackendError` with one sentence.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise BackendError(f"a CUDA device is a number 0, 1, ...; got {n!r}")
    cp = cupy_module()  # a BackendError that says why CuPy cannot run here
    count = int(cp.cuda.runtime.getDeviceCount())
    if n >= count:
        have = f"{count} (device 0)" if count == 1 else f"{count} (devices 0 to {count - 1})"
        raise BackendError(f"there is no CUDA device {n}: this machine has {have}; pass a device that exists")
    cp.cuda.Device(int(n)).use()
    _cache.clear()  # a backend made before describes the device it was made on


def backend_info(name: str | Backend | None = None) -> dict[str, str]:
    """What :func:`get_backend` chooses here and why, as a small dict."""
    be = get_backend(name)
    info = {"backend": be.name, "device": be.device, "reason": be.reason, "numpy": np.__version__}
    if be.name == "cupy":
        cp = be.xp
        info["cupy"] = cp.__version__
        info["cuda_runtime"] = str(cp.cuda.runtime.runtimeGetVersion())
        info["cuda_driver"] = str(cp.cuda.runtime.driverGetVersion())
        info["tf32"] = str(tf32_enabled())
    return info


def set_tf32(enabled: bool) -> bool:
    """Let float32 matrix products run on TF32 tensor cores (CuPy, Ampere and newer GPUs); returns whether they now do.

    TF32 keeps float32 storage and range but rounds the products' inputs to a
    10-bit mantissa: about 3e-4 relative error per product instead of 1e-7.
    It applies from the next matrix product on; NumPy is not affected. Where
    CuPy runs, this sets CuPy's compute type for float32 and reads it back (a
    GPU older than Ampere keeps the default, with CuPy's warning, and this
    returns False); elsewhere it sets ``CUPY_TF32``, which a CuPy loaded later
    reads at its first float32 product, and returns ``enabled``.
    """
    os.environ["CUPY_TF32"] = "1" if enabled else "0"
    if _cupy is None:
        return bool(enabled)
    linalg = _cupy_linalg()
    linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32 if enabled else linalg.COMPUTE_TYPE_DEFAULT)
    return tf32_enabled()


def _cupy_linalg() -> ModuleType:
    """``cupy._core._routines_linalg``: where CuPy keeps the compute type of its matrix products."""
    from cupy._core import _routines_linalg  # the backend is where cupy is imported

    return _routines_linalg


def tf32_enabled() -> bool:
    """Whether float32 matrix products use TF32: CuPy's compute type where CuPy runs, else what ``CUPY_TF32`` asks."""
    if _cupy is None:
        return os.environ.get("CUPY_TF32", "0") not in ("", "0")
    linalg = _cupy_linalg()
    return bool(linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_TF32)


# --------------------------------------------------------------------------
# Moving arrays and telling where they live
# --------------------------------------------------------------------------
def get_array_module(*arrays: Any) -> ModuleType:
    """``cupy`` if any argument is a CuPy array, else ``numpy``.

    Compatible with :func:`cupy.get_array_module`.
    """
    for a in arrays:
        if is_cupy_array(a):
            return cupy_module()
    return np


def _where(a: Any) -> str:
    if is_cupy_array(a):
        return f"a CuPy array on GPU {a.device.id}"
    if isinstance(a, np.ndarray):
        return "a NumPy array (CPU)"
    return f"a {type(a).__module__}.{type(a).__name__}"


def check_same_device(backend: Backend, **arrays: Any) -> None:
    """Raise :class:`TypeError` naming each argument that lives elsewhere.

    ``arrays`` maps argument names to values; ``None`` values are ignored.
    """
    want_gpu = backend.name == "cupy"
    wrong = [(k, a) for k, a in arrays.items() if a is not None and is_cupy_array(a) != want_gpu]
    if wrong:
        where = ", ".join(f"{k} is {_where(a)}" for k, a in wrong)
        fix = "gb.to_device(arr, net.backend)" if want_gpu else "gb.to_numpy(arr)"
        raise TypeError(
            f"mixed devices: this network runs on {backend.name} but {where}; move it with {fix}"
        )


_DLPACK_CPU, _DLPACK_CUDA = 1, 2


def to_device(a: Any, backend: str | Backend | None = None, dtype: Any = None) -> Any:
    """Move ``a`` onto ``backend``'s device, without a copy where it is already there.

    ``a`` may be a NumPy or CuPy array, a Python sequence, or any object that
    speaks DLPack (a PyTorch or JAX tensor): a CUDA tensor handed to the CuPy
    backend, or a CPU tensor handed to the NumPy backend, is shared, not copied.
    """
    be = get_backend(backend)
    xp = be.xp
    if hasattr(a, "__dlpack__") and not isinstance(a, np.ndarray) and not is_cupy_array(a):
        a = _from_dlpack(a, be)
    if be.name == "cupy":
        out = xp.asarray(a, dtype=dtype)
    else:
        if is_cupy_array(a):
            a = a.get()
        out = np.asarray(a, dtype=dtype)
    return out


def _from_dlpack(a: Any, be: Backend) -> Any:
    """``a``, an object that speaks DLPack, as an array of ``be`` (shared where it is on the right device)."""
    dev_type = a.__dlpack_device__()[0] if hasattr(a, "__dlpack_device__") else _DLPACK_CPU
    try:
        if be.name == "cupy" and dev_type == _DLPACK_CUDA:
            return be.xp.from_dlpack(a)
        if dev_type == _DLPACK_CPU:
            return np.from_dlpack(a)
        return cupy_module().from_dlpack(a).get()  # a CUDA tensor going to the CPU: CuPy reads it, we copy it
    except BufferError as exc:  # PyTorch will not share a tensor that requires gradients
        raise TypeError(f"the {type(a).__module__}.{type(a).__name__} refused to be shared ({exc}); pass "
                        "tensor.detach() for a tensor that requires gradients") from None


def to_numpy(a: Any) -> np.ndarray:
    """Copy a CuPy array to the host; NumPy arrays and scalars pass through."""
    if is_cupy_array(a):
        return a.get()
    if hasattr(a, "__dlpack__") and not isinstance(a, np.ndarray):
        return to_device(a, "numpy")
    return np.asarray(a)
