"""Checkpoints: model, optimiser, RNG position, epoch and history in one self-checking ``.npz``.

The file is written to a temporary name in the same directory, flushed,
fsynced and renamed over the old one, then the directory is fsynced: a crash
at any moment leaves either the previous checkpoint or the new one, never a
mixture. Inside, a ``__meta__`` entry holds the JSON metadata and a SHA-256 of
every array, so a truncated or altered file is refused with a clear message.
A JSON copy of the metadata is written beside it for people to read.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_write_bytes
from .network import Sequential
from .optim import Optimizer

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint"]

FORMAT = "gpu_backprop-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, truncated, or does not fit the network."""


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(key.encode())
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike[str], net: Sequential, optimizer: Optimizer | None,
                    state: dict[str, Any]) -> Path:
    """Save ``net``, ``optimizer`` and the JSON-able training ``state`` (epoch, seed, history, ...).

    Returns the path written (``.npz`` is appended when missing).
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    arrays: dict[str, np.ndarray] = {f"model/{k}": v for k, v in net.state_dict().items()}
    opt_meta: dict[str, Any] = {}
    if optimizer is not None:
        for k, v in optimizer.state_dict().items():
            if isinstance(v, np.ndarray):
                arrays[f"optim/{k}"] = v
            else:
                opt_meta[k] = v
    meta = {
        "format": FORMAT,
        "config": net.config(),
        "optimizer": opt_meta,
        "state": state,
        "sha256": _digest(arrays),
    }
    buf = io.BytesIO()
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # (NumPy's stub types **kwds as the allow_pickle flag)
    for stale in path.parent.glob(f".{path.stem}.*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    readable = {k: v for k, v in meta.items() if k != "sha256"} | {"file": path.name, "bytes": buf.tell()}
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(readable, indent=2).encode())
    return path


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and verify a checkpoint: ``(metadata, arrays)``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the --resume path")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {exc}); "
            "resume from an earlier checkpoint or start afresh"
        ) from None
    if "__meta__" not in arrays:
        raise CheckpointError(f"{path} is not a gpu_backprop checkpoint (no metadata)")
    try:
        meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} has unreadable metadata ({exc})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {meta.get('format')!r}; this version reads {FORMAT!r}")
    if _digest(arrays) != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {path} fails its checksum (the file was altered or damaged)")
    return meta, arrays


def load_checkpoint(path: str | os.PathLike[str], net: Sequential, optimizer: Optimizer | None) -> dict[str, Any]:
    """Load a checkpoint into ``net`` (and ``optimizer``); returns the saved training state.

    The network must have the architecture the checkpoint was saved from;
    nothing is changed if it does not.
    """
    meta, arrays = read_checkpoint(path)
    saved, ours = meta["config"], net.config()
    if saved != ours:
        raise CheckpointError(
            f"checkpoint {path} was saved from a different network: {_summary(saved)}; "
            f"this one is {_summary(ours)}"
        )
    model = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    net.load_state_dict(model)
    if optimizer is not None:
        opt_state = dict(meta["optimizer"])
        if opt_state and opt_state.get("name") != optimizer.name:
            raise CheckpointError(
                f"checkpoint {path} holds {opt_state.get('name')!r} optimiser state, not {optimizer.name!r}; "
                "use the same --optimizer as the saved run"
            )
        opt_state.update({k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")})
        if opt_state:
            optimizer.load_state_dict(opt_state)
    return meta["state"]


def _summary(config: dict[str, Any]) -> str:
    parts = []
    for spec in config.get("layers", []):
        if spec.get("type") == "Dense":
            parts.append(f"Dense({spec['in_features']}→{spec['out_features']})")
        else:
            parts.append(spec.get("type", "?"))
    return f"[{', '.join(parts)}] {config.get('loss')} {config.get('dtype')}"
