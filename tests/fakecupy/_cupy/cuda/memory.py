"""``cupy.cuda.memory``: memory pointers, the memory pool (with ``set_limit``) and ``OutOfMemoryError``."""

from __future__ import annotations

import weakref
from typing import Any

from .. import _fake
from . import _runtime as runtime

ALLOCATION_UNIT = 512  # CuPy rounds every allocation up to this many bytes


class OutOfMemoryError(MemoryError):
    """As CuPy's, message included."""

    def __init__(self, size: int, total: int, limit: int = 0) -> None:
        self._size, self._total, self._limit = size, total, limit
        if limit == 0:
            msg = f"Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes)."
        else:
            msg = (f"Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes, "
                   f"limit set to: {limit:,} bytes).")
        super().__init__(msg)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return type(self), (self._size, self._total, self._limit)


class MemoryPointer:
    """A device address (here a host address: the stand-in's device memory is host memory)."""

    def __init__(self, ptr: int, device_id: int, owner: Any = None) -> None:
        self.ptr, self.device_id, self.mem = int(ptr), device_id, owner

    @property
    def device(self) -> Any:
        from .device import Device

        return Device(self.device_id)

    def __int__(self) -> int:
        return self.ptr

    def __repr__(self) -> str:
        return f"<MemoryPointer 0x{self.ptr:x} device={self.device_id}>"


class MemoryPool:
    """Counts the bytes of live arrays; ``set_limit`` makes an allocation past the limit raise."""

    def __init__(self) -> None:
        self._used = 0
        self._limit = 0

    def _malloc(self, nbytes: int, owner: Any) -> None:
        size = -(-max(int(nbytes), 1) // ALLOCATION_UNIT) * ALLOCATION_UNIT
        limit = self._limit or _fake.MEMORY
        if self._used + size > limit:
            raise OutOfMemoryError(size, self._used, self._limit)
        self._used += size
        weakref.finalize(owner, self._release, size)

    def _release(self, size: int) -> None:
        self._used -= size

    def malloc(self, size: int) -> MemoryPointer:
        import numpy as np

        buf = np.empty(max(int(size), 1), np.uint8)
        self._malloc(size, buf)
        return MemoryPointer(buf.ctypes.data, runtime.getDevice(), buf)

    def used_bytes(self) -> int:
        return self._used

    def total_bytes(self) -> int:
        return self._used  # no cached free blocks are modelled

    def free_bytes(self) -> int:
        return 0

    def n_free_blocks(self) -> int:
        return 0

    def free_all_blocks(self, stream: Any = None) -> None:
        """Nothing is cached, so nothing to free."""

    def set_limit(self, size: int | None = None, fraction: float | None = None) -> None:
        if size is not None and fraction is not None:
            raise ValueError("size and fraction cannot be specified at the same time")
        if fraction is not None:
            if not 0 <= fraction <= 1:
                raise ValueError(f"memory limit fraction out of range: {fraction}")
            size = int(_fake.MEMORY * fraction)
        self._limit = int(size or 0)

    def get_limit(self) -> int:
        return self._limit


_pool = MemoryPool()


def get_default_memory_pool() -> MemoryPool:
    return _pool
