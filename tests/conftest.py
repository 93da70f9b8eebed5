"""Shared fixtures: one test body for NumPy and (where a device answers) CuPy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from gpu_backprop import backend

GPU_REASON = backend.cupy_problem()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if GPU_REASON is None:
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA device: {GPU_REASON}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def backend_name(request: pytest.FixtureRequest) -> str:
    """Runs the test once per backend; the CuPy run is skipped without a device."""
    return request.param


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def logits_to_classify() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """``make(rng, n, c, dtype)``: random logits with tied maxima and NaNs in some rows, and labels that
    half the rows predict and the rest by chance (``c == 1``: a binary classifier's one output)."""

    def make(rng: np.random.Generator, n: int, c: int, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
        z = rng.standard_normal((n, c)).astype(dtype)
        if c > 1:
            tied = rng.choice(n, n // 5, replace=False)
            z[tied, rng.integers(0, c, tied.size)] = z[tied].max(axis=1)  # a second copy of the row's maximum
            for cols in ((0,), (c - 1,), (1, c - 2)):  # a NaN first, last, and two in one row
                z[rng.integers(0, n), list(cols)] = np.nan
        else:
            z[rng.integers(0, n)] = np.nan
        guess = z.argmax(axis=1) if c > 1 else (z[:, 0] > 0).astype(np.int64)
        labels = np.where(rng.random(n) < 0.5, guess, rng.integers(0, max(c, 2), n))
        return z, labels

    return make
