"""What a training run shows, what it returns, and how it ends.

:func:`gpu_backprop.fit` returns a :class:`History` (per-epoch records, a
sampled loss curve, why it stopped) or raises :class:`TrainingDiverged`
(carrying the history up to the divergence) or :class:`DeviceMemoryError`.
A history is saved in checkpoints and as JSON (strict: a non-finite number is
``null``). While it runs, a :class:`ProgressBar` shows each epoch, and
:class:`EarlyStopping` watches the validation loss.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._io import atomic_write_bytes, strict_json

if TYPE_CHECKING:
    from .network import Sequential

__all__ = ["DeviceMemoryError", "EarlyStopping", "History", "ProgressBar", "StopReason", "TrainingDiverged",
           "epoch_line", "memory_error", "print_epoch"]

REFRESH_SECONDS = 0.5  #: the progress bar's refresh interval (it reads the loss; it never changes a number)


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


def print_epoch(record: dict[str, float], epochs: int) -> None:
    """Print :func:`epoch_line` above the progress bars."""
    from tqdm.auto import tqdm

    tqdm.write(epoch_line(record, epochs))


class ProgressBar:
    """An epoch's progress bar: samples, loss, accuracy and rate, refreshed every ``REFRESH_SECONDS`` at most.

    Reading the loss for it is a wait for the device, and nothing else: what
    it shows never changes a number of the run.
    """

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.enabled = enabled
        self.bar = tqdm(total=total, desc=desc, unit="sample", disable=None if enabled else True, leave=False,
                        dynamic_ncols=True)
        self.start = self.last = time.perf_counter()

    def due(self) -> bool:
        """Whether it is time to refresh."""
        return self.enabled and time.perf_counter() - self.last >= REFRESH_SECONDS

    def show(self, seen: int, loss_sum: float, mine: int, correct: Any = None) -> None:
        """``seen`` samples done; the mean loss (and accuracy, from a device count) of this rank's ``mine``."""
        if not self.enabled:
            return
        self.last = now = time.perf_counter()
        postfix = {"loss": f"{loss_sum / max(mine, 1):.4f}", "rate": f"{seen / max(now - self.start, 1e-9):,.0f}/s"}
        if correct is not None:
            postfix["acc"] = f"{int(correct) / max(mine, 1):.3f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(seen - self.bar.n)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


class EarlyStopping:
    """Stop when the validation loss has not improved for ``patience`` epochs, and go back to the best weights."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best_loss, self.best_epoch, self.bad_epochs = math.inf, 0, 0
        self.best_state: dict[str, Any] | None = None

    def update(self, net: Sequential, record: dict[str, float]) -> str | None:
        """After an epoch: why the run stops now, or None to go on (a copy of the best weights is kept)."""
        if record["val_loss"] < self.best_loss:
            self.best_loss, self.best_epoch, self.bad_epochs = record["val_loss"], int(record["epoch"]), 0
            self.best_state = net.state_dict()
            return None
        self.bad_epochs += 1
        if self.bad_epochs < self.patience:
            return None
        return (f"early stopping: the validation loss did not improve for {self.patience} epoch"
                f"{'s' * (self.patience != 1)}; "
                f"restored the weights of epoch {self.best_epoch}")

    def restore_best(self, net: Sequential, history: History) -> None:
        """Put back the best epoch's weights, unless they are the last epoch's, and record which they are."""
        if self.best_state is not None and self.best_epoch != len(history.epochs):
            net.load_state_dict(self.best_state)
            history.best_epoch = self.best_epoch
