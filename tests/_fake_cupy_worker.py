"""Run by tests/test_distributed.py under ``mpiexec -n 2``: the CuPy code paths of the communicators, on the CPU.

    mpiexec -n 2 python tests/_fake_cupy_worker.py ok|one-gpu|one-gpu-each|no-nccl

No GPU is needed: ``cupy`` is the stand-in of tests/fakecupy, which follows CuPy 14.2 — its
``cupy.cuda.nccl`` exists only after ``import cupy.cuda.nccl``, ``get_unique_id()`` gives bytes and
``NcclCommunicator(ndev, commId: bytes, rank)`` takes nothing else; ``allReduce``/``bcast`` read and
write the device memory at the addresses they are given and reduce between the ranks through MPI.
This checks what the NCCL engine and the MPI engine's host staging do with CuPy buffers (device
choice, the NCCL id, data types, pointers, counts, NCCL's average, the weighted mean as one scaling
kernel and NCCL's sum, the errors) — not NCCL itself, which needs GPUs (tests marked ``gpu``).

Modes: ``ok`` (two GPUs per node), ``one-gpu`` (one GPU for two ranks: refused), ``one-gpu-each``
(each rank sees one GPU of its own, as ``srun --gpus-per-task=1`` arranges), ``no-nccl`` (cupy-cuda12x
without NCCL's library: the install hint names the cu12 wheel).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

MODE = sys.argv[1]
os.environ["FAKECUPY_DEVICES"] = "2" if MODE in ("ok", "no-nccl") else "1"
if MODE == "no-nccl":
    os.environ.update(FAKECUPY_NCCL="0", FAKECUPY_CUDA_VERSION="12080")

import fakecupy

fakecupy.install()

from gpu_backprop import distributed


def main() -> None:
    world = distributed.launcher_world()
    if MODE == "one-gpu-each" and world is not None:  # as `srun --gpus-per-task=1` does
        os.environ["CUDA_VISIBLE_DEVICES"] = str(world[0])
    try:
        comm = distributed.init_distributed("nccl")
    except RuntimeError as exc:
        print(f"refused: {exc}", flush=True)
        return
    import cupy

    r, P = comm.rank, comm.size
    assert isinstance(comm, distributed.NCCLCommunicator) and comm.engine == "nccl"
    d = 0 if MODE == "one-gpu-each" else r  # one GPU per rank: its local rank, or the one it sees
    assert cupy.cuda.runtime.getDevice() == d and comm.device_id == d

    cupy._fake.reset_counts()
    for dtype in ("float32", "float64"):
        a = cupy.asarray(np.arange(6, dtype=dtype) + 10 * r)
        comm.allreduce_mean_(a)
        np.testing.assert_allclose(a.get(), np.arange(6) + 10 * (P - 1) / 2)
        b = cupy.asarray(np.full(4, r, dtype=dtype))
        comm.broadcast_(b, root=1)
        np.testing.assert_array_equal(b.get(), np.full(4, 1))
    launched = cupy._fake.launches
    assert launched["nccl:allReduce"] == 2 and launched["nccl:bcast"] == 2, launched
    assert launched["ufunc:multiply"] == 0, "NCCL's average needs no scaling kernel"
    # weighted: rank r weighs r + 1 rows, then the last rank none (its NaN buffer must not count)
    for weights in ([k + 1 for k in range(P)], [k + 1 for k in range(P - 1)] + [0]):
        a = cupy.asarray(np.arange(6, dtype=np.float64) + 10 * r if weights[r] else np.full(6, np.nan))
        cupy._fake.reset_counts()
        comm.allreduce_weighted_mean_(a, weights[r], sum(weights))
        expect = sum(w * (np.arange(6) + 10 * k) for k, w in enumerate(weights) if w) / sum(weights)
        np.testing.assert_allclose(a.get(), expect, rtol=1e-12)
        scaled = "ufunc:multiply" if weights[r] else "routine:fill"
        assert cupy._fake.launches[scaled] == 1 and cupy._fake.launches["nccl:allReduce"] == 1, cupy._fake.launches
    comm.check_same("the same", cupy.ones(3))
    assert comm.allreduce_sum_scalar(1.5) == 1.5 * P
    bad = [np.ones(3), cupy.ones(3, np.int16), cupy.ones((3, 3))[:, 0]]
    if cupy.cuda.runtime.getDeviceCount() > 1:
        with cupy.cuda.Device(1 - d):
            bad.append(cupy.ones(3))
    errors = []
    for x in bad:
        try:
            comm.allreduce_mean_(x)
        except (TypeError, ValueError) as exc:
            errors.append(str(exc))
    assert len(errors) == len(bad), errors
    assert "the NCCL engine works on CuPy arrays" in errors[0], errors
    assert "averages float32 or float64 arrays, got int16" in errors[1] and "contiguous" in errors[2], errors
    assert len(bad) == 3 or f"uses GPU {d}" in errors[3], errors

    staged = distributed.MPICommunicator(cuda_aware=False, abort_on_uncaught=False)  # CuPy through host copies
    c = cupy.asarray(np.arange(5, dtype=np.float32) * (r + 1))
    staged.allreduce_mean_(c)
    np.testing.assert_allclose(c.get(), np.arange(5) * (P + 1) / 2)
    c = cupy.asarray(np.arange(5, dtype=np.float32) * (r + 1))
    cupy._fake.reset_counts()
    staged.allreduce_weighted_mean_(c, r + 1, P * (P + 1) // 2)  # Σ (r+1)² / Σ (r+1)
    assert cupy._fake.launches["ufunc:multiply"] == 0, "a staged buffer is scaled in its host copy"
    np.testing.assert_allclose(c.get(), np.arange(5) * sum((k + 1) ** 2 for k in range(P)) / (P * (P + 1) / 2),
                               rtol=1e-6)
    c.fill(r)
    staged.broadcast_(c, root=P - 1)
    np.testing.assert_array_equal(c.get(), np.full(5, P - 1))
    assert len(staged._staging) == 1  # the pinned host buffer is made once and reused
    comm.barrier()
    if r == 0:
        print("stand-in ok", flush=True)


if __name__ == "__main__":
    main()
