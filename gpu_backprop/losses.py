"""Losses: the value averaged over the batch and its gradient with respect to the network's output.

Each loss takes the output of the last layer (``out``, shape ``(N, C)``) and
the targets, and returns the mean loss over the batch as a device scalar (not
read back to the host, so a training step never waits for the GPU) together
with ``d out``. Targets are either integer labels ``(N,)`` or a float array
``(N, C)``.

=========================  ========================================  ===========================
loss                       value                                     gradient
=========================  ========================================  ===========================
SoftmaxCrossEntropy        −Σ_i log softmax(Z_i)[y_i] / N            dZ = (softmax(Z) − Y) / N
MeanSquaredError           ½ ‖A − T‖² / N                            dA = (A − T) / N
SigmoidBinaryCrossEntropy  Σ_ij [softplus(Z) − T ⊙ Z] / N            dZ = (σ(Z) − T) / N
=========================  ========================================  ===========================
"""

from __future__ import annotations

from typing import Any

from . import kernels
from .backend import get_array_module
from .layers.base import Buffers

__all__ = ["LOSSES", "Loss", "MeanSquaredError", "SigmoidBinaryCrossEntropy", "SoftmaxCrossEntropy", "make_loss"]

Array = Any


class Loss:
    """Base class of the losses."""

    name = "loss"
    #: whether integer labels are used as they are (True) or one-hot encoded first
    takes_labels = False
    #: a network with one output predicts class 1 where its output exceeds this (outputs fitted to 0/1 targets)
    threshold = 0.5
    #: whether float targets must be rows of probabilities (each non-negative, summing to 1)
    probabilities = False

    def __init__(self) -> None:
        self.buffers = Buffers()  #: ``d out`` and the per-row losses, reused from step to step

    def release_buffers(self) -> None:
        """Drop the cached buffers (they come back on the next call)."""
        self.buffers.clear()

    def prepare_targets(self, out: Array, y: Array) -> Array:
        """Integer labels stay labels for losses that index by them; others get one-hot targets."""
        if y.ndim == 1 and not self.takes_labels:
            xp = get_array_module(out)
            t = xp.zeros(out.shape, dtype=out.dtype)
            if out.shape[1] == 1:
                t[:, 0] = y
            else:
                t[xp.arange(y.shape[0]), y] = 1
            return t
        return y

    def forward(self, out: Array, y: Array) -> Array:
        """The mean loss over the batch (a 0-d device array)."""
        return self.forward_backward(out, y, need_grad=False)[0]

    def forward_backward(self, out: Array, y: Array, need_grad: bool = True) -> tuple[Array, Array | None]:
        """``(mean loss, d out)``; ``d out`` lives in a reused buffer."""
        raise NotImplementedError

    def predict(self, out: Array) -> Array:
        """Turn the last layer's output into predictions (probabilities for classifiers), a new array."""
        return out.copy()

    def equations(self, n: int, c: int) -> list[str]:
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SoftmaxCrossEntropy(Loss):
    """Softmax and cross-entropy fused: ``L = −Σ_i log softmax(Z_i)[y_i] / N``, ``dZ = (A − Y) / N``.

    ``Z`` is ``(N, C)`` logits. Integer labels index the softmax directly (no
    one-hot matrix is built); ``(N, C)`` targets may be one-hot or soft. The
    row max is subtracted before ``exp`` and the log is taken of the sum of
    exponentials, so no probability is ever logged and nothing overflows.
    One row-wise kernel computes softmax, loss and gradient (``softmax_xent``).
    """

    name = "softmax_cross_entropy"
    probabilities = True  # dZ = (A − T) / N is the gradient of L only where each row of T sums to 1
    takes_labels = True

    def forward_backward(self, out: Array, y: Array, need_grad: bool = True) -> tuple[Array, Array | None]:
        n = out.shape[0]
        rows = self.buffers.get("rows", (n,), out)
        dz = self.buffers.get("dZ", out.shape, out) if need_grad else None
        labels, targets = (y, None) if y.ndim == 1 else (None, y)
        kernels.softmax_cross_entropy(out, labels, targets, dz, rows)
        return rows.sum() / n, dz

    def predict(self, out: Array) -> Array:
        return kernels.softmax(out)

    def equations(self, n: int, c: int) -> list[str]:
        return [
            f"A = softmax(Z)   ({n}, {c}), row max subtracted",
            f"L = −Σ log A[i, y_i] / {n}",
            f"dZ = (A − Y) / {n}   ({n}, {c})   [one kernel, no one-hot built]",
        ]


