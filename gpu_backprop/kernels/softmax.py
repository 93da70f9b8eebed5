"""Softmax with cross-entropy: forward, loss and ``dZ = (A − Y) / N`` in one row-wise pass.

No one-hot matrix is built for integer labels; the row max is subtracted before ``exp``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend
from ._cuda import define_raw, on_gpu, raw

Array = Any

define_raw("softmax_xent", r"""
extern "C" __global__
void KERNEL_NAME(const T* z, const long long* labels, const T* targets,
                 T* dz, T* loss_rows, const int n, const int c, const int use_labels,
                 const int want_grad, const T scale)
{
    // one thread per row: row max, exp and sum, then (softmax - target) * scale
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n) return;
    const T* zr = z + (size_t)r * c;
    T* dr = dz + (size_t)r * c;
    T m = zr[0];
    for (int j = 1; j < c; ++j) m = zr[j] > m ? zr[j] : m;
    T s = 0;
    for (int j = 0; j < c; ++j) { T e = exp(zr[j] - m); dr[j] = e; s += e; }
    const T lse = log(s) + m;          // log sum exp z, computed safely
    const T inv = (T)1 / s;
    T loss = 0;
    if (use_labels) {
        const long long t = labels[r];
        loss = lse - zr[t];
        if (want_grad)
            for (int j = 0; j < c; ++j) dr[j] = (dr[j] * inv - (j == t ? (T)1 : (T)0)) * scale;
    } else {
        const T* tr = targets + (size_t)r * c;
        for (int j = 0; j < c; ++j) {
            loss += tr[j] * (lse - zr[j]);  // soft targets: −Σ t log softmax
            if (want_grad) dr[j] = (dr[j] * inv - tr[j]) * scale;
        }
    }
    loss_rows[r] = loss;
}
""")


def softmax_cross_entropy(
    z: Array, labels: Array | None, targets: Array | None, dz: Array | None, loss_rows: Array
) -> Array:
    """Row-wise softmax cross-entropy: fills ``loss_rows`` and (if given) ``dz = (softmax(z) - Y) / N``.

    Give either integer ``labels`` (N,) of any integer dtype — no one-hot
    matrix is built — or ``targets`` (N, C) holding one-hot or soft targets.
    Any layout is taken (on a GPU, copied to the kernel's where it differs). The loss per row is
    ``logsumexp(z) - z[label]``, computed with the row max subtracted. Kernel:
    ``softmax_xent``. Returns ``loss_rows``.
    """
    n, c = z.shape
    scale = 1.0 / n
    if on_gpu(z):
        cp = backend.cupy_module()
        # The kernel reads and writes row-major T arrays and int64 labels through raw pointers: whatever
        # it is given is made so here (no copy, no launch, when it already is; no wait for the device).
        z = cp.ascontiguousarray(z)
        # the pointer the kernel does not read (labels or targets) is NULL: CuPy passes None so
        lab = cp.ascontiguousarray(labels, dtype=cp.int64) if labels is not None else None
        tgt = cp.ascontiguousarray(targets, dtype=z.dtype) if targets is not None else None
        # the scratch row exps need somewhere to go even when no gradient is wanted
        out = dz if dz is not None and _row_major(dz, z.dtype) else cp.empty_like(z)
        rows = loss_rows if _row_major(loss_rows, z.dtype) else cp.empty(n, dtype=z.dtype)
        threads = 128
        raw("softmax_xent", z.dtype)(
            ((n + threads - 1) // threads,), (threads,),
            (z, lab, tgt, out, rows, np.int32(n), np.int32(c), np.int32(labels is not None),
             np.int32(dz is not None), z.dtype.type(scale)),
        )
        if dz is not None and out is not dz:
            dz[...] = out
        if rows is not loss_rows:
            loss_rows[...] = rows
        return loss_rows
    m = z.max(axis=1, keepdims=True)
    e = dz if dz is not None else np.empty_like(z)
    np.subtract(z, m, out=e)
    np.exp(e, out=e)
    s = e.sum(axis=1, keepdims=True)
    lse = np.log(s) + m
    if labels is not None:
        rows = np.arange(n)
        np.subtract(lse[:, 0], z[rows, labels], out=loss_rows)
        if dz is not None:
            np.divide(e, s, out=e)
            e[rows, labels] -= 1
            np.multiply(e, scale, out=e)
    else:
        assert targets is not None, "give labels or targets"
        np.sum(targets * (lse - z), axis=1, out=loss_rows)
        if dz is not None:
            np.divide(e, s, out=e)
            np.subtract(e, targets, out=e)
            np.multiply(e, scale, out=e)
    return loss_rows


def _row_major(a: Array, dtype: Any) -> bool:
    """Whether the kernel may write ``a`` through a plain ``T*``: C-contiguous, of the kernel's element type."""
    return bool(a.flags.c_contiguous) and a.dtype == dtype


def softmax(z: Array) -> Array:
    """Row-wise softmax with the row max subtracted (a new array)."""
    xp = backend.get_array_module(z)
    e = z - z.max(axis=1, keepdims=True)
    xp.exp(e, out=e)
    e /= e.sum(axis=1, keepdims=True)
    return e
