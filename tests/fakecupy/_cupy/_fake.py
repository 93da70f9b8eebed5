"""What the stand-in counts and how it is set up (a module the real CuPy does not have; tests read it).

``syncs``: host synchronisations (``.get()``, ``float(x)``, ``bool(x)``, ``int(x)``, ``repr``, stream,
event and device ``synchronize``). ``launches``: kernel launches by name (elementwise, raw, and the
NumPy-backed routines as ``routine:NAME``). ``uploads``: host-to-device copies.
"""

from __future__ import annotations

import collections
import os
import tempfile

syncs = 0
uploads = 0
launches: collections.Counter[str] = collections.Counter()


def reset_counts() -> None:
    global syncs, uploads
    syncs = uploads = 0
    launches.clear()


poisoned = False
ILLEGAL_ADDRESS = "CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access was encountered"


def poison() -> None:
    """A kernel touched memory it may not: like a CUDA context, the device is unusable from now on."""
    global poisoned
    poisoned = True
    check_context()


def check_context() -> None:
    if poisoned:
        from .cuda._driver import CUDADriverError

        raise CUDADriverError(ILLEGAL_ADDRESS)


def sync() -> None:
    global syncs
    check_context()
    syncs += 1


def upload() -> None:
    global uploads
    check_context()
    uploads += 1


def setting(name: str, default: str) -> str:
    return os.environ.get(f"FAKECUPY_{name}", default)


DEVICES = int(setting("DEVICES", "1"))
SMS = int(setting("SMS", "2"))
CC = setting("CC", "90")  # compute capability, e.g. "75" for a GPU without TF32
MEMORY = int(setting("MEMORY", str(16 << 30)))
NCCL = setting("NCCL", "1") != "0"
CXX = setting("CXX", "g++")
_cache_dir: str | None = None


def cache_dir() -> str:
    """Where kernel builds are cached: ``FAKECUPY_CACHE_DIR`` (shared by processes), else a fresh temporary one."""
    global _cache_dir
    if _cache_dir is None:
        _cache_dir = os.environ.get("FAKECUPY_CACHE_DIR") or tempfile.mkdtemp(prefix="fakecupy-")
        os.makedirs(_cache_dir, exist_ok=True)
    return _cache_dir
