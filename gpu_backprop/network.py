"""Networks: a sequence of layers, a loss, and one flat buffer for all parameters.

A :class:`Sequential` network builds itself from its layers (an activation
after a Dense layer runs fused into it; the first layer with parameters
computes no dX), lays out every parameter in one flat buffer
(:class:`~gpu_backprop.params.FlatParameters`: weights first, so weight decay
applies to a prefix) and hands each layer views into it. Then it runs the
batch forward, the loss, and the batch backward, which fills the flat
gradient buffer; the optimiser updates the flat parameter buffer in one pass.

    net = Sequential([Dense(784, 256), ReLU(), Dense(256, 10)], loss="softmax_cross_entropy")
    net = MLP([784, 256, 10], activation="relu")          # the same network
    loss, grads = net.loss_and_grads(X, y)

:meth:`Sequential.describe` writes its equations with every shape filled in.
Saving, loading (checked), copying and pickling a network come from
:class:`~gpu_backprop.state.NetworkState`, which it inherits.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from .backend import Backend, get_backend, to_device
from .checks import DTYPES, check_dtype, check_same_device, check_seed, checked_samples, checked_targets, is_int
from .layers import Activation, BatchNorm, Dense, Dropout, Layer, make_activation
from .losses import Loss, make_loss
from .params import FlatParameters, Slot
from .predict import Predictions
from .state import NetworkState, StateEntry

__all__ = ["DTYPES", "MLP", "Sequential", "StateEntry"]

Array = Any

#: the network whose buffers hold each layer's parameters, by the layer's id (an entry goes with its network,
#: and a network keeps its layers alive, so their ids stay theirs)
_NETWORK_OF: weakref.WeakValueDictionary[int, Sequential] = weakref.WeakValueDictionary()


class Sequential(NetworkState, Predictions):
    """Layers applied in order, then a loss.

    Parameters
    ----------
    layers : the layers; an activation right after a :class:`Dense` layer is
        fused into it (one kernel for bias and activation).
    loss : a :class:`Loss` or its name.
    backend : ``"auto"``, ``"numpy"``, ``"cupy"`` or a :class:`Backend`.
    dtype : ``"float32"`` (default) or ``"float64"``.
    seed : seeds the initial weights (drawn on the host, so the same on every
        backend) and the dropout masks.
    input_dim : the width of the input; taken from the first layer when omitted.

    Attributes
    ----------
    flat : the :class:`~gpu_backprop.params.FlatParameters` that holds every
        parameter and gradient; the next five are its, under the network's name.
    flat_params, flat_grads : every parameter, and every gradient, in one buffer
        (weights first); write into them, never replace them (the layers' views
        would keep the old ones).
    params, grads : ``"layers.{index}.{name}"`` -> the view into each buffer
        (``"layers.0.W"``); each layer computes through the same views.
    n_decay : weight decay applies to ``flat_params[:n_decay]``: the weights, not biases.
    output_dim : the width of the last layer's output.
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        loss: str | Loss = "softmax_cross_entropy",
        *,
        backend: str | Backend | None = None,
        dtype: Any = "float32",
        seed: int = 0,
        input_dim: int | None = None,
    ) -> None:
        layers = list(layers)
        if not layers:
            raise ValueError("a network needs at least one layer")
        place: dict[int, int] = {}
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layers[{i}] is a {type(layer).__name__}, not a gpu_backprop Layer")
            if id(layer) in _NETWORK_OF:
                raise ValueError(f"layers[{i}] ({layer!r}) belongs to another network, whose parameters it holds; "
                                 "give each network layers of its own (net.copy() copies a whole network)")
            if id(layer) in place and not (isinstance(layer, Activation) and isinstance(layers[i - 1], Dense)):
                raise ValueError(f"layers[{i}] is layers[{place[id(layer)]}] again; give each place a layer of its "
                                 "own (only an activation after a Dense, fused into it, may serve several)")
            place.setdefault(id(layer), i)
        self.layers = layers
        self.loss = make_loss(loss)
        self.backend = get_backend(backend)
        self.dtype = check_dtype(dtype)
        self.seed = check_seed("seed", seed)
        self.input_dim = int(input_dim) if input_dim is not None else self._infer_input_dim()
        self._steps = self._fuse()
        self._needs_dx = self._which_need_dx()
        if self.output_dim == 1 and self.loss.name == "softmax_cross_entropy":
            raise ValueError("softmax cross-entropy needs at least 2 outputs: the softmax of one output is always 1, "
                             "so nothing would be learned; use loss='bce' for a binary classifier with one output")
        self.flat = self._allocate()
        self.flat_params, self.flat_grads = self.flat.flat_params, self.flat.flat_grads
        self.params, self.grads, self.n_decay = self.flat.params, self.flat.grads, self.flat.n_decay
        self.reset_parameters()
        for i, layer in enumerate(self.layers):  # built: a Dropout given no seed takes one from the network's
            if isinstance(layer, Dropout) and layer.seed == 0:
                layer.seed = (self.seed * 1_000_003 + i) % 2**64
        _NETWORK_OF.update({id(layer): self for layer in self._steps})

    # ------------------------------------------------------------------ build
    def _infer_input_dim(self) -> int:
        first = self.layers[0]
        if isinstance(first, Dense):
            return first.in_features
        if isinstance(first, BatchNorm):
            return first.num_features
        for layer in self.layers:
            if isinstance(layer, Dense):
                return layer.in_features
        raise ValueError("cannot tell the input width from the layers; pass input_dim=")

    def _fuse(self) -> list[Layer]:
        """The layers that run: an activation after a Dense layer becomes part of it."""
        steps: list[Layer] = []
        for layer in self.layers:
            if isinstance(layer, Activation) and steps and isinstance(steps[-1], Dense) \
                    and steps[-1].activation is None:
                steps[-1].activation = layer
                continue
            if isinstance(layer, Dense):
                layer.activation = None
            steps.append(layer)
        return steps

    def _which_need_dx(self) -> list[bool]:
        """A layer needs dX only if some layer before it has parameters (no dX for the first Dense)."""
        need, seen_params = [], False
        d = self.input_dim
        for layer in self._steps:
            need.append(seen_params)
            seen_params = seen_params or bool(layer.param_shapes(d))
            d = layer.out_dim(d)
        self.output_dim = d
        return need

    def _allocate(self) -> FlatParameters:
        """One flat buffer for every parameter (see :mod:`.params`), its views handed to the layers."""
        shapes: dict[str, tuple[int, ...]] = {}
        decayed: list[str] = []
        owners: dict[str, tuple[Layer, str]] = {}
        d = self.input_dim
        for idx, layer in enumerate(self.layers):
            if layer in self._steps:
                for pname, shape in layer.param_shapes(d).items():
                    name = f"layers.{idx}.{pname}"
                    shapes[name], owners[name] = shape, (layer, pname)
                    if pname in layer.decayed_params():
                        decayed.append(name)
                d = layer.out_dim(d)
        flat = FlatParameters(shapes, decayed, self.backend.xp, self.dtype)
        self._name_of = {(id(layer), pname): name for name, (layer, pname) in owners.items()}
        for name, (layer, pname) in owners.items():
            layer.params[pname] = flat.params[name]
            layer.grads[pname] = flat.grads[name]
        return flat

    # ------------------------------------------------------------------ the parameters (see .params)
    @property
    def num_params(self) -> int:
        """The number of trainable parameters (without alignment padding)."""
        return self.flat.num_params

    @property
    def steps(self) -> tuple[Layer, ...]:
        """The layers as they run: each activation that follows a :class:`Dense` layer fused into it."""
        return tuple(self._steps)

    def slot(self, layer: Layer, pname: str) -> Slot:
        """Where ``layer``'s parameter ``pname`` lies in :attr:`flat_params`: ``(offset, shape)``."""
        return self.flat.slots[self._name_of[(id(layer), pname)]]

    def view(self, flat: Array, layer: Layer, pname: str) -> Array:
        """The view of ``layer``'s parameter ``pname`` in ``flat``, a buffer laid out like ``flat_params``.

        Optimisers use it to reach one parameter's slice of their state (e.g. the velocity).
        """
        return self.flat.view(flat, self._name_of[(id(layer), pname)])

    def reset_parameters(self, seed: int | None = None) -> None:
        """Draw fresh initial weights from ``seed`` (on the host, then copied to the device once).

        Only the parameters: running statistics and dropout counters stay (a new network starts afresh).
        """
        rng = np.random.default_rng(self.seed if seed is None else check_seed("seed", seed))
        d = self.input_dim
        for layer in self._steps:
            for pname, value in layer.initial_params(rng, d).items():
                layer.params[pname][...] = to_device(value.astype(self.dtype), self.backend)
            d = layer.out_dim(d)

    @property
    def xp(self) -> Any:
        return self.backend.xp

    # ------------------------------------------------------------------ checks at the boundary
    def check_inputs(self, X: Any, y: Any = None) -> tuple[Array, Array | None]:
        """Validate and convert ``X`` (and targets ``y``) at the API boundary (see :mod:`.checks`).

        Returns ``X`` as ``(N, D)`` rows in this network's dtype (uint8 images
        scaled by 1/255) and ``y`` as int64 labels or float targets, all on this
        network's device, where they must already be (``gb.to_device`` moves them).
        Raises :class:`TypeError` for wrong types, devices or dtypes and
        :class:`ValueError` for wrong shapes, empty batches, labels out of range
        and non-finite values, each with a sentence that says how to fix it.
        """
        check_same_device(self.backend, X=X, y=y)
        X = checked_samples(X, self.backend, self.input_dim, self.dtype)
        if y is None:
            return X, None
        return X, checked_targets(y, self.backend, X.shape[0], self.output_dim, self.dtype,
                                  probabilities=self.loss.probabilities)

    # ------------------------------------------------------------------ computation
    def forward(self, X: Array, train: bool = False) -> Array:
        """The last layer's output for a checked batch (a reused buffer: copy it to keep it)."""
        a = X
        for layer in self._steps:
            a = layer.forward(a, train)
        self.last_output = a
        return a

    def backward(self, dout: Array, weight_grads: bool = True) -> None:
        """Backpropagate ``d out`` through the layers, filling ``flat_grads``.

        ``weight_grads=False`` leaves the Dense weights' ``dW = Xᵀ dZ`` out of
        ``flat_grads``, for an optimiser that adds them into its update itself
        (see :meth:`deferred_weight_grads`).
        """
        d = dout
        for layer, need_dx in zip(reversed(self._steps), reversed(self._needs_dx)):
            d = layer.backward(d, need_dx, weight_grads)
            if not need_dx:
                break  # the layers before this one have no parameters (a leading Dropout, say)

    def deferred_weight_grads(self) -> list[tuple[int, Array, Array]]:
        """``(offset, X, dZ)`` for each Dense layer after a ``backward(..., weight_grads=False)``.

        The gradient of the weights at ``flat_grads[offset:]`` (shape ``(D, M)``)
        is ``Xᵀ dZ``; :func:`gpu_backprop.kernels.sgd_update` takes this list.
        """
        return [(self.slot(layer, "W").offset, *layer.weight_grad_inputs())
                for layer in self._steps if isinstance(layer, Dense)]

    def train_step_grads(self, X: Array, y: Array, weight_grads: bool = True) -> Array:
        """Forward in training mode, loss, backward; returns the loss as a device scalar.

        No checks and no host synchronisation: the trainer's hot path. ``X`` and
        ``y`` must already be valid arrays on this network's device.
        ``weight_grads``: see :meth:`backward`.
        """
        out = self.forward(X, train=True)
        loss, dout = self.loss.forward_backward(out, y)
        self.backward(dout, weight_grads)
        return loss

    def loss_and_grads(self, X: Any, y: Any, train: bool = True) -> tuple[float, dict[str, Array]]:
        """The mean loss on ``(X, y)`` and its gradient with respect to every parameter.

        A pure function of the current parameters: running statistics and
        dropout counters are put back afterwards. The gradients are fresh arrays
        on this network's backend, keyed like :attr:`params`; the network's own
        gradient buffer also holds them, ready for ``optimizer.step()``.
        """
        X, y = self.check_inputs(X, y)
        saved = self.layer_states()
        try:
            loss = self.train_step_grads(X, y) if train else self._eval_grads(X, y)
        finally:  # on an error too (a BatchNorm that refuses one sample has made its statistics by then)
            self.restore_layer_states(saved)
        return float(loss), {k: g.copy() for k, g in self.grads.items()}

    def _eval_grads(self, X: Array, y: Array) -> Array:
        out = self.forward(X, train=False)
        loss, dout = self.loss.forward_backward(out, y)
        self.backward(dout)
        return loss

    # ------------------------------------------------------------------ description
    def describe(self, batch: int = 128) -> str:
        """The matrix-form equations of this network with every shape filled in for ``batch``."""
        lines = [(f"{type(self).__name__}: {self.num_params:,} parameters, {self.dtype.name}, "
                  f"{self.backend.name} ({self.backend.device}), batch N = {batch}")]
        d = self.input_dim
        for idx, layer in enumerate(self.layers):
            if layer not in self._steps:
                continue
            lines.append(f"layers.{idx}: {layer!r}" + (f" + {layer.activation!r}" if isinstance(layer, Dense)
                                                         and layer.activation else ""))
            eqs = layer.equations(batch, d)
            need_dx = self._needs_dx[self._steps.index(layer)]
            lines += [f"    {e}" for e in eqs if need_dx or not e.startswith("dX")]
            if not need_dx and any(e.startswith("dX") for e in eqs):
                lines.append("    (no dX: nothing before this layer has parameters)")
            d = layer.out_dim(d)
        lines.append(f"loss: {self.loss!r}")
        lines += [f"    {e}" for e in self.loss.equations(batch, self.output_dim)]
        return "\n".join(lines)

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"{type(self).__name__}([{inner}], loss={self.loss!r}, backend={self.backend.name!r}, dtype={self.dtype.name!r})"


