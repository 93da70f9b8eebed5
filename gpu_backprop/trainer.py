"""Training: a device-resident loop over whole batches, with a progress bar and nothing lost.

    history = gb.fit(net, opt, X_train, y_train, epochs=10, batch_size=128,
                     validation=(X_test, y_test))

The data set goes to the device once, as it is (uint8 images stay uint8). Each
epoch draws a permutation on the device from ``(seed, epoch)``; each step
gathers its rows and scales them to floats in one kernel, runs forward,
backward and the optimiser, and adds its loss to a device accumulator. The
host reads that accumulator back only at a check (every few steps, see
``_check_steps``) or when the progress bar refreshes, so on a GPU the steps
queue up without waiting. Everything that can change numbers or saved state
(the divergence guard's snapshot, the loss curve's points, folding optimiser
state) happens at checks, which the step count fixes: never on a timer, so the
same seed gives the same bits however busy the machine is.

``batch_size`` is an integer (1 is per-sample SGD) or ``"full"`` (full-batch
gradient descent): the same matrix-form step serves all three. On a GPU,
per-sample SGD of the networks it implements runs as one fused kernel per run
of samples instead (:mod:`gpu_backprop.experimental.persample`), with the same
results to float rounding.

The data may be NumPy or CuPy arrays whatever the network's device: each set
is checked where it is and moved once.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from . import kernels
from ._io import atomic_write_bytes
from .backend import get_array_module, is_cupy_array, per_sample_blas, to_device
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .network import Sequential
from .optim import SGD, Optimizer

__all__ = ["SCHEDULES", "DeviceMemoryError", "History", "TrainingDiverged", "evaluate", "fit", "make_schedule"]

Array = Any
Schedule = Callable[[int, int, int], float]  # (epoch, step, total_steps) -> lr factor


# --------------------------------------------------------------------------
# Learning-rate schedules: a factor on the optimiser's base learning rate
# --------------------------------------------------------------------------
SCHEDULES = ("constant", "step", "cosine", "onecycle")


def make_schedule(spec: str | Schedule | None) -> Schedule:
    """A schedule from its name, or a callable ``(epoch, step, total_steps) -> factor``.

    ``"constant"``; ``"step"`` or ``"step:K:G"`` (multiply by G, default 0.1,
    every K epochs, default 10); ``"cosine"`` (per step, from 1 to 0);
    ``"onecycle"`` (per step: linear warm-up from 1/25 to 1 over the first 30%,
    then cosine down to 1/10⁴).
    """
    if spec is None or callable(spec):
        return spec or (lambda e, s, t: 1.0)
    name, *args = str(spec).split(":")
    try:
        if name == "constant" and not args:
            return lambda e, s, t: 1.0
        if name == "step" and len(args) <= 2:
            every = int(args[0]) if args else 10
            gamma = float(args[1]) if len(args) > 1 else 0.1
            if every < 1 or not 0 < gamma:
                raise ValueError
            return lambda e, s, t: gamma ** (e // every)
        if name == "cosine" and not args:
            return lambda e, s, t: 0.5 * (1 + math.cos(math.pi * s / max(t, 1)))
        if name == "onecycle" and not args:
            return _one_cycle
    except ValueError:
        pass
    raise ValueError(f"unknown schedule {spec!r}; choose constant, step[:EVERY[:GAMMA]], cosine or onecycle")


def _one_cycle(epoch: int, step: int, total: int) -> float:
    warm = max(1, int(0.3 * total))
    if step < warm:
        return 1 / 25 + (1 - 1 / 25) * step / warm
    frac = (step - warm) / max(1, total - warm)
    return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * frac))


# --------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------
@dataclass
class History:
    """What happened during training: per-epoch metrics, a sampled loss curve, and why it stopped."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    steps: list[tuple[int, float]] = field(default_factory=list)  #: (global step, mean loss since last point)
    stopped_reason: str | None = None
    best_epoch: int | None = None

    def metric(self, name: str) -> list[float]:
        """One metric over the epochs, e.g. ``history.metric("val_accuracy")``."""
        return [e.get(name, math.nan) for e in self.epochs]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        return cls(epochs=list(d.get("epochs", [])), steps=[tuple(s) for s in d.get("steps", [])],
                   stopped_reason=d.get("stopped_reason"), best_epoch=d.get("best_epoch"))

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write the history as JSON, atomically."""
        atomic_write_bytes(Path(path), json.dumps(self.to_dict(), indent=1).encode())

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> History:
        return cls.from_dict(json.loads(Path(path).read_text()))


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite (the network keeps its last good weights)."""


