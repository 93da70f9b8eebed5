"""Training: a device-resident loop over whole batches, with a progress bar and nothing lost.

    history = gb.fit(net, opt, X_train, y_train, epochs=10, batch_size=128, validation_fraction=0.1)
    test_loss, test_accuracy = gb.evaluate(net, X_test, y_test)

The data set goes to the device once, as it is (uint8 images stay uint8). A
``validation_fraction`` of it is held out first, chosen from the seed, and
evaluated after every epoch; early stopping watches it. The test set is not
fit's business: evaluate it once, at the end.

Each epoch draws a permutation on the device from ``(seed, epoch)``; each step
gathers its rows and scales them to floats in one kernel, runs forward,
backward and the optimiser, and adds its loss to a device accumulator. The
host reads that accumulator back only at a check (every few steps, see
:mod:`.guard`) or when the progress bar refreshes, so on a GPU the steps
queue up without waiting. Everything that can change numbers or saved state
(the divergence guard's snapshot, the loss curve's points) happens at checks,
which the step count fixes: never on a timer, so the same seed gives the same
bits however busy the machine is.

``batch_size`` is an integer (1 is per-sample SGD) or ``"full"`` (full-batch
gradient descent): the same matrix-form step serves all three. On a GPU,
per-sample SGD of the networks it implements runs as one fused kernel per run
of samples instead (:mod:`gpu_backprop.experimental.persample`), with the same
results to float rounding.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from . import kernels
from .batches import Batches
from .checkpoint import check_resumable, load_checkpoint, save_checkpoint
from .checks import check_int, check_range, check_seed
from .distributed import average_gradients, shard_rows, sum_over_ranks
from .guard import Guard, check_steps
from .history import (
    DeviceMemoryError,
    EarlyStopping,
    History,
    ProgressBar,
    StopReason,
    TrainingDiverged,
    memory_error,
    print_epoch,
)
from .network import Sequential
from .optim import SGD, Optimizer
from .schedules import Schedule, make_schedule

__all__ = ["Callback", "DeviceMemoryError", "FitConfig", "History", "StopReason", "TrainingDiverged",
           "evaluate", "fit"]

Array = Any
#: called after every epoch with its record (``epoch``, ``loss``, ``accuracy``, ``val_loss``, ...); True stops
Callback = Callable[[dict[str, float]], "bool | None"]


# --------------------------------------------------------------------------
# What a run is (what happened is in .history)
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class FitConfig:
    """How a run trains: everything that shapes its result. A resumed run must repeat it (``epochs`` may grow).

    Attributes
    ----------
    epochs : the total number of epochs (a resumed run continues up to it).
    batch_size : an integer (1 = per-sample SGD) or ``"full"`` (the whole set per step).
    seed : seeds the shuffling and the validation split (the weights come from the network's seed).
    schedule : a learning-rate schedule (:func:`gpu_backprop.schedules.make_schedule`); cosine and
        one-cycle span all ``epochs``.
    validation_fraction : the share of the training data held out for validation (0 for none).
    patience : stop when the validation loss has not improved for this many epochs, and
        restore the best weights (a resumed run counts afresh).
    max_grad_norm : clip the gradient to this global L2 norm.
    """

    epochs: int = 10
    batch_size: int | str = 128
    seed: int = 0
    schedule: str | Schedule | None = None
    validation_fraction: float = 0.0
    patience: int | None = None
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs)
        if self.batch_size != "full":
            check_int("batch_size", self.batch_size, alternative=" or 'full'")
        object.__setattr__(self, "seed", check_seed("seed", self.seed))  # a Python int: the hash is 64-bit
        make_schedule(self.schedule)  # a bad name is one sentence now, not at the first step
        check_range("validation_fraction", self.validation_fraction, 0.0, 1.0)
        if self.patience is not None:
            check_int("patience", self.patience)
        if self.max_grad_norm is not None:
            check_range("max_grad_norm", self.max_grad_norm, 0.0, lo_open=True)


def evaluate(net: Sequential, X: Any, y: Any, batch_size: int = 4096) -> tuple[float, float]:
    """Mean loss and accuracy of ``net`` on ``(X, y)`` in eval mode (accuracy NaN for float targets)."""
    if not isinstance(net, Sequential):
        raise TypeError(f"evaluate takes a gpu_backprop network, got {type(net).__name__}")
    batch_size = check_int("batch_size", batch_size)
    return _evaluate(Batches(net, X, y, "evaluation data"), batch_size)


def _evaluate(data: Batches, batch_size: int = 4096) -> tuple[float, float]:
    net, xp = data.net, data.net.xp
    loss_sum = xp.zeros((), dtype=xp.float64)
    correct = xp.zeros((), dtype=xp.int64)
    n = len(data)
    for i in range(0, n, batch_size):
        rows = xp.arange(i, min(i + batch_size, n), dtype=xp.int64)
        out = net.forward(data.get(rows), train=False)
        yb = data.y[i:i + batch_size]
        loss_sum += net.loss.forward(out, yb) * rows.shape[0]
        if data.labels:
            kernels.count_correct(out, yb, correct, net.loss.threshold)
    return float(loss_sum) / n, int(correct) / n if data.labels else math.nan


# --------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------
def fit(
    net: Sequential,
    optimizer: Optimizer,
    X: Any,
    y: Any,
    config: FitConfig | None = None,
    *,
    validation: tuple[Any, Any] | None = None,
    callbacks: Iterable[Callback] = (),
    checkpoint: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
    comm: Any = None,
    progress: bool = True,
    **settings: Any,
) -> History:
    """Train ``net`` with ``optimizer`` on ``(X, y)`` and return its :class:`History`.

    Parameters
    ----------
    X, y : images (uint8, scaled by 1/255 on the device) or float features, and
        integer labels or float targets; NumPy or CuPy arrays (or anything
        array-like), checked where they are, then moved to the device once.
    config : a :class:`FitConfig`; ``**settings`` are its fields, given directly
        (``fit(net, opt, X, y, epochs=5, batch_size=128)``) or overriding ``config``'s.
    validation : ``(X_val, y_val)`` evaluated after every epoch, instead of a
        held-out ``validation_fraction`` of ``(X, y)``.
    callbacks : called after every epoch with its record; one that returns True stops training.
    checkpoint : a path; a checkpoint is written there (atomically) after every epoch: the state a
        ``resume`` continues from (the last epoch's, also where early stopping restored the best weights).
    resume : a checkpoint to continue from: the run goes on exactly as if it had
        never stopped (bit for bit on NumPy). It continues the saved run, so the
        network, the optimiser's kind and hyper-parameters (``lr`` as first given)
        and the :class:`FitConfig` must be as saved (``epochs`` may grow) and the
        training data of the same size; a difference is a
        :class:`~gpu_backprop.checkpoint.CheckpointError` (a ValueError) that
        names it, and nothing is loaded.
    comm : a communicator from :mod:`gpu_backprop.distributed` for data-parallel
        training: every rank takes its shard of each global batch and the
        gradients are averaged with one all-reduce per step (``comm.check_every``
        verifies that the ranks' weights agree). BatchNorm statistics are per rank, so is the validation
        loss: every rank records and stops on rank 0's.
    progress : a progress bar per epoch and a line after it (rank 0 only).

    Raises
    ------
    TrainingDiverged
        When the loss or the weights become NaN or infinite: the weights and the
        optimiser state are put back to the last check where both were finite.
    DeviceMemoryError
        When a step runs out of memory: the weights are unchanged.
    """
    if not isinstance(net, Sequential):
        raise TypeError(f"fit takes a gpu_backprop network, got {type(net).__name__}")
    if not isinstance(optimizer, Optimizer) or optimizer.net is not net:
        raise TypeError("fit needs an optimizer built for this network, e.g. gb.SGD(net, lr=0.1)")
    cfg = _config(config, settings)
    callbacks = [callbacks] if callable(callbacks) else list(callbacks)
    if validation is not None and cfg.validation_fraction:
        raise ValueError("give validation data or a validation_fraction, not both")
    if cfg.patience is not None and validation is None and not cfg.validation_fraction:
        raise ValueError("early stopping (patience) needs validation data: pass validation_fraction=0.1 "
                         "or validation=(X_val, y_val)")
    train = Batches(net, X, y)
    val = Batches(net, *validation, "validation data") if validation is not None else None
    if cfg.validation_fraction:
        train, val = train.split(cfg.validation_fraction, cfg.seed)
    rank, size = (comm.rank, comm.size) if comm is not None else (0, 1)
    n = len(train)
    B = train.batch_size(cfg.batch_size, size)
    steps_per_epoch = -(-n // B)
    base_lr = optimizer.lr
    schedule = make_schedule(cfg.schedule)

    history = History()
    start_epoch = 0
    run = {"seed": cfg.seed, "base_lr": base_lr, "batch_size": B, "samples": n, "epochs": cfg.epochs,
           "schedule": "constant" if cfg.schedule is None else cfg.schedule if isinstance(cfg.schedule, str) else None,
           "max_grad_norm": cfg.max_grad_norm, "validation_fraction": cfg.validation_fraction}
    if resume is not None:
        state = load_checkpoint(resume, net, optimizer, check=lambda saved: check_resumable(resume, saved, run))
        start_epoch = state["epoch"]
        saved = History.from_dict(state.get("history", {}))
        history = History(saved.epochs, saved.steps)  # how the saved part ended is not how this one ends
    if size > 1:
        comm.broadcast_(net.flat_params)
    # every rank records rank 0's validation (its BatchNorm statistics are its own), in an all-reduce they all join
    validating = sum_over_ranks(comm, float(rank == 0 and val is not None)) > 0
    loop = _Loop(net, optimizer, train, B, comm, cfg.max_grad_norm, progress and rank == 0, history)
    early = EarlyStopping(cfg.patience) if cfg.patience is not None else None
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            order = kernels.random_permutation(net.xp, n, cfg.seed, epoch)
            with np.errstate(over="ignore", invalid="ignore"), kernels.blas_threads(net.backend, -(-B // size)):
                # (a diverging run is caught by the guard; BLAS threads set up for single samples)
                stats = loop.run_epoch(epoch, cfg.epochs, order, base_lr, schedule, epoch * steps_per_epoch,
                                       steps_per_epoch * cfg.epochs)
            seconds = time.perf_counter() - t0
            record = {"epoch": epoch + 1, "lr": optimizer.lr, "seconds": seconds,
                      "samples_per_second": stats["samples"] / seconds, "loss": stats["loss"]}
            if train.labels:
                record["accuracy"] = stats["accuracy"]
            if validating:
                mine = _evaluate(val) if rank == 0 and val is not None else (0.0, 0.0)
                record["val_loss"], record["val_accuracy"] = (sum_over_ranks(comm, v) for v in mine)
                if not math.isfinite(record["val_loss"]):
                    raise loop.guard.diverged(f"the validation loss became {record['val_loss']} after epoch "
                                              f"{epoch + 1} (the training loss was {record['loss']:.4g})",
                                              "the weight decay")
            if not train.labels:
                record.pop("val_accuracy", None)
            history.epochs.append(record)
            if rank == 0 and progress:
                print_epoch(record, cfg.epochs)
            stop = None
            if early is not None and (message := early.update(net, record)):
                stop = (StopReason.EARLY_STOPPING, message)
            asked = any([bool(cb(record)) for cb in callbacks])  # every callback sees every epoch, the last too
            if stop is None and asked:
                stop = (StopReason.CALLBACK, f"stopped by a callback after epoch {epoch + 1}")
            if stop is not None:
                history.stopped_reason, history.stop_message = stop
            if checkpoint is not None and rank == 0:
                save_checkpoint(checkpoint, net, optimizer, {**run, "epoch": epoch + 1, "history": history.to_dict()})
            if stop is not None:
                break
    finally:  # the schedule set the rate of each step; the optimiser keeps the one it was given
        optimizer.lr = base_lr
    if early is not None:
        early.restore_best(net, history)
    return history


def _config(config: FitConfig | None, settings: dict[str, Any]) -> FitConfig:
    """``config`` with ``settings`` (its fields by name) applied; an unknown name is one sentence."""
    names = [f.name for f in dataclasses.fields(FitConfig)]
    unknown = [k for k in settings if k not in names]
    if unknown:
        raise TypeError(f"fit() got the unknown setting {unknown[0]!r}; the settings are {', '.join(names)}")
    return dataclasses.replace(config or FitConfig(), **settings)


# --------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------
_FUSED_RUN = 512  # per-sample SGD on a GPU: samples per launch of the fused kernel


class _Loop:
    """The steps of each epoch, the device accumulators, and the checks.

    A *unit* of work is one step of ``B`` rows — or, for per-sample SGD on a
    GPU, one launch of the fused kernel over a run of samples. A check (see
    :mod:`.guard`) comes after the unit that completes every ``check_steps``
    steps and after the last unit of an epoch: the loss is read (the one wait
    for the device), the weights are tested, the good state is kept.
    """

    def __init__(self, net: Sequential, opt: Optimizer, data: Batches, B: int, comm: Any,
                 max_grad_norm: float | None, progress: bool, history: History) -> None:
        self.net, self.opt, self.data, self.B, self.comm = net, opt, data, B, comm
        self.rank, self.size = (int(comm.rank), int(comm.size)) if comm is not None else (0, 1)
        self.max_grad_norm, self.progress = max_grad_norm, progress
        self.check_every = getattr(comm, "check_every", None) if self.size > 1 else None
        self.fused = False  # per-sample SGD on a GPU may run as one fused kernel per run of samples
        if net.backend.is_gpu:
            from .experimental import persample

            self.fused = persample.fuses(net, opt, B, self.size, max_grad_norm)
        xp = net.xp
        self.loss_sum = xp.zeros((), dtype=xp.float64)
        self.correct = xp.zeros((), dtype=xp.int64)
        self.guard = Guard(net, opt, history, check_steps(B, self.size), comm)

    def release(self) -> None:
        """Drop every cached buffer so the device memory is free again."""
        for layer in self.net.layers:
            layer.release_buffers()
        self.net.loss.release_buffers()
        self.data.release()
        self.net.backend.free_cached_memory()

    # ---- one unit of work ---------------------------------------------
    def _units(self, order: Array) -> list[tuple[int, int]]:
        """``(first step, steps)`` of each unit of an epoch of ``len(order)`` samples."""
        steps = -(-order.shape[0] // self.B)
        per_unit = _FUSED_RUN if self.fused else 1
        return [(s, min(per_unit, steps - s)) for s in range(0, steps, per_unit)]

    def _train_unit(self, order: Array, s: int, k: int, lr_at: Callable[[int], float]) -> tuple[int, int]:
        """Train the ``k`` steps from step ``s``; returns the samples seen by all ranks and by this one."""
        net, B = self.net, self.B
        if self.fused:  # one launch for k single samples, each at its own learning rate
            from .experimental.persample import train_run

            loss, correct = train_run(net, cast(SGD, self.opt), self.data, order[s:s + k],
                                      [lr_at(s + j) for j in range(k)])
            self.loss_sum += loss
            self.correct += correct
            return k, k
        rows = order[s * B:(s + 1) * B]
        batch = rows.shape[0]  # the global batch (the last one of an epoch may be short)
        if self.size > 1:
            rows = shard_rows(rows, self.rank, self.size)
        b = rows.shape[0]
        self.opt.lr = lr_at(s)
        whole = B == len(self.data) and self.size == 1  # full-batch descent: the same batch every step
        if whole:
            xb, yb = self.data.full(), self.data.y
        else:  # a rank whose shard is empty still takes part in the all-reduce, with nothing to add
            xb, yb = (self.data.get(rows) if b else None), self.data.y[rows]
        loss = self._step(xb, yb, batch)
        if b:
            self.loss_sum += loss * b
            if self.data.labels:
                kernels.count_correct(net.last_output, yb, self.correct, net.loss.threshold)
        return batch, b

    def _step(self, xb: Array | None, yb: Array, batch: int) -> Array:
        """Gradients (averaged over the ranks), optional clipping, the update; returns the loss.

        ``xb`` is None on a rank whose shard of this global ``batch`` is empty.
        """
        net, xp = self.net, self.net.xp
        if self.size == 1 and self.max_grad_norm is None:
            return self.opt.train_step(xb, yb)  # may take dW straight into the update (SGD on the CPU)
        loss = net.train_step_grads(xb, yb) if xb is not None else 0.0
        if self.size > 1:
            average_gradients(self.comm, net.flat_grads, yb.shape[0], batch)
        if self.max_grad_norm is not None:
            norm = xp.sqrt(xp.vdot(net.flat_grads, net.flat_grads))
            net.flat_grads *= xp.minimum(1.0, self.max_grad_norm / (norm + 1e-12)).astype(net.dtype)
        self.opt.step()
        return loss

    # ---- an epoch -------------------------------------------------------
    def run_epoch(self, epoch: int, epochs: int, order: Array, base_lr: float, schedule: Schedule, step0: int,
                  total_steps: int) -> dict[str, Any]:
        """Train one epoch over ``order``; returns its samples, mean loss and accuracy (raises if it diverges)."""
        net = self.net
        lr_at = lambda s: base_lr * schedule(epoch, step0 + s, total_steps)  # noqa: E731 - s counts in the epoch
        units = self._units(order)
        total = units[-1][0] + units[-1][1]
        self.loss_sum.fill(0)  # this rank's rows' (so are `correct` and `mine`; `seen` counts every rank's)
        self.correct.fill(0)
        seen = mine = 0
        self.guard.start_epoch(step0)
        with ProgressBar(order.shape[0], f"epoch {epoch + 1}/{epochs}", self.progress) as bar:
            for s, k in units:
                try:
                    everyone, this_rank = self._train_unit(order, s, k, lr_at)
                    seen, mine = seen + everyone, mine + this_rank
                except Exception as exc:  # out of memory: free the buffers, keep the weights, say what to do
                    error = memory_error(exc, net.backend.is_gpu, self.B)
                    if error is None:
                        raise
                    self.release()
                    raise error from None
                done = s + k  # steps of this epoch done
                if self.check_every and (step0 + done) % self.check_every == 0:
                    self.comm.check_same(f"the weights after step {step0 + done}", net.flat_params)
                check = self.guard.due(s, done, total)
                if not (check or bar.due()):
                    continue
                loss_total = float(self.loss_sum)  # the one wait for the device: at a check or a progress refresh
                if check:  # the loss and the weights tested, the good state kept, a point of the loss curve
                    self.guard.check(loss_total, mine, seen, step0 + done, epoch)
                # between checks, the bar shows this rank's loss and accuracy
                bar.show(seen, loss_total, mine, self.correct if self.data.labels else None)
        # the last unit of an epoch is a check: guard.loss is every rank's loss; the accuracy needs a sum too
        correct = sum_over_ranks(self.comm, int(self.correct)) if self.data.labels else math.nan
        return {"samples": seen, "loss": self.guard.loss / seen, "accuracy": correct / seen}
