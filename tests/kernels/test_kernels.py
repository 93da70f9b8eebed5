"""The elementwise steps: NumPy bodies against formulas, CuPy kernels against NumPy bodies.

GPU comparisons run on fresh random inputs (never zeros) into poisoned output
buffers, so an element a kernel forgets to write shows. Without a GPU the raw
kernel sources are still compiled with ``nvcc`` where it is installed (and every
kernel with NVRTC, as CuPy compiles it, in ``test_compile.py``).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from gpu_backprop import backend, kernels
from gpu_backprop.kernels import _cpu, _cuda

F64 = np.float64


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


FORMULAS = {
    "identity": (lambda z: z, lambda a: np.ones_like(a)),
    "relu": (lambda z: np.maximum(z, 0), lambda a: (a > 0).astype(a.dtype)),
    "leaky_relu": (lambda z: np.where(z > 0, z, 0.1 * z), lambda a: np.where(a > 0, 1.0, 0.1)),
    "sigmoid": (_sigmoid, lambda a: a * (1 - a)),
    "tanh": (np.tanh, lambda a: 1 - a * a),
}


@pytest.mark.parametrize("kind", kernels.ACTIVATIONS)
def test_numpy_activation_bodies_match_their_formulas(kind: str, rng: np.random.Generator) -> None:
    z = rng.standard_normal((6, 5))
    b = rng.standard_normal(5)
    f, fprime = FORMULAS[kind]
    a = z.copy()
    kernels.bias_activation(a, b, kind, alpha=0.1)
    np.testing.assert_allclose(a, f(z + b), rtol=1e-12, atol=1e-15)
    d = rng.standard_normal((6, 5))
    got = kernels.activation_backward(d.copy(), a, kind, alpha=0.1)
    np.testing.assert_allclose(got, d * fprime(a), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_softmax_and_log_stay_finite_at_1e4(dtype) -> None:
    z = np.array([[-1e4, 0.0, 1e4], [1e4, 1e4, -1e4]], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        s = kernels.bias_activation(z.copy(), None, "sigmoid")
        assert np.array_equal(s, np.array([[0, 0.5, 1], [1, 1, 0]], dtype=dtype))
        rows = np.empty(2, dtype)
        dz = np.empty_like(z)
        kernels.softmax_cross_entropy(z, np.array([0, 2]), None, dz, rows)
    assert np.all(np.isfinite(rows)) and np.all(np.isfinite(dz))
    np.testing.assert_allclose(rows, [2e4, 2e4 + np.log(2)], rtol=1e-6)


def test_softmax_xent_with_labels_equals_one_hot_targets(rng: np.random.Generator) -> None:
    z = rng.standard_normal((7, 4)) * 3
    y = rng.integers(0, 4, 7)
    onehot = np.eye(4)[y]
    r1, r2 = np.empty(7), np.empty(7)
    d1, d2 = np.empty_like(z), np.empty_like(z)
    kernels.softmax_cross_entropy(z, y, None, d1, r1)
    kernels.softmax_cross_entropy(z, None, onehot, d2, r2)
    np.testing.assert_allclose(r1, r2, rtol=1e-12)
    np.testing.assert_allclose(d1, d2, rtol=1e-12, atol=1e-15)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    np.testing.assert_allclose(r1, -np.log(p[np.arange(7), y]), rtol=1e-12)
    np.testing.assert_allclose(d1, (p - onehot) / 7, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("c", [1, 2, 10])
def test_count_correct_adds_the_rows_that_predict_their_label(c: int, rng: np.random.Generator,
                                                              logits_to_classify) -> None:
    z, labels = logits_to_classify(rng, 500, c, np.float32)
    into = np.array(7, dtype=np.int64)
    assert kernels.count_correct(z, labels, into) is into
    predicted = [int(np.argmax(row)) for row in z] if c > 1 else [int(row[0] > 0) for row in z]
    hits = sum(p == y for p, y in zip(predicted, labels))  # (c == 1: the labels are 0 and 1)
    assert 100 < hits < 400 and into.shape == () and into == 7 + hits
    kernels.count_correct(z[:0], labels[:0], into)  # no rows: nothing added
    assert into == 7 + hits


def test_one_output_predicts_1_above_the_threshold(rng: np.random.Generator) -> None:
    out = rng.uniform(0, 1, (400, 1))  # a sigmoid output fitted to 0/1 targets: ½ decides
    labels = rng.integers(0, 2, 400)
    into = np.zeros((), np.int64)
    kernels.count_correct(out, labels, into, threshold=0.5)
    assert into == sum(int(o > 0.5) == y for o, y in zip(out[:, 0], labels)) != np.count_nonzero(labels == 1)


def test_hash_random_numbers_are_uniform_and_reproducible() -> None:
    u = kernels.hash_uniform(np, 200_000, seed=3, counter=1)
    assert u.dtype == np.uint32
    np.testing.assert_array_equal(u, kernels.hash_uniform(np, 200_000, seed=3, counter=1))
    assert not np.array_equal(u, kernels.hash_uniform(np, 200_000, seed=3, counter=2))
    counts = np.bincount(u >> np.uint32(28), minlength=16)  # 16 bins of the top 4 bits
    assert np.all(np.abs(counts - 12_500) < 5 * np.sqrt(12_500))
    bits = np.unpackbits(u.view(np.uint8)).mean()
    assert abs(bits - 0.5) < 0.002


def test_random_permutation_is_a_permutation() -> None:
    p = kernels.random_permutation(np, 1000, seed=0, counter=5)
    np.testing.assert_array_equal(np.sort(p), np.arange(1000))
    assert not np.array_equal(p, np.arange(1000))
    np.testing.assert_array_equal(p, kernels.random_permutation(np, 1000, seed=0, counter=5))


def test_dropout_keeps_the_expected_fraction_and_scales(rng: np.random.Generator) -> None:
    x = rng.standard_normal((400, 250))
    y = x.copy()
    mask = np.empty_like(x)
    kernels.dropout_forward(y, 0.3, seed=1, counter=0, mask=mask)
    kept = mask != 0
    assert abs(kept.mean() - 0.7) < 0.005
    np.testing.assert_allclose(mask[kept], 1 / 0.7)
    np.testing.assert_allclose(y, x * mask)


# --------------------------------------------------------------------------
# CuPy kernels against the NumPy bodies (on a GPU)
# --------------------------------------------------------------------------
def _both(rng, shape, dtype):
    a = rng.standard_normal(shape).astype(dtype)
    cp = backend.cupy_module()
    return a, cp.asarray(a)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", kernels.ACTIVATIONS)
def test_gpu_activation_kernels_match_numpy(kind: str, dtype, rng: np.random.Generator) -> None:
    z, zg = _both(rng, (33, 17), dtype)
    b, bg = _both(rng, (17,), dtype)
    kernels.bias_activation(z, b, kind, 0.1)
    kernels.bias_activation(zg, bg, kind, 0.1)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(zg.get(), z, rtol=tol, atol=tol)
    d, dg = _both(rng, (33, 17), dtype)
    kernels.activation_backward(d, z, kind, 0.1)
    kernels.activation_backward(dg, zg, kind, 0.1)
    np.testing.assert_allclose(dg.get(), d, rtol=tol, atol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize("labels", [True, False])
def test_gpu_softmax_xent_matches_numpy(labels: bool, rng: np.random.Generator) -> None:
    cp = backend.cupy_module()
    z, zg = _both(rng, (300, 10), np.float32)
    z *= 4
    zg *= 4
    if labels:
        y = rng.integers(0, 10, 300)
        t, tg, yg = None, None, cp.asarray(y)
    else:
        t = rng.random((300, 10)).astype(np.float32)
        t /= t.sum(1, keepdims=True)
        y, yg, tg = None, None, cp.asarray(t)
    rows, dz = np.empty(300, np.float32), np.empty_like(z)
    rows_g, dz_g = cp.full(300, cp.nan, cp.float32), cp.full(z.shape, cp.nan, cp.float32)
    kernels.softmax_cross_entropy(z, y, t, dz, rows)
    kernels.softmax_cross_entropy(zg, yg, tg, dz_g, rows_g)
    np.testing.assert_allclose(rows_g.get(), rows, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dz_g.get(), dz, rtol=1e-5, atol=1e-8)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c", [1, 10])
def test_gpu_count_correct_matches_numpy(c: int, dtype, rng: np.random.Generator, logits_to_classify) -> None:
    cp = backend.cupy_module()
    z, labels = logits_to_classify(rng, 3000, c, dtype)
    into, into_g = np.array(5, np.int64), cp.full((), 5, cp.int64)
    for threshold in (0.0, 0.3):  # added to, not overwritten
        kernels.count_correct(z, labels, into, threshold)
        kernels.count_correct(cp.asarray(z), cp.asarray(labels), into_g, threshold)
    assert int(into_g) == int(into) > 5 + 2 * 500


@pytest.mark.gpu
@pytest.mark.parametrize("nesterov,momentum,wd", [(False, 0.0, 0.0), (False, 0.9, 0.01), (True, 0.9, 0.0)])
def test_gpu_sgd_kernel_matches_numpy(nesterov: bool, momentum: float, wd: float, rng) -> None:
    p, pg = _both(rng, (1000,), np.float32)
    g, gg = _both(rng, (1000,), np.float32)
    v, vg = _both(rng, (1000,), np.float32)
    args = dict(lr=0.1, momentum=momentum, weight_decay=wd, nesterov=nesterov, n_decay=600)
    kernels.sgd_update(p, g, v if momentum else None, np.empty_like(p), **args)
    kernels.sgd_update(pg, gg, vg if momentum else None, None, **args)
    np.testing.assert_allclose(pg.get(), p, rtol=1e-6, atol=1e-7)
    if momentum:
        np.testing.assert_allclose(vg.get(), v, rtol=1e-6, atol=1e-7)


@pytest.mark.gpu
@pytest.mark.parametrize("decoupled", [False, True])
def test_gpu_adam_kernel_matches_numpy(decoupled: bool, rng) -> None:
    p, pg = _both(rng, (1000,), np.float32)
    g, gg = _both(rng, (1000,), np.float32)
    m, mg = _both(rng, (1000,), np.float32)
    v, vg = _both(rng, (1000,), np.float32)
    v, vg = np.abs(v), abs(vg)
    args = dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, decoupled=decoupled,
                step=3, n_decay=500)
    kernels.adam_update(p, g, m, v, np.empty_like(p), **args)
    kernels.adam_update(pg, gg, mg, vg, None, **args)
    for a, b in ((pg, p), (mg, m), (vg, v)):
        np.testing.assert_allclose(a.get(), b, rtol=1e-5, atol=1e-7)


@pytest.mark.gpu
def test_gpu_random_bits_are_identical_to_numpy() -> None:
    cp = backend.cupy_module()
    np.testing.assert_array_equal(kernels.hash_uniform(cp, 12345, 7, 3).get(), kernels.hash_uniform(np, 12345, 7, 3))
    np.testing.assert_array_equal(kernels.random_permutation(cp, 999, 1, 2).get(),
                                  kernels.random_permutation(np, 999, 1, 2))
    x, xg = _both(np.random.default_rng(0), (64, 33), np.float32)
    m, mg = np.empty_like(x), cp.full(x.shape, cp.nan, cp.float32)
    kernels.dropout_forward(x, 0.4, 5, 6, m)
    kernels.dropout_forward(xg, 0.4, 5, 6, mg)
    np.testing.assert_array_equal(mg.get(), m)
    np.testing.assert_allclose(xg.get(), x, rtol=1e-7)


@pytest.mark.gpu
def test_gpu_batchnorm_kernels_match_numpy(rng) -> None:
    cp = backend.cupy_module()
    x, xg = _both(rng, (40, 12), np.float32)
    mean, inv_std = x.mean(0), 1 / np.sqrt(x.var(0) + 1e-5)
    gamma, beta = rng.standard_normal(12).astype(np.float32), rng.standard_normal(12).astype(np.float32)
    xhat, y = np.empty_like(x), np.empty_like(x)
    xhat_g, y_g = cp.full(x.shape, cp.nan, cp.float32), cp.full(x.shape, cp.nan, cp.float32)
    kernels.batchnorm_normalize(x, mean, inv_std, gamma, beta, xhat, y)
    kernels.batchnorm_normalize(xg, *(cp.asarray(a) for a in (mean, inv_std, gamma, beta)), xhat_g, y_g)
    np.testing.assert_allclose(y_g.get(), y, rtol=1e-5, atol=1e-6)
    dy, dyg = _both(rng, (40, 12), np.float32)
    dgamma, dbeta = (dy * xhat).sum(0), dy.sum(0)
    dx, dx_g = np.empty_like(x), cp.full(x.shape, cp.nan, cp.float32)
    kernels.batchnorm_backward(dy, xhat, gamma * inv_std, dgamma, dbeta, 40, dx)
    kernels.batchnorm_backward(dyg, xhat_g, cp.asarray(gamma * inv_std), cp.asarray(dgamma), cp.asarray(dbeta),
                               40, dx_g)
    np.testing.assert_allclose(dx_g.get(), dx, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_numpy_and_cupy_networks_give_the_same_loss_and_gradients(activation: str, rng) -> None:
    X = rng.standard_normal((64, 30)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    cpu = __import__("gpu_backprop").MLP([30, 40, 20, 10], activation=activation, backend="numpy", seed=5)
    gpu = cpu.copy(backend="cupy")
    l1, g1 = cpu.loss_and_grads(X, y)
    cp = backend.cupy_module()
    l2, g2 = gpu.loss_and_grads(cp.asarray(X), cp.asarray(y))
    assert l2 == pytest.approx(l1, rel=1e-5)
    for k in g1:
        np.testing.assert_allclose(g2[k].get(), g1[k], rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------
# Raw kernel sources compile (nvcc), even without CuPy or a GPU
# --------------------------------------------------------------------------
# NVRTC compiles every kernel exactly as CuPy does in tests/kernels/test_compile.py, where CuPy is
# installed. Here nvcc compiles the very text the library hands to cupy.RawKernel (raw_source) with
# CuPy's language options, so a broken raw kernel shows wherever a CUDA toolkit is. Elementwise
# kernels are left to test_compile.py: their text only exists once CuPy's code generator has run.
NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_raw_kernel_sources_compile_with_nvcc(dtype, tmp_path: Path) -> None:
    for name in _cuda.RAW:
        cu = tmp_path / f"{name}.cu"
        cu.write_text(_cuda.raw_source(name, dtype))
        proc = subprocess.run([NVCC, "--cubin", "-arch=sm_90", "--std=c++17", "-ftz=true", "-o",
                               str(tmp_path / f"{name}.cubin"), str(cu)],
                              check=False, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"


def test_gather_scale_numpy(rng: np.random.Generator) -> None:
    src = rng.integers(0, 256, (50, 7), dtype=np.uint8)
    rows = rng.integers(0, 50, 13)
    out = np.full((13, 7), np.nan, np.float32)
    kernels.gather_scale(src, rows, 1 / 255, out)
    np.testing.assert_allclose(out, src[rows] / 255, rtol=1e-6)


@pytest.mark.gpu
def test_gpu_gather_scale_matches_numpy(rng: np.random.Generator) -> None:
    cp = backend.cupy_module()
    src = rng.integers(0, 256, (500, 784), dtype=np.uint8)
    rows = rng.permutation(500)[:128]
    out = np.empty((128, 784), np.float32)
    out_g = cp.full((128, 784), cp.nan, cp.float32)
    kernels.gather_scale(src, rows, 1 / 255, out)
    kernels.gather_scale(cp.asarray(src), cp.asarray(rows), 1 / 255, out_g)
    np.testing.assert_allclose(out_g.get(), out, rtol=1e-6)


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.1), (0.9, True, 0.05)])
def test_large_sgd_updates_split_across_threads_match_one_pass(momentum, nesterov, wd, rng) -> None:
    n = _cpu.PARALLEL_MIN * 2 + 77  # large enough to be split, with an odd tail
    p, g, v = (rng.standard_normal(n).astype(np.float32) for _ in range(3))
    n_decay = n // 3 + 5  # the decay boundary falls inside the first chunk
    ref_p, ref_v = p.astype(np.float64), v.astype(np.float64)
    gd = g + wd * np.where(np.arange(n) < n_decay, ref_p, 0)
    if momentum:
        ref_v = momentum * ref_v + gd
        ref_p -= 0.1 * (gd + momentum * ref_v if nesterov else ref_v)
    else:
        ref_p -= 0.1 * gd
    kernels.sgd_update(p, g, v if momentum else None, np.empty_like(p), lr=0.1, momentum=momentum,
                       weight_decay=wd, nesterov=nesterov, n_decay=n_decay)
    np.testing.assert_allclose(p, ref_p, rtol=1e-5, atol=1e-6)
    if momentum:
        np.testing.assert_allclose(v, ref_v, rtol=1e-5, atol=1e-6)


def test_large_adam_updates_split_across_threads_match_one_pass(rng) -> None:
    n = _cpu.PARALLEL_MIN * 2 + 13
    p, g, m = (rng.standard_normal(n) for _ in range(3))
    v = np.abs(rng.standard_normal(n))
    ref = [a.copy() for a in (p, g, m, v)]
    _cpu.in_parallel, saved = (lambda body, size: body(slice(0, size))), _cpu.in_parallel
    try:
        kernels.adam_update(*ref, np.empty(n), lr=0.01, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1,
                            decoupled=True, step=2, n_decay=n // 2 + 3)
    finally:
        _cpu.in_parallel = saved
    kernels.adam_update(p, g, m, v, np.empty(n), lr=0.01, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1,
                        decoupled=True, step=2, n_decay=n // 2 + 3)
    np.testing.assert_array_equal(p, ref[0])
    np.testing.assert_array_equal(m, ref[2])


def test_count_correct_takes_only_a_0d_int64_accumulator() -> None:
    out, labels = np.eye(3, dtype=np.float32), np.arange(3)
    for into in (np.zeros((), np.int32), np.zeros(1, np.int64), np.zeros((), np.float64)):
        with pytest.raises(TypeError, match="0-d int64"):
            kernels.count_correct(out, labels, into)