class MeanSquaredError(Loss):
    """Quadratic cost ``L = ½ ‖A − T‖² / N``, ``dA = (A − T) / N``.

    Integer labels are one-hot encoded (the book's 784-30-10 network trains so).
    """

    name = "mse"

    def forward_backward(self, out: Array, y: Array, need_grad: bool = True) -> tuple[Array, Array | None]:
        xp = get_array_module(out)
        n = out.shape[0]
        t = self.prepare_targets(out, y)
        diff = self.buffers.get("dA", out.shape, out)
        xp.subtract(out, t, out=diff)
        loss = 0.5 * xp.vdot(diff, diff) / n
        if not need_grad:
            return loss, None
        diff *= 1.0 / n
        return loss, diff

    def equations(self, n: int, c: int) -> list[str]:
        return [f"L = ½ ‖A − T‖² / {n}", f"dA = (A − T) / {n}   ({n}, {c})"]


class SigmoidBinaryCrossEntropy(Loss):
    """Sigmoid and binary cross-entropy fused, on logits ``Z``.

    ``L = Σ_ij [max(z, 0) − z t + log(1 + e^{−|z|})] / N`` (the stable form of
    ``−t log σ(z) − (1 − t) log(1 − σ(z))``), ``dZ = (σ(Z) − T) / N``.
    Integer labels of a one-output network are the targets 0/1; with several
    outputs they are one-hot encoded.
    """

    name = "sigmoid_binary_cross_entropy"
    threshold = 0.0  # the outputs are logits: σ(z) > ½ where z > 0

    def forward_backward(self, out: Array, y: Array, need_grad: bool = True) -> tuple[Array, Array | None]:
        xp = get_array_module(out)
        n = out.shape[0]
        t = self.prepare_targets(out, y)
        loss = (xp.maximum(out, 0) - out * t + xp.log1p(xp.exp(-xp.abs(out)))).sum() / n
        if not need_grad:
            return loss, None
        dz = self.buffers.get("dZ", out.shape, out)
        dz[...] = out
        kernels.bias_activation(dz, None, "sigmoid")
        dz -= t
        dz *= 1.0 / n
        return loss, dz

    def predict(self, out: Array) -> Array:
        p = out.copy()
        return kernels.bias_activation(p, None, "sigmoid")

    def equations(self, n: int, c: int) -> list[str]:
        return [f"L = Σ [softplus(Z) − T ⊙ Z] / {n}", f"dZ = (σ(Z) − T) / {n}   ({n}, {c})"]


_LOSSES: dict[str, type[Loss]] = {
    "softmax_cross_entropy": SoftmaxCrossEntropy,
    "cross_entropy": SoftmaxCrossEntropy,
    "mse": MeanSquaredError,
    "quadratic": MeanSquaredError,
    "sigmoid_binary_cross_entropy": SigmoidBinaryCrossEntropy,
    "bce": SigmoidBinaryCrossEntropy,
}
LOSSES = tuple(_LOSSES)


def make_loss(loss: str | Loss) -> Loss:
    """A loss from its name (``"softmax_cross_entropy"``, ``"mse"``, ``"bce"``, ...) or a :class:`Loss`."""
    if isinstance(loss, Loss):
        return loss
    key = str(loss).lower().replace("-", "_")
    if key not in _LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    return _LOSSES[key]()
