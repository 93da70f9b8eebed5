"""The base class of every layer: parameters as views, reused buffers, and what each layer says about itself."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import get_array_module

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
