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
``_check_steps``) or when the progress bar refreshes, so on a GPU the steps
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
from .backend import to_device
from .checkpoint import check_resumable, load_checkpoint, save_checkpoint
from .checks import as_array, as_dtype, check_samples, check_targets
from .distributed import average_gradients, shard_rows, sum_over_ranks
from .history import DeviceMemoryError, History, StopReason, TrainingDiverged, epoch_line, memory_error
from .network import Sequential
from .optim import SGD, Optimizer
from .schedules import Schedule, make_schedule

__all__ = ["Batches", "Callback", "DeviceMemoryError", "FitConfig", "History", "StopReason", "TrainingDiverged",
           "evaluate", "fit"]

Array = Any
#: called after every epoch with its record (``epoch``, ``loss``, ``accuracy``, ``val_loss``, ...); True stops
Callback = Callable[[dict[str, float]], "bool | None"]

REFRESH_SECONDS = 0.5  #: the progress bar's refresh interval (it reads the loss; it never changes a number)
VALIDATION_SPLIT = 2**63  #: the hash counter of the validation split (epochs use their own number)


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
        if not _is_int(self.epochs) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        if self.batch_size != "full" and (not _is_int(self.batch_size) or cast(int, self.batch_size) < 1):
            raise ValueError(f"batch_size must be a positive integer or 'full', got {self.batch_size!r}")
        if not _is_int(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        make_schedule(self.schedule)  # a bad name is one sentence now, not at the first step
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}")
        if self.patience is not None and (not _is_int(self.patience) or self.patience < 1):
            raise ValueError(f"patience must be a positive integer, got {self.patience!r}")
        if self.max_grad_norm is not None and not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be a positive number, got {self.max_grad_norm!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


# --------------------------------------------------------------------------
# Data on the device
# --------------------------------------------------------------------------
class Batches:
    """A data set on the network's device, as given (uint8 images stay uint8), and its batches as floats.

    ``X`` is ``(N, D)``, ``y`` labels ``(N,)`` or targets ``(N, C)``; ``scale``
    turns ``X`` into the network's floats (1/255 for images). Each batch size
    gets one buffer, reused every step (a training step allocates nothing).
    """

    def __init__(self, net: Sequential, X: Any, y: Any, what: str = "training data") -> None:
        """Check ``(X, y)`` where they are (see :mod:`.checks`), then move them to ``net``'s device once."""
        X, self.scale = check_samples(as_array(X, net.backend, f"{what} X"), net.input_dim, f"{what} X")
        y = check_targets(as_array(y, net.backend, f"{what} y"), X.shape[0], net.output_dim, f"{what} y")
        xp = net.xp
        self.net = net
        X, y = to_device(X, net.backend), to_device(y, net.backend)
        self.X = xp.ascontiguousarray(X) if self.scale != 1.0 else as_dtype(X, xp, net.dtype, f"{what} X")
        self.y = xp.ascontiguousarray(y, dtype=xp.int64) if y.ndim == 1 else as_dtype(y, xp, net.dtype, f"{what} y")
        self._bufs: dict[int, tuple[Array, Array | None]] = {}
        self._full: Array | None = None

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
        new._bufs, new._full = {}, None
        return new

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
        self._bufs.clear()
        self._full = None


def _correct(out: Array, y: Array) -> Array:
    """How many rows of ``out`` predict their label ``y`` (a device scalar)."""
    if out.shape[1] == 1:  # one output: a binary classifier on logits
        return ((out[:, 0] > 0) == (y == 1)).sum()
    return (out.argmax(axis=1) == y).sum()


def evaluate(net: Sequential, X: Any, y: Any, batch_size: int = 4096) -> tuple[float, float]:
    """Mean loss and accuracy of ``net`` on ``(X, y)`` in eval mode (accuracy NaN for float targets)."""
    if not isinstance(net, Sequential):
        raise TypeError(f"evaluate takes a gpu_backprop network, got {type(net).__name__}")
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
            correct += _correct(out, yb)
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
    checkpoint : a path; a checkpoint is written there (atomically) after every epoch.
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
        verifies that the ranks' weights agree). BatchNorm statistics are per rank.
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
        train, val = _hold_out(train, cfg.validation_fraction, cfg.seed)
    rank, size = (comm.rank, comm.size) if comm is not None else (0, 1)
    n = len(train)
    B = _batch_size(cfg.batch_size, n)
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
        history = History.from_dict(state.get("history", {}))
    if size > 1:
        comm.broadcast_(net.flat_params)

    loop = _Loop(net, optimizer, train, B, comm, cfg.max_grad_norm, progress and rank == 0, history)
    best_loss, best_state, best_epoch, bad_epochs = math.inf, None, 0, 0  # early stopping
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
        if val is not None:
            record["val_loss"], record["val_accuracy"] = _evaluate(val)
            if not math.isfinite(record["val_loss"]):
                loop.restore()
                raise TrainingDiverged(
                    f"training diverged: the validation loss became {record['val_loss']} after epoch {epoch + 1} "
                    f"(the training loss was {record['loss']:.4g}); restored the weights of step {loop.good_step}; "
                    "lower the learning rate or the weight decay", history, loop.good_step)
        if not train.labels:
            record.pop("val_accuracy", None)
        history.epochs.append(record)
        if rank == 0 and progress:
            _print_epoch(record, cfg.epochs)
        stop = None
        if cfg.patience is not None:
            if record["val_loss"] < best_loss:
                best_loss, best_state, best_epoch, bad_epochs = record["val_loss"], net.state_dict(), epoch + 1, 0
            else:
                bad_epochs += 1
                if bad_epochs >= cfg.patience:
                    stop = (StopReason.EARLY_STOPPING, f"early stopping: the validation loss did not improve for "
                            f"{cfg.patience} epochs; restored the weights of epoch {best_epoch}")
        if stop is None and any([bool(cb(record)) for cb in callbacks]):  # every callback sees every epoch
            stop = (StopReason.CALLBACK, f"stopped by a callback after epoch {epoch + 1}")
        if stop is not None:
            history.stopped_reason, history.stop_message = stop
        if checkpoint is not None and rank == 0:
            save_checkpoint(checkpoint, net, optimizer, {**run, "epoch": epoch + 1, "history": history.to_dict()})
        if stop is not None:
            break
    if best_state is not None and best_epoch != len(history.epochs):
        net.load_state_dict(best_state)
        history.best_epoch = best_epoch
    return history


def _config(config: FitConfig | None, settings: dict[str, Any]) -> FitConfig:
    """``config`` with ``settings`` (its fields by name) applied; an unknown name is one sentence."""
    names = [f.name for f in dataclasses.fields(FitConfig)]
    unknown = [k for k in settings if k not in names]
    if unknown:
        raise TypeError(f"fit() got the unknown setting {unknown[0]!r}; the settings are {', '.join(names)}")
    return dataclasses.replace(config or FitConfig(), **settings)


def _hold_out(data: Batches, fraction: float, seed: int) -> tuple[Batches, Batches]:
    """``(training, validation)``: a ``fraction`` of the samples, chosen from ``seed``, held out for validation."""
    n = len(data)
    k = max(1, round(fraction * n))
    if k >= n:
        raise ValueError(f"validation_fraction {fraction} of {n} samples leaves none to train on; use a smaller one")
    xp = data.net.xp
    order = kernels.random_permutation(xp, n, seed, VALIDATION_SPLIT)
    return data.subset(xp.sort(order[k:])), data.subset(xp.sort(order[:k]))


def _batch_size(batch_size: int | str, n: int) -> int:
    b = n if batch_size == "full" else int(batch_size)
    if b > n:
        raise ValueError(f"batch_size {b} is larger than the {n} training samples; use 'full' or a smaller batch")
    return b


def _print_epoch(r: dict[str, float], epochs: int) -> None:
    from tqdm.auto import tqdm

    tqdm.write(epoch_line(r, epochs))


# --------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------
_RANK_CHECK_STEPS = 50  # with several ranks, a check every this many steps (all ranks at the same steps)
_CHECK_SAMPLES = 4096  # one rank: a check (divergence guard, loss-curve point) about every this many samples ...
_CHECK_MIN_STEPS = 8  # ... but no more often than every this many steps (a GPU would wait at each one)
_FUSED_RUN = 512  # per-sample SGD on a GPU: samples per launch of the fused kernel


def _check_steps(batch: int, size: int) -> int:
    """How many steps from one check to the next: a function of the settings alone, never of time."""
    if size > 1:
        return _RANK_CHECK_STEPS
    return max(_CHECK_MIN_STEPS, -(-_CHECK_SAMPLES // batch))


class _Loop:
    """The steps of each epoch, the device accumulators, the divergence guard and the progress bar.

    A *unit* of work is one step of ``B`` rows — or, for per-sample SGD on a
    GPU, one launch of the fused kernel over a run of samples. Checks come
    after the unit that completes every ``_check_steps`` steps and after the
    last unit of an epoch; at a check the loss is read (the one wait for the
    device), the weights are tested, and a snapshot of the good state is kept.
    """

    def __init__(self, net: Sequential, opt: Optimizer, data: Batches, B: int, comm: Any,
                 max_grad_norm: float | None, progress: bool, history: History) -> None:
        self.net, self.opt, self.data, self.B, self.comm = net, opt, data, B, comm
        self.rank, self.size = (comm.rank, comm.size) if comm is not None else (0, 1)
        self.max_grad_norm, self.progress, self.history = max_grad_norm, progress, history
        self.check_every = getattr(comm, "check_every", None) if self.size > 1 else None
        self.fused = _fuses_per_sample(net, opt, B, self.size, max_grad_norm)
        self.check_steps = _check_steps(B, self.size)
        xp = net.xp
        self.loss_sum = xp.zeros((), dtype=xp.float64)
        self.correct = xp.zeros((), dtype=xp.int64)
        self.good_step = 0
        self._good = self._snapshot()

    # ---- the good state ------------------------------------------------
    def _snapshot(self) -> tuple[Array, dict[str, Array]]:
        """Copies of the weights and the optimiser state (taking them changes nothing)."""
        return self.net.flat_params.copy(), {k: v.copy() for k, v in self.opt.state_buffers().items()}

    def restore(self) -> None:
        """Put back the weights and the optimiser state of the last good check."""
        params, state = self._good
        self.net.flat_params[...] = params
        for k, v in self.opt.state_buffers().items():
            v[...] = state[k]

    def _first_bad(self) -> str:
        xp = self.net.xp
        for name, g in self.net.grads.items():
            if not bool(xp.isfinite(g).all()):
                return f"the gradient of {name}"
        for name, p in self.net.params.items():
            if not bool(xp.isfinite(p).all()):
                return f"the weights {name}"
        return "the loss itself"

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
        """Train on the ``k`` steps from step ``s`` of this epoch; returns the samples seen by all ranks and by this one."""
        net, B = self.net, self.B
        if self.fused:  # one launch for k single samples, each at its own learning rate
            from .experimental.persample import per_sample_sgd

            rates = [lr_at(s + j) for j in range(k)]
            self.opt.lr = rates[-1]
            lr = rates[0] if rates.count(rates[0]) == k else net.xp.asarray(np.array(rates), dtype=net.dtype)
            loss, correct = per_sample_sgd(net, cast(SGD, self.opt), self.data.X, self.data.y, order[s:s + k],
                                           scale=self.data.scale, lr=lr, method="kernel")
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
                self.correct += _correct(net.last_output, yb)
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
        from tqdm.auto import tqdm

        net = self.net
        lr_at = lambda s: base_lr * schedule(epoch, step0 + s, total_steps)  # noqa: E731 - s counts in the epoch
        units = self._units(order)
        total = units[-1][0] + units[-1][1]
        self.loss_sum.fill(0)  # this rank's rows' (so are `correct` and `mine`; `seen` counts every rank's)
        self.correct.fill(0)
        seen = mine = seen_at_check = 0
        loss_at_check = 0.0  # every rank's loss sum at the last check
        self.good_step = step0
        bar = tqdm(total=order.shape[0], desc=f"epoch {epoch + 1}/{epochs}", unit="sample",
                   disable=None if self.progress else True, leave=False, dynamic_ncols=True)
        last = t_start = time.perf_counter()
        for s, k in units:
            try:
                everyone, this_rank = self._train_unit(order, s, k, lr_at)
                seen, mine = seen + everyone, mine + this_rank
            except Exception as exc:  # out of memory: free the buffers, keep the weights, say what to do
                error = memory_error(exc, net.backend.is_gpu, self.B)
                if error is None:
                    raise
                bar.close()
                self.release()
                raise error from None
            done = s + k  # steps of this epoch done
            if self.check_every and (step0 + done) % self.check_every == 0:
                self.comm.check_same(f"the weights after step {step0 + done}", net.flat_params)
            check = done == total or done // self.check_steps > s // self.check_steps
            now = time.perf_counter()
            refresh = self.progress and now - last >= REFRESH_SECONDS
            if not (check or refresh):
                continue
            loss_total = float(self.loss_sum)  # the one wait for the device: at a check or a progress refresh
            if check:
                loss_all = self._check(loss_total, mine, step0 + done, epoch, bar)
                if seen > seen_at_check:
                    self.history.steps.append((step0 + done, (loss_all - loss_at_check) / (seen - seen_at_check)))
                loss_at_check, seen_at_check = loss_all, seen
            if self.progress:  # between checks, the bar shows this rank's loss and accuracy
                postfix = {"loss": f"{loss_total / max(mine, 1):.4f}",
                           "rate": f"{seen / max(now - t_start, 1e-9):,.0f}/s"}
                if self.data.labels:
                    postfix["acc"] = f"{int(self.correct) / max(mine, 1):.3f}"
                bar.set_postfix(postfix, refresh=False)
                bar.update(seen - bar.n)
                last = now
        bar.close()
        # the last unit of an epoch is a check: loss_at_check is every rank's loss; the accuracy needs a sum too
        correct = sum_over_ranks(self.comm, self.size, int(self.correct)) if self.data.labels else math.nan
        return {"samples": seen, "loss": loss_at_check / seen, "accuracy": correct / seen}

    def _check(self, loss_total: float, mine: int, step: int, epoch: int, bar: Any) -> float:
        """Keep the state as good if the loss and the weights are finite (on every rank); else restore and raise.

        Returns the loss summed over the ranks (one host all-reduce, the same on every rank, so that
        they all stop and restore the same weights together: a rank left alone would wait forever).
        """
        xp = self.net.xp
        # the loss comes before the update, so look at the weights too: a snapshot must be finite
        weights_ok = bool(xp.isfinite(self.net.flat_params).all())
        loss_all = sum_over_ranks(self.comm, self.size, loss_total if weights_ok else math.nan)
        if math.isfinite(loss_all):
            self._good, self.good_step = self._snapshot(), step
            return loss_all
        bar.close()
        where = self._first_bad()
        self.restore()
        what = ("the weights became NaN or infinite" if math.isfinite(loss_total) and not weights_ok
                else f"the loss became {loss_total / max(mine, 1)}")
        raise TrainingDiverged(
            f"training diverged: {what} between steps {self.good_step + 1} and {step} (epoch {epoch + 1}); "
            f"the first non-finite value is in {where}; restored the weights of step {self.good_step}; "
            "lower the learning rate or clip gradients (max_grad_norm)", self.history, self.good_step)


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
