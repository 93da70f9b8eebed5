"""Before and after, in one run: the training step and fit of two source trees, alternating, on this machine.

    python benchmarks/ab.py OLD_TREE NEW_TREE [--rounds 7] [--seconds 0.4]
    python benchmarks/ab.py OLD_TREE NEW_TREE --suite [--rounds 2] [-- BENCH FLAGS]


Each round runs one process per tree, in turn (a fresh interpreter each: the two trees are both
``gpu_backprop``), timing ``opt.train_step`` (SGD with momentum 0.9, batch 1/32/128/1024, mlp-256 and
mlp-1024, as ``fit`` sets up BLAS threads) and whole ``fit`` epochs. The table gives each tree's median
samples/s and the median of the per-round ratios: rounds share the machine's drift, so the ratio is the
measurement (a noisy, shared machine moves the absolute figures by factors of two).

``--suite`` runs each tree's own benchmark suite instead (``TREE/benchmarks/run.py``: both models at
batch 1, 128 and full beside PyTorch, unless flags after ``--`` say otherwise), the trees alternating,
and tabulates each tree's samples/s, its fraction of the GEMM limit and its ratio to PyTorch timed in
the same suite run, with the median of the per-round ratios new/old. Reports go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROUND = r'''
import json, sys, time
import numpy as np
import gpu_backprop as gb
try:
    from gpu_backprop.kernels import blas_threads as threads
except ImportError:  # older trees
    from gpu_backprop.backend import per_sample_blas as threads

budget = float(sys.argv[1])
rng = np.random.default_rng(0)
X = rng.integers(0, 256, (20000, 784), dtype=np.uint8)
Xf = (X[:2048] / 255).astype(np.float32)
y = rng.integers(0, 10, 20000)
out = {}
for sizes in ([784, 256, 256, 10], [784, 1024, 1024, 10]):
    for b in (1, 32, 128, 1024):
        net = gb.MLP(sizes, backend="numpy", seed=0)
        opt = gb.SGD(net, lr=0.01, momentum=0.9)
        xb, yb = Xf[:b], y[:b].astype(np.int64)
        with threads(net.backend, b):
            for _ in range(3):
                opt.train_step(xb, yb)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < budget:
                opt.train_step(xb, yb)
                n += 1
            out[f"step mlp-{sizes[1]} batch {b}"] = n * b / (time.perf_counter() - t0)
for sizes, b, n in (([784, 256, 256, 10], 1, 3000), ([784, 256, 256, 10], 128, 20000),
                    ([784, 256, 256, 10], "full", 20000), ([784, 1024, 1024, 10], 128, 20000)):
    net = gb.MLP(sizes, backend="numpy", seed=0)
    opt = gb.SGD(net, lr=0.01, momentum=0.9)
    epochs = 2 if b == "full" else 1
    t0 = time.perf_counter()
    gb.fit(net, opt, X[:n], y[:n], epochs=epochs, batch_size=b, progress=False)
    out[f"fit mlp-{sizes[1]} batch {b}"] = n * epochs / (time.perf_counter() - t0)
print(json.dumps(out))
'''


SUITE_FLAGS = ["--model", "mlp-256", "mlp-1024", "--batch", "1", "128", "full", "--no-sklearn", "--no-tta",
               "--no-breakdown"]


def suite(trees: list[str], rounds: int, out: Path, flags: list[str]) -> None:
    """Each tree's benchmark suite, alternating, then one table of both (see the module docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    reports: list[list[dict]] = [[], []]
    for r in range(rounds):
        for i, tree in enumerate(trees):
            name = f"ab-{'old' if i == 0 else 'new'}-{r + 1}"
            subprocess.run([sys.executable, str(Path(tree) / "benchmarks" / "run.py"), *(flags or SUITE_FLAGS),
                            "--out", str(out), "--name", name], check=True, stdout=subprocess.DEVNULL)
            reports[i].append(json.loads((out / f"{name}.json").read_text()))
    limits = [statistics.median(rep["limits"]["numpy"]["gemm_flops"] / 1e9 for rep in reports[i]) if "numpy" in
              reports[i][0].get("limits", {}) else float("nan") for i in range(2)]
    print(f"GEMM limit (median of the runs' fastest blocks): old {limits[0]:.1f}, new {limits[1]:.1f} GFLOP/s\n")
    print("| model | batch | old samples/s | old of limit | old / PyTorch | new samples/s | new of limit "
          "| new / PyTorch | new / old (median of rounds) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for k, row in enumerate(reports[0][0]["results"]):
        cells = []
        for i in range(2):
            rows = [rep["results"][k] for rep in reports[i]]
            sps = statistics.median(x["samples_per_second"] for x in rows)
            frac = statistics.median(x["fraction_of_limit"] for x in rows)
            vs = statistics.median(x.get("ours_over_torch", float("nan")) for x in rows)
            cells += [f"{sps:,.0f}", f"{frac:.0%}", f"{vs:.2f}"]
        ratio = statistics.median(reports[1][r]["results"][k]["samples_per_second"]
                                  / reports[0][r]["results"][k]["samples_per_second"] for r in range(rounds))
        print(f"| {row['model']} | {row['batch']} | {' | '.join(cells)} | {ratio:.2f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trees", nargs=2, metavar="TREE", help="two source trees (folders holding gpu_backprop/)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 7; 2 with --suite)")
    p.add_argument("--seconds", type=float, default=0.4, help="length of each timed block")
    p.add_argument("--suite", action="store_true", help="run each tree's benchmark suite (beside PyTorch) instead")
    p.add_argument("--out", type=Path, default=Path("ab-suite"), help="where --suite writes the reports")
    p.epilog = "After --: the suite's flags (default: " + " ".join(SUITE_FLAGS) + ")."
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)  # argparse gives a second positional nothing after TREE TREE
    args, flags = p.parse_args(argv[:cut]), argv[cut + 1:]
    for tree in args.trees:
        if not (Path(tree) / "gpu_backprop" / "__init__.py").is_file():
            p.error(f"{tree} holds no gpu_backprop/ package")
    if args.suite:
        suite(args.trees, args.rounds or 2, args.out, flags)
        return 0
    args.rounds = args.rounds or 7
    runs: list[list[dict[str, float]]] = [[], []]
    for _ in range(args.rounds):
        for i, tree in enumerate(args.trees):
            env = {"PYTHONPATH": str(Path(tree).resolve()), "PATH": "/usr/bin:/bin"}
            done = subprocess.run([sys.executable, "-c", ROUND, str(args.seconds)], env=env, check=True,
                                  capture_output=True, text=True)
            runs[i].append(json.loads(done.stdout))
    print(f"| case | {args.trees[0]} samples/s | {args.trees[1]} samples/s | ratio (median of {args.rounds} rounds) |")
    print("| --- | ---: | ---: | ---: |")
    for key in runs[0][0]:
        a = [r[key] for r in runs[0]]
        b = [r[key] for r in runs[1]]
        ratio = statistics.median(y / x for x, y in zip(a, b))
        print(f"| {key} | {statistics.median(a):,.0f} | {statistics.median(b):,.0f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
