"""``cupy.cuda.driver`` (``cupy_backends.cuda.api.driver`` in CuPy): what the project asks of it."""

from __future__ import annotations


def occupancyMaxActiveBlocksPerMultiprocessor(func: int, blockSize: int, dynamicSMemSize: int) -> int:
    """Blocks of ``blockSize`` threads that fit on one SM at once (2048 threads per SM, 32 blocks at most)."""
    if not 0 < blockSize <= 1024:
        raise ValueError(f"block size {blockSize} is out of range")
    return max(1, min(32, 2048 // blockSize))


class CUDADriverError(RuntimeError):
    """A driver call failed (e.g. a launch with more than 1024 threads per block)."""
