"""Layers of a user's own, for the tests of pickling and saving (importable, so that pickle finds them)."""

from __future__ import annotations

from typing import Any

import gpu_backprop as gb


class Shifted(gb.Dense):
    """A Dense layer that adds a constant vector it keeps (``shift``) to its output."""

    def forward(self, x: Any, train: bool = False) -> Any:
        z = super().forward(x, train)
        z += self.shift
        return z
