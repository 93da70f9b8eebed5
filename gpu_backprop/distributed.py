"""Data-parallel training across processes (MPI) and GPUs (NCCL).

    mpiexec -n 4 python scripts/train_mnist.py --distributed mpi    # CPU processes, NumPy
    mpiexec -n 4 python scripts/train_mnist.py --distributed nccl   # one process per GPU, CuPy

Every rank holds the whole network. Each global batch is split into equal
shards, one per rank (the same shuffled order everywhere, from the shared
seed); every rank computes the gradient of its shard, and the ranks average
the network's flat gradient buffer with **one all-reduce per step**. The
optimiser steps are then identical, so the weights stay identical.

MPI comes through :mod:`mpi4py` (``pip install 'gpu_backprop[mpi]'``, which
also brings an MPI from PyPI; a system MPI works too). NCCL comes through
CuPy (``cupy.cuda.nccl``), bootstrapped over MPI as ChainerMN did. Both are
imported only when distributed training is asked for.

A rank that raises prints ``rank R: ...`` and aborts the whole job (MPI_Abort),
so the others stop at once instead of waiting for it in an all-reduce; a rank
that dies is noticed by the launcher, which ends the job.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import numpy as np

from . import backend

__all__ = ["Communicator", "MPICommunicator", "NCCLCommunicator", "SingleProcess", "init_distributed"]

Array = Any
ENGINES = ("none", "mpi", "nccl")


class Communicator:
    """What the trainer needs from an engine: rank, size, and in-place collectives on flat buffers."""

    rank = 0
    size = 1
    engine = "single"

    def allreduce_mean_(self, a: Array) -> None:
        """Average ``a`` (a contiguous device buffer) over the ranks, in place."""

    def broadcast_(self, a: Array, root: int = 0) -> None:
        """Overwrite ``a`` on every rank with ``root``'s copy."""

    def barrier(self) -> None:
        """Wait until every rank arrives."""

    def check_same(self, name: str, a: Array) -> None:
        """Raise if ``a`` differs between ranks (a debugging aid: weights must stay identical)."""

    def abort(self, message: str, code: int = 1) -> None:
        """Print ``message`` and end every rank."""
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(code)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class SingleProcess(Communicator):
    """One process, no communication: what ``--distributed none`` gives."""


def _mpi() -> ModuleType:
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise RuntimeError(
            f"MPI is not available ({exc}); install it with `pip install 'gpu_backprop[mpi]'` "
            "and start the ranks with mpiexec -n N"
        ) from None
    return MPI


def _fingerprint(a: Array) -> np.ndarray:
    """Three numbers that differ when arrays differ (sum, sum of squares, a weighted sum)."""
    xp = backend.get_array_module(a)
    flat = a.reshape(-1).astype(xp.float64)
    w = xp.arange(1, flat.size + 1, dtype=xp.float64) % 7.0 + 1.0
    return np.array([float(flat.sum()), float((flat * flat).sum()), float((flat * w).sum())])


class MPICommunicator(Communicator):
    """Collectives through MPI (mpi4py).

    NumPy buffers go straight to MPI. CuPy buffers go to MPI directly when the
    MPI library is CUDA-aware (``cuda_aware=True``); otherwise they are staged
    through host memory (one copy down and one up per all-reduce).
    """

    engine = "mpi"

    def __init__(self, comm: Any = None, cuda_aware: bool = False) -> None:
        self.MPI = _mpi()
        self.comm = comm if comm is not None else self.MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.cuda_aware = cuda_aware
        _abort_on_uncaught(self)

    def _host(self, a: Array) -> tuple[Any, Any]:
        if backend.is_cupy_array(a) and not self.cuda_aware:
            return a.get(), a
        if backend.is_cupy_array(a):
            backend.cupy_module().cuda.get_current_stream().synchronize()
        return a, None

    def allreduce_mean_(self, a: Array) -> None:
        buf, device = self._host(a)
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        if device is not None:
            device.set(buf)
        a *= 1.0 / self.size

    def broadcast_(self, a: Array, root: int = 0) -> None:
        buf, device = self._host(a)
        self.comm.Bcast(buf, root=root)
        if device is not None:
            device.set(buf)

    def barrier(self) -> None:
        self.comm.Barrier()

    def check_same(self, name: str, a: Array) -> None:
        prints = self.comm.allgather(_fingerprint(a))
        differ = [r for r, p in enumerate(prints) if not np.array_equal(p, prints[0])]
        if differ:
            raise RuntimeError(f"{name} differs between rank 0 and rank(s) {differ}: the ranks have diverged")

    def abort(self, message: str, code: int = 1) -> None:
        print(message, file=sys.stderr, flush=True)
        self.comm.Abort(code)


class NCCLCommunicator(MPICommunicator):
    """All-reduce and broadcast between GPUs through NCCL (CuPy); MPI starts the ranks and shares the NCCL id.

    Each rank uses GPU ``rank % device_count``. Buffers must be CuPy arrays.
    """

    engine = "nccl"

    def __init__(self, comm: Any = None) -> None:
        super().__init__(comm)
        cp = backend.cupy_module()
        self.cp = cp
        from_cupy = cp.cuda.nccl
        cp.cuda.Device(self.rank % cp.cuda.runtime.getDeviceCount()).use()
        uid = from_cupy.get_unique_id() if self.rank == 0 else None
        uid = self.comm.bcast(uid, root=0)
        self.nccl = from_cupy
        self.nccl_comm = from_cupy.NcclCommunicator(self.size, uid, self.rank)

    def _dtype(self, a: Array) -> int:
        return {np.dtype(np.float32): self.nccl.NCCL_FLOAT32,
                np.dtype(np.float64): self.nccl.NCCL_FLOAT64}[np.dtype(a.dtype)]

    def allreduce_mean_(self, a: Array) -> None:
        stream = self.cp.cuda.get_current_stream().ptr
        self.nccl_comm.allReduce(a.data.ptr, a.data.ptr, a.size, self._dtype(a), self.nccl.NCCL_SUM, stream)
        a *= 1.0 / self.size

    def broadcast_(self, a: Array, root: int = 0) -> None:
        stream = self.cp.cuda.get_current_stream().ptr
        self.nccl_comm.bcast(a.data.ptr, a.size, self._dtype(a), root, stream)


def _abort_on_uncaught(comm: MPICommunicator) -> None:
    """An uncaught exception on any rank names the rank and ends the whole job at once."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if issubclass(kind, (SystemExit, KeyboardInterrupt)):
            previous(kind, value, tb)
            return
        comm.abort(f"rank {comm.rank}: {kind.__name__}: {value}; stopping all {comm.size} ranks")

    sys.excepthook = hook


def init_distributed(kind: str) -> Communicator:
    """A communicator for ``"none"``, ``"mpi"`` or ``"nccl"`` (the ranks come from the MPI launcher)."""
    if kind not in ENGINES:
        raise ValueError(f"unknown distributed engine {kind!r}; choose one of {', '.join(ENGINES)}")
    if kind == "none":
        return SingleProcess()
    if kind == "mpi":
        return MPICommunicator()
    return NCCLCommunicator()
