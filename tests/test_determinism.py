"""The same seed gives the same bits, however the clock, the threads or the machine's load fall.

What used to break it: the trainer's checks ran on a timer (the progress bar's refresh) and each
folded SGD's lazy momentum scale into the velocity, so the rounding depended on when they fell;
the loss curve's points fell on the timer too; and ``kernels.column_sum`` added the per-thread
partial sums in the order the threads finished. Each test below forces one of these (a fake clock,
a refresh at every step, a pool that finishes its slices last-first, busy processes on the cores)
and compares the final weights bit for bit.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

import gpu_backprop as gb
from gpu_backprop import guard, history, kernels, trainer
from gpu_backprop.kernels import _cpu

pytest.importorskip("scipy.linalg")  # the fused BLAS path of SGD


def _data(n: int, d: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, d), dtype=np.uint8), rng.integers(0, classes, n)


def _train(sizes: list[int], X: np.ndarray, y: np.ndarray, batch: int | str, epochs: int = 1,
           **kwargs: Any) -> tuple[np.ndarray, list[tuple[int, float]]]:
    net = gb.MLP(sizes, backend="numpy", seed=3)
    opt = gb.SGD(net, lr=0.05, momentum=0.9)
    saved = history.REFRESH_SECONDS
    history.REFRESH_SECONDS = kwargs.pop("refresh_seconds", saved)  # how often the progress bar reads the loss
    try:
        h = gb.fit(net, opt, X, y, epochs=epochs, batch_size=batch, seed=5, **kwargs)
    finally:
        history.REFRESH_SECONDS = saved
    assert h.stopped_reason is gb.StopReason.COMPLETED
    return net.flat_params.copy(), h.steps


class _OrderedPool:
    """A stand-in thread pool whose slices finish first-first, or last-first (as a loaded machine may
    order them); like ``Executor.map``, it returns the results in the order of the slices."""

    def __init__(self, reverse: bool) -> None:
        self.reverse = reverse

    def map(self, fn: Any, items: Any) -> Any:
        items = list(items)
        out: list[Any] = [None] * len(items)
        for i in (reversed if self.reverse else iter)(range(len(items))):
            out[i] = fn(items[i])
        return iter(out)


class _JumpyClock:
    """``time.perf_counter`` that leaps a second now and then: the timer fires at odd steps."""

    def __init__(self) -> None:
        self.t, self.calls = 0.0, 0

    def perf_counter(self) -> float:
        self.calls += 1
        self.t += 1.0 if self.calls % 7 in (2, 3) else 1e-4
        return self.t


def test_the_refresh_timer_changes_no_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard, "CHECK_SAMPLES", 64)  # checks (and snapshots) mid-epoch too
    X, y = _data(400, 20, 5)
    sizes = [20, 32, 32, 5]
    ref, ref_steps = _train(sizes, X, y, 8, epochs=2, progress=False, refresh_seconds=1e9)
    for kwargs in ({"progress": True, "refresh_seconds": 0.0}, {"progress": True, "refresh_seconds": 1e9},
                   {"progress": False, "refresh_seconds": 0.0}):
        got, steps = _train(sizes, X, y, 8, epochs=2, **kwargs)
        np.testing.assert_array_equal(got, ref, err_msg=str(kwargs))
        assert steps == ref_steps, kwargs
    clock = _JumpyClock()  # the progress bar's clock, and the epochs' too
    monkeypatch.setattr(history, "time", clock)
    monkeypatch.setattr(trainer, "time", clock)
    for progress in (True, False):
        got, steps = _train(sizes, X, y, 8, epochs=2, progress=progress, refresh_seconds=0.5)
        np.testing.assert_array_equal(got, ref)
        assert steps == ref_steps
    # the loss curve's points fall every check_steps steps and at the end of each epoch
    every = guard.check_steps(8, 1)
    assert every == 8
    assert [s for s, _ in ref_steps] == [e * 50 + k for e in (0, 1) for k in [*range(every, 50, every), 50]]


def test_column_sum_does_not_depend_on_which_thread_finishes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    d = np.random.default_rng(2).standard_normal((3000, 700), dtype=np.float32)  # 8 MB: three parts
    monkeypatch.setattr(_cpu, "WORKERS", 3)
    with ThreadPoolExecutor(3) as pool:
        monkeypatch.setattr(_cpu, "_pool", pool)
        ref = kernels.column_sum(d, np.empty(700, np.float32)).copy()
    for reverse in (False, True):
        monkeypatch.setattr(_cpu, "_pool", _OrderedPool(reverse))
        np.testing.assert_array_equal(kernels.column_sum(d, np.empty(700, np.float32)), ref)


def test_divergence_restores_finite_weights_when_the_loss_was_still_finite() -> None:
    # one full-batch step: its loss (computed before the update) is finite, the update makes the weights
    # infinite; the snapshot at that check must not keep them
    X, y = _data(64, 12, 3)
    for momentum in (0.0, 0.9):
        net = gb.MLP([12, 16, 3], backend="numpy", seed=0)
        before = net.flat_params.copy()
        with pytest.raises(gb.TrainingDiverged, match="the weights became NaN or infinite") as info:
            gb.fit(net, gb.SGD(net, lr=1e300, momentum=momentum), X, y, epochs=3, batch_size="full",
                   progress=False)
        assert "restored the weights of step 0" in str(info.value) and info.value.step == 0
        np.testing.assert_array_equal(net.flat_params, before)


def _bit_identical_runs(sizes: list[int], batch: int | str, workers: int, n: int,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    X, y = _data(n, sizes[0], sizes[-1], seed=1)
    monkeypatch.setattr(_cpu, "WORKERS", workers)
    monkeypatch.setattr(_cpu, "PARALLEL_MIN", 1 << 14)  # bias sums in parts across threads at this size
    monkeypatch.setattr(_cpu, "_pool", _OrderedPool(reverse=False))
    first, _ = _train(sizes, X, y, batch, progress=True, refresh_seconds=0.0)  # a refresh at every step
    monkeypatch.setattr(_cpu, "_pool", _OrderedPool(reverse=True))
    second, _ = _train(sizes, X, y, batch, progress=False)
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("batch", [1, 128, "full"])
@pytest.mark.parametrize("hidden", [256, 1024])
def test_same_seed_same_weights_at_full_size(hidden: int, batch: int | str, workers: int,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    n = 160 if hidden == 1024 and batch == 1 else 300
    _bit_identical_runs([784, hidden, hidden, 10], batch, workers, n, monkeypatch)


@pytest.mark.slow
def test_same_seed_same_weights_on_a_loaded_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    X, y = _data(1200, 784, 10, seed=4)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        for workers in (2, 3):
            monkeypatch.setattr(_cpu, "WORKERS", workers)
            monkeypatch.setattr(_cpu, "PARALLEL_MIN", 1 << 14)
            with ThreadPoolExecutor(workers) as pool:  # real threads, racing the busy processes
                monkeypatch.setattr(_cpu, "_pool", pool)
                for batch, sizes in ((16, [784, 256, 256, 10]), ("full", [784, 1024, 1024, 10])):
                    runs = [_train(sizes, X[:600] if batch == 16 else X, y[:600] if batch == 16 else y, batch,
                                   progress=False, refresh_seconds=0.02) for _ in range(2)]
                    np.testing.assert_array_equal(runs[0][0], runs[1][0], err_msg=f"{workers=} {batch=}")
                    assert runs[0][1] == runs[1][1]
    finally:
        for p in busy:
            p.kill()
        for p in busy:
            p.wait()