class DeviceMemoryError(MemoryError):
    """A training step ran out of device memory; the network is unchanged and usable with a smaller batch."""


def _as_memory_error(exc: BaseException, net: Sequential, batch: int) -> DeviceMemoryError | None:
    """Turn CuPy's ``OutOfMemoryError`` (or NumPy's MemoryError) into one sentence that says what to do."""
    if not isinstance(exc, MemoryError) and type(exc).__name__ != "OutOfMemoryError":
        return None
    text = str(exc)
    asked = "the allocation failed"
    if m := re.search(r"allocating ([\d,]+) bytes", text):  # CuPy
        asked = f"it asked for {int(m.group(1).replace(',', '')) / 2**30:.2f} GiB more"
    elif m := re.search(r"allocate ([\d.]+ [KMGT]?i?B)", text):  # NumPy
        asked = f"it asked for {m.group(1)} more"
    where = "GPU" if net.backend.is_gpu else "host"
    return DeviceMemoryError(
        f"out of {where} memory in a training step with batch {batch} ({asked}); the weights are unchanged; "
        f"use a smaller batch size, e.g. --batch-size {max(1, batch // 4)}"
    )


# --------------------------------------------------------------------------
# Data on the device
# --------------------------------------------------------------------------
def _prepare(net: Sequential, X: Any, y: Any, what: str) -> tuple[Array, Array, float]:
    """Check a data set once and put it on the device: ``(X (N, D), y int64 (N,), scale)``.

    Arrays are checked where they are — NumPy data on the host before it is
    copied to the network's device, device data on the device (one wait for
    its answers) — then moved once: images as uint8, features in the
    network's dtype. Anything else array-like goes to the device first.
    """
    X = X if is_cupy_array(X) or isinstance(X, np.ndarray) else to_device(X, net.backend)
    y = y if is_cupy_array(y) or isinstance(y, np.ndarray) else to_device(y, net.backend)
    if X.ndim < 2:
        raise ValueError(f"{what} data X must have one row per sample, got shape {X.shape}")
    n = X.shape[0]
    if n == 0:
        raise ValueError(f"{what} data is empty; pass at least one sample")
    d = int(np.prod(X.shape[1:]))
    if d != net.input_dim:
        raise ValueError(f"{what} samples have {d} features ({X.shape[1:]}) but the network takes {net.input_dim}")
    if y.shape != (n,):
        raise ValueError(f"{what} labels y have shape {y.shape}; pass one integer label per sample, shape ({n},)")
    if y.dtype.kind not in "iu":
        raise TypeError(f"{what} labels y have dtype {y.dtype}; pass integer class labels")
    limit = net.output_dim if net.output_dim > 1 else 2
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= limit:
        raise ValueError(f"{what} labels must lie in [0, {limit - 1}] for a network with {net.output_dim} outputs, "
                         f"got values from {lo} to {hi}")
    if X.dtype == np.uint8:
        scale, dtype = 1.0 / 255.0, None
    elif X.dtype.kind == "f" and X.dtype.itemsize >= 4:
        scale, dtype = 1.0, net.dtype
        if not bool(get_array_module(X).isfinite(X).all()):
            raise ValueError(f"{what} data X contains NaN or Inf; clean or impute it before training")
    else:
        raise TypeError(f"{what} data X has dtype {X.dtype}; pass uint8 images or float32/float64 features")
    xp = net.xp
    Xd = to_device(X, net.backend, dtype=dtype).reshape(n, d)
    return xp.ascontiguousarray(Xd), xp.ascontiguousarray(to_device(y, net.backend), dtype=xp.int64), scale


class _Batches:
    """Buffers for one batch size: gathered rows on the device, scaled into floats."""

    def __init__(self, net: Sequential, X: Array, scale: float) -> None:
        self.net, self.X, self.scale = net, X, scale
        self._bufs: dict[int, tuple[Array, Array | None]] = {}
        self._full: Array | None = None

    def full(self) -> Array:
        """The whole data set scaled, in its stored order: made once, then reused.

        A full batch is the same matrix every step (the order of its rows does not
        change the gradient), so it is gathered and scaled only the first time, into
        a buffer of its own.
        """
        if self._full is None:
            n = self.X.shape[0]
            self._full = self.get(self.net.xp.arange(n, dtype=self.net.xp.int64))
            del self._bufs[n]  # the buffer is the full batch's now; a batch of n rows gets another
        return self._full

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


