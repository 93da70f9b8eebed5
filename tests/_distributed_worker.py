"""Run by tests/test_distributed.py under ``mpiexec -n K``: data-parallel training of a toy network.

Usage: python _distributed_worker.py OUT.npz DTYPE BATCH [FAIL_RANK FAIL_STEP]
Rank 0 writes the final weights to OUT.npz. With FAIL_RANK/FAIL_STEP, that
rank raises at that step (to test that the job stops instead of hanging).
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gpu_backprop as gb  # noqa: E402
from gpu_backprop.distributed import init_distributed  # noqa: E402


def toy(n: int = 96, d: int = 10, c: int = 3):
    rng = np.random.default_rng(0)
    y = rng.integers(0, c, n)
    X = rng.normal(0, 1, (n, d)) + np.eye(c, d)[y] * 2
    return X, y


def main() -> None:
    out, dtype, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    fail_rank, fail_step = (int(sys.argv[4]), int(sys.argv[5])) if len(sys.argv) > 5 else (-1, -1)
    comm = init_distributed("mpi")
    X, y = toy()
    net = gb.MLP([10, 8, 3], activation="tanh", backend="numpy", dtype=dtype, seed=comm.rank)  # differ on purpose
    opt = gb.SGD(net, lr=0.1, momentum=0.9)
    if fail_rank == comm.rank:
        real_step = opt.step

        def failing_step() -> None:
            if opt.steps == fail_step:
                raise RuntimeError(f"injected failure at step {fail_step}")
            real_step()

        opt.step = failing_step
    gb.fit(net, opt, X.astype(dtype), y, epochs=3, batch_size=batch, seed=4, progress=False, comm=comm,
           check_every=5)
    if comm.rank == 0:
        np.savez(out, params=net.flat_params)


if __name__ == "__main__":
    main()
