"""Optimisers: one fused update over the network's flat parameter buffer per step.

    opt = SGD(net, lr=0.1, momentum=0.9)
    net.train_step_grads(X, y)    # or net.loss_and_grads(X, y)
    opt.step()

Weight decay applies to the weights (the first ``net.n_decay`` entries of the
flat buffer), not to biases or BatchNorm parameters.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import kernels
from .backend import to_device, to_numpy
from .network import Sequential

__all__ = ["OPTIMIZERS", "SGD", "Adam", "AdamW", "Optimizer", "make_optimizer"]


def _check(name: str, value: float, lo: float, hi: float = math.inf, lo_open: bool = False) -> float:
    v = float(value)
    ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and v < hi
    if not ok:
        left = "(" if lo_open else "["
        raise ValueError(f"{name} must be in {left}{lo}, {hi}), got {value!r}")
    return v


class Optimizer:
    """Base class: holds the network, the learning rate and per-parameter state buffers."""

    name = "optimizer"

    def __init__(self, net: Sequential, lr: float) -> None:
        if not isinstance(net, Sequential):
            raise TypeError(f"an optimizer takes a gpu_backprop network, got {type(net).__name__}")
        self.net = net
        self.lr = lr
        self.steps = 0
        self._scratch = net.xp.empty_like(net.flat_params)

    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = _check("learning rate", value, 0.0, lo_open=True)

    def step(self) -> None:
        """Apply one update from the gradients now in ``net.flat_grads``."""
        raise NotImplementedError

    def _buffers(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Hyper-parameters, step count and state buffers (as NumPy arrays)."""
        d: dict[str, Any] = {"name": self.name, "steps": self.steps, "hyper": self.hyper()}
        d.update({k: to_numpy(v).copy() for k, v in self._buffers().items()})
        return d

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (for the same network)."""
        if state.get("name") != self.name:
            raise ValueError(f"optimizer state is for {state.get('name')!r}, not {self.name!r}")
        for k, buf in self._buffers().items():
            v = np.asarray(state[k])
            if v.shape != buf.shape:
                raise ValueError(f"optimizer state {k} has shape {v.shape}, the network needs {buf.shape}")
            buf[...] = to_device(v.astype(buf.dtype), self.net.backend)
        for k, v in state.get("hyper", {}).items():
            setattr(self, k, v)
        self.steps = int(state["steps"])

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
        self.momentum = _check("momentum", momentum, 0.0, 1.0)
        self.weight_decay = _check("weight_decay", weight_decay, 0.0)
        if nesterov and self.momentum == 0.0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.nesterov = bool(nesterov)
        self.velocity = net.xp.zeros_like(net.flat_params) if self.momentum else None

    def step(self) -> None:
        net = self.net
        kernels.sgd_update(net.flat_params, net.flat_grads, self.velocity, self._scratch,
                           lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                           nesterov=self.nesterov, n_decay=net.n_decay)
        self.steps += 1

    def _buffers(self) -> dict[str, Any]:
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
        self.beta1 = _check("beta1", betas[0], 0.0, 1.0)
        self.beta2 = _check("beta2", betas[1], 0.0, 1.0)
        self.eps = _check("eps", eps, 0.0, lo_open=True)
        self.weight_decay = _check("weight_decay", weight_decay, 0.0)
        self.m = net.xp.zeros_like(net.flat_params)
        self.v = net.xp.zeros_like(net.flat_params)

    def step(self) -> None:
        net = self.net
        self.steps += 1
        kernels.adam_update(net.flat_params, net.flat_grads, self.m, self.v, self._scratch,
                            lr=self.lr, beta1=self.beta1, beta2=self.beta2, eps=self.eps,
                            weight_decay=self.weight_decay, decoupled=self.decoupled,
                            step=self.steps, n_decay=net.n_decay)

    def _buffers(self) -> dict[str, Any]:
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
