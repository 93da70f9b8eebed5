"""Activations: ``A = f(Z)`` forward, ``dZ = dA ⊙ f'(A)`` backward, with f' taken from the output."""

from __future__ import annotations

from typing import Any

from .. import kernels
from .base import Layer

Array = Any


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
    per_batch = ("_a",)

    def forward(self, x: Array, train: bool = False) -> Array:
        a = self.buffers.get("A", x.shape, x)
        a[...] = x
        kernels.bias_activation(a, None, self.kind, self.alpha)
        self._a = a
        return a

    def backward(self, dy: Array, need_dx: bool = True, need_dw: bool = True) -> Array | None:
        return kernels.activation_backward(dy, self._a, self.kind, self.alpha)

    def equations(self, n: int, in_dim: int) -> list[str]:
        return [f"A = {self.kind}(Z)   ({n}, {in_dim})", f"dZ = dA ⊙ {self.kind}'(A)   ({n}, {in_dim})"]

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), **self.init_args()}


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
    key = name.lower().replace("-", "_") if isinstance(name, str) else None
    if key not in _ACTIVATION_CLASSES:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(_ACTIVATION_CLASSES)}")
    return _ACTIVATION_CLASSES[key]()
