"""The CPU fast paths compute what the plain NumPy passes compute.

Large arrays (≥ 4 MB) are processed in cache-sized row blocks split across the
cores (``kernels._cpu.in_row_blocks``): the activations, their derivatives, the
optimiser update and the bias gradient. Each is compared here with the single
pass it replaces, on arrays big enough to take the blocked path.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpu_backprop import kernels
from gpu_backprop.kernels import _cpu, activations
from gpu_backprop.network import MLP
from gpu_backprop.optim import SGD

BIG = (1500, 1100)  # 6.6 MB of float32: blocked, and the blocks do not divide it evenly


@pytest.fixture
def single_pass(monkeypatch: pytest.MonkeyPatch):
    """A context that turns the blocked paths back into one pass on one thread."""
    def off() -> None:
        monkeypatch.setattr(_cpu, "BLOCK_BYTES", 1 << 40)
        monkeypatch.setattr(_cpu, "WORKERS", 1)
    return off


def test_big_arrays_take_the_blocked_path(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[slice] = []
    z = np.ones(BIG, dtype=np.float32)
    _cpu.in_row_blocks(seen.append, z.shape[0], z[:1].nbytes)
    assert len(seen) > 2 and sorted(s.start for s in seen)[0] == 0
    assert sum(s.stop - s.start for s in seen) == BIG[0]
    small: list[slice] = []
    _cpu.in_row_blocks(small.append, 128, 1024 * 4)
    assert small == [slice(0, 128)]


@pytest.mark.parametrize("kind", ["relu", "leaky_relu", "sigmoid", "tanh", "identity"])
def test_blocked_activation_and_derivative_equal_one_pass(kind: str) -> None:
    rng = np.random.default_rng(0)
    z = rng.standard_normal(BIG, dtype=np.float32) * 3
    b = rng.standard_normal(BIG[1], dtype=np.float32)
    d = rng.standard_normal(BIG, dtype=np.float32)
    a = z.copy()
    kernels.bias_activation(a, b, kind, 0.1)
    ref = z + b
    activations.np_forward(ref, kind, 0.1)
    np.testing.assert_array_equal(a, ref)
    got = d.copy()
    kernels.activation_backward(got, a, kind, 0.1)
    np.testing.assert_array_equal(got, activations.np_grad(a, kind, 0.1, d.copy()))


def test_column_sum_is_the_bias_gradient() -> None:
    rng = np.random.default_rng(1)
    d = rng.standard_normal(BIG, dtype=np.float32)
    out = np.full(BIG[1], np.nan, dtype=np.float32)  # poisoned: every entry must be written
    kernels.column_sum(d, out)
    np.testing.assert_allclose(out, d.astype(np.float64).sum(axis=0), rtol=0, atol=2e-4)
    small = d[:7, :5]
    out_small = np.full(5, np.nan, dtype=np.float32)
    np.testing.assert_array_equal(kernels.column_sum(small, out_small), small.sum(axis=0))


@pytest.mark.parametrize("momentum, nesterov, wd", [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 1e-3),
                                                    (0.9, False, 1e-2)])
def test_blocked_sgd_update_equals_one_pass(single_pass, momentum: float, nesterov: bool, wd: float) -> None:
    rng = np.random.default_rng(2)
    n, n_decay = 1_234_567, 777_777  # weight decay ends inside a block
    p0 = rng.standard_normal(n, dtype=np.float32)
    g = rng.standard_normal(n, dtype=np.float32)
    v0 = rng.standard_normal(n, dtype=np.float32)
    results = []
    for blocked in (True, False):
        if not blocked:
            single_pass()
        p, v = p0.copy(), v0.copy() if momentum else None
        kernels.sgd_update(p, g, v, np.empty_like(p), lr=0.05, momentum=momentum, weight_decay=wd,
                           nesterov=nesterov, n_decay=n_decay)
        results.append((p, v))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    if momentum:
        np.testing.assert_array_equal(results[0][1], results[1][1])
    assert not np.array_equal(results[0][0], p0)


def test_full_batch_training_is_the_same_with_and_without_the_blocked_paths(single_pass) -> None:
    """Three full-batch steps of a network whose activations take the blocked path."""
    rng = np.random.default_rng(3)
    X = rng.random((2500, 64), dtype=np.float32)
    y = rng.integers(0, 10, 2500)
    params = []
    for blocked in (True, False):
        if not blocked:
            single_pass()
        net = MLP([64, 512, 512, 10], backend="numpy", seed=0)
        opt = SGD(net, lr=0.1, momentum=0.9, weight_decay=1e-4)
        for _ in range(3):
            opt.train_step(X, y)
        params.append(net.state_dict())
    for name in params[0]:
        np.testing.assert_allclose(params[0][name], params[1][name], rtol=1e-5, atol=1e-6, err_msg=name)


# --------------------------------------------------------------------------
# Matrix products on SciPy's BLAS, and dW = Xᵀ dZ going straight into SGD's update
# --------------------------------------------------------------------------
needs_scipy = pytest.mark.skipif(kernels.scipy_blas() is None, reason="SciPy is not installed")


@pytest.fixture
def no_scipy(monkeypatch: pytest.MonkeyPatch):
    """A context that makes gpu_backprop behave as if SciPy were not installed (pure NumPy)."""
    return lambda: monkeypatch.setattr(_cpu, "_scipy_blas", False)


@needs_scipy
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("alpha, beta", [(1.0, 0.0), (-0.3, 1.0), (2.0, 0.5)])
def test_matmul_on_scipy_blas_equals_numpy(dtype: str, ta: bool, tb: bool, alpha: float, beta: float) -> None:
    rng = np.random.default_rng(4)
    n, k, m = 37, 29, 23
    a = rng.standard_normal((k, n) if ta else (n, k)).astype(dtype)
    b = rng.standard_normal((m, k) if tb else (k, m)).astype(dtype)
    a, b = (a.T if ta else a), (b.T if tb else b)  # transposed views, read in place
    out0 = rng.standard_normal((n, m)).astype(dtype)
    out = out0.copy()
    assert _cpu.gemm_call(a, b, out) is not None  # this case does go to SciPy
    got = kernels.matmul(a, b, out, alpha=alpha, beta=beta)
    assert got is out
    ref = alpha * (a.astype(np.float64) @ b.astype(np.float64)) + beta * out0
    np.testing.assert_allclose(out, ref, rtol=1e-5 if dtype == "float32" else 1e-12, atol=1e-5)


def test_matmul_falls_back_to_numpy_where_blas_cannot_read_in_place(no_scipy) -> None:
    rng = np.random.default_rng(5)
    a = rng.standard_normal((40, 60)).astype(np.float32)[:, ::2]  # strided: neither C nor F order
    b = rng.standard_normal((30, 8)).astype(np.float32)
    out = np.full((40, 8), np.nan, dtype=np.float32)
    assert _cpu.gemm_call(a, b, out) is None
    assert _cpu.gemm_call(a[:1], b, out[:1]) is None  # one row: NumPy's gemv
    c = np.ascontiguousarray(a)
    assert _cpu.gemm_call(c, b, out) is not None or kernels.scipy_blas() is None
    assert _cpu.gemm_call(c, b, out, batch=kernels.SCIPY_MAX_BATCH + 1) is None  # a large batch: NumPy's
    np.testing.assert_allclose(kernels.matmul(a, b, out), a @ b, rtol=1e-6)
    no_scipy()
    out2 = np.zeros((40, 8), dtype=np.float32)
    kernels.matmul(np.ascontiguousarray(a), b, out2, alpha=2.0, beta=1.0)  # the NumPy fallback of alpha/beta
    np.testing.assert_allclose(out2, 2 * (a @ b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("momentum, nesterov, wd, batch", [
    (0.9, False, 0.0, 64), (0.9, False, 1e-3, 64), (0.0, False, 1e-3, 64), (0.9, True, 1e-3, 64),
    (0.9, False, 1e-3, 1), (0.5, True, 0.0, 1), (0.9, False, 1e-3, kernels.SCIPY_MAX_BATCH + 1),
])
def test_sgd_train_step_equals_the_pure_numpy_path(no_scipy, momentum: float, nesterov: bool, wd: float,
                                                   batch: int) -> None:
    """SciPy's products, ``dW`` fused into a lazily scaled velocity, BLAS axpy — against NumPy alone."""
    if kernels.scipy_blas() is None:
        pytest.skip("SciPy is not installed: only the NumPy path exists")
    rng = np.random.default_rng(6)
    steps = 90 if batch <= kernels.SCIPY_MAX_BATCH else 3
    X = rng.random((batch * steps, 30), dtype=np.float32)
    y = rng.integers(0, 10, batch * steps)

    def train(pure: bool) -> tuple[dict[str, np.ndarray], np.ndarray]:
        if pure:
            no_scipy()
        net = MLP([30, 40, 20, 10], backend="numpy", seed=1)
        opt = SGD(net, lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=wd)
        for i in range(0, X.shape[0], batch):  # 90 steps: the velocity's scale is folded back in once
            if pure:
                net.train_step_grads(X[i:i + batch], y[i:i + batch])
                opt.step()
            else:
                opt.train_step(X[i:i + batch], y[i:i + batch])
        v = opt.state_dict().get("velocity", np.zeros(0))
        return net.state_dict(), v

    fast, v_fast = train(pure=False)
    ref, v_ref = train(pure=True)
    for name in ref:
        np.testing.assert_allclose(fast[name], ref[name], rtol=2e-4, atol=2e-5, err_msg=name)
    np.testing.assert_allclose(v_fast, v_ref, rtol=2e-3, atol=2e-4)
    assert not np.allclose(fast["layers.0.W"], MLP([30, 40, 20, 10], backend="numpy", seed=1).params["layers.0.W"])


