"""Weight initialisers: Glorot/Xavier, He and LeCun, uniform and normal.

Each takes a NumPy ``Generator`` and a weight shape ``(fan_in, fan_out)`` and
returns float64 values on the host; the network casts them and moves them to
its device once, so the same seed gives the same weights on every backend.

=============== ===================== ==========================
name            variance              suits
=============== ===================== ==========================
glorot / xavier 2 / (fan_in+fan_out)  sigmoid, tanh, identity
he              2 / fan_in            relu, leaky_relu
lecun           1 / fan_in            selu, sigmoid (Nielsen's book)
=============== ===================== ==========================
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

__all__ = ["INITIALIZERS", "default_initializer", "initialize"]

Initializer = Callable[[np.random.Generator, tuple[int, int]], np.ndarray]


def _variance(name: str, fan_in: int, fan_out: int) -> float:
    if name in ("glorot", "xavier"):
        return 2.0 / (fan_in + fan_out)
    if name == "he":
        return 2.0 / fan_in
    if name == "lecun":
        return 1.0 / fan_in
    raise ValueError(name)


INITIALIZERS = tuple(
    f"{family}_{dist}" for family in ("glorot", "xavier", "he", "lecun") for dist in ("uniform", "normal")
)


def initialize(name: str, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Draw a ``shape = (fan_in, fan_out)`` weight matrix with initialiser ``name``.

    ``name`` is ``"<family>_<distribution>"``, e.g. ``"he_normal"`` or ``"glorot_uniform"``;
    a uniform draw uses the bound ``sqrt(3 * variance)`` so both have the same variance.
    """
    if name not in INITIALIZERS:
        raise ValueError(f"unknown initializer {name!r}; choose one of {', '.join(INITIALIZERS)}")
    family, dist = name.split("_")
    var = _variance(family, shape[0], shape[1])
    if dist == "normal":
        return rng.normal(0.0, math.sqrt(var), size=shape)
    bound = math.sqrt(3.0 * var)
    return rng.uniform(-bound, bound, size=shape)


def default_initializer(activation: str | None) -> str:
    """He for the ReLU family, Glorot for everything else."""
    return "he_normal" if activation in ("relu", "leaky_relu") else "glorot_uniform"
