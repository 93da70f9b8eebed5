"""Layers: each forward and its backward in one place, in matrix form over a whole batch.

Row-batch convention: a batch ``X`` is ``(N, D)``, one sample per row.
A layer's ``forward(X, train)`` returns its output and keeps what its
``backward(dY)`` needs; ``backward`` writes parameter gradients into the views
the network gave it (``layer.grads``) and returns ``dX`` (or ``None`` where
the network does not need it: the first layer).

Buffers are allocated once per batch shape and reused, so a training step
allocates nothing (the backward may overwrite the incoming gradient in place).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import kernels
from .backend import get_array_module
from .init import INITIALIZERS, default_initializer, initialize

__all__ = [
    "LAYER_TYPES",
    "Activation",
    "BatchNorm",
    "Dense",
    "Dropout",
    "Identity",
    "Layer",
    "LeakyReLU",
    "ReLU",
    "Sigmoid",
    "Tanh",
    "make_activation",
]

Array = Any


class Layer:
    """Base class: no parameters, no buffers; subclasses fill in what they have."""

    #: parameter and gradient views into the network's flat buffers (set by the network)
    params: dict[str, Array]
    grads: dict[str, Array]

    def __init__(self) -> None:
        self.params = {}
        self.grads = {}
        self._buffers: dict[tuple[str, tuple[int, ...]], Array] = {}

    # --- parameters ---------------------------------------------------------
    def param_shapes(self, in_dim: int) -> dict[str, tuple[int, ...]]:
        """Shapes of this layer's parameters for input width ``in_dim``."""
        return {}

    def decayed_params(self) -> tuple[str, ...]:
        """Names of the parameters that weight decay applies to (weights, not biases)."""
        return ()

    def initial_params(self, rng: np.random.Generator, in_dim: int) -> dict[str, np.ndarray]:
        """Initial parameter values on the host, float64."""
        return {}

    def out_dim(self, in_dim: int) -> int:
        return in_dim

    # --- state that is not a parameter (running statistics, RNG counters) ----
    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned."""

    # --- computation --------------------------------------------------------
    def forward(self, x: Array, train: bool = False) -> Array:
        raise NotImplementedError

    def backward(self, dy: Array, need_dx: bool = True, need_dw: bool = True) -> Array | None:
        """Parameter gradients into :attr:`grads` and ``dX`` (None unless ``need_dx``).

        ``need_dw=False`` leaves out the weight matrix's ``dW = Xᵀ dZ`` (Dense only:
        an optimiser adds it straight into its update, see :meth:`Dense.weight_grad_inputs`).
        """
        raise NotImplementedError

    def equations(self, n: int, in_dim: int) -> list[str]:
        """The matrix-form equations of this layer, with shapes for batch ``n``."""
        return []

    def spec(self) -> dict[str, Any]:
        """A JSON-able description used to check that a checkpoint fits this layer."""
        return {"type": type(self).__name__}

    def init_args(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this layer (``type(layer)(**layer.init_args())``)."""
        return {}

    # --- helpers --------------------------------------------------------------
    def _buffer(self, name: str, shape: tuple[int, ...], like: Array) -> Array:
        """A buffer called ``name`` of ``shape``, allocated once and reused."""
        key = (name, shape)
        buf = self._buffers.get(key)
        if buf is None or buf.dtype != like.dtype:
            same_name = [k for k in self._buffers if k[0] == name]
            if len(same_name) >= 3:  # a few batch shapes (train, last batch, eval) at most
                del self._buffers[same_name[0]]
            xp = get_array_module(like)
            buf = self._buffers[key] = xp.empty(shape, dtype=like.dtype)
        return buf

    def release_buffers(self) -> None:
        """Drop the cached buffers (they come back on the next forward)."""
        self._buffers.clear()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec().items() if k != "type")
        return f"{type(self).__name__}({args})"


