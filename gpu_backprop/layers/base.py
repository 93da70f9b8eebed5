"""The base class of every layer: parameters as views, reused buffers, and what each layer says about itself."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..backend import get_array_module

Array = Any


class Buffers:
    """Arrays reused from step to step, by name and shape, so that a training step allocates nothing.

    A few shapes are kept per name (the training batch, an epoch's last batch,
    evaluation); a fourth replaces the oldest.
    """

    KEEP = 3

    def __init__(self) -> None:
        self._arrays: dict[tuple[str, tuple[int, ...]], Array] = {}

    def get(self, name: str, shape: tuple[int, ...], like: Array) -> Array:
        """The buffer called ``name`` of ``shape``, with ``like``'s dtype and device: made once, then reused."""
        key = (name, shape)
        buf = self._arrays.get(key)
        if buf is None or buf.dtype != like.dtype:
            same_name = [k for k in self._arrays if k[0] == name]
            if len(same_name) >= self.KEEP:
                del self._arrays[same_name[0]]
            buf = self._arrays[key] = get_array_module(like).empty(shape, dtype=like.dtype)
        return buf

    def clear(self) -> None:
        """Drop every buffer (they come back on the next call)."""
        self._arrays.clear()


class Layer:
    """Base class: no parameters, no buffers; subclasses fill in what they have."""

    #: parameter and gradient views into the network's flat buffers (set by the network)
    params: dict[str, Array]
    grads: dict[str, Array]
    #: the attributes ``forward`` sets for ``backward`` (what it keeps of the last batch); a pickle leaves them out
    per_batch: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.params = {}
        self.grads = {}
        self.buffers = Buffers()  #: the layer's outputs and gradients, reused from step to step

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

    def release_buffers(self) -> None:
        """Drop the cached buffers and the last batch (they come back on the next forward)."""
        self.buffers.clear()
        for name in self.per_batch:
            self.__dict__.pop(name, None)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec().items() if k != "type")
        return f"{type(self).__name__}({args})"
