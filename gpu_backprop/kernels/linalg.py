"""The products of a step and the bias gradient: ``Z = X W``, ``dW = Xᵀ dZ``, ``dX = dZ Wᵀ``, ``db = Σ dZ``."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend
from . import _cpu
from ._cuda import on_gpu

Array = Any


def matmul(a: Array, b: Array, out: Array, alpha: float = 1.0, beta: float = 0.0, batch: int | None = None) -> Array:
    """``out = alpha · a b + beta · out``: the products of a step (``Z = X W``, ``dW = Xᵀ dZ``, ``dX = dZ Wᵀ``).

    ``out`` is ``(N, M)`` and row-major; ``a`` ``(N, K)`` and ``b`` ``(K, M)`` may be transposed
    views; ``batch`` is the step's batch size (default ``N``; for ``dW`` it is the inner size).
    CuPy: cuBLAS through ``cupy.matmul``. NumPy, batches of 2 to :data:`._cpu.SCIPY_MAX_BATCH`
    rows: SciPy's BLAS ``gemm`` when SciPy is installed, so that SGD can take ``dW`` straight
    into its update (``beta = 1`` accumulates into ``out`` with no pass of its own) and the
    whole step runs on one BLAS — NumPy and SciPy each bring an OpenBLAS, and one's idle
    workers spin (about 0.1 s after each call) against the other's. Otherwise ``numpy.matmul``.
    """
    call = None if on_gpu(out) else _cpu.gemm_call(a, b, out, batch)
    if call is not None:
        gemm, (A, ta), (B, tb) = call
        c = gemm(alpha, A, B, beta=beta, c=out.T, trans_a=ta, trans_b=tb, overwrite_c=1)
        if not np.may_share_memory(c, out):  # SciPy made a copy after all: put the result where it belongs
            out[...] = c.T
        return out
    xp = backend.get_array_module(out)
    if alpha == 1.0 and beta == 0.0:
        return xp.matmul(a, b, out=out)
    prod = xp.matmul(a, b)
    if beta != 1.0:
        out *= beta
    prod *= alpha
    out += prod
    return out


def weight_grad(x: Array, dz: Array, out: Array, alpha: float = 1.0, beta: float = 0.0) -> Array:
    """``out = alpha · Xᵀ dZ + beta · out``: the weight gradient ``dW`` of a Dense layer.

        X: (N, D)   dZ: (N, M)   ->   Xᵀ dZ: (D, M)

    For one sample ``Xᵀ dZ`` is the outer product ``x ⊗ dz``, a rank-1 matrix:
    NumPy forms it with one multiply, or adds it in place with BLAS ``ger``
    (SciPy), never as a product with an inner size of 1. Optimisers call this
    with ``beta = 1`` to add ``dW`` straight into their state (see
    :func:`.updates.sgd_update`).
    """
    n = x.shape[0]
    if on_gpu(out) or n > 1:
        return matmul(x.T, dz, out, alpha, beta, batch=n)
    if beta == 0.0:
        np.multiply(x.T, dz, out=out)
        if alpha != 1.0:
            out *= alpha
        return out
    ger = _cpu.blas_function("ger", out)
    if ger is not None and beta == 1.0 and out.flags.c_contiguous:
        ger(alpha, dz[0], x[0], a=out.T, overwrite_a=True)  # column-major: outᵀ += alpha · dz xᵀ
        return out
    if beta != 1.0:
        out *= beta
    out += alpha * (x.T * dz)
    return out


def column_sum(d: Array, out: Array) -> Array:
    """``out = Σ_rows d``: the bias gradient ``db`` of a Dense layer, ``(N, M) -> (M,)``.

    NumPy sums a large batch in one part per core, then adds the parts in row
    order, so the rounding never depends on which thread finished first.
    """
    if on_gpu(d) or d.nbytes < 4 * _cpu.PARALLEL_MIN:
        backend.get_array_module(d).sum(d, axis=0, out=out)
        return out
    parts = _cpu.in_parallel(lambda rows: d[rows].sum(axis=0), d.shape[0], min_n=0)
    np.sum(parts, axis=0, out=out)
    return out

