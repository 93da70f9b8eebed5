"""Before and after, in one run: the training step and fit of two source trees, alternating, on this machine.

    python benchmarks/ab.py OLD_TREE NEW_TREE [--rounds 7] [--seconds 0.4]

Each round runs one process per tree, in turn (a fresh interpreter each: the two trees are both
``gpu_backprop``), timing ``opt.train_step`` (SGD with momentum 0.9, batch 1/32/128/1024, mlp-256 and
mlp-1024, as ``fit`` sets up BLAS threads) and whole ``fit`` epochs. The table gives each tree's median
samples/s and the median of the per-round ratios: rounds share the machine's drift, so the ratio is the
measurement (a noisy, shared machine moves the absolute figures by factors of two).
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trees", nargs=2, metavar="TREE", help="two source trees (folders holding gpu_backprop/)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seconds", type=float, default=0.4, help="length of each timed block")
    args = p.parse_args(argv)
    for tree in args.trees:
        if not (Path(tree) / "gpu_backprop" / "__init__.py").is_file():
            p.error(f"{tree} holds no gpu_backprop/ package")
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
