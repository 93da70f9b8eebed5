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


def sync() -> None:
    global syncs
    syncs += 1


def upload() -> None:
    global uploads
    uploads += 1


def setting(name: str, default: str) -> str:
    return os.environ.get(f"FAKECUPY_{name}", default)


DEVICES = int(setting("DEVICES", "1"))
SMS = int(setting("SMS", "2"))
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
