"""CuPy and the CUDA devices: whether CuPy runs here (or why not), which device computes, TF32, NCCL.

This is the only module that imports :mod:`cupy`, once, lazily, the first time
something asks. Where CuPy is missing, broken or finds no device, the reason
is kept as one sentence that says what to do, and asking for CuPy raises
:class:`BackendError` with it. Training code does not come here: it asks
:mod:`gpu_backprop.backend` for an array module.
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType

import numpy as np

__all__ = ["BackendError", "cupy_available", "cupy_module", "cupy_nccl", "cupy_part", "cupy_problem",
           "current_device", "set_tf32", "tf32_enabled", "use_device"]


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


def cupy_problem() -> str | None:
    """Why CuPy cannot run here, in one sentence (None where it can); probes CuPy first."""
    _probe_cupy()
    return _cupy_problem


def current_device() -> int | None:
    """The CUDA device CuPy computes on now, or None where CuPy has not been loaded (never loads it)."""
    return None if _cupy is None else int(_cupy.cuda.Device().id)


# --------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------
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
    return cupy_part("cupy._core._routines_linalg")


def tf32_enabled() -> bool:
    """Whether float32 matrix products use TF32: CuPy's compute type where CuPy runs, else what ``CUPY_TF32`` asks."""
    if _cupy is None:
        return os.environ.get("CUPY_TF32", "0") not in ("", "0")
    linalg = _cupy_linalg()
    return bool(linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_TF32)


def cupy_nccl() -> ModuleType:
    """``cupy.cuda.nccl``, which CuPy imports only when asked (its ``available`` says whether NCCL loaded).

    Raises :class:`BackendError` where CuPy cannot run. CuPy's own warning
    about a missing NCCL library is not repeated: the caller says what to do.
    """
    cupy_module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return cupy_part("cupy.cuda.nccl")
