"""BatchNorm's elementwise halves (the reductions are ``xp.sum`` / ``xp.mean`` in the layer).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._cuda import define_elementwise, elementwise, on_gpu

Array = Any

define_elementwise("bn_fwd", "T x, T mean, T inv_std, T gamma, T beta", "T xhat, T y",
        "xhat = (x - mean) * inv_std; y = gamma * xhat + beta;")
define_elementwise("bn_bwd", "T dy, T xhat, T scale, T dgamma, T dbeta, T inv_n", "T dx",
        "dx = scale * (dy - dbeta * inv_n - xhat * dgamma * inv_n);")


def batchnorm_normalize(
    x: Array, mean: Array, inv_std: Array, gamma: Array, beta: Array, xhat: Array, y: Array
) -> None:
    """``xhat = (x - mean) · inv_std``, ``y = gamma · xhat + beta`` (per feature). Kernel: ``bn_fwd``."""
    if on_gpu(x):
        elementwise("bn_fwd")(x, mean, inv_std, gamma, beta, xhat, y)
        return
    np.subtract(x, mean, out=xhat)
    np.multiply(xhat, inv_std, out=xhat)
    np.multiply(xhat, gamma, out=y)
    np.add(y, beta, out=y)


def batchnorm_backward(
    dy: Array, xhat: Array, scale: Array, dgamma: Array, dbeta: Array, n: int, dx: Array
) -> None:
    """``dx = scale · (dy - dbeta/N - xhat · dgamma/N)`` with ``scale = gamma · inv_std``. Kernel: ``bn_bwd``.

    ``dgamma = Σ_rows dy ⊙ xhat`` and ``dbeta = Σ_rows dy`` are computed first.
    """
    inv_n = 1.0 / n
    if on_gpu(dy):
        elementwise("bn_bwd")(dy, xhat, scale, dgamma, dbeta, inv_n, dx)
        return
    np.multiply(xhat, dgamma * inv_n, out=dx)
    np.subtract(dy, dx, out=dx)
    np.subtract(dx, dbeta * inv_n, out=dx)
    np.multiply(dx, scale, out=dx)
