"""Accuracy: the rows whose prediction is their label, counted into a device accumulator in one kernel.

A prediction is the first largest output of a row, as ``argmax`` takes it (a NaN
counts as the largest); a network with one output is a binary classifier, whose
prediction is 1 where the output exceeds a threshold (0 for logits, ½ for outputs
fitted to 0/1 targets: the loss's ``threshold``). Counts are integers, so the
order in which rows are added cannot change the result.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend
from ._cuda import define_raw, on_gpu, raw

Array = Any

define_raw("count_correct", r"""
extern "C" __global__
void KERNEL_NAME(const T* out, const long long* labels, unsigned long long* correct, const int n, const int c,
                 const T threshold)
{
    // one thread per row: its prediction against its label; a match adds one to *correct
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n) return;
    const T* o = out + (size_t)r * c;
    bool hit;
    if (c == 1) {
        hit = (o[0] > threshold) == (labels[r] == 1);
    } else {
        int best = 0;  // the first largest; the first NaN once one is met
        for (int j = 1; j < c && o[best] == o[best]; ++j)
            if (o[j] > o[best] || o[j] != o[j]) best = j;
        hit = best == labels[r];
    }
    if (hit) atomicAdd(correct, 1ULL);
}
""")


def count_correct(out: Array, labels: Array, into: Array, threshold: float = 0.0) -> Array:
    """Add to ``into`` the rows of ``out`` ``(N, C)`` whose prediction is their integer label.

    With one output (``C == 1``) the prediction is 1 where the output exceeds ``threshold``.

    ``into`` is a 0-d int64 array on the same device, added to in place (no host
    synchronisation; on a GPU no allocation where ``labels`` are contiguous int64, as
    the trainer's are). Kernel: ``count_correct`` (one launch for the argmax, the
    comparison and the sum). Returns ``into``.
    """
    gpu = on_gpu(out)
    if into.shape != () or into.dtype != np.int64 or on_gpu(into) != gpu:  # the kernel adds 8 bytes there
        raise TypeError(f"count_correct adds into a 0-d int64 array on the outputs' device, got shape {into.shape} "
                        f"of {into.dtype} on the {'GPU' if on_gpu(into) else 'CPU'}")
    n, c = out.shape
    if n == 0:
        return into
    if gpu:
        cp = backend.cupy_module()
        out = cp.ascontiguousarray(out)
        labels = cp.ascontiguousarray(labels, dtype=cp.int64)
        threads = 128
        raw("count_correct", out.dtype)(((n + threads - 1) // threads,), (threads,),
                                        (out, labels, into, np.int32(n), np.int32(c), out.dtype.type(threshold)))
        return into
    into += np.count_nonzero(predicted(out, threshold) == labels)
    return into


def predicted(out: Array, threshold: float = 0.0) -> Array:
    """The class each row of ``out`` ``(N, C)`` predicts: the first largest output, or for one output 1 where it
    exceeds ``threshold`` (as a bool). The NumPy body of ``count_correct``'s prediction; ``predict_classes`` too."""
    return out[:, 0] > threshold if out.shape[1] == 1 else out.argmax(axis=1)