# ==========================================================================
# Activations
# ==========================================================================
class Activation(Layer):
    """``A = f(Z)`` elementwise; backward ``dZ = dA ⊙ f'(Z)`` with f' taken from A.

    ====================  ==========================  ====================
    kind                  f(z)                        f' from a = f(z)
    ====================  ==========================  ====================
    ``identity``          z                           1
    ``relu``              max(z, 0)                   [a > 0]
    ``leaky_relu``        z if z > 0 else αz          1 if a > 0 else α
    ``sigmoid``           ½ tanh(z/2) + ½             a (1 − a)
    ``tanh``              tanh z                      1 − a²
    ====================  ==========================  ====================

    Inside a network, an activation that follows a :class:`Dense` layer runs
    fused with it (one kernel for bias and activation); on its own it keeps
    its output and works in place on the incoming gradient.
    """

    kind = "identity"
    alpha = 0.0  # the slope of LeakyReLU's negative side; unused by the others

    def forward(self, x: Array, train: bool = False) -> Array:
        a = self._buffer("A", x.shape, x)
        a[...] = x
        kernels.bias_activation(a, None, self.kind, self.alpha)
        self._a = a
        return a

    def backward(self, dy: Array, need_dx: bool = True, need_dw: bool = True) -> Array | None:
        return kernels.activation_backward(dy, self._a, self.kind, self.alpha)

    def equations(self, n: int, in_dim: int) -> list[str]:
        return [f"A = {self.kind}(Z)   ({n}, {in_dim})", f"dZ = dA ⊙ {self.kind}'(A)   ({n}, {in_dim})"]

    def spec(self) -> dict[str, Any]:
        s: dict[str, Any] = {"type": type(self).__name__}
        if self.kind == "leaky_relu":
            s["alpha"] = self.alpha
        return s


class Identity(Activation):
    """``f(z) = z``."""

    kind = "identity"


class ReLU(Activation):
    """``f(z) = max(z, 0)``, ``f' = [a > 0]``."""

    kind = "relu"


class LeakyReLU(Activation):
    """``f(z) = z`` for z > 0, ``αz`` otherwise; ``f' = 1`` or ``α``."""

    kind = "leaky_relu"

    def __init__(self, alpha: float = 0.01) -> None:
        super().__init__()
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"LeakyReLU alpha must be in (0, 1), got {alpha}")
        self.alpha = float(alpha)

    def init_args(self) -> dict[str, Any]:
        return {"alpha": self.alpha}


class Sigmoid(Activation):
    """``f(z) = 1 / (1 + e^-z)``, computed as ``½ tanh(z/2) + ½`` (no overflow); ``f' = a(1 − a)``."""

    kind = "sigmoid"


class Tanh(Activation):
    """``f(z) = tanh z``, ``f' = 1 − a²``."""

    kind = "tanh"


_ACTIVATION_CLASSES: dict[str, type[Activation]] = {
    c.kind: c for c in (Identity, ReLU, LeakyReLU, Sigmoid, Tanh)
}


def make_activation(name: str) -> Activation:
    """An activation layer from its name (``"relu"``, ``"sigmoid"``, ...)."""
    key = name.lower().replace("-", "_")
    if key not in _ACTIVATION_CLASSES:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(_ACTIVATION_CLASSES)}")
    return _ACTIVATION_CLASSES[key]()


