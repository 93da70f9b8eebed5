"""Input validation at the API boundary, shared by the network and the trainer.

Data is checked once, where it lives, before any work: on the host for NumPy
arrays (before they are copied to a GPU), on the device for CuPy arrays (one
wait for the answers). Every problem is one sentence that says what is wrong
and how to fix it — a :class:`TypeError` for the kind of thing given, a
:class:`ValueError` for its shape or values.

Samples are rows: ``X`` is ``(N, D)``, or ``(N, H, W, ...)`` images that are
flattened to ``(N, H·W·...)``. uint8 images are scaled by 1/255 when they
become floats; other data must be float32 or float64. Targets are integer
class labels ``(N,)`` or float targets ``(N, C)`` (one-hot, soft, or
regression values).
"""

from __future__ import annotations

import math
from typing import Any, TypeGuard

import numpy as np

from .backend import Backend, get_array_module, is_cupy_array, to_device

__all__ = ["DTYPES", "as_array", "as_dtype", "as_targets", "check_dtype", "check_int", "check_range",
           "check_same_device", "check_samples", "check_seed", "check_targets", "checked_samples", "checked_targets",
           "is_int", "is_number"]

Array = Any

IMAGE_SCALE = 1.0 / 255.0  #: uint8 images become floats in [0, 1]


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


def as_array(a: Any, backend: Backend, name: str) -> Array:
    """``a`` as a NumPy or CuPy array, where it is; anything else array-like (a list, a tensor) goes to ``backend``."""
    if not (is_cupy_array(a) or isinstance(a, np.ndarray)):
        try:
            a = to_device(a, backend)
        except Exception as exc:  # whatever the object's own conversion raises
            raise TypeError(f"{name} must be an array, got {type(a).__name__} ({exc})") from None
    if a.dtype.kind == "c":
        raise TypeError(f"{name} has the complex dtype {a.dtype}; pass real numbers ({name}.real, or abs({name}))")
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a numeric array, got dtype {a.dtype} from {type(a).__name__}")
    return a


def check_samples(X: Array, input_dim: int, what: str = "X") -> tuple[Array, float]:
    """``X`` as ``(N, D)`` rows (a view where it is) and the scale that makes them floats.

    uint8 images scale by 1/255; float32/float64 features by 1 and must be finite.
    """
    if X.ndim < 2:
        raise ValueError(f"{what} must have one row per sample, (N, D) or images (N, H, W), got shape {X.shape}")
    n = X.shape[0]
    if n == 0:
        raise ValueError(f"{what} is empty (0 samples); pass at least one")
    d = math.prod(X.shape[1:])
    if d != input_dim:
        raise ValueError(f"{what} has {d} features per sample (shape {X.shape}) but the network takes {input_dim}")
    if X.dtype == np.uint8:
        scale = IMAGE_SCALE
    elif X.dtype.kind == "f" and X.dtype.itemsize >= 4:
        scale = 1.0
        if not bool(get_array_module(X).isfinite(X).all()):
            raise ValueError(f"{what} contains NaN or Inf; clean or impute the data first")
    else:
        fix = " (or scale them: X.astype('float32') / 255)" if X.dtype.kind in "iu" else ""
        raise TypeError(f"{what} has dtype {X.dtype}; pass uint8 images or float32/float64 features{fix}")
    return X.reshape(n, d), scale


def checked_samples(X: Any, backend: Backend, input_dim: int, dtype: Any, what: str = "X") -> Array:
    """``X`` checked where it is (:func:`check_samples`), then on ``backend``'s device as ``(N, D)`` rows of ``dtype``.

    uint8 images become floats scaled by 1/255 (a new array); features already so are returned as they are.
    """
    X, scale = check_samples(as_array(X, backend, what), input_dim, what)
    X = as_dtype(to_device(X, backend), backend.xp, dtype, what)
    if scale != 1.0:  # uint8 images: as_dtype made a new float array, scaled where it is
        X *= scale
    return X


