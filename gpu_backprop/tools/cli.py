"""The command line: ``python -m gpu_backprop train`` (also ``scripts/train_mnist.py``) and ``bench``.

Every mistake in a flag or an input ends with exit status 2 and one line on
stderr that says what is wrong and how to fix it — never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import __version__
from .._io import DirectoryInUse, atomic_write_bytes, lock_directory
from ._args import Parser, UsageError

__all__ = ["PRESETS", "main"]

#: Named configurations; flags given explicitly override them.
PRESETS: dict[str, dict[str, Any]] = {
    # Nielsen, "Neural Networks and Deep Learning", ch. 1: ≈95% on MNIST
    "book-quadratic": dict(dataset="mnist", hidden="30", activation="sigmoid", loss="mse",
                           output_activation="sigmoid", optimizer="sgd", lr=3.0, momentum=0.0,
                           batch_size="10", epochs=30, init="glorot_normal"),
    # Nielsen, ch. 3: 784-100-10 sigmoid, cross-entropy on sigmoid outputs, L2 with λ = 5 over the
    # n training samples (his w ← (1 − ηλ/n) w − η∇C₀ is SGD with weight_decay = λ/n, n taken from
    # the data set actually loaded), ≈98%
    "book-crossentropy": dict(dataset="mnist", hidden="100", activation="sigmoid", loss="bce",
                              optimizer="sgd", lr=0.5, momentum=0.0, l2_lambda=5.0,
                              batch_size="10", epochs=30, init="lecun_normal"),
    # the benchmark's network on Fashion-MNIST: ≥ 89% test accuracy
    "fashion": dict(dataset="fashion-mnist", hidden="256,256", activation="relu", loss="softmax_cross_entropy",
                    optimizer="sgd", lr=0.05, momentum=0.9, batch_size="128", epochs=10, schedule="cosine"),
    # a first run in seconds, offline
    "quick": dict(dataset="mnist-sample", hidden="256,256", epochs=5, batch_size="64", lr=0.05, momentum=0.9),
}

DEFAULTS: dict[str, Any] = dict(
    backend=None, dataset=None, data_dir=None, hidden="256,256", activation="relu",
    loss="softmax_cross_entropy", output_activation=None, init="auto", optimizer="sgd", lr=0.05,
    momentum=0.9, nesterov=False, weight_decay=0.0, l2_lambda=None, batch_size="128", epochs=5, seed=0, schedule=None,
    patience=None, validation_fraction=0.1, max_grad_norm=None, dtype="float32", tf32=False, out=None, resume=None, json=False, progress=True,
    distributed="none",
)


_COMM: Any = None  # the communicator of a distributed run, so that an error on one rank stops them all
_HELD = contextlib.ExitStack()  # the lock on --out while a run trains into it


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
                       description="Train an MLP on MNIST, Fashion-MNIST, the shipped MNIST sample, or IDX files.")
    t.add_argument("--preset", choices=sorted(PRESETS), help="a named configuration (flags override it)")
    t.add_argument("--backend", choices=["auto", "numpy", "cupy"], help="array backend (default: auto)")
    t.add_argument("--dataset", choices=DATASETS,
                   help="default: mnist if cached or downloadable, else mnist-sample")
    t.add_argument("--data-dir", help="directory holding the four IDX files")
    t.add_argument("--hidden", help="hidden layer sizes, e.g. 256,256 (default 256,256)")
    t.add_argument("--activation", choices=ACTIVATIONS)
    t.add_argument("--loss", choices=LOSSES)
    t.add_argument("--output-activation", choices=ACTIVATIONS, help="activation after the last layer (for mse)")
    t.add_argument("--init", help="weight initialiser, e.g. he_normal (default: auto)")
    t.add_argument("--optimizer", choices=OPTIMIZERS)
    t.add_argument("--lr", type=float, help="learning rate")
    t.add_argument("--momentum", type=float)
    t.add_argument("--nesterov", action="store_true", default=None)
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--batch-size", help="an integer (1 = per-sample SGD) or 'full'")
    t.add_argument("--epochs", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--schedule", help="constant, step[:EVERY[:GAMMA]], cosine or onecycle")
    t.add_argument("--validation-fraction", type=float,
                   help="share of the training data held out for validation (default 0.1; 0 for none)")
    t.add_argument("--patience", type=int, help="early stopping on the validation loss after this many epochs")
    t.add_argument("--max-grad-norm", type=float, help="clip gradients to this global norm")
    t.add_argument("--dtype", choices=["float32", "float64"])
    t.add_argument("--tf32", action="store_true", default=None,
                   help="float32 matrix products on TF32 tensor cores (CuPy on Ampere+; ~3e-4 relative error)")
    t.add_argument("--out", help="directory for checkpoints, history.json and curves.png")
    t.add_argument("--resume", help="checkpoint to continue from, with the saved run's settings (a flag that "
                                    "contradicts them is an error; --epochs may grow)")
    t.add_argument("--json", action="store_true", default=None,
                   help="print the final metrics as one JSON object on the last line")
    t.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    t.add_argument("--distributed", choices=["none", "mpi", "nccl"], help="data-parallel engine (with mpiexec)")
    sub.add_parser("bench", help="run the benchmark suite (python -m gpu_backprop bench --help)")
    sub.add_parser("doctor", help="check CuPy, CUDA, NVRTC, NCCL and MPI, and compile every kernel "
                                  "(python -m gpu_backprop doctor --help)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m gpu_backprop`` and the ``gpu-backprop`` command."""
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

    try:
        return _train(args)
    except (UsageError, ValueError, TypeError, DataError, CheckpointError, BackendError, OSError,
            MemoryError) as exc:
        if _COMM is not None and _COMM.size > 1:  # the other ranks would wait for this one forever
            _COMM.abort(f"rank {_COMM.rank}: error: {exc}; stopping all {_COMM.size} ranks", code=2)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if _COMM is not None and _COMM.size > 1:  # a rank still in an all-reduce would never see the signal
            _COMM.abort(f"rank {_COMM.rank}: interrupted; stopping all {_COMM.size} ranks; the last checkpoint "
                        "(if --out was given) is intact", code=130)
        print("interrupted; the last checkpoint (if --out was given) is intact", file=sys.stderr)
        return 130
    finally:
        _HELD.close()  # the --out lock


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    cfg = dict(DEFAULTS)
    if args.preset:
        cfg.update(PRESETS[args.preset])
    cfg.update({k: v for k, v in vars(args).items() if v is not None and k not in ("command", "preset")})
    cfg["preset"] = args.preset
    return cfg


