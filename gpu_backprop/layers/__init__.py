"""Layers: each forward and its backward in one place, in matrix form over a whole batch.

Row-batch convention: a batch ``X`` is ``(N, D)``, one sample per row.
A layer's ``forward(X, train)`` returns its output and keeps what its
``backward(dY)`` needs; ``backward`` writes parameter gradients into the views
the network gave it (``layer.grads``) and returns ``dX`` (or ``None`` where
the network does not need it: the first layer).

Buffers are allocated once per batch shape and reused, so a training step
allocates nothing (the backward may overwrite the incoming gradient in place).

    base          Layer: the parameters' views, reused buffers, state, spec
    activations   Identity, ReLU, LeakyReLU, Sigmoid, Tanh: ``dZ = dA ⊙ f'(A)``
    dense         Dense: ``Z = X W + b``, ``dW = Xᵀ dZ``, ``db = Σ dZ``, ``dX = dZ Wᵀ``
    batchnorm     BatchNorm: each feature normalised over the batch, closed-form backward
    dropout       Dropout: inverted dropout with a counter-based mask
"""

from __future__ import annotations

from .activations import Activation, Identity, LeakyReLU, ReLU, Sigmoid, Tanh, make_activation
from .base import Layer
from .batchnorm import BatchNorm
from .dense import Dense
from .dropout import Dropout

__all__ = ["LAYER_TYPES", "Activation", "BatchNorm", "Dense", "Dropout", "Identity", "Layer", "LeakyReLU", "ReLU",
           "Sigmoid", "Tanh", "make_activation"]

#: every built-in layer by its class name (``spec()["type"]``), for rebuilding a network from its config
LAYER_TYPES: dict[str, type[Layer]] = {
    c.__name__: c for c in (Dense, BatchNorm, Dropout, Identity, ReLU, LeakyReLU, Sigmoid, Tanh)
}