def check_targets(y: Array, n: int, outputs: int, what: str = "y", probabilities: bool = False) -> Array:
    """``y`` checked for ``n`` samples and a network with ``outputs`` outputs: labels or float targets.

    Labels are integers in ``[0, outputs)`` (0/1 for one output); targets are
    finite floats ``(n, outputs)``, and with ``probabilities`` each row is
    non-negative and sums to 1 (to 1e-3). Returned where they are, unconverted.
    """
    rows = y.shape[0] if y.ndim else 0
    if rows != n:
        raise ValueError(f"{what} has {rows} rows but there are {n} samples; pass one target per sample")
    if y.ndim == 1:
        if y.dtype.kind not in "iu":
            raise TypeError(f"{what}: labels have dtype {y.dtype}; pass integer class labels (y.astype('int64')) "
                            f"or float targets of shape ({n}, {outputs})")
        limit = outputs if outputs > 1 else 2  # one output: a binary classifier, labels 0 and 1
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= limit:
            raise ValueError(f"{what}: labels must lie in [0, {limit - 1}] for a network with {outputs} outputs, "
                             f"got values from {lo} to {hi}")
        return y
    if y.ndim != 2 or y.shape[1] != outputs:
        raise ValueError(f"{what}: targets must be labels ({n},) or an array ({n}, {outputs}), got shape {y.shape}")
    if y.dtype.kind != "f":
        raise TypeError(f"{what}: targets of shape {y.shape} have dtype {y.dtype}; pass float targets")
    xp = get_array_module(y)
    if not bool(xp.isfinite(y).all()):
        raise ValueError(f"{what}: targets contain NaN or Inf; clean them first")
    if probabilities:
        sums = y.sum(axis=1, dtype=np.float64)
        bad = (xp.abs(sums - 1) > 1e-3) | (y < 0).any(axis=1)
        if bool(bad.any()):
            i = int(bad.argmax())
            raise ValueError(f"{what}: softmax cross-entropy targets are probabilities, each row non-negative and "
                             f"summing to 1, but row {i} sums to {float(sums[i]):.4g} with its smallest entry "
                             f"{float(y[i].min()):.4g}; normalise them (y / y.sum(axis=1, keepdims=True)), "
                             "or use loss='bce' for labels that are not exclusive")
    return y


def as_dtype(a: Array, xp: Any, dtype: Any, what: str = "X") -> Array:
    """``a`` as a contiguous ``dtype`` array of ``xp`` (no copy when it is one), still finite after the cast.

    float64 values beyond float32's range become infinite in float32: that is one sentence, not an Inf
    that surfaces later as a diverged run.
    """
    narrowing = a.dtype.kind == "f" and np.dtype(dtype).itemsize < a.dtype.itemsize
    with np.errstate(over="ignore"):
        out = xp.ascontiguousarray(a, dtype=dtype)
    if narrowing and not bool(xp.isfinite(out).all()):
        raise ValueError(f"{what} holds values too large for {np.dtype(dtype).name} (beyond ±{np.finfo(dtype).max:.3g}); "
                         "scale the data, or use dtype='float64'")
    return out


def as_targets(y: Array, xp: Any, dtype: Any, what: str = "y") -> Array:
    """Targets as a step reads them: integer labels ``(N,)`` as contiguous int64, a target matrix as ``dtype``."""
    return xp.ascontiguousarray(y, dtype=xp.int64) if y.ndim == 1 else as_dtype(y, xp, dtype, what)


def checked_targets(y: Any, backend: Backend, n: int, outputs: int, dtype: Any, what: str = "y",
                    probabilities: bool = False) -> Array:
    """``y`` checked where it is (:func:`check_targets`), then on ``backend``'s device as a step reads it."""
    y = check_targets(as_array(y, backend, what), n, outputs, what, probabilities)
    return as_targets(to_device(y, backend), backend.xp, dtype, what)


DTYPES = ("float32", "float64")  #: the dtypes a network computes in


def check_dtype(dtype: Any) -> np.dtype:
    """A network's dtype: float32 or float64, else a ValueError that says so."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use 'float32' (the default) or 'float64'")
    return dt


def is_int(value: Any) -> TypeGuard[int | np.integer[Any]]:
    """Whether ``value`` is a Python or NumPy integer (a bool is not one)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value: Any) -> TypeGuard[int | float]:
    """Whether ``value`` is a Python int or float, as JSON gives them back (a bool is not one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(name: str, value: Any, lo: int | None = 1, alternative: str = "") -> int:
    """``value`` as an int of at least ``lo`` (any int for None), else a ValueError that names it.

    ``alternative`` ends the sentence's "must be a positive integer", e.g. ``" or 'full'"``.
    """
    if not is_int(value) or (lo is not None and value < lo):
        kind = {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}.get(lo, f"an integer ≥ {lo}")
        raise ValueError(f"{name} must be {kind}{alternative}, got {value!r}")
    return int(value)


def check_seed(name: str, value: Any) -> int:
    """``value`` as a seed: an int in ``[0, 2**64)`` (the random streams hash 64-bit keys), else a ValueError."""
    if not is_int(value) or not 0 <= value < 2**64:
        raise ValueError(f"{name} must be an integer from 0 to 2**64 - 1, got {value!r}")
    return int(value)


def check_range(name: str, value: float, lo: float, hi: float = math.inf, lo_open: bool = False,
                hi_closed: bool = False) -> float:
    """``value`` as a float in ``[lo, hi)`` (``(lo`` with ``lo_open``, ``hi]`` with ``hi_closed``), else a ValueError
    that names it.

    A value that is not a real number (a string, None, a bool) is a TypeError that names it.
    """
    if isinstance(value, (str, bytes, bool, np.bool_)):  # a number of any kind (a 0-d array too), not these
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not (math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v <= hi if hi_closed else v < hi)):
        raise ValueError(f"{name} must be in {'(' if lo_open else '['}{lo}, {hi}{']' if hi_closed else ')'}, "
                         f"got {value!r}")
    return v
