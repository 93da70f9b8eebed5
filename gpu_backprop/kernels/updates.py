"""Optimiser updates over the flat parameter buffer: one NumPy body and one named kernel each.

Weight decay applies to the first ``n_decay`` entries (the weights, not biases).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _cpu
from ._cuda import define_elementwise, elementwise, on_gpu

Array = Any

_DECAY = "T gd = g + (i < n_decay ? wd * p : (T)0);"
define_elementwise("sgd", "T g, T lr, T wd, int64 n_decay", "T p", _DECAY + "p = p - lr * gd;")
define_elementwise("momentum_sgd", "T g, T lr, T mu, T wd, int64 n_decay, bool nesterov", "T p, T v",
        _DECAY + "v = mu * v + gd; p = p - lr * (nesterov ? gd + mu * v : v);")


def sgd_update(
    p: Array, g: Array, v: Array | None, scratch: Array, *,
    lr: float, momentum: float, weight_decay: float, nesterov: bool, n_decay: int,
) -> None:
    """One SGD step in place over flat buffers (PyTorch's convention, no dampening).

    ``g' = g + wd·p`` (for the first ``n_decay`` entries: weights, not biases),
    ``v <- μ v + g'``, then ``p <- p - lr·v`` or, with Nesterov, ``p <- p - lr (g' + μ v)``.
    Without momentum (``v is None``): ``p <- p - lr g'``. Kernel: ``momentum_sgd``.
    """
    if on_gpu(p):
        if v is None:
            elementwise("sgd")(g, lr, weight_decay, n_decay, p)
        else:
            elementwise("momentum_sgd")(g, lr, momentum, weight_decay, n_decay, nesterov, p, v)
        return
    def body(sl: slice) -> None:
        pp, gg, ss = p[sl], g[sl], scratch[sl]
        gd = gg
        lo, hi, _ = sl.indices(p.shape[0])
        k = min(max(n_decay - lo, 0), hi - lo)  # how many entries of this slice take weight decay
        if weight_decay and k:
            gd = ss
            np.copyto(gd, gg)
            gd[:k] += weight_decay * pp[:k]
        if v is None:
            _subtract_scaled(pp, gd, lr, ss)
            return
        vv = v[sl]
        np.multiply(vv, momentum, out=vv)
        np.add(vv, gd, out=vv)
        if nesterov:
            _subtract_scaled(pp, gd, lr, ss)
            _subtract_scaled(pp, vv, lr * momentum, ss)
        else:
            _subtract_scaled(pp, vv, lr, ss)

    _cpu.in_parallel(body, p.shape[0])


def _subtract_scaled(p: np.ndarray, x: np.ndarray, alpha: float, scratch: np.ndarray) -> None:
    """``p -= alpha * x`` through ``scratch`` (which may be ``x`` itself)."""
    np.multiply(x, alpha, out=scratch)
    np.subtract(p, scratch, out=p)


define_elementwise(
    "adam",
    "T g, T lr, T b1, T b2, T eps, T wd, bool decoupled, T bc1, T bc2, int64 n_decay",
    "T p, T m, T v",
    "T wdi = i < n_decay ? wd : (T)0;"
    "T gd = decoupled ? g : g + wdi * p;"
    "if (decoupled) p = p * ((T)1 - lr * wdi);"
    "m = b1 * m + ((T)1 - b1) * gd;"
    "v = b2 * v + ((T)1 - b2) * gd * gd;"
    "p = p - lr * (m / bc1) / (sqrt(v / bc2) + eps);",
)


def adam_update(
    p: Array, g: Array, m: Array, v: Array, scratch: Array, *,
    lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
    decoupled: bool, step: int, n_decay: int,
) -> None:
    """One Adam (or, with ``decoupled=True``, AdamW) step in place over flat buffers.

    Adam: ``g' = g + wd·p``; AdamW: ``p <- p (1 - lr·wd)`` before the step.
    ``m <- β1 m + (1-β1) g'``, ``v <- β2 v + (1-β2) g'²``,
    ``p <- p - lr · m̂ / (√v̂ + ε)`` with the bias corrections ``m̂ = m/(1-β1ᵗ)``, ``v̂ = v/(1-β2ᵗ)``.
    Kernel: ``adam``.
    """
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    if on_gpu(p):
        elementwise("adam")(g, lr, beta1, beta2, eps, weight_decay, decoupled, bc1, bc2, n_decay, p, m, v)
        return
    def body(sl: slice) -> None:
        pp, gg, mm, vv, ss = p[sl], g[sl], m[sl], v[sl], scratch[sl]
        lo, hi, _ = sl.indices(p.shape[0])
        k = min(max(n_decay - lo, 0), hi - lo)
        gd = gg
        if weight_decay and k:
            if decoupled:
                pp[:k] *= 1.0 - lr * weight_decay
            else:
                gd = ss
                np.copyto(gd, gg)
                gd[:k] += weight_decay * pp[:k]
        mm *= beta1
        mm += (1.0 - beta1) * gd
        vv *= beta2
        vv += (1.0 - beta2) * np.square(gd)
        denom = np.sqrt(vv / bc2)
        denom += eps
        pp -= (lr / bc1) * mm / denom

    _cpu.in_parallel(body, p.shape[0])
