"""One SGD step of a tiny network worked by hand, and the bias-as-a-column-of-ones identity.

The network of the classic question: 2 inputs, 3 sigmoid hidden units, 2
softmax outputs, with biases. Every number below was worked out step by step
(values rounded to 8 digits) and the library must reproduce them.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpu_backprop as gb


def _classic_net() -> gb.Sequential:
    net = gb.Sequential(
        [gb.Dense(2, 3), gb.Sigmoid(), gb.Dense(3, 2)],
        loss="softmax_cross_entropy", backend="numpy", dtype="float64",
    )
    net.params["layers.0.W"][...] = [[0.1, 0.3, 0.5],
                                     [0.2, 0.4, 0.6]]
    net.params["layers.0.b"][...] = [0.1, 0.1, 0.1]
    net.params["layers.2.W"][...] = [[0.7, -0.8],
                                     [-0.9, 1.0],
                                     [0.4, -0.2]]
    net.params["layers.2.b"][...] = [0.2, -0.3]
    return net


def test_one_sgd_step_by_hand() -> None:
    net = _classic_net()
    x = np.array([[1.0, 2.0]])
    y = np.array([1])

    # Forward.
    # z1 = x W1 + b1 = [1·0.1 + 2·0.2 + 0.1, 1·0.3 + 2·0.4 + 0.1, 1·0.5 + 2·0.6 + 0.1] = [0.6, 1.2, 1.8]
    # a1 = σ(z1) = [0.64565631, 0.76852478, 0.85814894]
    # z2 = a1 W2 + b2 = [0.64565631·0.7 − 0.76852478·0.9 + 0.85814894·0.4 + 0.2,
    #                    −0.64565631·0.8 + 0.76852478·1.0 − 0.85814894·0.2 − 0.3] = [0.30354668, −0.21963005]
    # a2 = softmax(z2) = [e^0.30354668, e^−0.21963005] / Σ = [0.62789029, 0.37210971]
    # loss = −log a2[y=1] = −log 0.37210971 = 0.98856655
    out = net.forward(x)
    np.testing.assert_allclose(out, [[0.30354668, -0.21963005]], atol=1e-8)
    np.testing.assert_allclose(net.predict(x), [[0.62789029, 0.37210971]], atol=1e-8)

    loss, grads = net.loss_and_grads(x, y)
    assert loss == pytest.approx(0.98856655, abs=1e-8)

    # Backward (N = 1, so dividing by N changes nothing).
    # δ2 = a2 − onehot(y) = [0.62789029, −0.62789029]
    # dW2 = a1ᵀ δ2 = [[0.64565631·0.62789029, −…], …] = [[0.40540133, −0.40540133],
    #                                                     [0.48254925, −0.48254925],
    #                                                     [0.53882339, −0.53882339]]
    # db2 = δ2
    np.testing.assert_allclose(grads["layers.2.W"], [[0.40540133, -0.40540133],
                                                     [0.48254925, -0.48254925],
                                                     [0.53882339, -0.53882339]], atol=1e-8)
    np.testing.assert_allclose(grads["layers.2.b"], [0.62789029, -0.62789029], atol=1e-8)
    # δ1 = (δ2 W2ᵀ) ⊙ a1 (1 − a1)
    #    δ2 W2ᵀ = [0.62789029·(0.7 + 0.8), 0.62789029·(−0.9 − 1.0), 0.62789029·(0.4 + 0.2)]
    #           = [0.94183544, −1.19299155, 0.37673418]
    #    a1 (1 − a1) = [0.22878424, 0.17789586, 0.12171914]
    #    δ1 = [0.21547711, −0.21222657, 0.04585960]
    # dW1 = xᵀ δ1 = [[1·δ1], [2·δ1]],  db1 = δ1
    np.testing.assert_allclose(grads["layers.0.W"], [[0.21547711, -0.21222657, 0.04585960],
                                                     [0.43095421, -0.42445313, 0.09171921]], atol=1e-8)
    np.testing.assert_allclose(grads["layers.0.b"], [0.21547711, -0.21222657, 0.04585960], atol=1e-8)

    # One SGD step with η = 0.5: θ ← θ − 0.5 ∇θ
    # W1 = [[0.1 − 0.10773855, 0.3 + 0.10611328, 0.5 − 0.02292980], [0.2 − 0.21547711, …]]
    gb.SGD(net, lr=0.5).step()
    np.testing.assert_allclose(net.params["layers.0.W"], [[-0.00773855, 0.40611328, 0.47707020],
                                                          [-0.01547711, 0.61222657, 0.55414040]], atol=1e-8)
    np.testing.assert_allclose(net.params["layers.0.b"], [-0.00773855, 0.20611328, 0.07707020], atol=1e-8)
    np.testing.assert_allclose(net.params["layers.2.W"], [[0.49729934, -0.59729934],
                                                          [-1.14127463, 1.24127463],
                                                          [0.13058831, 0.06941169]], atol=1e-8)
    np.testing.assert_allclose(net.params["layers.2.b"], [-0.11394515, 0.01394515], atol=1e-8)


def test_bias_as_a_column_of_ones_gives_the_same_gradients(rng: np.random.Generator) -> None:
    """``[1, X] [b; W]`` is ``X W + b``: the same loss, and dW, db are the blocks of one gradient."""
    n, d, m, c = 16, 5, 4, 3
    X = rng.standard_normal((n, d))
    y = rng.integers(0, c, n)
    with_bias = gb.MLP([d, m, c], activation="tanh", backend="numpy", dtype="float64", seed=3)
    loss, grads = with_bias.loss_and_grads(X, y)

    # The same network without biases, fed [1, X]: the first row of each weight matrix is the bias.
    # Hidden layers see [1, A] too, so every layer gets an extra input fixed at 1.
    W1 = np.vstack([with_bias.params["layers.0.b"], with_bias.params["layers.0.W"]])  # (d+1, m)
    W2 = np.vstack([with_bias.params["layers.2.b"], with_bias.params["layers.2.W"]])  # (m+1, c)
    X1 = np.hstack([np.ones((n, 1)), X])
    A1 = np.tanh(X1 @ W1)
    A1_1 = np.hstack([np.ones((n, 1)), A1])
    Z2 = A1_1 @ W2
    P = np.exp(Z2 - Z2.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    loss_ones = -np.log(P[np.arange(n), y]).mean()
    dZ2 = P.copy()
    dZ2[np.arange(n), y] -= 1
    dZ2 /= n
    dW2 = A1_1.T @ dZ2
    dZ1 = (dZ2 @ W2[1:].T) * (1 - A1**2)
    dW1 = X1.T @ dZ1

    assert loss == pytest.approx(loss_ones, rel=1e-12)
    np.testing.assert_allclose(grads["layers.0.b"], dW1[0], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(grads["layers.0.W"], dW1[1:], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(grads["layers.2.b"], dW2[0], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(grads["layers.2.W"], dW2[1:], rtol=1e-10, atol=1e-14)
