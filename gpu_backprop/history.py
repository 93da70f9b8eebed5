"""What a training run returns, and how it ends: :class:`History`, :class:`StopReason` and the errors.

:func:`gpu_backprop.fit` returns a :class:`History` (per-epoch records, a
sampled loss curve, why it stopped) or raises :class:`TrainingDiverged`
(carrying the history up to the divergence) or :class:`DeviceMemoryError`.
A history is saved in checkpoints and as JSON (strict: a non-finite number is
``null``).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._io import atomic_write_bytes, strict_json

__all__ = ["DeviceMemoryError", "History", "StopReason", "TrainingDiverged", "epoch_line", "memory_error"]


class StopReason(str, enum.Enum):
    """Why :func:`fit` returned (a run that diverges raises :class:`TrainingDiverged` instead)."""

    COMPLETED = "completed"  #: every epoch ran
    EARLY_STOPPING = "early_stopping"  #: the validation loss stopped improving; the best weights were restored
    CALLBACK = "callback"  #: a callback returned True
    DIVERGED = "diverged"  #: the history that :class:`TrainingDiverged` carries: the loss or weights became non-finite


@dataclass
class History:
    """What happened during training: per-epoch metrics, a sampled loss curve, and why it stopped."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    steps: list[tuple[int, float]] = field(default_factory=list)  #: (global step, mean loss since last point)
    stopped_reason: StopReason = StopReason.COMPLETED
    stop_message: str | None = None  #: the same in words, for people
    best_epoch: int | None = None  #: the epoch whose weights early stopping restored

    def metric(self, name: str) -> list[float]:
        """One metric over the epochs, e.g. ``history.metric("val_accuracy")``."""
        return [e.get(name, math.nan) for e in self.epochs]

    def to_dict(self) -> dict[str, Any]:
        """As plain JSON types (see :meth:`to_json` for non-finite numbers)."""
        d = dataclasses.asdict(self)
        d["stopped_reason"] = self.stopped_reason.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        reason = d.get("stopped_reason") or StopReason.COMPLETED.value
        try:
            stopped, message = StopReason(reason), d.get("stop_message")
        except ValueError:  # older files kept the message here
            stopped, message = StopReason.COMPLETED, reason
        return cls(epochs=[{k: math.nan if v is None else v for k, v in e.items()} for e in d.get("epochs", [])],
                   steps=[(int(s), math.nan if v is None else float(v)) for s, v in d.get("steps", [])],
                   stopped_reason=stopped, stop_message=message, best_epoch=d.get("best_epoch"))

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write the history as JSON, atomically; a non-finite number is written as ``null`` (JSON has no NaN)."""
        atomic_write_bytes(Path(path), strict_json(self.to_dict(), indent=1).encode())

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> History:
        return cls.from_dict(json.loads(Path(path).read_text()))


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or infinite; the network holds its last good weights.

    ``history`` is the run up to the last complete epoch, ``step`` the last
    good step (the weights restored are those after it).
    """

    def __init__(self, message: str, history: History, step: int) -> None:
        super().__init__(message)
        history.stopped_reason, history.stop_message = StopReason.DIVERGED, message
        self.history, self.step = history, step


class DeviceMemoryError(MemoryError):
    """A training step ran out of device memory; the network is unchanged and usable with a smaller batch."""


def memory_error(exc: BaseException, on_gpu: bool, batch: int) -> DeviceMemoryError | None:
    """Turn CuPy's ``OutOfMemoryError`` (or NumPy's MemoryError) into one sentence that says what to do."""
    if not isinstance(exc, MemoryError) and type(exc).__name__ != "OutOfMemoryError":
        return None
    text = str(exc)
    asked = "the allocation failed"
    if m := re.search(r"allocating ([\d,]+) bytes", text):  # CuPy
        asked = f"it asked for {int(m.group(1).replace(',', '')) / 2**30:.2f} GiB more"
    elif m := re.search(r"allocate ([\d.]+ [KMGT]?i?B)", text):  # NumPy
        asked = f"it asked for {m.group(1)} more"
    where = "GPU" if on_gpu else "host"
    return DeviceMemoryError(
        f"out of {where} memory in a training step with batch {batch} ({asked}); the weights are unchanged; "
        f"use a smaller batch size, e.g. --batch-size {max(1, batch // 4)}"
    )


def epoch_line(r: dict[str, float], epochs: int) -> str:
    """An epoch's record as the line the progress output prints: losses, accuracies, samples/s."""
    text = f"epoch {int(r['epoch'])}/{epochs}: loss {r['loss']:.4f}"
    if "accuracy" in r:
        text += f", accuracy {r['accuracy']:.4f}"
    text += f", {r['samples_per_second']:,.0f} samples/s"
    if "val_loss" in r:
        text += f"; validation loss {r['val_loss']:.4f}"
        if "val_accuracy" in r:
            text += f", accuracy {r['val_accuracy']:.4f}"
    return text
