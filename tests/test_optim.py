"""Optimisers against plain reference formulas, step by step."""

from __future__ import annotations

import numpy as np
import pytest

import gpu_backprop as gb


def _setup(backend_name: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    net = gb.MLP([5, 4, 3], activation="tanh", backend=backend_name, dtype="float64", seed=seed)
    X = rng.standard_normal((10, 5))
    y = rng.integers(0, 3, 10)
    return net, gb.to_device(X, net.backend), gb.to_device(y, net.backend)


def _decay_mask(net: gb.MLP) -> dict[str, float]:
    return {k: 1.0 if k.endswith(".W") else 0.0 for k in net.params}


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 0.0),
                                                  (0.9, True, 0.0), (0.5, False, 0.1), (0.8, True, 0.05)])
def test_sgd_matches_the_reference(backend_name: str, momentum: float, nesterov: bool, wd: float) -> None:
    net, X, y = _setup(backend_name)
    opt = gb.SGD(net, lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    ref = {k: gb.to_numpy(p).copy() for k, p in net.params.items()}
    vel = {k: np.zeros_like(p) for k, p in ref.items()}
    mask = _decay_mask(net)
    for _ in range(5):
        _, grads = net.loss_and_grads(X, y)
        opt.step()
        for k in ref:
            g = gb.to_numpy(grads[k]) + wd * mask[k] * ref[k]  # weight decay on weights only
            if momentum:
                vel[k] = momentum * vel[k] + g
                g = g + momentum * vel[k] if nesterov else vel[k]
            ref[k] = ref[k] - 0.1 * g
            np.testing.assert_allclose(gb.to_numpy(net.params[k]), ref[k], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cls,wd", [(gb.Adam, 0.0), (gb.Adam, 0.01), (gb.AdamW, 0.1)])
def test_adam_and_adamw_match_the_reference(backend_name: str, cls, wd: float) -> None:
    net, X, y = _setup(backend_name, seed=1)
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    opt = cls(net, lr=lr, weight_decay=wd)
    ref = {k: gb.to_numpy(p).copy() for k, p in net.params.items()}
    m = {k: np.zeros_like(p) for k, p in ref.items()}
    v = {k: np.zeros_like(p) for k, p in ref.items()}
    mask = _decay_mask(net)
    for t in range(1, 6):
        _, grads = net.loss_and_grads(X, y)
        opt.step()
        for k in ref:
            g = gb.to_numpy(grads[k])
            if cls is gb.AdamW:
                ref[k] = ref[k] * (1 - lr * wd * mask[k])
            else:
                g = g + wd * mask[k] * ref[k]
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            ref[k] = ref[k] - lr * (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            np.testing.assert_allclose(gb.to_numpy(net.params[k]), ref[k], rtol=1e-10, atol=1e-13)


def test_training_reduces_the_loss() -> None:
    net, X, y = _setup("numpy")
    opt = gb.SGD(net, lr=0.5, momentum=0.9)
    first, _ = net.loss_and_grads(X, y)
    for _ in range(100):
        net.train_step_grads(X, y)
        opt.step()
    last, _ = net.loss_and_grads(X, y)
    assert last < 0.1 * first


def test_optimizer_state_round_trip() -> None:
    net, X, y = _setup("numpy")
    opt = gb.SGD(net, lr=0.1, momentum=0.9)
    for _ in range(3):
        net.train_step_grads(X, y)
        opt.step()
    twin = net.copy()
    opt2 = gb.SGD(twin, lr=0.5, momentum=0.5)  # (a velocity to load into: momentum > 0)
    opt2.load_state_dict(opt.state_dict())
    assert opt2.lr == 0.1 and opt2.momentum == 0.9 and opt2.steps == 3
    for o, n in ((opt, net), (opt2, twin)):
        n.train_step_grads(X, y)
        o.step()
    np.testing.assert_array_equal(net.flat_params, twin.flat_params)
    with pytest.raises(ValueError, match="is for 'sgd', not 'adam'"):
        gb.Adam(net).load_state_dict(opt.state_dict())


@pytest.mark.parametrize("build,match", [
    (lambda n: gb.SGD(n, lr=0), "learning rate"),
    (lambda n: gb.SGD(n, lr=-0.1), "learning rate"),
    (lambda n: gb.SGD(n, lr=float("nan")), "learning rate"),
    (lambda n: gb.SGD(n, lr=0.1, momentum=1.0), "momentum"),
    (lambda n: gb.SGD(n, lr=0.1, weight_decay=-1), "weight_decay"),
    (lambda n: gb.SGD(n, lr=0.1, nesterov=True), "Nesterov"),
    (lambda n: gb.Adam(n, betas=(0.9, 1.0)), "beta2"),
    (lambda n: gb.Adam(n, eps=0), "eps"),
    (lambda n: gb.SGD("net", lr=0.1), "gpu_backprop network"),
])
def test_bad_hyper_parameters_are_refused(build, match) -> None:
    net = gb.MLP([3, 2], backend="numpy")
    with pytest.raises((ValueError, TypeError), match=match):
        build(net)


def test_make_optimizer_by_name() -> None:
    from gpu_backprop.optim import make_optimizer

    net = gb.MLP([3, 2], backend="numpy")
    assert isinstance(make_optimizer("adamw", net, lr=0.01), gb.AdamW)
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        make_optimizer("rmsprop", net)


try:
    import scipy  # noqa: F401

    NO_SCIPY = None
except ImportError:
    NO_SCIPY = "the fused single-sample path needs SciPy (pip install '.[cpu]')"
needs_scipy = pytest.mark.skipif(NO_SCIPY is not None, reason=NO_SCIPY or "")


@needs_scipy
@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.0, False, 0.01), (0.9, False, 0.0),
                                                  (0.9, False, 0.01), (0.8, True, 0.02)])
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-12), ("float32", 2e-5)])
def test_fused_single_sample_sgd_equals_the_general_path(momentum, nesterov, wd, dtype, rtol) -> None:
    rng = np.random.default_rng(3)
    X = rng.standard_normal((12, 7)).astype(dtype)
    y = rng.integers(0, 3, 12)
    nets = [gb.MLP([7, 9, 6, 3], activation="tanh", backend="numpy", dtype=dtype, seed=1, batchnorm=False)
            for _ in range(2)]
    opts = [gb.SGD(n, lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=wd) for n in nets]
    for i in range(12):
        xb, yb = X[i:i + 1], y[i:i + 1]
        nets[0].train_step_grads(xb, yb)
        opts[0].step()                 # the general path
        opts[1].train_step(xb, yb)     # the fused rank-1 path
    np.testing.assert_allclose(nets[1].flat_params, nets[0].flat_params, rtol=rtol, atol=rtol * 1e-2)
    if momentum:
        np.testing.assert_allclose(opts[1].velocity, opts[0].velocity, rtol=rtol, atol=rtol * 1e-2)


