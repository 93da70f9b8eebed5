"""The command line: ``python -m gpu_backprop train`` (also ``scripts/train_mnist.py``), ``bench`` and ``doctor``.

``train`` prints its configuration, a progress bar on a terminal (a widget in a
notebook), a line per epoch, and ends with the test accuracy. With ``--json``
stdout holds one JSON object and nothing else: every line for people goes to
stderr. It ends with exit status

* 0 when the run trained and its test loss is a finite number;
* 2 for a mistake in a flag or an input: one line on stderr that says what is
  wrong and how to fix it, never a traceback, no half-written file;
* 3 when training diverged (the last good weights are kept) or the trained
  network's test loss is not a finite number;
* 130 on Ctrl-C and 143 on SIGTERM, after every file being written is either
  finished or removed.

A reader that goes away (``train ... | head -1``) does not stop the run: what
it would have read goes to /dev/null, and the run ends with its own status.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO, cast

from .. import __version__
from .._io import DirectoryInUse, lock_directory, save_png, strict_json
from ._args import Parser, UsageError

__all__ = ["PRESETS", "main"]

#: Named configurations; flags given explicitly override them.
PRESETS: dict[str, dict[str, Any]] = {
    # Nielsen, "Neural Networks and Deep Learning", ch. 1: ≈95% on MNIST
    "book-quadratic": {"dataset": "mnist", "hidden": "30", "activation": "sigmoid", "loss": "mse",
                       "output_activation": "sigmoid", "optimizer": "sgd", "lr": 3.0, "momentum": 0.0,
                       "batch_size": "10", "epochs": 30, "init": "glorot_normal"},
    # Nielsen, ch. 3: 784-100-10 sigmoid, cross-entropy on sigmoid outputs, L2 with λ = 5 over the
    # n training samples (his w ← (1 − ηλ/n) w − η∇C₀ is SGD with weight_decay = λ/n, n taken from
    # the data set actually loaded), ≈98%
    "book-crossentropy": {"dataset": "mnist", "hidden": "100", "activation": "sigmoid", "loss": "bce",
                          "optimizer": "sgd", "lr": 0.5, "momentum": 0.0, "l2_lambda": 5.0,
                          "batch_size": "10", "epochs": 30, "init": "lecun_normal"},
    # the benchmark's network on Fashion-MNIST: 89.07% test accuracy with seed 0, 88.72-89.17% with seeds 0-3
    "fashion": {"dataset": "fashion-mnist", "hidden": "256,256", "activation": "relu",
                "loss": "softmax_cross_entropy", "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
                "batch_size": "128", "epochs": 10, "schedule": "cosine"},
    # a first run in seconds, offline
    "quick": {"dataset": "mnist-sample", "hidden": "256,256", "epochs": 5, "batch_size": "64", "lr": 0.05,
              "momentum": 0.9},
}

#: The settings of a run given no flags. The parser's own defaults are all None, so that a flag given
#: explicitly can be told from a default (a --preset's value lies between the two).
DEFAULTS: dict[str, Any] = {
    "backend": None, "device": None, "dataset": None, "data_dir": None, "dtype": "float32", "tf32": False,
    "hidden": "256,256", "activation": "relu", "loss": "softmax_cross_entropy", "output_activation": None,
    "init": "auto", "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0,
    "l2_lambda": None, "batch_size": "128", "epochs": 5, "seed": 0, "schedule": None, "validation_fraction": 0.1,
    "patience": None, "max_grad_norm": None, "out": None, "resume": None, "json": False, "quiet": False,
    "progress": True, "distributed": "none",
}

#: How --help shows the defaults that are decided at run time (None above)
_DEFAULTS_SHOWN = {
    "backend": "auto, or $GPU_BACKPROP_BACKEND", "device": "CuPy's current device, 0",
    "dataset": "mnist from --data-dir, the cache or a download; without --data-dir, mnist-sample if it is nowhere",
    "output_activation": "none",
    "schedule": "constant", "patience": "off", "max_grad_norm": "off",
    "weight_decay": "0; --preset book-crossentropy takes 5/n, n the training samples",
}

_COMM: Any = None  # the communicator of a distributed run, so that an error on one rank stops them all
_HELD = contextlib.ExitStack()  # the lock on --out while a run trains into it, and the cleanup of --out


def _default(key: str) -> str:
    """The end of a flag's help: its default, and whether a --preset may set another."""
    value = DEFAULTS.get(key)
    if key not in _DEFAULTS_SHOWN and (value is None or value is False):
        return ""
    preset = "; the preset's value with --preset" if any(key in p for p in PRESETS.values()) else ""
    return f" (default: {_DEFAULTS_SHOWN.get(key) or _show(value)}{preset})"


