"""Optimiser updates over the flat parameter buffer: one NumPy body and one named kernel each.

Weight decay applies to the first ``n_decay`` entries (the weights, not biases).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _cpu
from ._cuda import define_elementwise, elementwise, on_gpu
from .linalg import weight_grad

Array = Any

_DECAY = "T gd = g + (i < n_decay ? wd * p : (T)0);"
define_elementwise("sgd", "T g, T lr, T wd, int64 n_decay", "T p", _DECAY + "p = p - lr * gd;")
define_elementwise("momentum_sgd", "T g, T lr, T mu, T wd, int64 n_decay, bool nesterov", "T p, T v",
                   _DECAY + "v = mu * v + gd; p = p - lr * (nesterov ? gd + mu * v : v);")


def sgd_update(
    p: Array, g: Array, v: Array | None, scratch: Array, *,
    lr: float, momentum: float, weight_decay: float, nesterov: bool, n_decay: int,
    products: Sequence[tuple[int, Array, Array]] = (),
) -> None:
    """One SGD step in place over flat buffers (PyTorch's convention, no dampening).

    ``g' = g + λ·p`` (for the first ``n_decay`` entries: weights, not biases),
    ``v ← μ v + g'``, then ``p ← p − η v`` or, with Nesterov, ``p ← p − η (g' + μ v)``.
    Without momentum (``v is None``): ``p ← p − η g'``. Kernel: ``momentum_sgd`` (``sgd``).

    ``products`` (NumPy only) lists ``(offset, X, dZ)`` for weight matrices whose
    gradient is not in ``g`` yet: there ``g = Xᵀ dZ``, which the update adds where
    it is needed with :func:`.linalg.weight_grad` instead of writing it out first —
    per-sample SGD on a CPU is bound by passes over the weights, and ``x ⊗ dz``
    then costs one BLAS ``ger`` into the velocity. The NumPy body is this sequence
    of ``scal`` and ``axpy``: on SciPy's BLAS when products are given (SciPy's BLAS
    ran them, see :func:`._cpu.defers_weight_grads`), NumPy across the cores otherwise.
    """
    if on_gpu(p):
        if products:
            raise ValueError("sgd_update takes deferred weight gradients on NumPy only; fill flat_grads on CuPy")
        if v is None:
            elementwise("sgd")(g, lr, weight_decay, n_decay, p)
        else:
            elementwise("momentum_sgd")(g, lr, momentum, weight_decay, n_decay, nesterov, p, v)
        return
    k = n_decay if weight_decay else 0
    filled = _filled_ranges(p.shape[0], products)
    blas = bool(products)  # the BLAS that ran the step's products (see _cpu.axpy)

    def add_gradient(target: Array, alpha: float) -> None:
        """``target += alpha · g'``, with ``g' = g + λ p`` on the weights and ``Xᵀ dZ`` where deferred."""
        if k:
            _cpu.axpy(alpha * weight_decay, p[:k], target[:k], scratch[:k], blas)
        for lo, hi in filled:
            _cpu.axpy(alpha, g[lo:hi], target[lo:hi], scratch[lo:hi], blas)
        for off, x, dz in products:
            d, m = x.shape[1], dz.shape[1]
            weight_grad(x, dz, target[off:off + d * m].reshape(d, m), alpha=alpha, beta=1.0)

    if v is None:
        add_gradient(p, -lr)                       # p ← p − η g'
        return
    _cpu.scal(momentum, v, blas)                   # v ← μ v + g'
    add_gradient(v, 1.0)
    if nesterov:                                   # p ← p − η g' − η μ v
        add_gradient(p, -lr)
        _cpu.axpy(-lr * momentum, v, p, scratch, blas)
    else:                                          # p ← p − η v
        _cpu.axpy(-lr, v, p, scratch, blas)


def _filled_ranges(n: int, products: Sequence[tuple[int, Array, Array]]) -> list[tuple[int, int]]:
    """The ranges of ``[0, n)`` that no deferred product covers: there ``g`` holds the gradient."""
    ranges, pos = [], 0
    for off, x, dz in sorted(products, key=lambda t: t[0]):
        if off > pos:
            ranges.append((pos, off))
        pos = off + x.shape[1] * dz.shape[1]
    if pos < n:
        ranges.append((pos, n))
    return ranges


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