@needs_scipy
def test_fused_path_with_other_parameters_and_dropout() -> None:
    rng = np.random.default_rng(4)
    X = rng.standard_normal((6, 5))
    y = rng.integers(0, 2, 6)
    nets = [gb.Sequential([gb.Dense(5, 4), gb.Tanh(), gb.Dropout(0.3), gb.Dense(4, 2)], backend="numpy",
                          dtype="float64", seed=2) for _ in range(2)]
    opts = [gb.SGD(n, lr=0.1, momentum=0.5, weight_decay=0.01) for n in nets]
    for i in range(6):
        nets[0].train_step_grads(X[i:i + 1], y[i:i + 1])
        opts[0].step()
        opts[1].train_step(X[i:i + 1], y[i:i + 1])
    np.testing.assert_allclose(nets[1].flat_params, nets[0].flat_params, rtol=1e-12)


@needs_scipy
def test_fused_path_equals_the_general_path_over_many_steps() -> None:
    """200 per-sample steps with dW taken into the update (BLAS ger) against flat_grads then step()."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((200, 6))
    y = rng.integers(0, 3, 200)
    nets = [gb.MLP([6, 8, 3], backend="numpy", dtype="float64", seed=3) for _ in range(2)]
    opts = [gb.SGD(n, lr=0.02, momentum=0.9, weight_decay=1e-3) for n in nets]
    for i in range(200):
        nets[0].train_step_grads(X[i:i + 1], y[i:i + 1])
        opts[0].step()
        opts[1].train_step(X[i:i + 1], y[i:i + 1])
    np.testing.assert_allclose(nets[1].flat_params, nets[0].flat_params, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(opts[1].velocity, opts[0].velocity, rtol=1e-10, atol=1e-13)
    state = opts[1].state_dict()
    np.testing.assert_allclose(state["velocity"], opts[0].velocity, rtol=1e-10, atol=1e-13)
