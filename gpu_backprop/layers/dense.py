"""The affine layer ``Z = X W + b``: its forward and its three gradients, with an activation fused in."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import kernels
from ..checks import check_int
from ..init import INITIALIZERS, default_initializer, initialize
from .activations import Activation
from .base import Layer

Array = Any


class Dense(Layer):
    """Affine layer ``Z = X W + b``.

    Shapes (row-batch convention)::

        Z  = X W + b        X: (N, D)   W: (D, M)   b: (M,)   Z: (N, M)
        dW = Xᵀ dZ          (D, N)(N, M) -> (D, M)
        db = Σ_rows dZ      (M,)
        dX = dZ Wᵀ          (N, M)(M, D) -> (N, D)   (skipped for the first layer)

    When the network fuses an activation into it, ``forward`` returns
    ``A = f(XW + b)`` from one buffer and ``backward`` first turns the incoming
    ``dA`` into ``dZ = dA ⊙ f'(A)`` in place.

    Parameters
    ----------
    in_features, out_features : D and M.
    init : an initialiser name (see :mod:`gpu_backprop.init`) or ``"auto"``
        (He for ReLU-like activations, Glorot otherwise).
    """

    per_batch = ("_x", "_z", "_dz")

    def __init__(self, in_features: int, out_features: int, init: str = "auto") -> None:
        super().__init__()
        self.in_features = check_int("Dense in_features", in_features)
        self.out_features = check_int("Dense out_features", out_features)
        if init != "auto" and init not in INITIALIZERS:
            raise ValueError(f"unknown initializer {init!r}; choose 'auto' or one of {', '.join(INITIALIZERS)}")
        self.init = init
        self.activation: Activation | None = None  # set by the network when it fuses one

    def param_shapes(self, in_dim: int) -> dict[str, tuple[int, ...]]:
        if in_dim != self.in_features:
            raise ValueError(
                f"Dense({self.in_features}, {self.out_features}) receives {in_dim} features; "
                f"make the previous layer output {self.in_features}"
            )
        return {"W": (self.in_features, self.out_features), "b": (self.out_features,)}

    def decayed_params(self) -> tuple[str, ...]:
        return ("W",)

    def initial_params(self, rng: np.random.Generator, in_dim: int) -> dict[str, np.ndarray]:
        act = self.activation.kind if self.activation is not None else None
        name = default_initializer(act) if self.init == "auto" else self.init
        return {"W": initialize(name, rng, (self.in_features, self.out_features)),
                "b": np.zeros(self.out_features)}

    def out_dim(self, in_dim: int) -> int:
        return self.out_features

    def forward(self, x: Array, train: bool = False) -> Array:
        W, b = self.params["W"], self.params["b"]
        z = self.buffers.get("Z", (x.shape[0], self.out_features), x)
        kernels.matmul(x, W, z)
        act = self.activation
        if act is None:
            kernels.bias_activation(z, b, "identity")
        else:
            kernels.bias_activation(z, b, act.kind, act.alpha)
        self._x, self._z = x, z
        return z

    def backward(self, dy: Array, need_dx: bool = True, need_dw: bool = True) -> Array | None:
        act = self.activation
        dz = dy if act is None else kernels.activation_backward(dy, self._z, act.kind, act.alpha)
        self._dz = dz
        if need_dw:
            kernels.weight_grad(self._x, dz, self.grads["W"])
        kernels.column_sum(dz, self.grads["b"])
        if not need_dx:
            return None
        dx = self.buffers.get("dX", self._x.shape, dz)
        kernels.matmul(dz, self.params["W"].T, dx)
        return dx

    def weight_grad_inputs(self) -> tuple[Array, Array]:
        """``(X, dZ)`` of the last backward: ``dW = Xᵀ dZ`` for whoever left it out (``need_dw=False``)."""
        return self._x, self._dz

    def equations(self, n: int, in_dim: int) -> list[str]:
        d, m = self.in_features, self.out_features
        f = self.activation.kind if self.activation is not None else None
        lines = [f"Z = X W + b   X: ({n}, {d})  W: ({d}, {m})  b: ({m},)  ->  Z: ({n}, {m})"]
        if f:
            lines.append(f"A = {f}(Z)   ({n}, {m})   [fused with the bias add]")
            lines.append(f"dZ = dA ⊙ {f}'(A)   ({n}, {m})")
        lines += [
            f"dW = Xᵀ dZ   ({d}, {n})({n}, {m}) -> ({d}, {m})",
            f"db = Σ_rows dZ   ({m},)",
            f"dX = dZ Wᵀ   ({n}, {m})({m}, {d}) -> ({n}, {d})",
        ]
        return lines

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "in_features": self.in_features, "out_features": self.out_features}

    def init_args(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "init": self.init}
