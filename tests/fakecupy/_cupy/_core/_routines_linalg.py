"""``cupy._core._routines_linalg``: the compute type of matrix products (TF32 and friends), as CuPy's."""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

COMPUTE_TYPE_TBD = 0
COMPUTE_TYPE_DEFAULT = 1
COMPUTE_TYPE_PEDANTIC = 2
COMPUTE_TYPE_FP16 = 3
COMPUTE_TYPE_FP32 = 4
COMPUTE_TYPE_FP64 = 5
COMPUTE_TYPE_BF16 = 6
COMPUTE_TYPE_TF32 = 7

compute_types = [COMPUTE_TYPE_TBD] * 4  # bfloat16, float16, float32, float64


def to_compute_type_index(dtype: Any) -> int:
    char = np.dtype(dtype).char
    if char == "e":
        return 1
    if char in "fF":
        return 2
    if char in "dD":
        return 3
    if dtype.name == "bfloat16":  # as CuPy's: a scalar type (not a dtype) fails here with AttributeError
        return 0
    raise TypeError(f"dtype is not supported: {dtype}")


def set_compute_type(dtype: Any, compute_type: int) -> None:
    from ..cuda.device import get_compute_capability

    if compute_type in (COMPUTE_TYPE_TBD, COMPUTE_TYPE_DEFAULT, COMPUTE_TYPE_PEDANTIC, COMPUTE_TYPE_FP16,
                        COMPUTE_TYPE_FP32, COMPUTE_TYPE_FP64):
        compute_types[to_compute_type_index(dtype)] = compute_type
    elif compute_type in (COMPUTE_TYPE_BF16, COMPUTE_TYPE_TF32):
        if int(get_compute_capability()) >= 80:
            compute_types[to_compute_type_index(dtype)] = compute_type
        else:
            warnings.warn("COMPUTE_TYPE_BF16 and COMPUTE_TYPE_TF32 are only available on GPUs with compute "
                          "capability 8.0 or higher. COMPUTE_TYPE_DEFAULT will be used instead.", stacklevel=2)
            compute_types[to_compute_type_index(dtype)] = COMPUTE_TYPE_DEFAULT
    else:
        raise ValueError(f"Unknown compute type: {compute_type}")


def get_compute_type(dtype: Any) -> int:
    index = to_compute_type_index(dtype)
    if compute_types[index] == COMPUTE_TYPE_TBD:
        compute_type = COMPUTE_TYPE_DEFAULT
        if np.dtype(dtype).char in "fF" and int(os.getenv("CUPY_TF32", "0")) > 0:
            compute_type = COMPUTE_TYPE_TF32
        set_compute_type(dtype, compute_type)
    return compute_types[index]
