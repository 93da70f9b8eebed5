"""``cupy.cuda``: devices, streams, events, memory, and the runtime and driver modules.

As in CuPy 14.2, ``cupy.cuda.nccl`` is not imported here: it is an attribute only after
``import cupy.cuda.nccl``. ``runtime`` and ``driver`` are attributes (CuPy takes them from
``cupy_backends``), not ``cupy.cuda.*`` entries of ``sys.modules``.
"""

from __future__ import annotations

from . import _driver as driver
from . import _runtime as runtime
from . import compiler, device, memory, pinned_memory, stream
from .device import Device, get_compute_capability, get_device_id
from .memory import MemoryPointer, MemoryPool, OutOfMemoryError, get_default_memory_pool
from .pinned_memory import PinnedMemoryPointer, PinnedMemoryPool, alloc_pinned_memory
from .stream import Event, Stream, get_current_stream, get_elapsed_time

__all__ = ["Device", "Event", "MemoryPointer", "MemoryPool", "OutOfMemoryError", "PinnedMemoryPointer",
           "PinnedMemoryPool", "Stream", "alloc_pinned_memory", "compiler", "device", "driver",
           "get_compute_capability", "get_current_stream", "get_default_memory_pool", "get_device_id",
           "get_elapsed_time", "is_available", "memory", "pinned_memory", "runtime", "stream"]


def is_available() -> bool:
    return runtime.getDeviceCount() > 0


def get_local_runtime_version() -> int:
    return runtime.CUDA_VERSION


def get_cuda_path() -> str | None:
    return None


def get_nvcc_path() -> str | None:
    return None
