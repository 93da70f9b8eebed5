"""``cupy.cuda.device``: ``Device``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import _fake
from . import _runtime as runtime

if TYPE_CHECKING:
    from typing_extensions import Self


def get_device_id() -> int:
    return runtime.getDevice()


def get_compute_capability() -> str:
    return Device().compute_capability


class Device:
    """A CUDA device: ``Device()`` is the current one; ``use()`` makes it current."""

    def __init__(self, device: int | None = None) -> None:
        self.id = runtime.getDevice() if device is None else int(device)
        self._before: list[int] = []

    def use(self) -> None:
        runtime.setDevice(self.id)

    def synchronize(self) -> None:
        _fake.sync()

    @property
    def compute_capability(self) -> str:
        runtime._check(self.id)
        return _fake.CC

    @property
    def attributes(self) -> dict[str, int]:
        runtime._check(self.id)
        return {"MultiProcessorCount": _fake.SMS, "MaxThreadsPerBlock": 1024, "WarpSize": 32,
                "CooperativeLaunch": 1, "MaxBlockDimX": 1024, "MaxGridDimX": 2147483647, "ComputeCapabilityMajor": int(_fake.CC[:-1]),
                "ComputeCapabilityMinor": int(_fake.CC[-1]), "MaxSharedMemoryPerBlock": 49152}

    @property
    def mem_info(self) -> tuple[int, int]:
        from .memory import get_default_memory_pool

        return _fake.MEMORY - get_default_memory_pool().used_bytes(), _fake.MEMORY

    def __enter__(self) -> Self:
        self._before.append(runtime.getDevice())
        self.use()
        return self

    def __exit__(self, *exc: object) -> None:
        runtime.setDevice(self._before.pop())

    def __int__(self) -> int:
        return self.id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("Device", self.id))

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id}>"
