"""Every layer, activation and loss against float64 central differences, on each backend."""

from __future__ import annotations

import numpy as np
import pytest

import gpu_backprop as gb
from gpu_backprop.layers import Layer

ACTIVATIONS = ["relu", "leaky_relu", "sigmoid", "tanh", "identity"]


def _data(backend_name: str, rng: np.random.Generator, n: int = 9, d: int = 7, c: int = 4):
    X = rng.standard_normal((n, d))
    y = rng.integers(0, c, n)
    be = gb.get_backend(backend_name)
    return gb.to_device(X, be), gb.to_device(y, be)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_mlp_with_each_activation(backend_name: str, rng: np.random.Generator, activation: str) -> None:
    X, y = _data(backend_name, rng)
    net = gb.MLP([7, 6, 5, 4], activation=activation, backend=backend_name, dtype="float64", seed=2)
    result = gb.gradcheck(net, X, y, mode="full")
    assert result.checked == net.num_params


@pytest.mark.parametrize("loss,output_activation", [
    ("softmax_cross_entropy", None), ("mse", None), ("mse", "sigmoid"), ("bce", None),
])
def test_each_loss_with_labels(backend_name: str, rng: np.random.Generator, loss: str,
                               output_activation: str | None) -> None:
    X, y = _data(backend_name, rng)
    net = gb.MLP([7, 5, 4], activation="tanh", loss=loss, output_activation=output_activation,
                 backend=backend_name, dtype="float64", seed=1)
    gb.gradcheck(net, X, y)


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse", "bce"])
def test_each_loss_with_soft_targets(backend_name: str, rng: np.random.Generator, loss: str) -> None:
    X, _ = _data(backend_name, rng)
    T = rng.random((9, 4))
    T /= T.sum(1, keepdims=True)  # rows are distributions (valid for all three losses)
    net = gb.MLP([7, 5, 4], activation="sigmoid", loss=loss, backend=backend_name, dtype="float64")
    gb.gradcheck(net, X, gb.to_device(T, net.backend))


def test_softmax_cross_entropy_takes_only_rows_of_probabilities(backend_name: str, rng: np.random.Generator) -> None:
    # dZ = (A − T)/N is the gradient only where each row of T sums to 1: other targets are refused, not mis-trained
    X, _ = _data(backend_name, rng)
    T = rng.random((9, 4))
    T /= T.sum(1, keepdims=True)
    net = gb.MLP([7, 5, 4], activation="tanh", backend=backend_name, dtype="float64")
    for bad, row, total in ((np.where(np.arange(9)[:, None] == 4, 2 * T, T), 4, "2"),
                            (np.where(np.arange(9)[:, None] == 6, T - T[6].max(), T), 6, r"-?\d")):
        bad = gb.to_device(bad, net.backend)
        for call in (lambda: net.loss_and_grads(X, bad), lambda: gb.gradcheck(net, X, bad),
                     lambda: gb.fit(net, gb.SGD(net, lr=0.1), X, bad, epochs=1, batch_size=3, progress=False)):
            with pytest.raises(ValueError, match=rf"row {row} sums to {total}.*normalise them"):
                call()
    bce = gb.MLP([7, 5, 4], loss="bce", backend=backend_name, dtype="float64")
    bce.loss_and_grads(X, gb.to_device(2 * T, bce.backend))  # no such rule for bce


def test_binary_bce_with_one_output(rng: np.random.Generator) -> None:
    X = rng.standard_normal((10, 3))
    y = rng.integers(0, 2, 10)
    net = gb.MLP([3, 4, 1], activation="tanh", loss="bce", backend="numpy", dtype="float64")
    gb.gradcheck(net, X, y)


@pytest.mark.parametrize("make_layer", [
    lambda: gb.Dense(7, 5), lambda: gb.ReLU(), lambda: gb.LeakyReLU(0.1), lambda: gb.Sigmoid(),
    lambda: gb.Tanh(), lambda: gb.Identity(), lambda: gb.BatchNorm(7), lambda: gb.Dropout(0.3, seed=5),
], ids=["dense", "relu", "leaky_relu", "sigmoid", "tanh", "identity", "batchnorm", "dropout"])
def test_each_layer_alone_including_dx(backend_name: str, rng: np.random.Generator, make_layer) -> None:
    X, _ = _data(backend_name, rng)
    layer = make_layer()
    result = gb.gradcheck(layer, X, mode="full")
    assert result.checked >= X.size  # dX is always checked


def test_batchnorm_in_eval_mode(rng: np.random.Generator) -> None:
    X = rng.standard_normal((8, 5))
    gb.gradcheck(gb.BatchNorm(5), X, train=False)


def test_network_with_batchnorm_and_dropout(backend_name: str, rng: np.random.Generator) -> None:
    X, y = _data(backend_name, rng)
    net = gb.MLP([7, 6, 6, 4], activation="relu", batchnorm=True, dropout=0.25,
                 backend=backend_name, dtype="float64", seed=4)
    gb.gradcheck(net, X, y)


