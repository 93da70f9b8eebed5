"""Inverted dropout from a counter-based hash: the same mask bits on NumPy and CuPy, restorable from two integers."""

from __future__ import annotations

from typing import Any

from .. import kernels
from ..backend import get_array_module
from ..checks import check_range, check_seed
from .base import Layer

Array = Any


class Dropout(Layer):
    """Inverted dropout: in training ``Y = X ⊙ M`` with ``M = [U ≥ p] / (1 − p)``; identity in eval.

    Backward ``dX = dY ⊙ M`` with the mask kept from the forward. The mask comes
    from a counter-based hash of ``(seed, counter)``: the same bits on NumPy
    and CuPy, and a checkpoint restores the stream exactly (it is two integers).
    """

    per_batch = ("_masked", "_mask")

    def __init__(self, p: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        self.p = check_range("Dropout probability", p, 0.0, 1.0)
        self.seed = check_seed("Dropout seed", seed)  # (the stream hashes the seed's 64 bits)
        self.counter = 0

    def forward(self, x: Array, train: bool = False) -> Array:
        self._masked = train and self.p > 0.0
        if not self._masked:
            return x
        y = self.buffers.get("Y", x.shape, x)
        y[...] = x
        self._mask = self.buffers.get("mask", x.shape, x)
        kernels.dropout_forward(y, self.p, self.seed, self.counter, self._mask)
        self.counter += 1
        return y

    def backward(self, dy: Array, need_dx: bool = True, need_dw: bool = True) -> Array | None:
        if not self._masked:
            return dy
        xp = get_array_module(dy)
        xp.multiply(dy, self._mask, out=dy)
        return dy

    def state(self) -> dict[str, Any]:  # the seed's 64 bits as an int64, which a checkpoint keeps
        return {"seed": self.seed - 2**64 if self.seed >= 2**63 else self.seed, "counter": self.counter}

    def load_state(self, state: dict[str, Any]) -> None:
        self.seed = int(state.get("seed", self.seed)) % 2**64
        self.counter = int(state.get("counter", self.counter))

    def equations(self, n: int, in_dim: int) -> list[str]:
        return [f"Y = X ⊙ M,  M = [U ≥ {self.p}] / {1 - self.p:g}   ({n}, {in_dim})", "dX = dY ⊙ M"]

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "p": self.p}

    def init_args(self) -> dict[str, Any]:
        return {"p": self.p, "seed": self.seed}
