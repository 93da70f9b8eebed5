"""The benchmark suite: training throughput per regime, against the hardware limit and a peer.

    python -m gpu_backprop bench                 # the full suite (several minutes on a 2-core CPU)
    python -m gpu_backprop bench --quick         # about a minute on a 2-core CPU
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

Waiting for quiet is bounded: ``--patience`` seconds in all (120; 10 with
``--quick``), spent on waits and on blocks timed again; ``--no-wait`` spends none.
A wait says so on stderr as it begins.

Reports are JSON (every number), Markdown, and a PNG plot when matplotlib is
installed, named by the date and the device (``2026-11-22-cpu-amd-epyc-2core``,
``2026-11-22-gpu-nvidia-h100-80gb-hbm3-tf32``), written to ``--out``: by default
``./benchmarks/results`` when the current directory has one (the root of a
source checkout), else the current directory. The JSON and the Markdown are
written again after every row, so a run that is killed keeps its finished rows.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from ...backend import Backend, cupy_available, get_backend
from ...devices import set_tf32
from .._args import Parser
from .peers import N_TRAIN
from .report import default_stem, render, write
from .suite import MODELS, gemm_memory_bytes, gemm_size, least_memory_bytes, machine_facts, run_suite
from .timing import Quiet

__all__ = ["default_out", "main"]


def _parse_batches(p: Any, items: list[str]) -> list[int | str]:
    out: list[int | str] = []
    for item in items:
        if item == "full":
            out.append("full")
        elif item.isdecimal() and 0 < int(item) <= N_TRAIN:  # not isdigit(): "²" is a digit int() refuses
            out.append(int(item))
        else:
            p.error(f"--batch takes integers from 1 to {N_TRAIN} or 'full', got {item!r}")
    return out


def _parse_models(p: Any, items: list[str]) -> dict[str, list[int]]:
    models = {}
    for item in items:
        if item in MODELS:
            models[item] = MODELS[item]
        elif len(parts := item.split("-")) > 1 and all(s.isdecimal() and int(s) > 0 for s in parts):
            sizes = [int(s) for s in parts]
            models["mlp-" + "-".join(map(str, sizes))] = sizes
        else:
            p.error(f"--model takes {', '.join(MODELS)} or sizes like 784-512-10, got {item!r}")
    return models


def default_out(cwd: Path | None = None) -> Path:
    """Where reports go without ``--out``: ``./benchmarks/results`` in a source checkout's root, else ``.``."""
    cwd = Path.cwd() if cwd is None else cwd
    results = cwd / "benchmarks" / "results"
    return results if results.is_dir() else cwd