def _hidden(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in str(text).split(",") if s.strip()]
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


def _check_out_dir(out: str) -> Path:
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write to --out {out} ({exc.strerror or exc}); choose a writable directory") from None
    return path


def _train(args: argparse.Namespace) -> int:
    import gpu_backprop as gb

    from ..data import DataError, load_dataset
    from ..optim import make_optimizer
    from ..trainer import fit

    cfg = _settings(args)
    hidden = _hidden(cfg["hidden"])
    batch_size = _batch(cfg["batch_size"])
    if cfg["epochs"] < 1:
        raise UsageError(f"--epochs must be at least 1, got {cfg['epochs']}")
    if not (cfg["lr"] > 0 and math.isfinite(cfg["lr"])):
        raise UsageError(f"--lr must be a positive number, got {cfg['lr']}")
    resumed: dict[str, Any] | None = None
    if cfg["resume"]:
        if not Path(cfg["resume"]).is_file():
            raise UsageError(f"--resume {cfg['resume']} does not exist; pass a checkpoint written with --out")
        from ..checkpoint import checkpoint_metadata

        resumed = checkpoint_metadata(cfg["resume"])
        cfg = _resumed_settings(cfg, _explicit(args), resumed)
    out_dir = _check_out_dir(cfg["out"]) if cfg["out"] else None

    global _COMM
    comm = None
    if cfg["distributed"] != "none":
        from ..distributed import init_distributed

        try:
            comm = _COMM = init_distributed(cfg["distributed"])
        except (RuntimeError, ImportError) as exc:
            raise UsageError(str(exc)) from None
    rank0 = comm is None or comm.rank == 0

    note = ""
    if cfg["dataset"] is None:
        try:
            ds = load_dataset("mnist", cfg["data_dir"])
        except DataError:
            ds = load_dataset("mnist-sample")
            note = " (full MNIST is not cached and could not be downloaded, so: the 10,000-digit sample shipped)"
    else:
        ds = load_dataset(cfg["dataset"], cfg["data_dir"])
    backend = gb.get_backend(cfg["backend"])
    if cfg["tf32"]:
        gb.backend.set_tf32(True)
    weight_decay = cfg["weight_decay"]
    if cfg["l2_lambda"] is not None and args.weight_decay is None:  # a preset's λ/n, n = this training set
        weight_decay = cfg["l2_lambda"] / len(ds.y_train)
    sizes = [int(ds.x_train[0].size), *hidden, ds.num_classes if cfg["loss"] != "bce" or ds.num_classes > 2 else 1]
    if resumed is not None:
        weight_decay, batch_size, sizes = _resumed_sizes(cfg, args, resumed, len(ds.y_train), weight_decay)
    if rank0:
        print(f"gpu_backprop {__version__}: training on {ds.name}{note}: {len(ds.y_train):,} train / "
              f"{len(ds.y_test):,} test samples from {ds.source}")
        print(f"backend {backend.name} on {backend.device} ({backend.reason}); network {'-'.join(map(str, sizes))} "
              f"{cfg['activation']}, loss {cfg['loss']}, {cfg['optimizer']} lr {cfg['lr']}"
              f"{' momentum ' + str(cfg['momentum']) if cfg['optimizer'] == 'sgd' and cfg['momentum'] else ''}"
              f"{' nesterov' if cfg['optimizer'] == 'sgd' and cfg['nesterov'] else ''}"
              f"{f' weight decay {weight_decay:.3g}' if weight_decay else ''}, "
              f"batch {batch_size}, {cfg['epochs']} epochs, seed {cfg['seed']}, {cfg['dtype']}"
              + (f", schedule {cfg['schedule']}" if cfg["schedule"] not in (None, "constant") else "")
              + (f", gradient norm clipped at {cfg['max_grad_norm']}" if cfg["max_grad_norm"] is not None else "")
              + (f", {comm.size} ranks ({comm.engine})" if comm is not None else "")
              + (f"; resumed from {cfg['resume']} at epoch {resumed['state']['epoch']}" if resumed else ""),
              flush=True)
        if comm is not None:
            print(comm.describe(), flush=True)  # which pid is which rank, for the launcher's messages
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
            _HELD.enter_context(lock_directory(out_dir))
        except DirectoryInUse as exc:
            raise UsageError(f"--out {cfg['out']} is in use by another run ({exc.holder}); wait for it to finish or "
                             "choose another --out") from None

    t0 = time.perf_counter()
    diverged = None
    try:  # the test set is evaluated once, below; validation is a held-out part of the training data
        history = fit(net, opt, ds.x_train, ds.y_train, epochs=cfg["epochs"], batch_size=batch_size,
                      seed=cfg["seed"], schedule=cfg["schedule"], validation_fraction=cfg["validation_fraction"],
                      patience=cfg["patience"], max_grad_norm=cfg["max_grad_norm"], progress=cfg["progress"],
                      checkpoint=out_dir / "checkpoint.npz" if out_dir else None, resume=cfg["resume"], comm=comm)
    except gb.TrainingDiverged as exc:
        diverged, history = str(exc), exc.history
    seconds = time.perf_counter() - t0
    if not rank0:
        return 3 if diverged else 0
    last = history.epochs[-1] if history.epochs else {}
    trained = [e for e in history.epochs if math.isfinite(e.get("loss", math.nan))]
    samples = sum(e["samples_per_second"] * e["seconds"] for e in trained)
    train_seconds = sum(e["seconds"] for e in trained)
    test_loss, test_acc = gb.trainer.evaluate(net, ds.x_test, ds.y_test)
    if out_dir is not None:
        history.to_json(out_dir / "history.json")
        _plot(history, out_dir / "curves.png")
    if diverged or history.stop_message:
        print(diverged or history.stop_message, file=sys.stderr)
    print(f"test accuracy {test_acc:.4f}, test loss {test_loss:.4f} after {len(history.epochs)} epochs "
          f"({train_seconds:.1f} s of training, {samples / max(train_seconds, 1e-9):,.0f} samples/s)")
    if cfg["json"]:
        print(json.dumps({
            "test_accuracy": test_acc, "test_loss": test_loss, "train_seconds": train_seconds,
            "wall_seconds": seconds, "samples_per_second": samples / max(train_seconds, 1e-9),
            "epochs": len(history.epochs), "backend": backend.name, "device": backend.device,
            "dataset": ds.name, "preset": cfg["preset"], "sizes": sizes, "batch_size": batch_size,
            "stopped_reason": "diverged" if diverged else history.stopped_reason.value, "final_lr": last.get("lr"),
        }))
    return 3 if diverged else 0