def test_step_after_train_step_grads_applies_flat_grads() -> None:
    """The documented pair (``train_step_grads`` then ``step``) fills ``flat_grads`` and applies it."""
    rng = np.random.default_rng(7)
    X, y = rng.random((32, 30), dtype=np.float32), rng.integers(0, 10, 32)
    net = MLP([30, 40, 10], backend="numpy", seed=2)
    opt = SGD(net, lr=0.1, momentum=0.9)
    net.train_step_grads(X, y)
    g = net.flat_grads.copy()
    p0 = net.flat_params.copy()
    opt.step()
    np.testing.assert_allclose(net.flat_params, p0 - 0.1 * g, rtol=1e-5, atol=1e-7)  # first step: v = g
    np.testing.assert_allclose(opt.velocity, g, rtol=1e-6, atol=1e-8)


def test_blas_threads_puts_numpys_blas_on_one_thread_for_single_samples_only() -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from gpu_backprop.backend import get_backend

    def numpy_blas_threads() -> list[int]:
        return [i["num_threads"] for i in threadpoolctl.threadpool_info()
                if i.get("user_api") == "blas" and "numpy" in i["filepath"]]

    before = numpy_blas_threads()
    if not before:
        pytest.skip("NumPy runs on a system BLAS here: there is no BLAS of its own to tell apart")
    numpy_be = get_backend("numpy")
    with kernels.blas_threads(numpy_be, 1):
        assert all(n == 1 for n in numpy_blas_threads())
    assert numpy_blas_threads() == before
    with kernels.blas_threads(numpy_be, 2):
        assert numpy_blas_threads() == before


def test_the_kernel_registry_is_public_in_the_package() -> None:
    # gpu-backprop doctor compiles every kernel through these, not through the private _cuda module
    from gpu_backprop.kernels import _cuda

    assert kernels.ELEMENTWISE is _cuda.ELEMENTWISE and "sgd" in kernels.ELEMENTWISE
    assert kernels.RAW is _cuda.RAW and kernels.RAW
    name = next(iter(kernels.RAW))
    assert kernels.raw_source(name, np.float32).startswith("typedef float T;")
    assert kernels.make_elementwise is _cuda.make_elementwise and kernels.make_raw is _cuda.make_raw
