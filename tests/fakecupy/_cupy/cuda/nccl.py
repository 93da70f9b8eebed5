"""``cupy.cuda.nccl`` (loaded only by ``import cupy.cuda.nccl``, as CuPy's): NCCL through MPI, or missing.

With ``FAKECUPY_NCCL=0`` the library "cannot be loaded": as CuPy, the module then has only
``available = False`` and warns how to install it. Otherwise ``NcclCommunicator(ndev, commId: bytes,
rank)`` reduces between the ranks of ``mpi4py``'s ``COMM_WORLD`` (one rank needs no MPI), reading and
writing the buffers at the addresses it is given, as NCCL reads device memory.
"""

from __future__ import annotations

import ctypes
import os
import warnings

import numpy as np

from .. import _fake
from . import _runtime as runtime

available = _fake.NCCL

if not available:
    del np, ctypes, os
    warnings.warn(f'''
nccl library could not be loaded.

Reason: ImportError (libnccl.so.2: cannot open shared object file: No such file or directory)

You can install the library by:
  $ pip install "nvidia-nccl-cu{runtime.CUDA_VERSION // 1000}>=2.27.7,<3"
''', stacklevel=2)
else:
    NCCL_UNIQUE_ID_BYTES = 128
    NCCL_SUM, NCCL_PROD, NCCL_MAX, NCCL_MIN, NCCL_AVG = 0, 1, 2, 3, 4
    NCCL_INT8 = NCCL_CHAR = 0
    NCCL_UINT8 = 1
    NCCL_INT32 = NCCL_INT = 2
    NCCL_UINT32 = 3
    NCCL_INT64 = 4
    NCCL_UINT64 = 5
    NCCL_FLOAT16 = NCCL_HALF = 6
    NCCL_FLOAT32 = NCCL_FLOAT = 7
    NCCL_FLOAT64 = NCCL_DOUBLE = 8
    NCCL_BFLOAT16 = 9
    _DTYPES = {0: np.int8, 1: np.uint8, 2: np.int32, 3: np.uint32, 4: np.int64, 5: np.uint64, 6: np.float16,
               7: np.float32, 8: np.float64}

    class NcclError(RuntimeError):
        def __init__(self, status: int, message: str = "invalid argument") -> None:
            self.status = status
            super().__init__(f"NCCL_ERROR_INVALID_ARGUMENT: {message}")

    def get_version() -> int:
        return 23203

    def get_build_version() -> int:
        return 22707

    def get_unique_id() -> bytes:
        """128 bytes (a tuple of ints before CuPy 14.0)."""
        return os.urandom(NCCL_UNIQUE_ID_BYTES)

    def groupStart() -> None:
        pass

    def groupEnd() -> None:
        pass

    def _buffer(ptr: int, count: int, datatype: int) -> np.ndarray:
        if datatype not in _DTYPES:
            raise NcclError(4, f"unknown datatype {datatype}")
        dt = np.dtype(_DTYPES[datatype])
        raw = (ctypes.c_char * (count * dt.itemsize)).from_address(ptr)
        return np.frombuffer(raw, dtype=dt, count=count)

    class NcclCommunicator:
        """``NcclCommunicator(ndev, commId, rank, config=None)``: ``commId`` must be the 128 bytes of ``get_unique_id``."""

        def __init__(self, ndev: int, commId: bytes, rank: int, config: object = None) -> None:
            if not isinstance(commId, bytes):
                raise TypeError(f"Argument 'commId' has incorrect type (expected bytes, got {type(commId).__name__})")
            if len(commId) != NCCL_UNIQUE_ID_BYTES:
                raise ValueError(f"commId length {len(commId)} != {NCCL_UNIQUE_ID_BYTES}.")
            if not 0 <= rank < ndev:
                raise NcclError(4, f"rank {rank} of {ndev}")
            self._ndev, self._rank, self._device = int(ndev), int(rank), runtime.getDevice()
            self._mpi = None
            if ndev > 1:
                from mpi4py import MPI

                world = MPI.COMM_WORLD
                if world.Get_size() != ndev or world.Get_rank() != rank:
                    raise NcclError(4, "the stand-in's NCCL runs one rank per MPI process")
                ids = world.allgather(commId)
                if any(i != commId for i in ids):
                    raise NcclError(5, "ranks passed different unique ids")
                self._mpi, self._MPI = world, MPI

        def rank_id(self) -> int:
            return self._rank

        def size(self) -> int:
            return self._ndev

        def device_id(self) -> int:
            return self._device

        def allReduce(self, sendbuf: int, recvbuf: int, count: int, datatype: int, op: int,
                      stream: int) -> None:
            _fake.launches["nccl:allReduce"] += 1
            src, dst = _buffer(sendbuf, count, datatype), _buffer(recvbuf, count, datatype)
            total = src.copy()
            if self._mpi is not None:
                mpi_op = {NCCL_SUM: self._MPI.SUM, NCCL_AVG: self._MPI.SUM, NCCL_PROD: self._MPI.PROD,
                          NCCL_MAX: self._MPI.MAX, NCCL_MIN: self._MPI.MIN}
                if op not in mpi_op:
                    raise NcclError(4, f"unknown reduction {op}")
                self._mpi.Allreduce(self._MPI.IN_PLACE, total, op=mpi_op[op])
            elif op not in (NCCL_SUM, NCCL_AVG, NCCL_PROD, NCCL_MAX, NCCL_MIN):
                raise NcclError(4, f"unknown reduction {op}")
            if op == NCCL_AVG:
                total = total / self._ndev if total.dtype.kind == "f" else total // self._ndev
            dst[...] = total

        def bcast(self, buff: int, count: int, datatype: int, root: int, stream: int) -> None:
            _fake.launches["nccl:bcast"] += 1
            if not 0 <= root < self._ndev:
                raise NcclError(4, f"root {root}")
            if self._mpi is not None:
                self._mpi.Bcast(_buffer(buff, count, datatype), root=root)

        def broadcast(self, sendbuff: int, recvbuff: int, count: int, datatype: int, root: int,
                      stream: int) -> None:
            if self._rank == root and sendbuff != recvbuff:
                _buffer(recvbuff, count, datatype)[...] = _buffer(sendbuff, count, datatype)
            self.bcast(recvbuff, count, datatype, root, stream)

        def destroy(self) -> None:
            pass

        def abort(self) -> None:
            pass
