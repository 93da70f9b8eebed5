"""Optimisers: one fused update over the network's flat parameter buffer per step.

    opt = SGD(net, lr=0.1, momentum=0.9)
    net.train_step_grads(X, y)    # or net.loss_and_grads(X, y)
    opt.step()

Weight decay applies to the weights (the first ``net.n_decay`` entries of the
flat buffer), not to biases or BatchNorm parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import kernels
from .backend import is_cupy_array, to_device, to_numpy
from .network import Sequential

__all__ = ["OPTIMIZERS", "SGD", "Adam", "AdamW", "Optimizer", "make_optimizer"]


def _check(name: str, value: float, lo: float, hi: float = math.inf, lo_open: bool = False) -> float:
    v = float(value)
    ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and v < hi
    if not ok:
        left = "(" if lo_open else "["
        raise ValueError(f"{name} must be in {left}{lo}, {hi}), got {value!r}")
    return v


#: the valid values of each hyper-parameter an optimiser's state may restore: (low, high, low excluded)
_HYPER_RANGES: dict[str, tuple[float, float, bool]] = {
    "lr": (0.0, math.inf, True), "momentum": (0.0, 1.0, False), "weight_decay": (0.0, math.inf, False),
    "beta1": (0.0, 1.0, False), "beta2": (0.0, 1.0, False), "eps": (0.0, math.inf, True),
}


def _checked_hyper(saved: Any, current: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters in a saved state, each known, of the right type and in range (else one sentence)."""
    if not isinstance(saved, Mapping):
        raise TypeError(f"optimizer state hyper must be a dict, got {type(saved).__name__}")
    out: dict[str, Any] = {}
    for k, v in saved.items():
        if k not in current:
            raise ValueError(f"optimizer state has an unknown hyper-parameter {k!r}; "
                             f"this optimizer has {', '.join(current)}")
        if isinstance(current[k], bool):
            if not isinstance(v, (bool, np.bool_)):
                raise TypeError(f"optimizer state hyper-parameter {k} must be true or false, got {v!r}")
            out[k] = bool(v)
            continue
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"optimizer state hyper-parameter {k} must be a number, got {v!r}")
        lo, hi, lo_open = _HYPER_RANGES.get(k, (-math.inf, math.inf, False))
        out[k] = _check(f"optimizer state hyper-parameter {k}", float(v), lo, hi, lo_open)
    if out.get("nesterov", current.get("nesterov")) and out.get("momentum", current.get("momentum", 1.0)) == 0.0:
        raise ValueError("optimizer state has Nesterov momentum with momentum 0")
    return out


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

    def state_dict(self) -> dict[str, Any]:
        """Hyper-parameters, step count and state buffers (as NumPy arrays)."""
        d: dict[str, Any] = {"name": self.name, "steps": self.steps, "hyper": self.hyper()}
        d.update({k: to_numpy(v).copy() for k, v in self.state_buffers().items()})
        return d

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (for the same network): buffers, step count, hyper-parameters.

        The state must hold exactly the buffers this optimiser keeps (e.g. an
        SGD without momentum keeps no velocity), each of the network's shape and
        finite once converted to its dtype; the hyper-parameters must be among
        :meth:`hyper`'s names, each a valid value. Anything else is one sentence
        (ValueError or TypeError), and nothing is changed unless all of it fits.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"an optimizer state is a dict, got {type(state).__name__}")
        if state.get("name") != self.name:
            raise ValueError(f"optimizer state is for {state.get('name')!r}, not {self.name!r}")
        buffers = self.state_buffers()
        given = sorted(k for k in state if k not in ("name", "steps", "hyper"))
        extra, missing = [k for k in given if k not in buffers], [k for k in buffers if k not in state]
        if extra or missing:
            raise ValueError(
                f"the optimizer state {'holds ' + ', '.join(extra) if extra else 'lacks ' + ', '.join(missing)}, "
                f"which this {type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.hyper().items())}) "
                f"{'does not keep' if extra else 'needs'}; it was saved with other settings (e.g. momentum)"
            )
        values = {}
        for k, buf in buffers.items():
            v = np.asarray(to_numpy(state[k]))
            if v.shape != buf.shape:
                raise ValueError(f"optimizer state {k} has shape {v.shape}, the network needs {buf.shape}")
            if v.dtype.kind not in "fiu":
                raise TypeError(f"optimizer state {k} has dtype {v.dtype}; it needs numbers")
            with np.errstate(over="ignore", invalid="ignore"):
                values[k] = v.astype(buf.dtype)
            if not np.isfinite(values[k]).all():
                raise ValueError(f"optimizer state {k} contains NaN or Inf in {buf.dtype} (or values too large for "
                                 "it); refusing to load it")
        steps = state.get("steps")
        if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 0:
            raise ValueError(f"optimizer state steps must be a non-negative integer, got {steps!r}")
        hyper = _checked_hyper(state.get("hyper", {}), self.hyper())
        for k, v in values.items():
            buffers[k][...] = to_device(v, self.net.backend)
        for k, v in hyper.items():
            setattr(self, k, v)
        self.steps = int(steps)

    def __getstate__(self) -> dict[str, Any]:
        """What :mod:`pickle` stores: the attributes, with device arrays copied to the host."""
        saved = dict(vars(self))
        on_device = [k for k, v in saved.items() if is_cupy_array(v)]
        saved.update({k: to_numpy(saved[k]) for k in on_device})
        saved["__on_device__"] = on_device
        return saved

    def __setstate__(self, saved: dict[str, Any]) -> None:
        """Put the state buffers back on the network's device (NumPy if the network came back on NumPy)."""
        saved = dict(saved)
        on_device = saved.pop("__on_device__", [])
        self.__dict__.update(saved)
        for k in on_device:
            setattr(self, k, to_device(saved[k], self.net.backend))

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