def _parser() -> argparse.ArgumentParser:
    from ..data import DATASETS
    from ..kernels import ACTIVATIONS
    from ..losses import LOSSES
    from ..optim import OPTIMIZERS

    p = Parser(
        prog="python -m gpu_backprop",
        description="Backpropagation in matrix form over whole mini-batches, on NumPy or CuPy.",
    )
    p.add_argument("--version", action="version", version=f"gpu_backprop {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train an MLP on MNIST-like data",
                       description="Train an MLP on MNIST, Fashion-MNIST, the shipped MNIST sample, or IDX files. "
                                   "Exit status: 0 trained, 2 bad flag or input, 3 diverged, 130 Ctrl-C, 143 SIGTERM.")

    def flag(*names: str, help: str, **kw: Any) -> None:
        key = kw.get("dest") or names[-1].lstrip("-").replace("-", "_")
        t.add_argument(*names, help=help if "action" in kw else help + _default(key), **kw)

    flag("--preset", choices=sorted(PRESETS), help="a named configuration (flags override it)")
    flag("--dataset", choices=DATASETS, help="the data set")
    flag("--data-dir", metavar="DIR", help="a directory holding the four IDX files")
    flag("--backend", choices=["auto", "numpy", "cupy"], help="array backend")
    flag("--device", type=int, metavar="N", help="the CUDA device to train on (CuPy's device N)")
    flag("--dtype", choices=["float32", "float64"], help="precision of the weights and the arithmetic")
    flag("--tf32", action="store_true", default=None,
         help="float32 matrix products on TF32 tensor cores (CuPy on Ampere+; ~3e-4 relative error)")
    flag("--hidden", metavar="SIZES", help="hidden layer sizes, comma-separated ('' for none)")
    flag("--activation", choices=ACTIVATIONS, help="activation of the hidden layers")
    flag("--loss", choices=LOSSES, help="the loss")
    flag("--output-activation", choices=ACTIVATIONS, help="activation after the last layer (for mse)")
    flag("--init", help="weight initialiser, e.g. he_normal")
    flag("--optimizer", choices=OPTIMIZERS, help="the optimiser")
    flag("--lr", type=float, help="learning rate")
    flag("--momentum", type=float, help="SGD momentum")
    flag("--nesterov", action="store_true", default=None, help="Nesterov momentum")
    flag("--weight-decay", type=float, help="L2 weight decay")
    flag("-b", "--batch-size", metavar="N", help="samples per step: an integer (1 = per-sample SGD) or 'full'")
    flag("-e", "--epochs", type=int, metavar="N", help="passes over the training set")
    flag("--seed", type=int, help="seeds the initial weights and the shuffling")
    flag("--schedule", metavar="NAME", help="learning-rate schedule: constant, step[:EVERY[:GAMMA]], cosine or onecycle")
    flag("--validation-fraction", type=float, metavar="F",
         help="the share of the training data held out for validation (0 for none; the test set is evaluated "
              "once, at the end)")
    flag("--patience", type=int, metavar="N", help="stop early when the validation loss has not improved for N epochs")
    flag("--max-grad-norm", type=float, metavar="NORM", help="clip gradients to this global norm")
    flag("-o", "--out", metavar="DIR", help="directory for the checkpoint, history.json and curves.png (and "
                                            "model.npz: the weights early stopping restored)")
    flag("-r", "--resume", metavar="CHECKPOINT",
         help="continue from a checkpoint, with the saved run's settings (a flag that contradicts them is an "
              "error; --epochs may grow)")
    flag("--json", action="store_true", default=None,
         help="print the final metrics as one JSON object on stdout (every other line goes to stderr)")
    flag("-q", "--quiet", action="store_true", default=None,
         help="no progress bar, configuration or per-epoch lines: only the final line (and problems)")
    flag("--no-progress", dest="progress", action="store_false", default=None,
         help="no progress bar (there is none anyway when stderr is not a terminal)")
    flag("--distributed", choices=["none", "mpi", "nccl"], help="data-parallel engine (with mpiexec)")
    sub.add_parser("bench", help="run the benchmark suite (python -m gpu_backprop bench --help)")
    sub.add_parser("doctor", help="check CuPy, CUDA, NVRTC, NCCL and MPI, and compile every kernel "
                                  "(python -m gpu_backprop doctor --help)")
    return p


# --------------------------------------------------------------------------
# The process: signals, a reader that goes away, and the exit status
# --------------------------------------------------------------------------
class Terminated(BaseException):
    """SIGTERM, raised where the program is, so that every ``finally`` and cleanup runs on the way out.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` takes it for an error.
    """


