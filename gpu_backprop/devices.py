"""Device settings: which CUDA device computes, TF32 for float32 products, NCCL, and what the backend chose.

The backend (:mod:`gpu_backprop.backend`) chooses the array module and is the
only module that imports CuPy; this module changes how CuPy computes and says
what was chosen, asking the backend for CuPy (:func:`~gpu_backprop.backend.cupy_module`,
which needs a device) and for CuPy's own modules (:func:`~gpu_backprop.backend.cupy_part`).
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType

import numpy as np

from .backend import Backend, BackendError, cupy_module, cupy_part, current_device, get_backend
from .checks import is_int

__all__ = ["backend_info", "cupy_nccl", "set_tf32", "tf32_enabled", "use_device"]


def use_device(n: int) -> None:
    """Make CUDA device ``n`` the one CuPy computes on (as ``cupy.cuda.Device(n).use()``), for what follows.

    The backends made afterwards describe it (``"GPU n: ..."``); one that
    cannot be used is a :class:`BackendError` with one sentence.
    """
    if not is_int(n) or n < 0:
        raise BackendError(f"a CUDA device is a number 0, 1, ...; got {n!r}")
    cp = cupy_module()  # a BackendError that says why CuPy cannot run here
    count = int(cp.cuda.runtime.getDeviceCount())
    if n >= count:
        have = f"{count} (device 0)" if count == 1 else f"{count} (devices 0 to {count - 1})"
        raise BackendError(f"there is no CUDA device {n}: this machine has {have}; pass a device that exists")
    cp.cuda.Device(int(n)).use()


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
    if current_device() is None:  # CuPy not loaded (or no device)
        return bool(enabled)
    linalg = _cupy_linalg()
    linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32 if enabled else linalg.COMPUTE_TYPE_DEFAULT)
    return tf32_enabled()


def _cupy_linalg() -> ModuleType:
    """``cupy._core._routines_linalg``: where CuPy keeps the compute type of its matrix products."""
    return cupy_part("cupy._core._routines_linalg")


def tf32_enabled() -> bool:
    """Whether float32 matrix products use TF32: CuPy's compute type where CuPy runs, else what ``CUPY_TF32`` asks."""
    if current_device() is None:  # CuPy not loaded (or no device)
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