# ==========================================================================
# Dense
# ==========================================================================
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

    def __init__(self, in_features: int, out_features: int, init: str = "auto") -> None:
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Dense {name} must be a positive integer, got {v!r}")
        if init != "auto" and init not in INITIALIZERS:
            raise ValueError(f"unknown initializer {init!r}; choose 'auto' or one of {', '.join(INITIALIZERS)}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
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
        z = self._buffer("Z", (x.shape[0], self.out_features), x)
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
        dx = self._buffer("dX", self._x.shape, dz)
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
        return {"type": "Dense", "in_features": self.in_features, "out_features": self.out_features}

    def init_args(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "init": self.init}


# ==========================================================================
# BatchNorm
# ==========================================================================
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

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        if not isinstance(num_features, (int, np.integer)) or num_features < 1:
            raise ValueError(f"BatchNorm num_features must be a positive integer, got {num_features!r}")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"BatchNorm momentum must be in (0, 1], got {momentum}")
        self.num_features = int(num_features)
        self.momentum = float(momentum)
        self.eps = float(eps)
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
        xhat = self._buffer("Xhat", x.shape, x)
        y = self._buffer("Y", x.shape, x)
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
        dx = self._buffer("dX", dy.shape, dy)
        if self._train:
            kernels.batchnorm_backward(dy, xhat, scale, dgamma, dbeta, dy.shape[0], dx)
        else:
            xp.multiply(dy, scale, out=dx)
        return dx

    def state(self) -> dict[str, Any]:
        if self.running_mean is None:
            return {}
        return {"running_mean": self.running_mean, "running_var": self.running_var}

    def load_state(self, state: dict[str, Any]) -> None:
        if "running_mean" in state:
            self.running_mean = state["running_mean"]
            self.running_var = state["running_var"]

    def equations(self, n: int, in_dim: int) -> list[str]:
        return [
            f"X̂ = (X − μ) / √(σ² + ε),  Y = γ X̂ + β   X, Y: ({n}, {in_dim})  γ, β: ({in_dim},)",
            "dX = γ/√(σ²+ε) · (dY − Σ dY/N − X̂ ⊙ Σ(dY ⊙ X̂)/N)",
        ]

    def spec(self) -> dict[str, Any]:
        return {"type": "BatchNorm", "num_features": self.num_features}

    def init_args(self) -> dict[str, Any]:
        return {"num_features": self.num_features, "momentum": self.momentum, "eps": self.eps}


# ==========================================================================
# Dropout
# ==========================================================================
class Dropout(Layer):
    """Inverted dropout: in training ``Y = X ⊙ M`` with ``M = [U ≥ p] / (1 − p)``; identity in eval.

    Backward ``dX = dY ⊙ M`` with the mask kept from the forward. The mask comes
    from a counter-based hash of ``(seed, counter)``: the same bits on NumPy
    and CuPy, and a checkpoint restores the stream exactly (it is two integers).
    """

    def __init__(self, p: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout probability must be in [0, 1), got {p}")
        self.p = float(p)
        self.seed = int(seed)
        self.counter = 0

    def forward(self, x: Array, train: bool = False) -> Array:
        self._masked = train and self.p > 0.0
        if not self._masked:
            return x
        y = self._buffer("Y", x.shape, x)
        y[...] = x
        self._mask = self._buffer("mask", x.shape, x)
        kernels.dropout_forward(y, self.p, self.seed, self.counter, self._mask)
        self.counter += 1
        return y

    def backward(self, dy: Array, need_dx: bool = True, need_dw: bool = True) -> Array | None:
        if not self._masked:
            return dy
        xp = get_array_module(dy)
        xp.multiply(dy, self._mask, out=dy)
        return dy

    def state(self) -> dict[str, Any]:
        return {"seed": self.seed, "counter": self.counter}

    def load_state(self, state: dict[str, Any]) -> None:
        self.seed = int(state.get("seed", self.seed))
        self.counter = int(state.get("counter", self.counter))

    def equations(self, n: int, in_dim: int) -> list[str]:
        return [f"Y = X ⊙ M,  M = [U ≥ {self.p}] / {1 - self.p:g}   ({n}, {in_dim})", "dX = dY ⊙ M"]

    def spec(self) -> dict[str, Any]:
        return {"type": "Dropout", "p": self.p}

    def init_args(self) -> dict[str, Any]:
        return {"p": self.p, "seed": self.seed}


#: every built-in layer by its class name (``spec()["type"]``), for rebuilding a network from its config
LAYER_TYPES: dict[str, type[Layer]] = {
    c.__name__: c for c in (Dense, BatchNorm, Dropout, Identity, ReLU, LeakyReLU, Sigmoid, Tanh)
}
