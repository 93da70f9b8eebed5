"""Run by tests/test_distributed.py under ``mpiexec -n 2``: the CuPy code paths of the communicators, on the CPU.

    mpiexec -n 2 python tests/_fake_cupy_worker.py ok|one-gpu|one-gpu-each|no-nccl

No GPU is needed: ``backend.cupy_module()`` is replaced by a stand-in whose
arrays are host arrays dressed as CuPy arrays (``.data.ptr``, ``.device``,
``.get(out=)``, ``.set``) and whose ``cuda.nccl`` has CuPy's signatures
(``NcclCommunicator(ndev, commId: tuple, rank)``, ``allReduce(sendbuf, recvbuf,
count, datatype, op, stream)``, ``bcast(buff, count, datatype, root, stream)``)
and does the reduction through MPI. This checks what the NCCL engine and the
MPI engine's host staging do with a CuPy buffer (device choice, the NCCL id,
data types, pointers, counts, the mean, the errors) — not NCCL itself, which
needs GPUs (tests marked ``gpu``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_backprop import backend, distributed  # noqa: E402

_BY_POINTER: dict[int, FakeDeviceArray] = {}
DEVICES_USED: list[int] = []


class FakeDeviceArray:
    """A host array with the parts of a :class:`cupy.ndarray` that the communicators use."""

    __module__ = "cupy._stand_in"  # so that backend.is_cupy_array says yes

    def __init__(self, host: np.ndarray, device_id: int = 0) -> None:
        self.host, self.device = host, SimpleNamespace(id=device_id)
        self.dtype, self.size, self.shape, self.nbytes, self.flags = (host.dtype, host.size, host.shape, host.nbytes,
                                                                      host.flags)
        self.data = SimpleNamespace(ptr=host.__array_interface__["data"][0])
        _BY_POINTER[self.data.ptr] = self

    def get(self, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            return self.host.copy()
        assert out.shape == self.host.shape and out.dtype == self.host.dtype
        out[...] = self.host
        return out

    def set(self, values: np.ndarray) -> None:
        self.host[...] = values

    def reshape(self, *shape: int) -> FakeDeviceArray:
        return FakeDeviceArray(self.host.reshape(*shape), self.device.id)

    def __imul__(self, x: float) -> FakeDeviceArray:  # noqa: PYI034 - as CuPy's
        self.host *= x
        return self


def fake_cupy(gpus: int, nccl_available: bool) -> Any:
    """A stand-in for the ``cupy`` module: ``cuda.nccl``, ``cuda.runtime``, ``cuda.Device``, streams, pinned memory."""
    from mpi4py import MPI

    names = ("int8", "uint8", "int32", "uint32", "int64", "uint64", "float16", "float32", "float64")
    codes = {f"NCCL_{n.upper()}": k for k, n in enumerate(names)}
    to_dtype = {k: np.dtype(n) for k, n in enumerate(names)}

    class NcclCommunicator:
        def __init__(self, ndev: int, commId: tuple, rank: int) -> None:  # noqa: N803 - CuPy's names
            assert isinstance(commId, tuple) and len(commId) == 128, "the NCCL id did not arrive whole"
            ids = MPI.COMM_WORLD.allgather(commId)
            assert all(i == ids[0] for i in ids), "ranks hold different NCCL ids"
            assert ndev == MPI.COMM_WORLD.Get_size() and rank == MPI.COMM_WORLD.Get_rank()

        def allReduce(self, sendbuf: int, recvbuf: int, count: int, datatype: int, op: int,  # noqa: N802
                      stream: int) -> None:
            a = _BY_POINTER[sendbuf]
            assert sendbuf == recvbuf and count == a.size and to_dtype[datatype] == a.dtype and op == 100
            assert stream == 7, "not on the current stream"
            MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, a.host, op=MPI.SUM)

        def bcast(self, buff: int, count: int, datatype: int, root: int, stream: int) -> None:
            a = _BY_POINTER[buff]
            assert count == a.size and to_dtype[datatype] == a.dtype and stream == 7
            MPI.COMM_WORLD.Bcast(a.host, root=root)

    nccl = SimpleNamespace(available=nccl_available, NCCL_SUM=100, NcclCommunicator=NcclCommunicator,
                           get_unique_id=lambda: tuple(np.random.default_rng().integers(-128, 128, 128).tolist()),
                           **codes)
    cuda = SimpleNamespace(
        nccl=nccl,
        runtime=SimpleNamespace(getDeviceCount=lambda: gpus),
        Device=lambda i: SimpleNamespace(use=lambda: DEVICES_USED.append(i)),
        get_current_stream=lambda: SimpleNamespace(ptr=7, synchronize=lambda: None),
        alloc_pinned_memory=bytearray,
    )
    return SimpleNamespace(cuda=cuda)


def main() -> None:
    mode = sys.argv[1]
    world = distributed.launcher_world()
    if mode == "one-gpu-each" and world is not None:  # as `srun --gpus-per-task=1` does
        os.environ["CUDA_VISIBLE_DEVICES"] = str(world[0])
    cp = fake_cupy(gpus=1 if mode.startswith("one-gpu") else 2, nccl_available=mode != "no-nccl")
    backend.cupy_module = lambda: cp  # type: ignore[assignment]
    try:
        comm = distributed.init_distributed("nccl")
    except RuntimeError as exc:
        print(f"refused: {exc}", flush=True)
        return
    r, P = comm.rank, comm.size
    assert isinstance(comm, distributed.NCCLCommunicator) and comm.engine == "nccl"
    d = 0 if mode == "one-gpu-each" else r  # one GPU per rank: its local rank, or the one it sees
    assert DEVICES_USED == [d] and comm.device_id == d, DEVICES_USED

    for dtype in ("float32", "float64"):
        a = FakeDeviceArray(np.arange(6, dtype=dtype) + 10 * r, device_id=d)
        comm.allreduce_mean_(a)
        np.testing.assert_allclose(a.host, np.arange(6) + 10 * (P - 1) / 2)
        b = FakeDeviceArray(np.full(4, r, dtype=dtype), device_id=d)
        comm.broadcast_(b, root=1)
        np.testing.assert_array_equal(b.host, np.full(4, 1))
    comm.check_same("the same", FakeDeviceArray(np.ones(3), device_id=d))
    assert comm.allreduce_sum_scalar(1.5) == 1.5 * P
    errors = []
    for bad in (np.ones(3), FakeDeviceArray(np.ones(3), device_id=d + 1), FakeDeviceArray(np.ones(3, np.int16), d),
                FakeDeviceArray(np.ones((3, 3))[:, 0], d)):
        try:
            comm.allreduce_mean_(bad)
        except (TypeError, ValueError) as exc:
            errors.append(str(exc))
    assert len(errors) == 4, errors
    assert "the NCCL engine works on CuPy arrays" in errors[0] and f"uses GPU {d}" in errors[1], errors
    assert "averages float32 or float64 arrays, got int16" in errors[2] and "contiguous" in errors[3], errors

    staged = distributed.MPICommunicator(cuda_aware=False, abort_on_uncaught=False)  # CuPy through host copies
    c = FakeDeviceArray(np.arange(5, dtype=np.float32) * (r + 1), device_id=d)
    staged.allreduce_mean_(c)
    np.testing.assert_allclose(c.host, np.arange(5) * (P + 1) / 2)
    c.host[:] = r
    staged.broadcast_(c, root=P - 1)
    np.testing.assert_array_equal(c.host, np.full(5, P - 1))
    assert len(staged._staging) == 1  # the pinned host buffer is made once and reused
    comm.barrier()
    if r == 0:
        print("stand-in ok", flush=True)


if __name__ == "__main__":
    main()
