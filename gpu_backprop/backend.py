"""Array backends: NumPy everywhere, CuPy where a CUDA device answers.

Everything asks this module for an array module (``xp``) and writes the same
code for both::

    be = get_backend("auto")        # CuPy if it imports and a device answers
    xp = be.xp                      # numpy or cupy
    Z = xp.matmul(X, W)

The choice comes from the ``backend`` argument, else from the environment
variable ``GPU_BACKPROP_BACKEND``, else ``"auto"``. This is the only module
that imports :mod:`cupy`; the device's settings (which GPU, TF32, NCCL) are in
:mod:`gpu_backprop.devices`.
"""

from __future__ import annotations

import importlib
import os
import platform
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["BACKENDS", "Backend", "BackendError", "cupy_available", "cupy_module", "cupy_part", "cupy_problem",
           "current_device", "get_array_module", "get_backend", "is_cupy_array", "to_device", "to_numpy"]

BACKENDS = ("auto", "numpy", "cupy")
ENV_VAR = "GPU_BACKPROP_BACKEND"


class BackendError(RuntimeError):
    """The requested backend cannot be used on this machine."""


# --------------------------------------------------------------------------
# CuPy, imported once, lazily, and never outside this module
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
        _cupy_problem = f"CuPy failed to import ({one_line(exc)}); reinstall it or use backend='numpy'"
        return
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError, driver missing, ...
        _cupy_problem = (
            f"CuPy is installed but no CUDA device answers ({one_line(exc)}); "
            "check the driver with `nvidia-smi` or use backend='numpy'"
        )
        return
    if count < 1:
        _cupy_problem = "CuPy is installed but reports no CUDA device; use backend='numpy'"
        return
    _cupy = cupy


def one_line(exc: BaseException) -> str:
    """``exc`` as ``"Type: first line of its message"``, for one-sentence errors."""
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


def cupy_problem() -> str | None:
    """Why CuPy cannot run here, in one sentence (None where it can); probes CuPy first."""
    _probe_cupy()
    return _cupy_problem


def current_device() -> int | None:
    """The CUDA device CuPy computes on now, or None where CuPy has not been loaded (never loads it)."""
    return None if _cupy is None else int(_cupy.cuda.Device().id)


#: the classes already found to be CuPy arrays: the training step asks about each array several times
_CUPY_ARRAY_TYPES: set[type] = set()


def is_cupy_array(a: Any) -> bool:
    """True when ``a`` is a :class:`cupy.ndarray` (never imports CuPy to find out)."""
    kind = type(a)
    if kind in _CUPY_ARRAY_TYPES:
        return True
    if kind.__module__.startswith("cupy") and hasattr(a, "device"):  # (`device` makes a Device object: asked once)
        _CUPY_ARRAY_TYPES.add(kind)
        return True
    return False


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


_cache: dict[tuple[str, int | None], Backend] = {}  # by name and the CUDA device current when it was made


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
    cached = _cache.get((key, _device(key)))
    if cached is not None:
        return cached
    if key == "numpy":
        be = _numpy_backend("asked for numpy")
    elif key == "cupy":
        be = _cupy_backend("asked for cupy")
    elif cupy_available():
        be = _cupy_backend("auto: CuPy imported and a CUDA device answered")
    else:
        be = _numpy_backend(f"auto: {cupy_problem()}")
    _cache[key, _device(key)] = be  # after the probe: the device it describes
    return be


def _device(key: str) -> int | None:
    """The CUDA device a backend called ``key`` would describe now (None for NumPy, or before CuPy loads)."""
    return None if key == "numpy" else current_device()


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


# moved to gpu_backprop.devices and gpu_backprop.checks (both import this module); old code still finds
# them here (PEP 562)
_MOVED = {"use_device": "devices", "backend_info": "devices", "set_tf32": "devices", "tf32_enabled": "devices",
          "cupy_nccl": "devices", "check_same_device": "checks"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(f"{__package__}.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
