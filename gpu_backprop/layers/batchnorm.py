"""Batch normalisation: normalise each feature over the batch, then scale and shift; closed-form backward."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import kernels
from ..backend import get_array_module
from ..checks import check_int, check_range
from .base import Layer

Array = Any


class BatchNorm(Layer):
    """Batch normalisation over the features of an ``(N, M)`` batch.

    Train mode uses the batch statistics and updates running ones; eval mode
    uses the running ones::

        μ = Σ_rows X / N,   σ² = Σ_rows (X − μ)² / N,   X̂ = (X − μ) / √(σ² + ε)
        Y = γ X̂ + β                                     γ, β: (M,)

    Closed-form backward (train mode)::

        dβ = Σ_rows dY,   dγ = Σ_rows dY ⊙ X̂
        dX = γ / √(σ² + ε) · (dY − dβ/N − X̂ ⊙ dγ/N)

    In eval mode the layer is affine: ``dX = dY γ / √(σ_run² + ε)``.
    """

    per_batch = ("_xhat", "_inv_std", "_train")

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum = check_range("BatchNorm momentum", momentum, 0, 1, lo_open=True, hi_closed=True)
        self.num_features = check_int("BatchNorm num_features", num_features)
        self.eps = check_range("BatchNorm eps", eps, 0.0, lo_open=True)  # (the variance's divisor is √(σ² + ε))
        self.running_mean: Array = None  # allocated on the first forward, on the input's device
        self.running_var: Array = None

    def param_shapes(self, in_dim: int) -> dict[str, tuple[int, ...]]:
        if in_dim != self.num_features:
            raise ValueError(f"BatchNorm({self.num_features}) receives {in_dim} features")
        return {"gamma": (in_dim,), "beta": (in_dim,)}

    def initial_params(self, rng: np.random.Generator, in_dim: int) -> dict[str, np.ndarray]:
        return {"gamma": np.ones(in_dim), "beta": np.zeros(in_dim)}

    def _ensure_running(self, like: Array) -> None:
        if self.running_mean is None or self.running_mean.dtype != like.dtype:
            xp = get_array_module(like)
            self.running_mean = xp.zeros(self.num_features, dtype=like.dtype)
            self.running_var = xp.ones(self.num_features, dtype=like.dtype)

    def forward(self, x: Array, train: bool = False) -> Array:
        xp = get_array_module(x)
        self._ensure_running(x)
        n = x.shape[0]
        if train:
            if n < 2:
                raise ValueError("BatchNorm needs at least 2 samples per batch in training mode; use a larger batch")
            mean = x.mean(axis=0)
            var = x.var(axis=0)
            m = self.momentum
            self.running_mean *= 1 - m
            self.running_mean += m * mean
            self.running_var *= 1 - m
            self.running_var += (m * n / (n - 1)) * var  # unbiased, as PyTorch keeps it
        else:
            mean, var = self.running_mean, self.running_var
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        xhat = self.buffers.get("Xhat", x.shape, x)
        y = self.buffers.get("Y", x.shape, x)
        kernels.batchnorm_normalize(x, mean, inv_std, self.params["gamma"], self.params["beta"], xhat, y)
        self._xhat, self._inv_std, self._train = xhat, inv_std, train
        return y

    def backward(self, dy: Array, need_dx: bool = True, need_dw: bool = True) -> Array | None:
        xp = get_array_module(dy)
        xhat = self._xhat
        dgamma, dbeta = self.grads["gamma"], self.grads["beta"]
        xp.sum(dy * xhat, axis=0, out=dgamma)
        xp.sum(dy, axis=0, out=dbeta)
        if not need_dx:
            return None
        scale = self.params["gamma"] * self._inv_std
        dx = self.buffers.get("dX", dy.shape, dy)
        if self._train:
            kernels.batchnorm_backward(dy, xhat, scale, dgamma, dbeta, dy.shape[0], dx)
        else:
            xp.multiply(dy, scale, out=dx)
        return dx

    def state(self) -> dict[str, Any]:
        if self.running_mean is None:
            return {}
        return {"running_mean": self.running_mean, "running_var": self.running_var}

    def load_state(self, state: dict[str, Any]) -> None:  # {}: before the first forward pass, as saved
        self.running_mean, self.running_var = state.get("running_mean"), state.get("running_var")

    def equations(self, n: int, in_dim: int) -> list[str]:
        return [
            f"X̂ = (X − μ) / √(σ² + ε),  Y = γ X̂ + β   X, Y: ({n}, {in_dim})  γ, β: ({in_dim},)",
            "dX = γ/√(σ²+ε) · (dY − Σ dY/N − X̂ ⊙ Σ(dY ⊙ X̂)/N)",
        ]

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), **self.init_args()}

    def init_args(self) -> dict[str, Any]:
        return {"num_features": self.num_features, "momentum": self.momentum, "eps": self.eps}