class MLP(Sequential):
    """A multi-layer perceptron from its layer sizes.

    ``MLP([784, 256, 256, 10], activation="relu")`` is
    ``Dense(784, 256), ReLU(), Dense(256, 256), ReLU(), Dense(256, 10)`` with a
    softmax cross-entropy loss. ``output_activation`` adds an activation after the
    last layer (e.g. ``"sigmoid"`` with ``loss="mse"`` for the book's network);
    ``batchnorm`` puts a BatchNorm before each hidden activation; ``dropout``
    puts Dropout after each hidden activation.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str = "relu",
        loss: str | Loss = "softmax_cross_entropy",
        *,
        output_activation: str | None = None,
        batchnorm: bool = False,
        dropout: float = 0.0,
        init: str = "auto",
        backend: str | Backend | None = None,
        dtype: Any = "float32",
        seed: int = 0,
    ) -> None:
        sizes = list(sizes)
        if len(sizes) < 2 or not all(is_int(s) and s > 0 for s in sizes):
            raise ValueError(f"MLP sizes must be at least two positive integers, got {sizes!r}")
        make_activation(activation)  # validates the name early
        layers: list[Layer] = []
        for i, (d, m) in enumerate(itertools.pairwise(sizes)):
            layers.append(Dense(d, m, init=init))
            if i < len(sizes) - 2:
                if batchnorm:
                    layers.append(BatchNorm(m))
                layers.append(make_activation(activation))
                if dropout:
                    layers.append(Dropout(dropout))
        if output_activation is not None:
            layers.append(make_activation(output_activation))
        self.sizes = sizes
        super().__init__(layers, loss=loss, backend=backend, dtype=dtype, seed=seed, input_dim=sizes[0])
