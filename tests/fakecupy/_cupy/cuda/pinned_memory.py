"""``cupy.cuda.pinned_memory``: page-locked host memory (plain host memory here)."""

from __future__ import annotations

import ctypes


class PinnedMemoryPointer(bytearray):
    """Host memory NumPy can wrap (``numpy.ndarray(shape, dtype, buffer=p)``), with its address as ``ptr``."""

    @property
    def ptr(self) -> int:
        return ctypes.addressof(ctypes.c_char.from_buffer(self)) if len(self) else 0

    @property
    def size(self) -> int:
        return len(self)


class PinnedMemoryPool:
    def malloc(self, size: int) -> PinnedMemoryPointer:
        return PinnedMemoryPointer(size)

    def free_all_blocks(self) -> None:
        pass

    def n_free_blocks(self) -> int:
        return 0


_pool = PinnedMemoryPool()


def alloc_pinned_memory(size: int) -> PinnedMemoryPointer:
    return PinnedMemoryPointer(int(size))


def get_default_pinned_memory_pool() -> PinnedMemoryPool:
    return _pool
