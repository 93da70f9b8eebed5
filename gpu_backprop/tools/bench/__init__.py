"""The benchmark suite: training throughput per regime, against the hardware limit and a peer.

    python -m gpu_backprop bench                 # the full suite (several minutes on a 2-core CPU)
    python -m gpu_backprop bench --quick         # under a minute
    python benchmarks/run.py --model 784-512-10 --batch 1 64 full

For each backend present (NumPy; CuPy where a device answers) and each model
and regime (batch 1, mini-batches, the full 60,000-sample batch) it times
whole training steps — gather the batch from the device-resident uint8 data
set, scale, forward, backward, SGD with momentum — after a warm-up, and takes
the median. It measures the float32 GEMM rate of the same device in the same
run and reports each regime as a fraction of it (the step's FLOPs over that
rate). PyTorch (eager, CPU or CUDA) and scikit-learn's MLPClassifier run the
same model, batch and optimiser side by side when they are importable.

The frameworks are timed interleaved — a block of ours, a block of PyTorch's,
a block of scikit-learn's, and again — so that all of them see the same drift
of a noisy machine; the median block counts. On Linux each block also records
how many cores the *other* processes of the machine kept busy while it ran
(``/proc/stat`` less this process's own CPU time); a block that shared the
machine with more than ``--max-load`` cores of someone else's work is run
again (twice at most), and the report gives that load next to every figure.

Reports are JSON (every number), Markdown, and a PNG plot when matplotlib is
installed, written to ``--out`` (default ``benchmarks/results``) under a name
made of the date and the device (``2026-11-22-cpu-amd-epyc-2core``).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from ...backend import cupy_available, get_backend, set_tf32
from .._args import Parser
from .peers import N_TRAIN
from .report import default_stem, plot, render, to_markdown
from .suite import MODELS, run_suite
from .timing import Quiet

__all__ = ["main"]


def _parse_batches(p: Any, items: list[str]) -> list[int | str]:
    out: list[int | str] = []
    for item in items:
        if item == "full":
            out.append("full")
        elif item.isdigit() and 0 < int(item) <= N_TRAIN:
            out.append(int(item))
        else:
            p.error(f"--batch takes integers from 1 to {N_TRAIN} or 'full', got {item!r}")
    return out


def _parse_models(p: Any, items: list[str]) -> dict[str, list[int]]:
    models = {}
    for item in items:
        if item in MODELS:
            models[item] = MODELS[item]
        elif re.fullmatch(r"[1-9]\d*(-[1-9]\d*)+", item):
            models[f"mlp-{item}"] = [int(s) for s in item.split("-")]
        else:
            p.error(f"--model takes {', '.join(MODELS)} or sizes like 784-512-10, got {item!r}")
    return models


def main(argv: list[str] | None = None) -> int:
    """``python -m gpu_backprop bench [flags]``; returns the exit status (2 for a bad flag)."""
    p = Parser(prog="python -m gpu_backprop bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a short run (under a minute on a 2-core CPU): mlp-256, batch 1 128 full, no time to accuracy")
    p.add_argument("--model", nargs="+", help="mlp-256, mlp-1024, or sizes like 784-512-10 (default: both)")
    p.add_argument("--batch", nargs="+", help="batch sizes and/or 'full' (default: 1 32 128 1024 full)")
    p.add_argument("--backend", choices=["all", "numpy", "cupy"], default="all",
                   help="all = NumPy and, where a CUDA device answers, CuPy")
    p.add_argument("--no-peers", action="store_true", help="skip PyTorch and scikit-learn")
    p.add_argument("--no-sklearn", action="store_true", help="skip scikit-learn (it is slow at batch 1)")
    p.add_argument("--tf32", action="store_true", help="TF32 matrix products (CuPy); the limit is then the TF32 rate")
    p.add_argument("--no-tta", action="store_true", help="skip the time-to-accuracy run (Fashion-MNIST)")
    p.add_argument("--breakdown", nargs="*", metavar="BATCH",
                   help="time the phases of our step at these batches (alone: 1 128 full, the default of a full run)")
    p.add_argument("--no-breakdown", action="store_true", help="skip the phase timing")
    p.add_argument("--repeats", type=int, help="timed blocks per measurement, median taken (default 5, quick 3)")
    p.add_argument("--seconds", type=float, help="length of one block in seconds (default 1.0, quick 0.3)")
    p.add_argument("--max-load", type=float, default=0.25,
                   help="re-time a block when other processes used more cores than this meanwhile (default 0.25)")
    p.add_argument("--patience", type=float,
                   help="seconds the run may spend waiting for other processes to go quiet (default 120, quick 10)")
    p.add_argument("--gemm-n", type=int, help="size of the GEMM that sets the limit (default 2048, quick 1024)")
    p.add_argument("--out", default=None, help="report directory (default: benchmarks/results of the source tree)")
    p.add_argument("--name", help="report file stem (default: DATE-cpu-MODEL-Ncore or DATE-gpu-MODEL)")
    p.add_argument("--render", metavar="REPORT.json",
                   help="only write the Markdown and the plot of a saved report again, next to it (nothing is timed)")
    args = p.parse_args(argv)
    if args.render:
        return render(Path(args.render))
    for flag in ("repeats", "gemm_n"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(args, flag)}")
    if args.seconds is not None and not args.seconds > 0:
        p.error(f"--seconds must be positive, got {args.seconds}")
    if args.name is not None and not re.fullmatch(r"[\w.-]+", args.name):
        p.error(f"--name must be a plain file stem (letters, digits, . _ -), got {args.name!r}")

    models = _parse_models(p, args.model or (["mlp-256"] if args.quick else list(MODELS)))
    batches = _parse_batches(p, args.batch or (["1", "128", "full"] if args.quick else
                                               ["1", "32", "128", "1024", "full"]))
    if args.no_breakdown:
        breakdown_batches: list[int | str] = []
    elif args.breakdown:
        breakdown_batches = _parse_batches(p, args.breakdown)
    elif args.breakdown is None and args.quick:
        breakdown_batches = []
    else:
        breakdown_batches = [b for b in (1, 128, "full") if b in batches]
    backends = [get_backend("numpy")] if args.backend in ("all", "numpy") else []
    if args.backend in ("all", "cupy"):
        if cupy_available():
            backends.append(get_backend("cupy"))
        elif args.backend == "cupy":
            print("error: --backend cupy: no CUDA device answers here; run with --backend numpy", file=sys.stderr)
            return 2
    if args.tf32:
        set_tf32(True)
    out = Path(args.out) if args.out else Path(__file__).resolve().parents[3] / "benchmarks" / "results"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: cannot create the report directory {out} ({exc.strerror}); pass --out DIR", file=sys.stderr)
        return 2
    report = run_suite(models, batches, backends, budget=args.seconds or (0.3 if args.quick else 1.0),
                       repeats=args.repeats or (3 if args.quick else 5),
                       gemm_n=args.gemm_n or (1024 if args.quick else 2048), peers=not args.no_peers,
                       sklearn=not args.no_sklearn, tta=not (args.quick or args.no_tta),
                       breakdown_batches=breakdown_batches, quiet=Quiet(args.max_load, args.patience if args.patience is not None else (10.0 if args.quick else 120.0)))
    report["command"] = "python -m gpu_backprop bench " + " ".join(argv if argv is not None else sys.argv[1:])
    stem = args.name or default_stem(backends, report["facts"])
    if not args.name:  # a second run on the same day and device gets -2, -3, ...: no report is overwritten
        base, k = stem, 2
        while (out / f"{stem}.json").exists():
            stem, k = f"{base}-{k}", k + 1
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / f"{stem}.md").write_text(to_markdown(report))
    made_png = plot(report, out / f"{stem}.png")
    print(f"wrote {out / stem}.json, .md" + (", .png" if made_png else ""))
    return 0