# --------------------------------------------------------------------------
# --resume: the saved run's settings win; a flag that contradicts them is an error
# --------------------------------------------------------------------------
#: flags that do not change what a resumed run computes, free to differ from the saved run
_FREE = ("dataset", "data_dir", "backend", "tf32", "out", "resume", "json", "progress", "distributed", "patience",
         "init", "epochs", "l2_lambda")
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
    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if key in ("seed", "batch_size", "epochs"):
        return isinstance(v, int) and not isinstance(v, bool) and v >= (0 if key == "seed" else 1)
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
        return all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v)
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
        raise UsageError(f"the checkpoint has done {done} epochs and --epochs is {epochs}, so there is nothing to "
                         f"train; pass --epochs above {done} to train on")
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


def _plot(history: Any, path: Path) -> None:
    """Loss and accuracy curves as a PNG, when matplotlib is installed (silently skipped otherwise)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    epochs = [e["epoch"] for e in history.epochs]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(epochs, history.metric("loss"), label="train")
    a.plot(epochs, history.metric("val_loss"), label="test")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    b.plot(epochs, history.metric("accuracy"), label="train")
    b.plot(epochs, history.metric("val_accuracy"), label="test")
    b.set_xlabel("epoch")
    b.set_ylabel("accuracy")
    b.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


if __name__ == "__main__":
    sys.exit(main())
