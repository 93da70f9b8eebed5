"""The flat parameter buffer: every parameter of a network in one array, each reached by name.

A network's parameters live in one contiguous array, ``flat_params``, and
their gradients in another, ``flat_grads``, laid out the same way. Each
parameter is a view into them (``params["layers.0.W"]``, ``grads["layers.0.W"]``),
and the layers compute through those views. An optimiser step is then one
fused update over one buffer (one kernel on a GPU), and a data-parallel step
one all-reduce of one buffer.

The layout, for ``Dense(784, 256), ReLU(), Dense(256, 10)``::

    offset  0                 200704        203264   203520
            | layers.0.W       | layers.2.W  | .0.b   | .2.b |
            | (784, 256)       | (256, 10)   | (256,) | (10,) pad |
            |<------------ n_decay --------->|
              weights: weight decay applies   biases and the other parameters

Weights come first, so weight decay applies to the prefix ``[0, n_decay)``;
biases, BatchNorm's γ and β, and anything else a layer declares come after
them. Each entry starts on a multiple of :data:`ALIGN` elements (128 bytes in
float32: whole cache lines and aligned vector loads), the gap after it left at
zero. Within each part the entries keep the order they were declared in.

An optimiser's state (a velocity, Adam's moments) is a buffer of the same
length; :meth:`FlatParameters.view` reaches one parameter's slice of it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, NamedTuple

import numpy as np

__all__ = ["ALIGN", "FlatParameters", "Slot", "layout"]

Array = Any

#: each parameter starts on a multiple of this many elements (128 bytes in float32)
ALIGN = 32


class Slot(NamedTuple):
    """Where one parameter lies in the flat buffer: its first element and its shape."""

    offset: int
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        """The number of elements (without the padding after them)."""
        return int(np.prod(self.shape))


def layout(shapes: Mapping[str, tuple[int, ...]], decayed: Collection[str]) -> tuple[dict[str, Slot], int, int]:
    """Place every parameter: ``(slots, n_decay, length)`` for ``shapes`` (name -> shape).

    The names in ``decayed`` (the weights) come first, then the others, each in
    the order of ``shapes`` and each padded to a multiple of :data:`ALIGN`.
    ``n_decay`` is where the decayed part ends; ``length``, the whole buffer.
    ``slots`` keeps the order of ``shapes``.
    """
    order = sorted(shapes, key=lambda name: name not in decayed)  # stable: decayed first
    placed: dict[str, Slot] = {}
    pos = n_decay = 0
    for name in order:
        shape = tuple(int(s) for s in shapes[name])
        placed[name] = Slot(pos, shape)
        pos += -(-int(np.prod(shape)) // ALIGN) * ALIGN
        if name in decayed:
            n_decay = pos
    return {name: placed[name] for name in shapes}, n_decay, pos


class FlatParameters:
    """Parameters and gradients in two flat buffers laid out by :func:`layout`, with a view per name.

    Parameters
    ----------
    shapes : every parameter's name and shape, in the order they are declared.
    decayed : the names weight decay applies to (placed first).
    xp : the array module (``numpy`` or ``cupy``) the buffers live in.
    dtype : their element type.

    Attributes
    ----------
    flat_params, flat_grads : the two buffers, zero-filled, of the same length.
    params, grads : name -> view of ``shape`` into each buffer.
    slots : name -> :class:`Slot` (offset and shape).
    n_decay : the length of the weights' prefix.
    """

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], decayed: Collection[str], xp: Any,
                 dtype: Any) -> None:
        self.slots, self.n_decay, length = layout(shapes, decayed)
        self.flat_params = xp.zeros(length, dtype=dtype)
        self.flat_grads = xp.zeros(length, dtype=dtype)
        self.params: dict[str, Array] = {name: self.view(self.flat_params, name) for name in self.slots}
        self.grads: dict[str, Array] = {name: self.view(self.flat_grads, name) for name in self.slots}

    def view(self, flat: Array, name: str) -> Array:
        """Parameter ``name``'s view into ``flat``, any buffer laid out like ``flat_params``."""
        offset, shape = self.slots[name]
        return flat[offset:offset + int(np.prod(shape))].reshape(shape)

    @property
    def num_params(self) -> int:
        """The number of parameters (without the alignment padding)."""
        return sum(slot.size for slot in self.slots.values())

    def __len__(self) -> int:
        """The length of each buffer, padding included."""
        return int(self.flat_params.shape[0])

    def __repr__(self) -> str:
        return (f"FlatParameters({len(self.slots)} parameters, {self.num_params:,} values in {len(self):,}, "
                f"n_decay={self.n_decay:,}, {self.flat_params.dtype})")
