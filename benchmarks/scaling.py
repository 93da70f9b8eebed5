#!/usr/bin/env python3
"""Data-parallel scaling: samples/s and all-reduce time per step for 1..N ranks.

    mpiexec -n 1 python benchmarks/scaling.py              # then -n 2, -n 4, ...
    mpiexec -n 4 python benchmarks/scaling.py --engine nccl  # one process per GPU

Every rank trains the same network on its shard of each global batch, as
``gb.fit(..., comm=...)`` does; the timer separates the compute of a step
from its one all-reduce of the flat gradient buffer. Rank 0 prints one JSON
line (and appends it to ``--out`` if given): samples/s, seconds per step,
seconds spent in the all-reduce, the buffer's bytes and the bandwidth reached
(bytes / all-reduce time, the "algorithm bandwidth").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gpu_backprop as gb  # noqa: E402
from gpu_backprop.distributed import init_distributed  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", choices=["mpi", "nccl"], default="mpi")
    p.add_argument("--sizes", default="784-256-256-10")
    p.add_argument("--batch", type=int, nargs="+", default=[128, 1024], help="global batch sizes")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--out", help="append the JSON lines to this file")
    args = p.parse_args()
    comm = init_distributed(args.engine)
    be = gb.get_backend("cupy" if args.engine == "nccl" else "numpy")
    sizes = [int(s) for s in args.sizes.split("-")]
    xp = be.xp
    for batch in args.batch:
        shard = batch // comm.size
        rng = np.random.default_rng(comm.rank)
        X = xp.asarray(rng.random((shard, sizes[0]), dtype=np.float32))
        y = xp.asarray(rng.integers(0, sizes[-1], shard))
        net = gb.MLP(sizes, backend=be, seed=0)
        opt = gb.SGD(net, lr=0.01, momentum=0.9)
        step_t, comm_t = [], []
        for i in range(args.steps + 5):
            comm.barrier()
            t0 = time.perf_counter()
            net.train_step_grads(X, y)
            be.synchronize()
            t1 = time.perf_counter()
            comm.allreduce_mean_(net.flat_grads)
            be.synchronize()
            t2 = time.perf_counter()
            opt.step()
            be.synchronize()
            t3 = time.perf_counter()
            if i >= 5:
                step_t.append(t3 - t0)
                comm_t.append(t2 - t1)
        if comm.rank == 0:
            nbytes = net.flat_grads.nbytes
            step, allreduce = statistics.median(step_t), statistics.median(comm_t)
            row = {"engine": comm.engine, "ranks": comm.size, "sizes": sizes, "global_batch": batch,
                   "device": be.device, "samples_per_second": batch / step, "seconds_per_step": step,
                   "allreduce_seconds": allreduce, "allreduce_fraction": allreduce / step,
                   "allreduce_bytes": nbytes, "allreduce_gb_per_s": nbytes / allreduce / 1e9}
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
