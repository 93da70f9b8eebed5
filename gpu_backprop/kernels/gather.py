"""Batches: gather rows of the device-resident data set and scale them to floats, in one kernel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import backend
from ._cuda import define_elementwise, elementwise, on_gpu

Array = Any

define_elementwise("gather_scale", "raw S src, raw int64 rows, int64 d, T scale", "T out",
        "out = (T)src[rows[i / d] * d + i % d] * scale;")


def gather_scale(src: Array, rows: Array, scale: float, out: Array, staging: Array | None = None) -> Array:
    """``out = src[rows] * scale`` as floats: a batch from the data set kept on the device (uint8).

    ``src`` is ``(N, D)``, ``rows`` integers ``(B,)``, ``out`` float ``(B, D)``.
    ``staging`` (same dtype as src, ``(B, D)``) avoids an allocation on NumPy.
    Kernel: ``gather_scale`` (one launch for the gather, the cast and the scale).
    """
    if on_gpu(src):
        # `raw int64 rows`: CuPy refuses other integer dtypes (a raw array may be strided)
        rows = backend.cupy_module().asarray(rows, dtype=np.int64)
        elementwise("gather_scale")(src, rows, src.shape[1], scale, out)
        return out
    if src.dtype == out.dtype:
        np.take(src, rows, axis=0, out=out)
    else:
        if staging is None:
            staging = np.empty(out.shape, dtype=src.dtype)
        np.take(src, rows, axis=0, out=staging)
        out[...] = staging
    if scale != 1.0:
        np.multiply(out, scale, out=out)
    return out