@pytest.mark.parametrize("make_first", [
    lambda: gb.Dropout(0.2, seed=3), lambda: gb.Tanh(), lambda: gb.ReLU(),
], ids=["dropout", "tanh", "relu"])
def test_a_network_whose_first_layer_has_no_parameters(backend_name: str, rng: np.random.Generator,
                                                       make_first) -> None:
    # Input dropout, say: the first Dense gives no dX, and nothing before it needs one.
    X, y = _data(backend_name, rng)
    net = gb.Sequential([make_first(), gb.Dense(7, 6), gb.Tanh(), gb.Dense(6, 4)],
                        backend=backend_name, dtype="float64", seed=4)
    result = gb.gradcheck(net, X, y, mode="full")
    assert result.checked == net.num_params
    history = gb.fit(net, gb.SGD(net, lr=0.1), X, y, epochs=2, batch_size=4, progress=False)
    assert len(history.epochs) == 2 and np.all(np.isfinite(history.metric("loss")))


def test_large_layers_use_random_directions(rng: np.random.Generator) -> None:
    X = rng.standard_normal((32, 300))
    y = rng.integers(0, 10, 32)
    net = gb.MLP([300, 64, 10], backend="numpy", dtype="float64")
    result = gb.gradcheck(net, X, y, mode="direction", directions=3)
    assert result.checked == 3 * len(net.params)


def test_a_float32_network_is_checked_in_float64(rng: np.random.Generator) -> None:
    X = rng.standard_normal((6, 4)).astype(np.float32)
    y = rng.integers(0, 3, 6)
    net = gb.MLP([4, 5, 3], backend="numpy", dtype="float32")
    gb.gradcheck(net, X, y)
    assert net.dtype == np.float32  # the original is untouched


class _WrongSigmoid(gb.Sigmoid):
    """A sigmoid whose backward forgets the (1 − a) factor."""

    def backward(self, dy, need_dx=True):
        dy *= self._a
        return dy


class _Leaky(Layer):
    """Keeps state between calls: backward twice disagrees."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, train=False):
        return x.copy()

    def backward(self, dy, need_dx=True):
        self.calls += 1
        return dy * self.calls


def test_a_wrong_backward_is_reported_with_both_gradients(rng: np.random.Generator) -> None:
    X = rng.standard_normal((4, 3))
    with pytest.raises(gb.GradcheckError) as info:
        gb.gradcheck(_WrongSigmoid(), X)
    text = str(info.value)
    assert "analytic" in text and "numerical" in text and "inputs" in text


def test_a_wrong_backward_is_caught_along_directions_too(rng: np.random.Generator) -> None:
    X = rng.standard_normal((4, 3))
    with pytest.raises(gb.GradcheckError, match="direction"):
        gb.gradcheck(_WrongSigmoid(), X, mode="direction")


def test_backward_twice_must_agree(rng: np.random.Generator) -> None:
    with pytest.raises(gb.GradcheckError, match="twice"):
        gb.gradcheck(_Leaky(), rng.standard_normal((3, 2)))


def test_gradcheck_rejects_unknown_mode_and_targets(rng: np.random.Generator) -> None:
    X = rng.standard_normal((3, 2))
    with pytest.raises(ValueError, match="mode"):
        gb.gradcheck(gb.ReLU(), X, mode="fast")
    with pytest.raises(TypeError, match="network or a layer"):
        gb.gradcheck(lambda x: x, X)
    with pytest.raises(ValueError, match="targets"):
        gb.gradcheck(gb.MLP([2, 2]), X)


def test_checking_a_layer_of_a_network_leaves_it_attached(rng: np.random.Generator) -> None:
    # issue 13: gradcheck(layer) replaced layer.params, so the network trained a detached copy of its last layer
    net = gb.MLP([4, 5, 3], backend="numpy", dtype="float64", seed=0)
    last = net.layers[-1]
    views = dict(last.params), dict(last.grads)
    before = net.flat_params.copy()
    gb.gradcheck(last, rng.standard_normal((6, 5)), mode="full")
    assert all(last.params[k] is v for k, v in views[0].items())
    assert all(last.grads[k] is v for k, v in views[1].items())
    np.testing.assert_array_equal(net.flat_params, before)
    X, y = rng.standard_normal((8, 4)), rng.integers(0, 3, 8)
    net.loss_and_grads(X, y)
    assert np.any(net.grads["layers.2.W"] != 0)  # the layer writes its gradients into the network's buffer
    gb.SGD(net, lr=0.1).step()  # and takes the optimiser's update from it
    assert not np.array_equal(last.params["W"], net.flat.view(before, "layers.2.W"))
    assert np.shares_memory(last.params["W"], net.flat_params)


def test_checking_a_layer_leaves_its_state_as_it_was(rng: np.random.Generator) -> None:
    bn = gb.BatchNorm(3)
    gb.gradcheck(bn, rng.standard_normal((5, 3)))  # training mode: the check's batches update running statistics
    assert bn.running_mean is None and bn.state() == {}
    drop = gb.Dropout(0.3, seed=7)
    gb.gradcheck(drop, rng.standard_normal((5, 3)))
    assert drop.state() == {"seed": 7, "counter": 0}


@pytest.mark.parametrize("sizes,mode", [([4, 6, 3], "full"), ([100, 32, 10], "direction")])
def test_checking_a_network_leaves_its_weights_and_layer_states_as_they_were(
        rng: np.random.Generator, sizes: list[int], mode: str) -> None:
    net = gb.MLP(sizes, batchnorm=True, dropout=0.2, backend="numpy", dtype="float64", seed=0)
    before = net.state_dict()
    gb.gradcheck(net, rng.standard_normal((6, sizes[0])), rng.integers(0, sizes[-1], 6), mode=mode)
    after = net.state_dict()
    assert after.keys() == before.keys()  # no running statistics made up by the check
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])