def evaluate(net: Sequential, X: Any, y: Any, batch_size: int = 4096) -> tuple[float, float]:
    """Mean loss and accuracy of ``net`` on ``(X, y)`` in eval mode."""
    Xd, yd, scale = _prepare(net, X, y, "evaluation")
    return _evaluate(net, Xd, yd, scale, batch_size)


def _evaluate(net: Sequential, X: Array, y: Array, scale: float, batch_size: int = 4096) -> tuple[float, float]:
    xp = net.xp
    batches = _Batches(net, X, scale)
    loss_sum = xp.zeros((), dtype=xp.float64)
    correct = xp.zeros((), dtype=xp.int64)
    n = X.shape[0]
    for i in range(0, n, batch_size):
        rows = xp.arange(i, min(i + batch_size, n), dtype=xp.int64)
        out = net.forward(batches.get(rows), train=False)
        yb = y[i:i + batch_size]
        loss_sum += net.loss.forward(out, yb) * rows.shape[0]
        correct += _correct(xp, out, yb)
    return float(loss_sum) / n, int(correct) / n


def _correct(xp: Any, out: Array, y: Array) -> Array:
    if out.shape[1] == 1:  # one output: a binary classifier on logits (or probabilities around 0.5)
        return ((out[:, 0] > 0) == (y == 1)).sum()
    return (out.argmax(axis=1) == y).sum()