def _out_problem(out: Path) -> str | None:
    """Why reports cannot be written to ``out`` (one sentence), or None; creates ``out`` if missing."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file, not a directory; pass a directory for the reports"
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".bench-probe-"):
            pass
    except OSError as exc:
        return f"cannot write reports to {out} ({exc.strerror or exc}); pass --out DIR with a directory you can write"
    return None


def _memory_problem(models: dict[str, list[int]], rows: int, backends: list[Backend],
                    gemm_n: int = 2048) -> str | None:
    """One sentence when a model, or the limit's three float32 GEMM matrices (``gemm_n``², at least
    ``GPU_GEMM_N``² on a GPU), surely do not fit the memory of the host or the GPU, else None."""
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    places = [("this machine", host, gemm_n)]
    for be in backends:
        if be.name == "cupy":
            places.append(("the GPU", be.xp.cuda.Device().mem_info[1], gemm_size(be.name, gemm_n)))
    for name, sizes in models.items():
        need = least_memory_bytes(sizes, rows)
        for where, have, _ in places:
            if have and need > have:
                params = sum(a * b + b for a, b in itertools.pairwise(sizes))
                return (f"--model {name.removeprefix('mlp-') if name not in MODELS else name}: {params:,} parameters "
                        f"with batches of {rows:,} need at least {need / 2**30:,.1f} GiB and {where} has "
                        f"{have / 2**30:,.1f} GiB; choose smaller layer sizes or batches")
    for where, have, n in places:
        if have and gemm_memory_bytes(n) > have:
            fix = "choose a smaller --gemm-n" if n == gemm_n else f"a GPU's is at least {n:,}²: use --backend numpy"
            return (f"--gemm-n {gemm_n}: the GEMM that sets the limit ({n:,}²) needs "
                    f"{gemm_memory_bytes(n) / 2**30:,.1f} GiB "
                    f"and {where} has {have / 2**30:,.1f} GiB; {fix}")
    return None


def main(argv: list[str] | None = None) -> int:
    """``python -m gpu_backprop bench [flags]``; returns the exit status (2 for a bad flag)."""
    p = Parser(prog="python -m gpu_backprop bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a short run (about a minute on a loaded 2-core CPU): mlp-256, batch 1 128 full, no time to accuracy, "
                        "at most 10 s spent on other processes' load")
    p.add_argument("--model", nargs="+", help="mlp-256, mlp-1024, or sizes like 784-512-10 (default: both)")
    p.add_argument("--batch", nargs="+", help="batch sizes and/or 'full' (default: 1 32 128 1024 full)")
    p.add_argument("--backend", choices=["all", "numpy", "cupy"], default="all",
                   help="all = NumPy and, where a CUDA device answers, CuPy")
    p.add_argument("--no-peers", action="store_true", help="skip PyTorch and scikit-learn")
    p.add_argument("--no-sklearn", action="store_true", help="skip scikit-learn (it is slow at batch 1)")
    p.add_argument("--tf32", action="store_true",
                   help="TF32 matrix products (CuPy, and PyTorch CUDA beside it); the limit is then the TF32 rate")
    p.add_argument("--no-tta", action="store_true", help="skip the time-to-accuracy run (Fashion-MNIST)")
    p.add_argument("--breakdown", nargs="*", metavar="BATCH",
                   help="time the phases of our step at these batches (alone: 1 128 full, the default of a full run)")
    p.add_argument("--no-breakdown", action="store_true", help="skip the phase timing")
    p.add_argument("--repeats", type=int, help="timed blocks per measurement, median taken (default 5, quick 3)")
    p.add_argument("--seconds", type=float, help="length of one block in seconds (default 1.0, quick 0.3)")
    p.add_argument("--max-load", type=float, default=0.25,
                   help="re-time a block when other processes used more cores than this meanwhile (default 0.25)")
    wait = p.add_mutually_exclusive_group()
    wait.add_argument("--patience", type=float,
                      help="seconds the run may spend in all on other processes' load, waiting for quiet and timing "
                           "blocks again (default 120, quick 10)")
    wait.add_argument("--no-wait", action="store_true", help="never wait for quiet (the same as --patience 0)")
    p.add_argument("--gemm-n", type=int, help="size of the GEMM that sets the limit (default 2048, quick 1024)")
    p.add_argument("--out", default=None,
                   help="report directory (default: ./benchmarks/results if the current directory has one, as the "
                        "root of a source checkout does, else the current directory)")
    p.add_argument("--name", help="report file stem (default: DATE-cpu-MODEL-Ncore or DATE-gpu-MODEL[-tf32])")
    p.add_argument("--render", metavar="REPORT.json",
                   help="only write the Markdown and the plot of a saved report again, next to it (nothing is timed)")
    args = p.parse_args(argv)
    if args.render:
        return render(Path(args.render))
    for flag in ("repeats", "gemm_n"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(args, flag)}")
    if args.seconds is not None and not (math.isfinite(args.seconds) and args.seconds > 0):
        p.error(f"--seconds must be a positive number of seconds, got {args.seconds}")
    if args.patience is not None and not args.patience >= 0:
        p.error(f"--patience must be 0 or more seconds, got {args.patience}")
    if not args.max_load >= 0:
        p.error(f"--max-load must be 0 or more cores, got {args.max_load}")
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
            p.error("--backend cupy: no CUDA device answers here; run with --backend numpy")
    most_rows = max(N_TRAIN if b == "full" else int(b) for b in [*batches, *breakdown_batches])
    gemm_n = args.gemm_n or (1024 if args.quick else 2048)
    problem = _memory_problem(models, most_rows, backends, gemm_n)
    if problem:
        p.error(problem)
    out = Path(args.out) if args.out else default_out()
    problem = _out_problem(out)
    if problem:
        p.error(problem)
    if args.tf32:
        set_tf32(True)
    patience = 0.0 if args.no_wait else args.patience if args.patience is not None else 10.0 if args.quick else 120.0
    facts = machine_facts(backends)
    stem = args.name or default_stem(backends, facts)
    if not args.name:  # a second run on the same day and device gets -2, -3, ...: no report is overwritten
        base, k = stem, 2
        while (out / f"{stem}.json").exists():
            stem, k = f"{base}-{k}", k + 1
    command = "python -m gpu_backprop bench " + " ".join(argv if argv is not None else sys.argv[1:])
    latest: dict[str, Any] = {}

    def save(report: dict[str, Any]) -> None:  # after every row: a killed run keeps what it finished
        report["command"] = command
        latest["report"] = report
        write(report, out, stem)

    try:
        report = run_suite(models, batches, backends, budget=args.seconds or (0.3 if args.quick else 1.0),
                           repeats=args.repeats or (3 if args.quick else 5),
                           gemm_n=gemm_n, peers=not args.no_peers,
                           sklearn=not args.no_sklearn, tta=not (args.quick or args.no_tta),
                           breakdown_batches=breakdown_batches, quiet=Quiet(args.max_load, patience),
                           facts=facts, progress=save)
    except KeyboardInterrupt:
        rows = len(latest["report"]["results"]) if latest else 0
        print(f"interrupted: {rows} finished row(s) kept in {out / stem}.json and .md" if latest else
              "interrupted before the first report was written", file=sys.stderr)
        return 130
    report["command"] = command
    written = write(report, out, stem, final=True)
    print(f"wrote {out / stem}.json, .md" + (", .png" if len(written) == 3 else ""))
    return 0
