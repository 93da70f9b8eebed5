"""Optimisers: one fused update over the network's flat parameter buffer per step.

    opt = SGD(net, lr=0.1, momentum=0.9)
    net.train_step_grads(X, y)    # or net.loss_and_grads(X, y)
    opt.step()

Weight decay applies to the weights (the first ``net.n_decay`` entries of the
flat buffer), not to biases or BatchNorm parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import kernels
from .network import Sequential
from .state import OptimizerState, check_hyper

__all__ = ["OPTIMIZERS", "SGD", "Adam", "AdamW", "Optimizer", "make_optimizer"]


class Optimizer(OptimizerState):
    """Base class: holds the network, the learning rate and per-parameter state buffers.

    Saving, loading and pickling come from :class:`~gpu_backprop.state.OptimizerState`.
    """

    name = "optimizer"
    work_space = ("_scratch",)  # the update's work buffer
    _scratch: Any

    def __init__(self, net: Sequential, lr: float) -> None:
        if not isinstance(net, Sequential):
            raise TypeError(f"an optimizer takes a gpu_backprop network, got {type(net).__name__}")
        self.net = net
        self.lr = lr
        self.steps = 0
        self.make_work_space()

    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = check_hyper("lr", value, "learning rate")

    def step(self) -> None:
        """Apply one update from the gradients now in ``net.flat_grads``."""
        raise NotImplementedError

    def train_step(self, X: Any, y: Any) -> Any:
        """One training step on a checked batch: gradients, then the update. Returns the loss (a device scalar).

        Optimisers may fuse the two (SGD does for single samples on the CPU);
        the result is the same as ``net.train_step_grads(X, y)`` then ``step()``.
        """
        loss = self.net.train_step_grads(X, y)
        self.step()
        return loss

    def state_buffers(self) -> dict[str, Any]:
        """The optimiser's state by name, on the network's device, each laid out like ``flat_params``."""
        return {}

    def hyper(self) -> dict[str, Any]:
        return {"lr": self.lr}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and weight decay.

    ``g' = g + λ w``; ``v ← μ v + g'``; ``w ← w − η v`` (Nesterov: ``w ← w − η (g' + μ v)``).
    One ``momentum_sgd`` kernel over the flat buffer on a GPU.
    """

    name = "sgd"

    def __init__(self, net: Sequential, lr: float = 0.01, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0) -> None:
        super().__init__(net, lr)
        self.momentum = check_hyper("momentum", momentum)
        self.weight_decay = check_hyper("weight_decay", weight_decay)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"nesterov must be True or False, got {nesterov!r}")
        if nesterov and self.momentum == 0.0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.nesterov = bool(nesterov)
        #: the momentum buffer ``v`` (flat, laid out like the parameters), or None without momentum
        self.velocity = net.xp.zeros_like(net.flat_params) if self.momentum else None

    def step(self, products: Sequence[tuple[int, Any, Any]] = ()) -> None:
        """Apply one update from ``net.flat_grads``; ``products``: weight gradients not in it yet.

        ``products`` is :meth:`Sequential.deferred_weight_grads` after a
        ``train_step_grads(..., weight_grads=False)`` (NumPy only; see :meth:`train_step`).
        """
        net = self.net
        kernels.sgd_update(net.flat_params, net.flat_grads, self.velocity, self._scratch,
                           lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                           nesterov=self.nesterov, n_decay=net.n_decay, products=products)
        self.steps += 1

    def train_step(self, X: Any, y: Any) -> Any:
        """A step; on the CPU, where it pays, ``dW = Xᵀ dZ`` goes straight into the update.

        Per-sample SGD on a CPU is bound by passes over the weights: the gradient
        ``dW = x ⊗ dz`` is a rank-1 matrix, and writing it out, then folding it
        into the velocity, then into the weights, moves the weights' bytes many
        times. So the network leaves the Dense weights' ``dW`` out of
        ``flat_grads`` and the update adds ``Xᵀ dZ`` where it is needed (BLAS
        ``ger`` for one sample, ``gemm`` with ``beta = 1`` for a small batch; see
        :func:`gpu_backprop.kernels.sgd_update`). Same result as
        ``net.train_step_grads(X, y)`` then :meth:`step`, to float rounding
        (tested); ``flat_grads`` then lacks the Dense weights' gradients.
        """
        if not kernels.defers_weight_grads(self.net.backend.name, X.shape[0], self.nesterov):
            return super().train_step(X, y)
        loss = self.net.train_step_grads(X, y, weight_grads=False)
        self.step(self.net.deferred_weight_grads())
        return loss

    def state_buffers(self) -> dict[str, Any]:
        return {"velocity": self.velocity} if self.velocity is not None else {}

    def hyper(self) -> dict[str, Any]:
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; ``weight_decay`` adds ``λ w`` to the gradient.

    One ``adam`` kernel over the flat buffer on a GPU.
    """

    name = "adam"
    decoupled = False

    def __init__(self, net: Sequential, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(net, lr)
        if not (isinstance(betas, Sequence) and len(betas) == 2):
            raise ValueError(f"Adam's betas are two numbers (beta1, beta2), got {betas!r}")
        self.beta1, self.beta2 = check_hyper("beta1", betas[0]), check_hyper("beta2", betas[1])
        self.eps = check_hyper("eps", eps)
        self.weight_decay = check_hyper("weight_decay", weight_decay)
        self.m = net.xp.zeros_like(net.flat_params)
        self.v = net.xp.zeros_like(net.flat_params)

    def step(self) -> None:
        net = self.net
        self.steps += 1
        kernels.adam_update(net.flat_params, net.flat_grads, self.m, self.v, self._scratch,
                            lr=self.lr, beta1=self.beta1, beta2=self.beta2, eps=self.eps,
                            weight_decay=self.weight_decay, decoupled=self.decoupled,
                            step=self.steps, n_decay=net.n_decay)

    def state_buffers(self) -> dict[str, Any]:
        return {"m": self.m, "v": self.v}

    def hyper(self) -> dict[str, Any]:
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps,
                "weight_decay": self.weight_decay}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``w ← w (1 − ηλ)`` before the Adam step."""

    name = "adamw"
    decoupled = True

    def __init__(self, net: Sequential, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01) -> None:
        super().__init__(net, lr, betas, eps, weight_decay)


_OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW}
OPTIMIZERS = tuple(_OPTIMIZERS)


def make_optimizer(name: str, net: Sequential, **kwargs: Any) -> Optimizer:
    """An optimizer from its name (``"sgd"``, ``"adam"``, ``"adamw"``)."""
    key = str(name).lower()
    if key not in _OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return _OPTIMIZERS[key](net, **kwargs)