# --------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------
def fit(
    net: Sequential,
    optimizer: Optimizer,
    X: Any,
    y: Any,
    epochs: int = 10,
    batch_size: int | str = 128,
    validation: tuple[Any, Any] | None = None,
    *,
    seed: int = 0,
    schedule: str | Schedule | None = None,
    patience: int | None = None,
    max_grad_norm: float | None = None,
    progress: bool = True,
    refresh_seconds: float = 0.5,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
    comm: Any = None,
    callback: Callable[[dict[str, float]], bool | None] | None = None,
    check_every: int | None = None,
) -> History:
    """Train ``net`` with ``optimizer`` on ``(X, y)`` and return its :class:`History`.

    Parameters
    ----------
    X, y : images (uint8, scaled by 1/255 on the device) or float features,
        and integer labels. Checked once, then moved to the device once.
    epochs : the total number of epochs (a resumed run continues up to it).
    batch_size : an integer (1 = per-sample SGD) or ``"full"`` (the whole set per step).
        Per-sample SGD on CuPy runs the fused per-sample kernel where it applies
        (Dense layers and their activations, softmax cross-entropy, SGD; one
        process, no clipping), the general path otherwise.
    validation : ``(X_val, y_val)``, evaluated after every epoch.
    seed : seeds the shuffling; the same seed gives the same run.
    schedule : a learning-rate schedule (see :func:`make_schedule`); cosine and
        one-cycle span all ``epochs``, so resume a run with the ``epochs`` it started with.
    patience : stop when the validation loss has not improved for this many
        epochs, and restore the best weights. (A resumed run counts afresh from
        the epoch it resumes at: the best weights are not part of a checkpoint.)
    max_grad_norm : clip the gradient to this global L2 norm.
    checkpoint : a path; a checkpoint is written there (atomically) after every epoch.
    resume : a checkpoint to continue from; the run continues exactly as if
        it had never stopped (bit for bit on NumPy). It continues the saved
        run, so everything that shapes it must be as saved: the network, the
        optimizer's kind and hyper-parameters (``lr`` as first given), ``seed``,
        ``batch_size``, ``schedule``, ``max_grad_norm`` and the number of
        training samples; only ``epochs`` may grow. A difference is a
        :class:`~gpu_backprop.checkpoint.CheckpointError` (a ValueError) that
        names it, and nothing is loaded.
    comm : a communicator from :mod:`gpu_backprop.distributed` for
        data-parallel training: every rank takes its contiguous shard of each
        global batch of b rows (``b//R`` or ``b//R + 1`` rows; none when b < R)
        and one all-reduce per step weighs the ranks' gradients by their rows,
        so the run, its steps and the loss and accuracy it reports are those of
        one process with the same batch, for any data set size and batch (to
        float rounding; BatchNorm statistics and Dropout masks are per rank).
        ``comm.check_every = N`` verifies every N steps that the ranks' weights
        are identical.

    A loss (or weights) that become NaN or infinite stop training: the weights and
    the optimiser go back to the last check where the loss and the weights were finite,
    ``history.stopped_reason`` says what happened, and a warning is issued.
    """
    if not isinstance(net, Sequential):
        raise TypeError(f"fit takes a gpu_backprop network, got {type(net).__name__}")
    if not isinstance(optimizer, Optimizer) or optimizer.net is not net:
        raise TypeError("fit needs an optimizer built for this network, e.g. gb.SGD(net, lr=0.1)")
    if not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if patience is not None and (validation is None or patience < 1):
        raise ValueError("early stopping (patience) needs validation data and patience >= 1")
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be positive, got {max_grad_norm}")
    sched = make_schedule(schedule)
    Xd, yd, scale = _prepare(net, X, y, "training")
    val = _prepare(net, *validation, "validation") if validation is not None else None
    n = Xd.shape[0]
    rank, size = (comm.rank, comm.size) if comm is not None else (0, 1)
    B = _batch_size(batch_size, n)
    steps_per_epoch = -(-n // B)
    total_steps = steps_per_epoch * epochs
    base_lr = optimizer.lr

    history = History()
    start_epoch = 0
    run = {"seed": seed, "base_lr": base_lr, "batch_size": B, "samples": n, "epochs": epochs,
           "schedule": "constant" if schedule is None else schedule if isinstance(schedule, str) else None,
           "max_grad_norm": max_grad_norm}  # what shapes the run: a resumed one must match it (epochs aside)
    if resume is not None:
        state = load_checkpoint(resume, net, optimizer, check=lambda saved: _check_resume(resume, saved, run))
        start_epoch = state["epoch"]
        history = History.from_dict(state.get("history", {}))
    if comm is not None and size > 1:
        comm.broadcast_(net.flat_params)

    # batch 1 on a GPU: the fused per-sample kernel where it implements the network, else the general path
    loop_class = _FusedLoop if _fuses_per_sample(net, optimizer, B, size, max_grad_norm) else _Loop
    loop = loop_class(net, optimizer, Xd, yd, scale, B, size, rank, comm, max_grad_norm, progress and rank == 0,
                      refresh_seconds, history)
    loop.check_every = (check_every or getattr(comm, "check_every", None)) if comm is not None and size > 1 else None
    best_loss, best_state, best_epoch = math.inf, None, 0  # for early stopping
    bad_epochs = 0
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        order = kernels.random_permutation(net.xp, n, seed, epoch)
        with np.errstate(over="ignore", invalid="ignore"), per_sample_blas(net.backend, -(-B // size)):
            # (a diverging run is caught by the guard; BLAS threads set up for single samples)
            stats = loop.run_epoch(epoch, epochs, order, _lr_at(base_lr, sched, epoch, total_steps),
                                   epoch * steps_per_epoch)
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch + 1, "lr": optimizer.lr, "seconds": seconds,
                  "samples_per_second": stats["samples"] / seconds, **{k: stats[k] for k in ("loss", "accuracy")}}
        if stats["diverged"]:
            history.stopped_reason = stats["diverged"]
            history.epochs.append(record)
            warnings.warn(stats["diverged"], RuntimeWarning, stacklevel=2)
            break
        if val is not None:
            record["val_loss"], record["val_accuracy"] = _evaluate(net, *val)
        history.epochs.append(record)
        if rank == 0 and progress:
            _print_epoch(record, epochs)
        if patience is not None:
            if record["val_loss"] < best_loss:
                best_loss, best_state, best_epoch, bad_epochs = record["val_loss"], net.state_dict(), epoch + 1, 0
            else:
                bad_epochs += 1
                if bad_epochs >= patience:
                    history.stopped_reason = (f"early stopping: validation loss did not improve for {patience} "
                                              f"epochs; restored the weights of epoch {best_epoch}")
                    break
        stop = bool(callback(record)) if callback is not None else False
        if checkpoint is not None and rank == 0:
            save_checkpoint(checkpoint, net, optimizer, {**run, "epoch": epoch + 1, "history": history.to_dict()})
        if stop:
            history.stopped_reason = f"stopped by the callback after epoch {epoch + 1}"
            break
    if best_state is not None and best_epoch != len(history.epochs):
        net.load_state_dict(best_state)
        history.best_epoch = best_epoch
    return history


#: the arguments of fit that a resumed run must repeat, as (the saved state's key, fit's argument)
_RESUMED = (("seed", "seed"), ("base_lr", "the optimizer's lr"), ("batch_size", "batch_size"),
            ("schedule", "schedule"), ("max_grad_norm", "max_grad_norm"))


def _check_resume(path: Any, saved: dict[str, Any], run: dict[str, Any]) -> None:
    """Refuse to resume from ``saved`` (a checkpoint's training state) a run that differs from it.

    Resuming continues the saved run: the seed, the base learning rate, the
    batch size, the schedule, the clipping and the number of training samples
    must be those it was saved with (``epochs`` may grow). Each difference is
    one sentence; so is a state that does not hold what fit wrote.
    """
    epoch = saved.get("epoch")
    if not (isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0):
        raise CheckpointError(f"checkpoint {path} holds no epoch count; it was not written by fit")
    _check_history(path, saved.get("history", {}))
    samples = saved.get("samples")
    if samples is not None and samples != run["samples"]:
        raise CheckpointError(f"checkpoint {path} was trained on {samples:,} samples but the training data has "
                              f"{run['samples']:,}; resume on the same data set")
    for key, what in _RESUMED:
        if key not in saved or (key == "schedule" and None in (saved[key], run[key])):  # older file; a callable
            continue
        if saved[key] != run[key]:
            raise CheckpointError(
                f"{what} {run[key]!r} differs from the checkpoint's {saved[key]!r}; pass "
                f"{key.replace('base_lr', 'lr')}={saved[key]!r} to continue the saved run, or train afresh "
                "without resume"
            )


def _check_history(path: Any, h: Any) -> None:
    """A saved :class:`History` has the types :meth:`History.from_dict` needs."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    ok = (isinstance(h, dict)
          and isinstance(h.get("epochs", []), list)
          and all(isinstance(e, dict) and all(number(v) for v in e.values()) for e in h.get("epochs", []))
          and isinstance(h.get("steps", []), list)
          and all(isinstance(p, list) and len(p) == 2 and all(number(v) for v in p) for p in h.get("steps", []))
          and (h.get("stopped_reason") is None or isinstance(h.get("stopped_reason"), str))
          and (h.get("best_epoch") is None or number(h.get("best_epoch"))))
    if not ok:
        raise CheckpointError(f"checkpoint {path} holds a training history that fit did not write")


def _lr_at(base_lr: float, schedule: Schedule, epoch: int, total_steps: int) -> Callable[[int], float]:
    """The learning rate at each global step of ``epoch``."""
    return lambda step: base_lr * schedule(epoch, step, total_steps)


def _batch_size(batch_size: int | str, n: int) -> int:
    if batch_size == "full":
        b = n
    elif isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool):
        b = int(batch_size)
        if b < 1:
            raise ValueError(f"batch_size must be at least 1, got {b}")
        if b > n:
            raise ValueError(f"batch_size {b} is larger than the {n} training samples; use 'full' or a smaller batch")
    else:
        raise ValueError(f"batch_size must be a positive integer or 'full', got {batch_size!r}")
    return b


def _shard_rows(rows: Array, rank: int, size: int) -> Array:
    """Rank ``rank``'s contiguous part of a global batch's ``rows``, ``(b_r,)``: ``b_r = b//size + (rank < b % size)``.

    The parts of all ranks, in rank order, are ``rows`` itself; a rank gets
    none (an empty slice) when the batch has fewer rows than there are ranks.
    """
    q, extra = divmod(rows.shape[0], size)
    lo = rank * q + min(rank, extra)
    return rows[lo:lo + q + (rank < extra)]


def _average_gradients(comm: Any, grads: Array, rows: int, batch: int) -> None:
    """The gradient of the whole batch from each rank's, in place: ``g ← Σ_r (b_r / b) g_r``, one all-reduce.

    ``grads`` holds this rank's mean gradient over its ``rows`` (b_r) of the
    global ``batch`` (b = Σ_r b_r), shards as :func:`_shard_rows` cuts them.
    When every shard has b/R rows this is the plain average (NCCL's average,
    no scaling kernel); otherwise each rank weighs its buffer by b_r / b before
    the sum, and a rank without rows adds zeros, whatever its buffer holds.
    """
    if batch % comm.size == 0:
        comm.allreduce_mean_(grads)
    else:
        comm.allreduce_weighted_mean_(grads, rows, batch)


def _print_epoch(r: dict[str, float], epochs: int) -> None:
    from tqdm import tqdm

    text = (f"epoch {int(r['epoch'])}/{epochs}: loss {r['loss']:.4f}, accuracy {r['accuracy']:.4f}, "
            f"{r['samples_per_second']:,.0f} samples/s")
    if "val_loss" in r:
        text += f"; validation loss {r['val_loss']:.4f}, accuracy {r['val_accuracy']:.4f}"
    tqdm.write(text)


_RANK_REFRESH_STEPS = 50  # with several ranks, the progress refresh (and divergence check) every this many steps
_CHECK_SAMPLES = 4096  # one rank: a check (divergence guard, loss-curve point) about every this many samples ...
_CHECK_MIN_STEPS = 8  # ... but no more often than every this many steps (a GPU would wait at each one)


def _check_steps(batch: int, size: int) -> int:
    """How many steps from one check to the next: a function of the settings alone, never of time."""
    if size > 1:
        return _RANK_REFRESH_STEPS
    return max(_CHECK_MIN_STEPS, -(-_CHECK_SAMPLES // batch))


class _Loop:
    """One epoch of steps, with the device accumulators and the divergence guard."""

    def __init__(self, net: Sequential, opt: Optimizer, X: Array, y: Array, scale: float, B: int, size: int,
                 rank: int, comm: Any, max_grad_norm: float | None, progress: bool, refresh: float,
                 history: History) -> None:
        self.net, self.opt, self.X, self.y, self.B = net, opt, X, y, B
        self.size, self.rank, self.comm = size, rank, comm
        self.max_grad_norm, self.progress, self.refresh, self.history = max_grad_norm, progress, refresh, history
        self.batches = _Batches(net, X, scale)
        self.check_every: int | None = None
        self.check_steps = _check_steps(B, size)
        xp = net.xp
        self.loss_sum = xp.zeros((), dtype=xp.float64)
        self.correct = xp.zeros((), dtype=xp.int64)
        self._good = self._snapshot()

    def release(self) -> None:
        """Drop every cached buffer so the device memory is free again."""
        for layer in self.net.layers:
            layer.release_buffers()
        self.net.loss._buffers.clear()
        self.batches._bufs.clear()
        self.batches._full = None
        self.net.backend.free_cached_memory()

    def _snapshot(self) -> tuple[Array, dict[str, Any]]:
        """The weights and the optimiser state as they are (taking it changes nothing)."""
        return self.net.flat_params.copy(), self.opt._save_state()

    def _restore(self) -> None:
        params, state = self._good
        self.net.flat_params[...] = params
        self.opt._load_state(state)

    def _first_bad_layer(self) -> str:
        xp = self.net.xp
        for name, g in self.net.grads.items():
            if not bool(xp.isfinite(g).all()):
                return f"the gradient of {name}"
        for name, p in self.net.params.items():
            if not bool(xp.isfinite(p).all()):
                return f"the weights {name}"
        return "the loss itself"

    def _step(self, xb: Array, yb: Array, batch: int) -> Array:
        """Gradients (the global batch's, from the ranks'), optional clipping, the update; returns the loss.

        ``(xb, yb)`` is this rank's shard of a global batch of ``batch`` rows; it
        may be empty (``xb`` is then ``None``): the rank still takes part in the
        all-reduce and the update, and its loss is 0.
        """
        net, xp = self.net, self.net.xp
        if self.comm is None and self.max_grad_norm is None:
            return self.opt.train_step(xb, yb)  # may fuse gradient and update (SGD, one sample)
        loss = net.train_step_grads(xb, yb) if xb is not None else 0.0
        if self.comm is not None and self.size > 1:
            _average_gradients(self.comm, net.flat_grads, yb.shape[0], batch)
        if self.max_grad_norm is not None:
            norm = xp.sqrt(xp.vdot(net.flat_grads, net.flat_grads))
            net.flat_grads *= xp.minimum(1.0, self.max_grad_norm / (norm + 1e-12)).astype(net.dtype)
        self.opt.step()
        return loss

    def run_epoch(self, epoch: int, epochs: int, order: Array, lr_at: Callable[[int], float],
                  step0: int) -> dict[str, Any]:
        from tqdm import tqdm

        net, xp, B = self.net, self.net.xp, self.B
        n = order.shape[0]
        steps = -(-n // B)
        self.loss_sum.fill(0)  # this rank's rows' (so are `correct` and `mine`; `seen` counts every rank's)
        self.correct.fill(0)
        seen = mine = seen_at_check = 0
        loss_at_check = 0.0  # every rank's loss sum at the last check
        good_step = step0  # the global step of the last check where the loss and the weights were finite
        bar = tqdm(total=n, desc=f"epoch {epoch + 1}/{epochs}", unit="sample",
                   disable=not self.progress, leave=False, dynamic_ncols=True)
        last = t_start = time.perf_counter() if self.progress else 0.0
        diverged = None
        whole = B == n and self.size == 1  # full-batch gradient descent: the same batch every step
        for s in range(steps):
            rows = order[s * B:(s + 1) * B]
            batch = rows.shape[0]
            if self.size > 1:
                rows = _shard_rows(rows, self.rank, self.size)
            b = rows.shape[0]
            self.opt.lr = lr_at(step0 + s)
            try:
                xb = self.batches.full() if whole else self.batches.get(rows) if b else None
                yb = self.y if whole else self.y[rows]
                loss = self._step(xb, yb, batch)
            except Exception as exc:  # out of memory: free the buffers, keep the weights, say what to do
                error = _as_memory_error(exc, net, B)
                if error is None:
                    raise
                bar.close()
                self.release()
                raise error from None
            if self.check_every and (step0 + s + 1) % self.check_every == 0:
                self.comm.check_same(f"the weights after step {step0 + s + 1}", net.flat_params)
            if b:
                self.loss_sum += loss * b
                self.correct += _correct(xp, net.last_output, yb)
            seen, mine = seen + batch, mine + b
            # checks come at steps fixed by the settings, the same on every rank (which decide on the
            # global loss, so that they all stop and restore the same weights together: a rank left alone
            # would wait forever); the progress bar alone may refresh on a timer in between
            check = (s + 1) % self.check_steps == 0 or s == steps - 1
            now = time.perf_counter() if self.progress else 0.0
            if not check and not (self.progress and now - last >= self.refresh):
                continue
            total = float(self.loss_sum)  # the one synchronisation: at a check or a progress refresh
            if check:
                # the loss comes before the update, so look at the weights too: a snapshot must be finite
                weights_ok = bool(xp.isfinite(net.flat_params).all())
                total_all = _sum_over_ranks(self.comm, self.size, total if weights_ok else math.nan)
                if not math.isfinite(total_all):
                    where = self._first_bad_layer()
                    self._restore()
                    what = ("the weights became NaN or infinite" if math.isfinite(total) and not weights_ok
                            else f"the loss became {total / max(mine, 1)}")
                    diverged = (f"training diverged: {what} between steps "
                                f"{good_step + 1} and {step0 + s + 1} (epoch {epoch + 1}); the first non-finite "
                                f"value is in {where}; restored the weights of step {good_step}; "
                                "lower the learning rate or clip gradients (max_grad_norm)")
                    break
                if s == steps - 1:
                    self.opt._settle()  # at the same step in a run resumed from a checkpoint, which saves it settled
                self._good, good_step = self._snapshot(), step0 + s + 1
                window = seen - seen_at_check
                if window:
                    self.history.steps.append((step0 + s + 1, (total_all - loss_at_check) / window))
                loss_at_check, seen_at_check = total_all, seen
            if self.progress:  # between checks, the bar shows this rank's loss and accuracy
                bar.set_postfix(loss=f"{total / max(mine, 1):.4f}", acc=f"{int(self.correct) / max(mine, 1):.3f}",
                                rate=f"{seen / max(now - t_start, 1e-9):,.0f}/s", refresh=False)
                bar.update(seen - bar.n)
                last = now
        bar.close()
        if diverged:
            return {"diverged": diverged, "samples": max(seen, 1), "loss": math.nan, "accuracy": math.nan}
        correct = _sum_over_ranks(self.comm, self.size, int(self.correct))  # the epoch ends at a check: loss too
        return {"diverged": None, "samples": seen, "loss": loss_at_check / seen, "accuracy": int(correct) / seen}


def _sum_over_ranks(comm: Any, size: int, x: float) -> float:
    """``Σ_r x_r`` over the ranks (one host all-reduce), or ``x`` in one process; NaN if any rank's is."""
    return float(x) if size == 1 else comm.allreduce_sum_scalar(x)


def _fuses_per_sample(net: Sequential, optimizer: Optimizer, B: int, size: int, max_grad_norm: float | None) -> bool:
    """Whether batch-1 training runs as the fused per-sample kernel (:mod:`.experimental.persample`).

    On CuPy, in one process, without gradient clipping, for the networks and
    optimisers it implements (``persample.can_fuse``: Dense layers with their
    activations and a hidden layer, softmax cross-entropy on labels, SGD).
    Anything else, BatchNorm and Dropout included, takes the general path.
    """
    if B != 1 or size != 1 or max_grad_norm is not None or not net.backend.is_gpu:
        return False
    from .experimental import persample  # only batch 1 on a GPU needs it

    return persample.can_fuse(net, optimizer)


class _FusedLoop(_Loop):
    """Batch-1 SGD as the fused per-sample kernel: each run of :attr:`RUN` samples is one launch.

    The samples, their order and their learning rates are those of the general
    path (one rate per sample from the schedule), so the weights are the same to
    float rounding. Progress, the divergence check and the loss curve come at a
    run's end when ``refresh`` seconds have passed, as the general loop's do.
    """

    RUN = 512  #: samples per launch: few launches, yet a progress refresh and a divergence check often enough

    def run_epoch(self, epoch: int, epochs: int, order: Array, lr_at: Callable[[int], float],
                  step0: int) -> dict[str, Any]:
        from tqdm import tqdm

        from .experimental.persample import per_sample_sgd

        net, xp = self.net, self.net.xp
        n = order.shape[0]
        self.loss_sum.fill(0)
        self.correct.fill(0)
        seen = seen_at_check = 0
        loss_at_check = 0.0
        good_step = step0
        bar = tqdm(total=n, desc=f"epoch {epoch + 1}/{epochs}", unit="sample", disable=not self.progress,
                   leave=False, dynamic_ncols=True)
        last = t_start = time.perf_counter()
        diverged = None
        for lo in range(0, n, self.RUN):
            k = min(self.RUN, n - lo)
            rates = [lr_at(step0 + lo + j) for j in range(k)]
            self.opt.lr = rates[-1]
            lr = rates[0] if rates.count(rates[0]) == k else xp.asarray(np.array(rates), dtype=net.dtype)
            try:
                loss, correct = per_sample_sgd(net, cast(SGD, self.opt), self.X, self.y, order[lo:lo + k],
                                               scale=self.batches.scale, lr=lr, method="kernel")
            except Exception as exc:  # out of memory: free the buffers, keep the weights, say what to do
                error = _as_memory_error(exc, net, 1)
                if error is None:
                    raise
                bar.close()
                self.release()
                raise error from None
            self.loss_sum += loss
            self.correct += correct
            seen += k
            now = time.perf_counter()
            if now - last >= self.refresh or lo + k == n:
                total = float(self.loss_sum)  # the one synchronisation: at a progress refresh
                if not math.isfinite(total):
                    where = self._first_bad_layer()
                    self._restore()
                    diverged = (f"training diverged: the loss became {total / max(seen, 1)} between steps "
                                f"{good_step + 1} and {step0 + lo + k} (epoch {epoch + 1}); the first non-finite "
                                f"value is in {where}; restored the weights of step {good_step}; "
                                "lower the learning rate or clip gradients (max_grad_norm)")
                    break
                self._good, good_step = self._snapshot(), step0 + lo + k
                if seen > seen_at_check:
                    self.history.steps.append((step0 + lo + k, (total - loss_at_check) / (seen - seen_at_check)))
                loss_at_check, seen_at_check = total, seen
                bar.set_postfix(loss=f"{total / seen:.4f}", acc=f"{int(self.correct) / seen:.3f}",
                                rate=f"{seen / (now - t_start):,.0f}/s", refresh=False)
                bar.update(seen - bar.n)
                last = now
        bar.close()
        if diverged:
            return {"diverged": diverged, "samples": max(seen, 1), "loss": math.nan, "accuracy": math.nan}
        return {"diverged": None, "samples": seen, "loss": float(self.loss_sum) / seen,
                "accuracy": int(self.correct) / seen}
