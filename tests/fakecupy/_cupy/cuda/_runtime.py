"""``cupy.cuda.runtime`` (``cupy_backends.cuda.api.runtime`` in CuPy): devices, versions, properties."""

from __future__ import annotations

from .. import _fake

#: the CUDA runtime cupy-cuda13x 14.2.0 was built with (runtimeGetVersion); FAKECUPY_CUDA_VERSION=12080 plays cupy-cuda12x
CUDA_VERSION = int(_fake.setting("CUDA_VERSION", "13020"))
DRIVER_VERSION = 13000
is_hip = False  #: a CUDA build, as cupy-cuda13x is (the doctor refuses a ROCm one)

cudaErrorInvalidDevice = 101
_current = 0


class CUDARuntimeError(RuntimeError):
    def __init__(self, status: int, message: str = "") -> None:
        self.status = status
        names = {101: ("cudaErrorInvalidDevice", "invalid device ordinal")}
        name, text = names.get(status, (f"cudaError{status}", message))
        super().__init__(f"{name}: {message or text}")

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return type(self), (self.status,)


def getDeviceCount() -> int:
    return _fake.DEVICES


def _check(device: int) -> int:
    if not 0 <= int(device) < _fake.DEVICES:
        raise CUDARuntimeError(cudaErrorInvalidDevice)
    return int(device)


def getDevice() -> int:
    return _current


def setDevice(device: int) -> None:
    global _current
    _current = _check(device)


def runtimeGetVersion() -> int:
    return CUDA_VERSION


def driverGetVersion() -> int:
    return DRIVER_VERSION


def deviceSynchronize() -> None:
    _fake.sync()


def getDeviceProperties(device: int) -> dict:
    """As CuPy's: a dict, ``name`` as bytes."""
    d = _check(device)
    return {
        "name": f"CuPy stand-in {d} (CPU)".encode(), "totalGlobalMem": _fake.MEMORY, "sharedMemPerBlock": 49152,
        "regsPerBlock": 65536, "warpSize": 32, "maxThreadsPerBlock": 1024, "maxThreadsDim": (1024, 1024, 64),
        "maxGridSize": (2147483647, 65535, 65535), "clockRate": 1980000, "totalConstMem": 65536, "major": int(_fake.CC[:-1]),
        "minor": int(_fake.CC[-1]), "multiProcessorCount": _fake.SMS, "l2CacheSize": 52428800, "maxThreadsPerMultiProcessor": 2048,
        "memoryClockRate": 2619000, "memoryBusWidth": 5120, "cooperativeLaunch": 1, "pciBusID": 24 + d,
        "sharedMemPerBlockOptin": 232448, "maxBlocksPerMultiProcessor": 32, "uuid": bytes(16),
    }
