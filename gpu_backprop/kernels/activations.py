"""Activations: ``A = f(Z + b)`` forward and ``dZ = dA ⊙ f'(A)`` backward, with f' taken from the output.

Activations are written so that their derivatives come from their *outputs*
(``relu' = A > 0``, ``sigmoid' = A(1 - A)``, ``tanh' = 1 - A²``), which is
what lets a Dense layer and its activation share one buffer. :data:`FORMULAS`
is the one table of them in C; each kernel is built from it, and the NumPy
bodies below are the reference the kernels are tested against.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _cpu
from ._cuda import define_elementwise, elementwise, on_gpu

Array = Any

#: kind -> (f(x) in C, f'(a) in C from the output a = f(x)); ``T`` is the element type, ``alpha`` LeakyReLU's slope
FORMULAS: dict[str, tuple[str, str]] = {
    "identity": ("x", "(T)1"),
    "relu": ("x > (T)0 ? x : (T)0", "a > (T)0 ? (T)1 : (T)0"),
    "leaky_relu": ("x > (T)0 ? x : (T)alpha * x", "a > (T)0 ? (T)1 : (T)alpha"),
    # 0.5 tanh(x/2) + 0.5 never overflows (exp(-x) does for x < -88 in float32)
    "sigmoid": ("(T)0.5 * tanh((T)0.5 * x) + (T)0.5", "a * ((T)1 - a)"),
    "tanh": ("tanh(x)", "(T)1 - a * a"),
}
ACTIVATIONS = tuple(FORMULAS)


def np_forward(z: np.ndarray, kind: str, alpha: float) -> None:
    """Apply f in place: z <- f(z)."""
    if kind == "relu":
        np.maximum(z, 0, out=z)
    elif kind == "leaky_relu":
        np.multiply(z, np.where(z > 0, 1.0, alpha).astype(z.dtype, copy=False), out=z)
    elif kind == "sigmoid":
        np.multiply(z, 0.5, out=z)
        np.tanh(z, out=z)
        np.multiply(z, 0.5, out=z)
        np.add(z, 0.5, out=z)
    elif kind == "tanh":
        np.tanh(z, out=z)
    elif kind != "identity":
        raise ValueError(f"unknown activation {kind!r}")


def np_grad(a: np.ndarray, kind: str, alpha: float, out: np.ndarray) -> np.ndarray:
    """Multiply ``out`` (holding dA) in place by f'(a), f' written in terms of a = f(z)."""
    if kind == "relu":
        np.multiply(out, a > 0, out=out)
    elif kind == "leaky_relu":
        np.multiply(out, np.where(a > 0, 1.0, alpha).astype(a.dtype, copy=False), out=out)
    elif kind == "sigmoid":
        np.multiply(out, a, out=out)
        np.multiply(out, 1 - a, out=out)
    elif kind == "tanh":
        np.multiply(out, 1 - a * a, out=out)
    elif kind != "identity":
        raise ValueError(f"unknown activation {kind!r}")
    return out

for _kind, (_fwd, _bwd) in FORMULAS.items():  # kernels <kind>_fwd, bias_<kind>_fwd, <kind>_bwd
    define_elementwise(f"{_kind}_fwd", "T alpha", "T x", f"x = {_fwd}")
    define_elementwise(f"bias_{_kind}_fwd", "T b, T alpha", "T x", f"x = x + b; x = {_fwd}")
    define_elementwise(f"{_kind}_bwd", "T a, T alpha", "T d", f"d = d * ({_bwd})")


# --------------------------------------------------------------------------
# Forward: A = f(Z + b), in place
# --------------------------------------------------------------------------
def bias_activation(z: Array, b: Array | None, kind: str, alpha: float = 0.01) -> Array:
    """In place ``z <- f(z + b)`` (bias broadcast over rows); ``b=None`` skips the bias.

    Kernels: ``bias_<kind>_fwd`` and ``<kind>_fwd``.
    """
    if kind not in FORMULAS:
        raise ValueError(f"unknown activation {kind!r}; choose one of {', '.join(ACTIVATIONS)}")
    if on_gpu(z):
        if b is None:
            if kind != "identity":
                elementwise(f"{kind}_fwd")(alpha, z)
        else:
            elementwise(f"bias_{kind}_fwd")(b, alpha, z)
        return z

    def body(rows: slice) -> None:
        zr = z[rows]
        if b is not None:
            np.add(zr, b, out=zr)
        np_forward(zr, kind, alpha)

    _cpu.in_row_blocks(body, z.shape[0], z[:1].nbytes)
    return z


activation_forward = bias_activation


def activation_backward(d: Array, a: Array, kind: str, alpha: float = 0.01) -> Array:
    """In place ``d <- d ⊙ f'(·)``, with f' computed from the output ``a``.

    This is the ``dZ = dA ⊙ f'(Z)`` of backprop. Kernel: ``<kind>_bwd``.
    """
    if kind not in FORMULAS:
        raise ValueError(f"unknown activation {kind!r}; choose one of {', '.join(ACTIVATIONS)}")
    if kind == "identity":
        return d
    if on_gpu(d, a):
        elementwise(f"{kind}_bwd")(a, alpha, d)
        return d
    _cpu.in_row_blocks(lambda rows: np_grad(a[rows], kind, alpha, d[rows]), d.shape[0], d[:1].nbytes)
    return d
