"""Shared fixtures: one test body for NumPy and (where a device answers) CuPy."""

from __future__ import annotations

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