def _on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
    raise Terminated


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While the block runs, SIGTERM raises :class:`Terminated` (signals reach the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Stdout(io.TextIOBase):
    """stdout for one run, whose reader may go away (``| head -1``): the rest then goes to /dev/null.

    As Python's documentation on SIGPIPE advises, the descriptor itself is
    pointed at /dev/null, so that the interpreter's last flush cannot fail
    either; the run goes on and ends with its own exit status.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            self.stream.write(text)
        except BrokenPipeError:
            self._reader_left()
        return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            self._reader_left()

    def _reader_left(self) -> None:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # a stream with no descriptor: its writes keep failing, and are dropped
            pass

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m gpu_backprop`` and the ``gpu-backprop`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # the benchmark suite parses its own flags
        from .bench import main as bench_main

        return bench_main(argv[1:])
    if argv[:1] == ["doctor"]:  # so does the doctor
        from .doctor import main as doctor_main

        return doctor_main(argv[1:])
    args = _parser().parse_args(argv)  # argparse exits with status 2 on a bad flag
    from ..backend import BackendError
    from ..checkpoint import CheckpointError
    from ..data import DataError

    with _sigterm_raises(), contextlib.redirect_stdout(cast(TextIO, _Stdout(sys.stdout))):
        try:
            return _train(args)
        except (UsageError, ValueError, TypeError, DataError, CheckpointError, BackendError, OSError,
                MemoryError) as exc:
            message = _os_problem(exc) if isinstance(exc, OSError) else str(exc)
            _stop_all_ranks(f"error: {message}", code=2)
            print(f"error: {message}", file=sys.stderr)
            return 2
        except (KeyboardInterrupt, Terminated) as exc:
            what, code = ("terminated", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
            _stop_all_ranks(f"{what}; the last checkpoint (if --out was given) is intact", code=code)
            print(f"{what}; the last checkpoint (if --out was given) is intact", file=sys.stderr)
            return code
        finally:
            _HELD.close()  # the --out lock


def _os_problem(exc: OSError) -> str:
    """An error of the file system as one sentence: what failed, on which path, and what to do."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return (f"no space left on the device{where}; free some space or choose another --out (what was written is "
                "intact)")
    return f"{exc.strerror or exc}{where}; check that path, and the ones given to --out, --data-dir and --resume"


def _stop_all_ranks(message: str, code: int) -> None:
    """In a distributed run, stop every rank: the others would wait for this one forever in an all-reduce."""
    if _COMM is not None and _COMM.size > 1:
        _COMM.abort(f"rank {_COMM.rank}: {message}; stopping all {_COMM.size} ranks", code=code)


# --------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------
def _settings(args: argparse.Namespace) -> dict[str, Any]:
    cfg = dict(DEFAULTS)
    if args.preset:
        cfg.update(PRESETS[args.preset])
    cfg.update({k: v for k, v in vars(args).items() if v is not None and k not in ("command", "preset")})
    cfg["preset"] = args.preset
    return cfg


def _check_flags_are_read(cfg: dict[str, Any], args: argparse.Namespace) -> None:
    """A flag the run would not read is a mistake to point out, not to drop in silence."""
    unread = [("--momentum", args.momentum is not None and cfg["optimizer"] != "sgd", "--optimizer sgd"),
              ("--nesterov", bool(args.nesterov) and cfg["optimizer"] != "sgd", "--optimizer sgd"),
              ("--tf32", bool(args.tf32) and cfg["dtype"] != "float32", "--dtype float32"),
              ("--data-dir", args.data_dir is not None and cfg["dataset"] == "mnist-sample", "another --dataset")]
    for flag, ignored, fix in unread:
        if ignored:  # (a resumed run keeps the saved settings: the only fix then is to drop the flag)
            raise UsageError(f"{flag} has no effect on this run ({cfg['optimizer']}, {cfg['dtype']}, "
                             f"{cfg['dataset'] or 'mnist'}); drop it" + ("" if cfg["resume"] else f", or use {fix}"))


def _hidden(text: str) -> list[int]:
    parts = str(text).split(",") if str(text).strip() else []  # '' is no hidden layer
    if len(parts) > 1 and not parts[-1].strip():
        parts.pop()  # '256,' as '256'; but ',,,' is a typo, not a network
    try:
        sizes = [int(s) for s in parts]
    except ValueError:
        raise UsageError(f"--hidden takes comma-separated layer sizes like 256,256, got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise UsageError(f"--hidden sizes must be positive, got {text!r}")
    return sizes


def _batch(text: str) -> int | str:
    if str(text) == "full":
        return "full"
    try:
        b = int(text)
    except ValueError:
        raise UsageError(f"--batch-size takes an integer or 'full', got {text!r}") from None
    if b < 1:
        raise UsageError(f"--batch-size must be at least 1, got {b}")
    return b


def _check_out_dir(out: str) -> tuple[Path, bool]:
    """Create --out and check that it can be written, before anything is trained; ``(it, whether it was made)``.

    A run that ends without writing into it leaves no empty directory behind.
    """
    path = Path(out)
    made = [p for p in (path, *path.parents) if not p.exists()]
    _HELD.callback(_remove_if_empty, made)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write to --out {out} ({exc.strerror or exc}); choose a writable directory") from None
    return path, bool(made)


def _remove_if_empty(directories: list[Path]) -> None:
    """Remove the directories made for --out, deepest first, as long as they are empty."""
    for d in directories:
        try:
            d.rmdir()
        except OSError:
            return


def _use_device(cfg: dict[str, Any]) -> None:
    """Make CuPy's device ``--device N`` the current one, before the backend is chosen (which describes it)."""
    n = cfg["device"]
    if n is None:
        return
    if n < 0:
        raise UsageError(f"--device takes a CUDA device number (0, 1, ...), got {n}")
    if cfg["backend"] == "numpy":
        raise UsageError("--device picks a CUDA device, which --backend numpy does not use; drop one of the two")
    if cfg["distributed"] == "nccl":
        raise UsageError("--device cannot be combined with --distributed nccl, where each rank takes the GPU of "
                         "its local rank; drop --device")
    from .. import backend, devices

    try:
        devices.use_device(n)
    except backend.BackendError as exc:  # CuPy cannot run here, or there is no device n
        raise UsageError(f"--device {n}: {exc}") from None


def _shows_progress(cfg: dict[str, Any]) -> bool:
    """A progress bar only where someone watches it: a terminal, or a notebook (tqdm.auto draws a widget there).

    Elsewhere (a pipe, a file, a CI log) its frames would only fill the log;
    the per-epoch lines say the same once per epoch.
    """
    if cfg["quiet"] or not cfg["progress"]:
        return False
    return bool(getattr(sys.stderr, "isatty", lambda: False)()) or _in_notebook()


def _in_notebook() -> bool:
    ipython = sys.modules.get("IPython")  # imported by the notebook's kernel, never by us
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def _check_two_classes(ds: Any) -> None:
    """Refuse a training set of one class: there is nothing to tell apart, and nothing to learn."""
    import numpy as np

    classes = np.unique(ds.y_train)
    if classes.size == 1:
        raise UsageError(f"the training labels of {ds.name} ({ds.source}) are all {int(classes[0])}; a classifier "
                         "needs at least two classes, so check the labels file or the --data-dir")


# --------------------------------------------------------------------------
# A run
# --------------------------------------------------------------------------
def _train(args: argparse.Namespace) -> int:
    import gpu_backprop as gb

    from ..batches import held_out
    from ..checks import check_range, check_seed
    from ..history import epoch_line
    from ..optim import make_optimizer
    from ..trainer import evaluate

    cfg = _settings(args)
    try:
        _use_device(cfg)
        device_problem = None
    except UsageError as exc:  # (raised once every rank can hear of it)
        device_problem = exc
    global _COMM
    comm = None
    if cfg["distributed"] != "none":  # first: a check that fails on one rank alone then stops every rank
        from ..distributed import init_distributed

        try:
            comm = _COMM = init_distributed(cfg["distributed"])
        except (RuntimeError, ImportError) as exc:
            raise UsageError(str(exc)) from None
    if device_problem is not None:
        raise device_problem
    hidden = _hidden(cfg["hidden"])
    batch_size = _batch(cfg["batch_size"])
    if cfg["epochs"] < 1:
        raise UsageError(f"--epochs must be at least 1, got {cfg['epochs']}")
    if not (cfg["lr"] > 0 and math.isfinite(cfg["lr"])):
        raise UsageError(f"--lr must be a positive number, got {cfg['lr']}")
    check_seed("--seed", cfg["seed"])
    check_range("--validation-fraction", cfg["validation_fraction"], 0, 1)  # (NaN too)
    resumed: dict[str, Any] | None = None
    if cfg["resume"]:
        from ..checkpoint import checkpoint_metadata, saved_as

        given = saved_as(cfg["resume"])
        if given.is_dir():
            raise UsageError(f"--resume {cfg['resume']} is a directory; pass the checkpoint in it, "
                             f"--resume {given / 'checkpoint.npz'}")
        if not given.is_file():
            raise UsageError(f"--resume {cfg['resume']} does not exist; pass a checkpoint written with --out")

        resumed = checkpoint_metadata(cfg["resume"])
        cfg = _resumed_settings(cfg, _explicit(args), resumed)
    if cfg["patience"] is not None and not cfg["validation_fraction"]:
        raise UsageError("--patience watches the validation loss, and " + (
            "the saved run holds out no validation data: drop --patience" if resumed else
            "--validation-fraction 0 holds out none: keep it above 0 (the default is 0.1)"))
    _check_flags_are_read(cfg, args)
    out_dir, made_out = _check_out_dir(cfg["out"]) if cfg["out"] else (None, False)
    rank0 = comm is None or comm.rank == 0
    human = sys.stderr if cfg["json"] else sys.stdout  # the lines for people: stdout holds the JSON alone

    def say(text: str) -> None:
        """A line of the configuration or of an epoch (rank 0 only; none with --quiet)."""
        if rank0 and not cfg["quiet"]:
            print(text, file=human, flush=True)

    ds, note = _load_data(cfg)
    _check_two_classes(ds)
    backend = gb.get_backend(cfg["backend"])
    if cfg["tf32"]:
        gb.devices.set_tf32(True)
    weight_decay = cfg["weight_decay"]
    if cfg["l2_lambda"] is not None and args.weight_decay is None:  # a preset's λ/n, n = this training set
        weight_decay = cfg["l2_lambda"] / len(ds.y_train)
    sizes = [int(ds.x_train[0].size), *hidden, ds.num_classes if cfg["loss"] != "bce" or ds.num_classes > 2 else 1]
    if resumed is not None:
        weight_decay, batch_size, sizes = _resumed_sizes(cfg, args, resumed, len(ds.y_train), weight_decay)
    network = f"{'-'.join(map(str, sizes))} {cfg['activation']}"
    optimiser = (f"{cfg['optimizer']} lr {cfg['lr']}"
                 + (f" momentum {cfg['momentum']}" if cfg["optimizer"] == "sgd" and cfg["momentum"] else "")
                 + (" nesterov" if cfg["optimizer"] == "sgd" and cfg["nesterov"] else ""))
    n, held = len(ds.y_train), cfg["validation_fraction"]
    k = held_out(held, n) if held else 0
    split = f"{n - k:,} train + {k:,} validation (held out) / " if k else f"{n:,} train / "
    say(f"gpu_backprop {__version__}: training on {ds.name}{note}: {split}{len(ds.y_test):,} test samples "
        f"from {ds.source}")
    say(f"backend {backend.name} on {backend.device} ({backend.reason}); network {network}, loss {cfg['loss']}, "
        f"{optimiser}{f' weight decay {weight_decay:.3g}' if weight_decay else ''}, "
        f"batch {batch_size}, {cfg['epochs']} epochs, seed {cfg['seed']}, {cfg['dtype']}"
        + (f", schedule {cfg['schedule']}" if cfg["schedule"] not in (None, "constant") else "")
        + (f", gradient norm clipped at {cfg['max_grad_norm']}" if cfg["max_grad_norm"] is not None else "")
        + (f", {comm.size} ranks ({comm.engine})" if comm is not None else "")
        + (f"; resumed from {cfg['resume']} at epoch {resumed['state']['epoch']}" if resumed else ""))
    if comm is not None:
        say(comm.describe())  # which pid is which rank, for the launcher's messages
    if resumed is not None:  # the saved run's network and optimiser, whatever built them
        from ..checkpoint import network_from_config

        net = network_from_config(resumed["config"], backend, seed=cfg["seed"])
        opt_kwargs: dict[str, Any] = dict(resumed["optimizer"].get("hyper", {}), lr=cfg["lr"])
        if "beta1" in opt_kwargs:
            opt_kwargs["betas"] = (opt_kwargs.pop("beta1"), opt_kwargs.pop("beta2", 0.999))
    else:
        net = gb.MLP(sizes, activation=cfg["activation"], loss=cfg["loss"],
                     output_activation=cfg["output_activation"], init=cfg["init"], backend=backend, dtype=cfg["dtype"],
                     seed=cfg["seed"])
        opt_kwargs = {"lr": cfg["lr"], "weight_decay": weight_decay}
        if cfg["optimizer"] == "sgd":
            opt_kwargs.update(momentum=cfg["momentum"], nesterov=bool(cfg["nesterov"]))
    opt = make_optimizer(cfg["optimizer"], net, **opt_kwargs)
    if out_dir is not None and rank0:  # one run at a time writes into --out
        try:
            _HELD.enter_context(lock_directory(out_dir, remove_when_alone=made_out))
        except DirectoryInUse as exc:
            raise UsageError(f"--out {cfg['out']} is in use by another run ({exc.holder}); wait for it to finish or "
                             "choose another --out") from None

    bar = _shows_progress(cfg)  # with a bar, fit writes the per-epoch lines above it; without, we do
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(human):
        history, diverged = _fit(
            net, opt, ds.x_train, ds.y_train, epochs=cfg["epochs"], batch_size=batch_size, seed=cfg["seed"],
            schedule=cfg["schedule"], validation_fraction=cfg["validation_fraction"], patience=cfg["patience"],
            max_grad_norm=cfg["max_grad_norm"], progress=bar,
            callbacks=[] if bar else [lambda record: say(epoch_line(record, cfg["epochs"]))],
            checkpoint=out_dir / "checkpoint.npz" if out_dir else None, resume=cfg["resume"], comm=comm)
    seconds = time.perf_counter() - t0
    if not rank0:
        return 3 if diverged else 0

    test_loss, test_acc = evaluate(net, ds.x_test, ds.y_test)  # the test set, once, at the end
    if diverged is None and not (math.isfinite(test_loss) and math.isfinite(test_acc)):
        diverged = (f"the trained network's test loss is {test_loss} although training ended with a finite loss: "
                    "the last updates made the weights too large; lower --lr or --weight-decay, or clip gradients "
                    "with --max-grad-norm")
    # the tested weights where early stopping restored an earlier epoch's; the checkpoint stays the run's, to --resume
    best = out_dir / "model.npz" if out_dir is not None and history.best_epoch is not None else None
    if out_dir is not None:
        if best is not None:
            from ..checkpoint import save_checkpoint

            save_checkpoint(best, net, None, {"epoch": history.best_epoch})
        history.to_json(out_dir / "history.json")
        _plot(history, out_dir / "curves.png",
              title=f"{ds.name}: {network}, {optimiser}, batch {batch_size}, {backend.name} on {backend.device}")
    if history.stop_message and not diverged:  # early stopping, or a callback
        print(history.stop_message, file=sys.stderr)
    if best is not None:
        print(f"the weights of epoch {history.best_epoch}, tested below, are in {best} "
              "(checkpoint.npz holds the last epoch's, to --resume)", file=sys.stderr)
    if diverged:
        print(diverged, file=sys.stderr)
    last = history.epochs[-1] if history.epochs else {}
    trained = [e for e in history.epochs if math.isfinite(e.get("loss", math.nan))]
    samples = sum(e["samples_per_second"] * e["seconds"] for e in trained)
    epoch_seconds = [e["seconds"] for e in trained]  # the first holds start-up costs (cuBLAS, kernels)
    train_seconds = sum(epoch_seconds)
    epochs = len(history.epochs)
    print(f"test accuracy {test_acc:.4f}, test loss {test_loss:.4f} after {epochs} epoch{'s' * (epochs != 1)} "
          f"({train_seconds:.1f} s of training, {samples / max(train_seconds, 1e-9):,.0f} samples/s)",
          file=human, flush=True)
    if cfg["json"]:
        print(strict_json({
            "test_accuracy": test_acc, "test_loss": test_loss, "train_seconds": train_seconds,
            "epoch_seconds": epoch_seconds,
            "wall_seconds": seconds, "samples_per_second": samples / max(train_seconds, 1e-9),
            "epochs": epochs, "backend": backend.name, "device": backend.device,
            "dataset": ds.name, "preset": cfg["preset"], "sizes": sizes, "batch_size": batch_size,
            "stopped_reason": "diverged" if diverged else history.stopped_reason.value, "diverged": diverged,
            "final_lr": last.get("lr"),
        }), flush=True)
    return 3 if diverged else 0


def _load_data(cfg: dict[str, Any]) -> tuple[Any, str]:
    """The data set, and a note when the default fell back to the shipped sample.

    Only MNIST that is nowhere to be found falls back: a --data-dir the user named, or a corrupt file, is an error.
    """
    from ..data import DataNotFound, load_dataset

    if cfg["dataset"] is not None or cfg["data_dir"] is not None:
        return load_dataset(cfg["dataset"] or "mnist", cfg["data_dir"]), ""
    try:
        return load_dataset("mnist"), ""
    except DataNotFound:
        return load_dataset("mnist-sample"), (" (full MNIST is not cached and could not be downloaded, so: the "
                                              "10,000-digit sample shipped)")


def _fit(*args: Any, **kwargs: Any) -> tuple[Any, str | None]:
    """:func:`~gpu_backprop.trainer.fit`, and the sentence that says it diverged, if it did (said once, by us)."""
    from ..history import TrainingDiverged
    from ..trainer import fit

    try:
        return fit(*args, **kwargs), None
    except TrainingDiverged as exc:  # carries the history up to the divergence
        return exc.history, str(exc)


# --------------------------------------------------------------------------
# --resume: the saved run's settings win; a flag that contradicts them is an error
# --------------------------------------------------------------------------
#: flags that do not change what a resumed run computes, free to differ from the saved run
_FREE = ("dataset", "data_dir", "backend", "device", "tf32", "out", "resume", "json", "quiet", "progress",
         "distributed", "patience", "init", "epochs", "l2_lambda")
_KINDS = {"Identity": "identity", "ReLU": "relu", "LeakyReLU": "leaky_relu", "Sigmoid": "sigmoid", "Tanh": "tanh"}


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _explicit(args: argparse.Namespace) -> dict[str, tuple[str, Any]]:
    """The settings the user asked for, by key: ``(who asked, value)``, from the flags and the --preset."""
    given: dict[str, tuple[str, Any]] = {}
    if args.preset:
        given.update({k: (f"--preset {args.preset}", v) for k, v in PRESETS[args.preset].items()})
    given.update({k: (_flag(k), v) for k, v in vars(args).items() if v is not None and k not in ("command", "preset")})
    return given


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, list):
        return ",".join(map(str, v)) or "(none)"
    return "none" if v is None else str(v)


_ARCHITECTURE = ("hidden", "activation", "loss", "output_activation", "dtype")


def _contradiction(key: str, who: str, given: Any, saved: Any) -> UsageError:
    if key in _ARCHITECTURE:
        asked = f"{who} (its {_flag(key)} {_show(given)})" if who.startswith("--preset") else f"{who} {_show(given)}"
        return UsageError(f"{asked} asks for a different network than the checkpoint's ({_flag(key)[2:]} "
                          f"{_show(saved)}); drop {who.split()[0]} to continue the saved run, or start afresh "
                          "without --resume")
    if who.startswith("--preset"):
        return UsageError(f"{who} sets {_flag(key)} {_show(given)}, which differs from the checkpoint's {_show(saved)}; "
                          "drop --preset to continue the saved run, or start afresh without --resume")
    return UsageError(f"{who} {_show(given)} differs from the checkpoint's {_show(saved)}; drop the flag to continue "
                      "the saved run, or start afresh without --resume")


def _saved_settings(meta: dict[str, Any]) -> dict[str, Any]:
    """The command-line settings of the run a checkpoint was saved from (those it records)."""
    from ..checkpoint import CheckpointError
    from ..losses import make_loss

    config, state, opt = meta["config"], meta["state"], meta["optimizer"]
    layers = config["layers"]
    dense = [i for i, s in enumerate(layers) if s["type"] == "Dense"]
    saved: dict[str, Any] = {"hidden": [layers[i].get("out_features") for i in dense[:-1]],
                             "loss": make_loss(config["loss"]).name, "dtype": config["dtype"]}
    if len(dense) > 1 and dense[0] + 1 < len(layers) and layers[dense[0] + 1]["type"] in _KINDS:
        saved["activation"] = _KINDS[layers[dense[0] + 1]["type"]]
    if dense and dense[-1] + 1 < len(layers):
        saved["output_activation"] = _KINDS.get(layers[dense[-1] + 1]["type"])
    elif dense:
        saved["output_activation"] = None
    if not opt:
        raise CheckpointError("the checkpoint holds no optimiser state (it was saved without an optimizer), so "
                              "training cannot resume from it")
    hyper = opt.get("hyper", {})
    saved["optimizer"] = opt["name"]
    saved.update({k: hyper[k] for k in ("momentum", "nesterov", "weight_decay") if k in hyper})
    if opt["name"] != "sgd":
        saved.update(momentum=0.0, nesterov=False)
    if "base_lr" in state or "lr" in hyper:
        saved["lr"] = state.get("base_lr", hyper.get("lr"))
    for key in ("seed", "batch_size", "schedule", "max_grad_norm", "validation_fraction", "epochs"):
        if key in state and not (key == "schedule" and state[key] is None):  # (None: a callable, not recorded)
            saved[key] = state[key]
    for key, v in saved.items():
        if not _valid(key, v):
            raise CheckpointError(f"the checkpoint records {key} as {v!r}, which is not a valid setting; "
                                  "start afresh without --resume")
    return saved


def _valid(key: str, v: Any) -> bool:
    """Whether ``v`` is a valid value of the setting ``key`` (as read from a checkpoint)."""
    from ..checks import is_int, is_number

    def number(x: Any) -> bool:
        return is_number(x) and math.isfinite(x)

    if key in ("seed", "batch_size", "epochs"):
        return is_int(v) and bool(v >= (0 if key == "seed" else 1))
    if key in ("lr", "momentum", "weight_decay"):
        return number(v) and v >= 0
    if key == "max_grad_norm":
        return v is None or (number(v) and v > 0)
    if key == "validation_fraction":
        return number(v) and 0 <= v < 1
    if key == "nesterov":
        return isinstance(v, bool)
    if key == "schedule":
        return isinstance(v, str)
    if key == "hidden":
        return all(is_int(d) and d > 0 for d in v)
    return True


def _resumed_settings(cfg: dict[str, Any], given: dict[str, tuple[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with the saved run's settings; a flag (or preset value) that contradicts one is a UsageError."""
    from ..losses import make_loss

    saved = _saved_settings(meta)
    normal: dict[str, Callable[[Any], Any]] = {
        "hidden": _hidden, "loss": lambda v: make_loss(v).name, "lr": float, "momentum": float,
        "weight_decay": float, "max_grad_norm": float, "validation_fraction": float, "seed": int, "nesterov": bool,
        "activation": lambda v: str(v).lower().replace("-", "_"),
        "output_activation": lambda v: str(v).lower().replace("-", "_"),
    }
    for key, (who, value) in given.items():
        if key in _FREE or key == "batch_size" or key not in saved:  # batch_size: checked with the data set
            continue
        if key in ("momentum", "nesterov") and saved["optimizer"] != "sgd":
            continue  # as without --resume: only SGD reads them
        if normal.get(key, lambda v: v)(value) != saved[key]:
            raise _contradiction(key, who, value, saved[key])
    done = meta["state"].get("epoch", 0)
    epochs = given["epochs"][1] if "epochs" in given else saved.get("epochs", cfg["epochs"])
    if isinstance(done, int) and epochs <= done:
        whose = f"{given['epochs'][0]} asks for" if "epochs" in given else "the saved run planned"
        raise UsageError(f"the checkpoint has done {done} epoch{'s' * (done != 1)} and {whose} {epochs}, so there is "
                         f"nothing to train; pass --epochs above {done} to train on")
    out = dict(cfg)
    out.update({k: v for k, v in saved.items() if k not in ("hidden", "epochs")})
    out["epochs"] = epochs
    out["hidden"] = ",".join(map(str, saved["hidden"]))
    return out


def _resumed_sizes(cfg: dict[str, Any], args: argparse.Namespace, meta: dict[str, Any], n: int,
                   weight_decay: float) -> tuple[float, int | str, list[int]]:
    """What needs the data set to check: the batch size ('full' = n) and a preset's λ/n weight decay."""
    given = _explicit(args)
    saved_batch = meta["state"].get("batch_size")
    if "batch_size" in given and isinstance(saved_batch, int):
        want = _batch(given["batch_size"][1])
        if (n if want == "full" else want) != saved_batch:
            raise _contradiction("batch_size", given["batch_size"][0], given["batch_size"][1], saved_batch)
    batch_size: int | str = saved_batch if isinstance(saved_batch, int) else _batch(cfg["batch_size"])
    saved_wd = meta["optimizer"].get("hyper", {}).get("weight_decay", weight_decay)
    if cfg["l2_lambda"] is not None and "weight_decay" not in given and weight_decay != saved_wd:
        raise _contradiction("weight_decay", given["l2_lambda"][0] if "l2_lambda" in given else "--preset",
                             weight_decay, saved_wd)
    config = meta["config"]
    sizes = [config["input_dim"], *[s["out_features"] for s in config["layers"] if s["type"] == "Dense"]]
    return saved_wd, batch_size, sizes


def _plot(history: Any, path: Path, title: str) -> None:
    """Loss and accuracy per epoch, training and validation, as a PNG (skipped when matplotlib is missing)."""
    try:
        from matplotlib.figure import Figure  # not pyplot: no global state, no GUI backend
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return
    epochs = [e["epoch"] for e in history.epochs]
    fig = Figure(figsize=(9, 3.8))
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy")):
        ax.plot(epochs, history.metric(metric), "o-", label="training")
        validation = history.metric(f"val_{metric}")
        if any(math.isfinite(v) for v in validation):
            ax.plot(epochs, validation, "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_png(fig, path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
