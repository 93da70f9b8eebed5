"""Dropout's mask, drawn from the counter-based hash of :mod:`.random`: the same bits on NumPy and CuPy."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._cuda import define_elementwise, elementwise, on_gpu
from .random import HASH_C, hash_numpy, mix_key

Array = Any

define_elementwise("dropout_fwd", "uint64 key, uint32 threshold, T scale", "T x, T mask",
        HASH_C + "mask = h >= threshold ? scale : (T)0; x = x * mask;")


def dropout_forward(x: Array, p: float, seed: int, counter: int, mask: Array) -> Array:
    """Inverted dropout in place: ``x <- x ⊙ mask`` with ``mask = [u ≥ p] / (1 - p)``.

    ``mask`` (same shape as x) is filled for the backward pass. Kernel: ``dropout_fwd``.
    """
    keep_scale = 1.0 / (1.0 - p)
    threshold = min(int(p * 2.0**32), 2**32 - 1)
    key = mix_key(seed, counter)
    if on_gpu(x):
        elementwise("dropout_fwd")(np.uint64(key), np.uint32(threshold), keep_scale, x, mask)
        return x
    h = hash_numpy(x.size, key).reshape(x.shape)
    np.multiply(h >= np.uint32(threshold), keep_scale, out=mask)
    np.multiply(x, mask, out=x)
    return x
