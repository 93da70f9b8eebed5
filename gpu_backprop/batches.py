"""A data set on the network's device, and its batches as floats.

The training data goes to the device once, as it is: uint8 images stay uint8
(a quarter of the memory and of the copy), float features become the network's
dtype. Each step gathers its rows and scales them to floats in one kernel
(:func:`gpu_backprop.kernels.gather_scale`) into a buffer that is reused for
every batch of that size, so a training step allocates nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from . import kernels
from .backend import to_device
from .checks import as_array, as_dtype, check_samples, checked_targets
from .layers import BatchNorm

if TYPE_CHECKING:
    from .network import Sequential

__all__ = ["Batches", "held_out"]

Array = Any

VALIDATION_SPLIT = 2**63  #: the hash counter of the validation split (the epochs' permutations count from 0)


def held_out(fraction: float, n: int) -> int:
    """How many of ``n`` samples a ``validation_fraction`` holds out: at least one."""
    return max(1, round(fraction * n))


class Batches:
    """A data set on the network's device, as given (uint8 images stay uint8), and its batches as floats.

    ``X`` is ``(N, D)``, ``y`` labels ``(N,)`` or targets ``(N, C)``; ``scale``
    turns ``X`` into the network's floats (1/255 for images). Each batch size
    gets one buffer, reused every step (a training step allocates nothing).
    """

    _bufs: dict[int, tuple[Array, Array | None]]  # by batch size: the float batch and, on NumPy, its staging
    _full: Array | None  # the whole set scaled, for full-batch descent

    def __init__(self, net: Sequential, X: Any, y: Any, what: str = "training data") -> None:
        """Check ``(X, y)`` where they are (see :mod:`.checks`), then move them to ``net``'s device once."""
        X, self.scale = check_samples(as_array(X, net.backend, f"{what} X"), net.input_dim, f"{what} X")
        self.y = checked_targets(y, net.backend, X.shape[0], net.output_dim, net.dtype, f"{what} y",
                                 net.loss.probabilities)
        xp = net.xp
        self.net = net
        X = to_device(X, net.backend)
        self.X = xp.ascontiguousarray(X) if self.scale != 1.0 else as_dtype(X, xp, net.dtype, f"{what} X")
        self.release()  # no batch buffers yet

    def __len__(self) -> int:
        return int(self.X.shape[0])

    @property
    def labels(self) -> bool:
        """True for integer class labels (accuracy is counted), False for float targets."""
        return self.y.ndim == 1

    def subset(self, rows: Array) -> Batches:
        """The samples ``rows`` (sorted device indices) as a data set of their own (a copy on the device)."""
        new = object.__new__(Batches)
        new.net, new.scale, new.X, new.y = self.net, self.scale, self.X[rows], self.y[rows]
        new.release()  # no batch buffers yet
        return new

    def batch_size(self, batch_size: int | str, ranks: int = 1) -> int:
        """The rows of each training step over this data: ``batch_size``, or all of them for ``"full"``.

        Refused where it is larger than the data, or where a network with BatchNorm would meet a batch
        of one sample (on some rank): an epoch's last batch may be short, and a refusal now loses nothing.
        """
        n = len(self)
        b = n if batch_size == "full" else int(batch_size)
        if b > n:
            raise ValueError(f"batch_size {b} is larger than the {n} training samples; use 'full' or a smaller batch")
        short = n % b or b  # the smallest batch of an epoch (the last), cut into `ranks` shards
        if short < 2 * ranks and any(isinstance(layer, BatchNorm) for layer in self.net.steps):
            shards = f", cut into {ranks} shards," if ranks > 1 else ""
            raise ValueError(f"batch_size {b} over {n} training samples makes a batch of {short}{shards} and BatchNorm "
                             "needs at least 2 samples per batch; choose another batch_size")
        return b

    def split(self, fraction: float, seed: int) -> tuple[Batches, Batches]:
        """``(the rest, held out)``: a ``fraction`` of the samples, chosen from ``seed``, held out for validation."""
        n = len(self)
        k = held_out(fraction, n)
        if k >= n:
            raise ValueError(f"validation_fraction {fraction} of {n} samples leaves none to train on; "
                             "use a smaller one")
        xp = self.net.xp
        order = kernels.random_permutation(xp, n, seed, VALIDATION_SPLIT)
        return self.subset(xp.sort(order[k:])), self.subset(xp.sort(order[:k]))

    def get(self, rows: Array) -> Array:
        """``X[rows]`` scaled to the network's dtype, ``(B, D)``, in a buffer reused for every batch of B rows."""
        b = rows.shape[0]
        if b not in self._bufs:
            xp = self.net.xp
            out = xp.empty((b, self.X.shape[1]), dtype=self.net.dtype)
            # NumPy gathers the rows first and converts them after; the CuPy kernel does both at once
            host_staging = xp is np and self.X.dtype != self.net.dtype
            self._bufs[b] = (out, np.empty((b, self.X.shape[1]), self.X.dtype) if host_staging else None)
        out, staging = self._bufs[b]
        return kernels.gather_scale(self.X, rows, self.scale, out, staging)

    def full(self) -> Array:
        """The whole data set scaled, in its stored order: made once, then reused (full-batch descent)."""
        if self._full is None:
            n = len(self)
            self._full = self.get(self.net.xp.arange(n, dtype=self.net.xp.int64))
            del self._bufs[n]  # the buffer is the full batch's now; a batch of n rows gets another
        return self._full

    def release(self) -> None:
        """Drop the batch buffers (they come back on the next batch)."""
        self._bufs = {}
        self._full = None
