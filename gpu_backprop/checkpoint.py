"""Checkpoints: model, optimiser, RNG position, epoch and history in one self-checking ``.npz``.

The file is written to a temporary name in the same directory, flushed,
fsynced and renamed over the old one, then the directory is fsynced: a crash
at any moment leaves either the previous checkpoint or the new one, never a
mixture. A JSON copy of the metadata is written beside it for people to read.

Inside, a ``__meta__`` entry holds the JSON metadata: the format, the
network's config, the optimiser's name, step count and hyper-parameters, the
caller's training state, and a manifest of the arrays (name, dtype, shape and
SHA-256 of each). A SHA-256 of the canonical JSON of all of that (the
manifest included) closes it, so an altered or damaged metadata entry or array
is refused.

Reading trusts nothing before it is checked. The metadata's size, nesting
and the type of every field read are checked first; then the architecture,
the optimiser and the manifest are compared with the network and optimiser
being loaded; then only the arrays these need are read, each one's ``.npy``
header (dtype and shape) checked against the manifest before a byte of its
data is read. Any problem is one sentence (:class:`CheckpointError`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from numpy.lib import format as npy_format

from ._io import atomic_write_bytes
from .backend import Backend, get_backend
from .checks import DTYPES, is_int, is_number
from .layers import LAYER_TYPES, BatchNorm, Dense, Dropout, Layer
from .network import Sequential
from .optim import Optimizer

__all__ = ["CheckpointError", "check_resumable", "checkpoint_metadata", "load_checkpoint", "load_model", "network_from_config", "read_checkpoint",
           "save_checkpoint", "saved_as"]

FORMAT = "gpu_backprop-checkpoint-3"
#: the same layout; a Dense, BatchNorm or Dropout of the user's own kind was saved under its base's name: still read
FORMAT_2 = "gpu_backprop-checkpoint-2"
_NAMED_BY_BASE_IN_2 = (Dense, BatchNorm, Dropout)  #: the layers whose subclasses format 2 named by the base
FORMAT_1 = "gpu_backprop-checkpoint-1"  # before 0.2: the checksum covered the arrays only; still read
_META = "__meta__"
MAX_META_BYTES = 64 * 2**20  #: the largest metadata entry read (a long history is a few MB)
MAX_DEPTH = 32  #: the deepest nesting of lists and objects accepted in the metadata
_ARRAY_DTYPES = ("<f4", "<f8", "<i8")  # what a checkpoint's arrays may be: float32, float64, int64


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, truncated, or does not fit the network."""


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------
def _canonical(body: dict[str, Any]) -> bytes:
    """The bytes the checksum covers: the metadata as JSON with sorted keys and no spaces."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(a, order="C").tobytes()).hexdigest()


def _named_in_format_2(layer: Any) -> str | None:
    """The built-in base whose name format 2 wrote for ``layer``, a user's subclass of one; else None."""
    return next((base.__name__ for base in _NAMED_BY_BASE_IN_2 if isinstance(layer, base) and type(layer) is not base),
                None)


def save_checkpoint(path: str | os.PathLike[str], net: Sequential, optimizer: Optimizer | None,
                    state: dict[str, Any]) -> Path:
    """Save ``net``, ``optimizer`` and the JSON-able training ``state`` (epoch, seed, history, ...).

    Returns the path written (``.npz`` is appended when missing).
    """
    path = _with_npz(Path(path))
    arrays: dict[str, np.ndarray] = {f"model/{k}": v for k, v in net.state_dict().items()}
    opt_meta: dict[str, Any] = {}
    if optimizer is not None:
        for k, v in optimizer.state_dict().items():
            if isinstance(v, np.ndarray):
                arrays[f"optim/{k}"] = v
            else:
                opt_meta[k] = v
    arrays = {k: np.asarray(v, dtype=v.dtype.newbyteorder("<"), order="C") for k, v in arrays.items()}
    body = json.loads(json.dumps({  # through JSON once: keys become strings, tuples lists, as a reader sees them
        # format 2 where it says the same (no layer of the user's own kind of Dense, BatchNorm or Dropout):
        # older versions read it
        "format": FORMAT if any(_named_in_format_2(layer) for layer in net.layers) else FORMAT_2,
        "config": net.config(),
        "optimizer": opt_meta,
        "state": state,
        "arrays": {k: {"dtype": a.dtype.str, "shape": list(a.shape), "sha256": _sha256(a)} for k, a in arrays.items()},
    }))
    meta = body | {"sha256": hashlib.sha256(_canonical(body)).hexdigest()}
    buf = io.BytesIO()
    arrays[_META] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # (NumPy's stub types **kwds as the allow_pickle flag)
    atomic_write_bytes(path, buf.getvalue())
    readable = {k: v for k, v in meta.items() if k not in ("sha256", "arrays")} | {"file": path.name,
                                                                                   "bytes": buf.tell()}
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(readable, indent=2).encode())
    return path


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------
def read_checkpoint(path: str | os.PathLike[str], net: Sequential | None = None,
                    optimizer: Optimizer | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and verify a checkpoint: ``(metadata, arrays)``; nothing is loaded anywhere.

    With ``net`` (and ``optimizer``), the checkpoint must have been saved from
    that architecture (and an optimiser of that kind with the same
    hyper-parameters, the learning rate aside), and only the arrays they need
    are read. Without them, every array is read.
    """
    with _opened(path) as reader:
        return reader.read(net, optimizer)


def checkpoint_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint's metadata (config, optimizer, state), checked and checksummed, without reading its arrays."""
    with _opened(path) as reader:
        return reader.metadata()


def saved_as(path: str | os.PathLike[str]) -> Path:
    """``path``, or where :func:`save_checkpoint` wrote it (``.npz`` appended) if only that exists."""
    path = Path(path)
    npz = _with_npz(path)
    return npz if not path.exists() and npz.is_file() else path


def _with_npz(path: Path) -> Path:
    """``path`` as :func:`save_checkpoint` writes it: ``.npz`` appended when missing."""
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


@contextlib.contextmanager
def _opened(path: str | os.PathLike[str]) -> Iterator[_Reader]:
    """The checkpoint at ``path`` open for reading; any fault of the file becomes one :class:`CheckpointError`."""
    path = saved_as(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is a directory; pass the checkpoint file in it (checkpoint.npz)"
                              if path.is_dir() else f"checkpoint {path} does not exist; check the path")
    try:
        with open(path, "rb") as f:
            head = f.read(6)
        if head.startswith(b"\x93NUMPY"):
            raise CheckpointError(f"{path} is a NumPy .npy array, not a gpu_backprop checkpoint; {_WHICH}")
        if not head.startswith(b"PK"):
            raise CheckpointError(f"{path} is not a gpu_backprop checkpoint (not an .npz file); {_WHICH}")
        with zipfile.ZipFile(path) as zf:
            yield _Reader(path, zf)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, KeyError,
            NotImplementedError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {exc}); "
            "resume from an earlier checkpoint or start afresh"
        ) from None


_WHICH = "pass the checkpoint.npz that training with --out (or fit(checkpoint=...)) wrote"


def load_checkpoint(path: str | os.PathLike[str], net: Sequential, optimizer: Optimizer | None,
                    check: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Load a checkpoint into ``net`` (and ``optimizer``); returns the saved training state.

    The network must have the architecture the checkpoint was saved from. The
    optimiser must be of the saved kind with the saved hyper-parameters (a
    differing momentum, say, is refused rather than silently replaced); its
    buffers, step count and learning rate (which schedules change as training
    goes) are restored. ``optimizer=None`` loads the network alone. ``check``,
    if given, is called with the saved training state before anything is
    loaded, to refuse it by raising. Nothing is changed if anything does not fit.
    """
    meta, arrays = read_checkpoint(path, net, optimizer)
    if check is not None:
        check(meta["state"])
    model = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    try:
        if optimizer is None:
            net.load_state_dict(model)
        else:
            opt_state = dict(meta["optimizer"])
            opt_state.update({k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")})
            before = optimizer.state_dict()
            optimizer.load_state_dict(opt_state)
            try:
                net.load_state_dict(model)
            except BaseException:
                optimizer.load_state_dict(before)
                raise
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {exc}") from None
    return meta["state"]


class _Reader:
    """One checkpoint file open as a zip archive, read in the order that trusts nothing unchecked."""

    def __init__(self, path: Path, zf: zipfile.ZipFile) -> None:
        self.path, self.zf = path, zf
        names = [info.filename for info in zf.infolist()]
        if len(set(names)) != len(names):
            self.fail("lists an entry twice")
        self.members = {info.filename: info for info in zf.infolist()}
        self.size = path.stat().st_size
        if f"{_META}.npy" not in self.members:
            raise CheckpointError(f"{path} is not a gpu_backprop checkpoint (an .npz without its metadata); {_WHICH}")

    def fail(self, what: str) -> NoReturn:
        raise CheckpointError(f"checkpoint {self.path} {what}; resume from another checkpoint or start afresh")

    def read(self, net: Sequential | None, optimizer: Optimizer | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta = self.metadata()
        arrays_meta = meta.get("arrays")  # absent in format 1
        manifest = arrays_meta if arrays_meta is not None else self.headers()
        names = [n[:-len(".npy")] for n in self.members if n.endswith(".npy") and n != f"{_META}.npy"]
        unexpected = sorted(set(names) - set(manifest)) + sorted(n for n in self.members if not n.endswith(".npy"))
        if unexpected:
            self.fail(f"holds entries its manifest does not list ({', '.join(unexpected[:5])})")
        absent = sorted(set(manifest) - set(names))
        if absent:
            self.fail(f"lacks the entries its manifest lists ({', '.join(absent[:5])})")
        if net is not None:
            _check_fits(self.path, meta, manifest, net, optimizer)
        wanted = [k for k in manifest if net is None or k.startswith("model/")
                  or (optimizer is not None and k.startswith("optim/"))]
        if arrays_meta is None:  # format 1: one checksum over every array; read them all to check it
            wanted = list(manifest)
        arrays = {k: self.array(k, manifest[k]) for k in wanted}
        if arrays_meta is None and _digest_1(arrays) != meta["sha256"]:
            self.fail("fails its checksum (the file was altered or damaged)")
        return meta, arrays

    # --- metadata ----------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        info = self.members[f"{_META}.npy"]
        if info.file_size > MAX_META_BYTES + 1024:
            self.fail(f"has {info.file_size:,} bytes of metadata, more than the {MAX_META_BYTES:,} accepted")
        raw = self.array(_META, {"dtype": "|u1", "shape": None})
        try:
            meta = json.loads(raw.tobytes().decode())
        except RecursionError:
            self.fail(f"has metadata nested deeper than {MAX_DEPTH} levels")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self.fail(f"has unreadable metadata ({exc})")
        _check_depth(meta, self.fail)
        if not isinstance(meta, dict):
            self.fail("has metadata that is not a JSON object")
        fmt = meta.get("format")
        if fmt not in (FORMAT, FORMAT_2, FORMAT_1):
            raise CheckpointError(f"{self.path} has format {fmt!r}; this version reads {FORMAT!r} and the two "
                                  "before it")
        digest = meta.get("sha256")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            self.fail("has no valid checksum in its metadata")
        if fmt != FORMAT_1:
            body = {k: v for k, v in meta.items() if k != "sha256"}
            if hashlib.sha256(_canonical(body)).hexdigest() != digest:
                self.fail("fails its checksum (the file was altered or damaged)")
        _check_structure(meta, fmt, self.fail)
        return meta

    # --- arrays --------------------------------------------------------------------------
    def headers(self) -> dict[str, dict[str, Any]]:
        """A manifest read from the ``.npy`` headers (format 1 has none in its metadata)."""
        out = {}
        for name, info in self.members.items():
            if name.endswith(".npy") and name != f"{_META}.npy":
                with self.zf.open(info) as f:
                    shape, dtype, _ = self.header(f, name)
                out[name[:-len(".npy")]] = {"dtype": dtype.str, "shape": list(shape)}
        return out

    def header(self, f: Any, name: str) -> tuple[tuple[int, ...], np.dtype, bool]:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(f, max_header_size=10_000)
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(f, max_header_size=10_000)
        else:
            self.fail(f"has an entry {name} in .npy version {version}, which this version does not read")
        if any(d < 0 for d in shape):
            self.fail(f"has an entry {name} of shape {shape}")
        if dtype.hasobject or dtype.str not in (*_ARRAY_DTYPES, "|u1"):
            self.fail(f"has an entry {name} of dtype {dtype}; checkpoints hold float32, float64 and int64 arrays")
        return shape, dtype, fortran

    def array(self, key: str, expected: dict[str, Any]) -> np.ndarray:
        """One array, its header checked against ``expected`` before its data is read."""
        name = f"{key}.npy"
        info = self.members[name]
        if info.compress_type != zipfile.ZIP_STORED:
            self.fail(f"has a compressed entry {name}; gpu_backprop writes (and reads) checkpoints uncompressed")
        if info.file_size != info.compress_size or info.header_offset + info.compress_size > self.size:
            self.fail(f"lists an entry {name} larger than the file itself")
        with self.zf.open(info) as f:
            shape, dtype, fortran = self.header(f, name)
            if dtype.str != expected["dtype"] or (expected["shape"] is not None and list(shape) != expected["shape"]):
                self.fail(f"has an entry {key} of dtype {dtype.str} and shape {list(shape)}, where its manifest says "
                          f"{expected['dtype']} {expected['shape']}")
            nbytes = math.prod(shape) * dtype.itemsize
            if f.tell() + nbytes != info.file_size:
                self.fail(f"has an entry {key} whose header promises {nbytes:,} bytes of data, not what it holds")
            out = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
            flat = out.reshape(-1, order="A").view(np.uint8)  # its memory, in the order the data comes in
            got = 0
            while got < nbytes:
                chunk = f.read(min(nbytes - got, 1 << 24))
                if not chunk:
                    self.fail(f"is truncated in its entry {key}")
                flat[got:got + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
                got += len(chunk)
        if "sha256" in expected and _sha256(out) != expected["sha256"]:
            self.fail(f"fails its checksum in the entry {key} (the file was altered or damaged)")
        return np.asarray(out, order="C")


def _digest_1(arrays: dict[str, np.ndarray]) -> str:
    """Format 1's checksum: every array's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])  # (which makes a 0-d array 1-d: part of that format)
        h.update(key.encode())
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------
# The metadata's structure, checked before any of it is used
# --------------------------------------------------------------------------
def _check_depth(value: Any, fail: Callable[[str], NoReturn]) -> None:
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_DEPTH:
            fail(f"has metadata nested deeper than {MAX_DEPTH} levels")
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)


def _check_structure(meta: dict[str, Any], fmt: str, fail: Callable[[str], NoReturn]) -> None:
    """Every metadata field this module reads has the type it needs (else ``fail`` with its name)."""
    config = meta.get("config")
    if not isinstance(config, dict):
        fail("has no network config in its metadata")
    if not (is_int(config.get("input_dim")) and config["input_dim"] > 0):
        fail("has a config whose input_dim is not a positive integer")
    layers = config.get("layers")
    if not isinstance(layers, list) or not layers or not all(
            isinstance(s, dict) and isinstance(s.get("type"), str)
            and all(isinstance(v, (str, int, float, bool)) or v is None for v in s.values()) for s in layers):
        fail("has a config whose layers are not a list of layer descriptions")
    if not isinstance(config.get("loss"), str) or config.get("dtype") not in DTYPES:
        fail("has a config without a loss name or a dtype (float32 or float64)")
    opt = meta.get("optimizer")
    if not isinstance(opt, dict):
        fail("has no optimizer entry in its metadata")
    if opt:
        if not isinstance(opt.get("name"), str) or not (is_int(opt.get("steps")) and opt["steps"] >= 0):
            fail("has an optimizer entry without a name and a step count")
        hyper = opt.get("hyper", {})
        if not isinstance(hyper, dict) or not all(isinstance(v, bool) or (is_number(v) and math.isfinite(v))
                                                  for v in hyper.values()):
            fail("has optimizer hyper-parameters that are not finite numbers or true/false")
    if not isinstance(meta.get("state"), dict):
        fail("has no training state object in its metadata")
    if fmt != FORMAT_1:
        arrays = meta.get("arrays")
        if not isinstance(arrays, dict) or not all(
                isinstance(k, str) and re.fullmatch(r"(model|optim)/[A-Za-z0-9_.]{1,200}", k) and isinstance(e, dict)
                and e.get("dtype") in _ARRAY_DTYPES and isinstance(e.get("sha256"), str)
                and isinstance(e.get("shape"), list) and len(e["shape"]) <= 8
                and all(is_int(d) and d >= 0 for d in e["shape"]) for k, e in arrays.items()):
            fail("has an array manifest that is not a list of names, dtypes, shapes and checksums")


# --------------------------------------------------------------------------
# Does it fit this network and optimiser?
# --------------------------------------------------------------------------
def _check_fits(path: Path, meta: dict[str, Any], manifest: dict[str, Any], net: Sequential,
                optimizer: Optimizer | None) -> None:
    saved, ours = _with_defaults(meta["config"]), net.config()
    if meta["format"] != FORMAT:  # older files named a layer of the user's own kind by its built-in base
        for spec, layer in zip(ours["layers"], net.layers):
            spec["type"] = _named_in_format_2(layer) or spec["type"]
    if saved != ours:
        raise CheckpointError(
            f"checkpoint {path} was saved from a different network: {_summary(saved)}; "
            f"this one is {_summary(ours)}"
        )
    spec = net.state_spec()
    model = {k[len("model/"):]: e for k, e in manifest.items() if k.startswith("model/")}
    missing = sorted(k for k, e in spec.items() if e.required and k not in model)
    unexpected = sorted(k for k in model if k not in spec)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not fit this network"
                              + (f": it lacks {', '.join(missing[:5])}" if missing else "")
                              + (f": it holds {', '.join(unexpected[:5])}, which this network has not" if unexpected
                                 else ""))
    for k, e in model.items():
        if e["shape"] != list(spec[k].shape) or np.dtype(e["dtype"]) != spec[k].dtype:
            raise CheckpointError(f"checkpoint {path} holds {k} as {e['dtype']} {e['shape']}; "
                                  f"this network needs {spec[k].dtype} {list(spec[k].shape)}")
    if optimizer is None:
        return
    opt_meta = meta["optimizer"]
    if not opt_meta:
        raise CheckpointError(f"checkpoint {path} holds no optimiser state; pass optimizer=None to load the "
                              "network alone")
    if opt_meta["name"] != optimizer.name:
        raise CheckpointError(
            f"checkpoint {path} holds {opt_meta['name']!r} optimiser state, not {optimizer.name!r}; "
            "use the same --optimizer as the saved run"
        )
    saved_hyper, our_hyper = opt_meta.get("hyper", {}), optimizer.hyper()
    for k in sorted(set(saved_hyper) | set(our_hyper)):
        if k == "lr" or saved_hyper.get(k) == our_hyper.get(k):
            continue
        if k not in our_hyper or k not in saved_hyper:
            raise CheckpointError(f"checkpoint {path} has an optimiser hyper-parameter {k!r} that "
                                  f"{'this optimizer lacks' if k not in our_hyper else 'is not saved'}")
        raise CheckpointError(
            f"the optimizer's {k} {our_hyper[k]!r} differs from the checkpoint's {saved_hyper[k]!r}; "
            f"build it with {k}={saved_hyper[k]!r} to continue the saved run, or start afresh without resuming"
        )
    buffers = {k: v for k, v in optimizer.state_dict().items() if isinstance(v, np.ndarray)}
    saved_buffers = {k[len("optim/"):]: e for k, e in manifest.items() if k.startswith("optim/")}
    if set(buffers) != set(saved_buffers):
        raise CheckpointError(f"checkpoint {path} holds optimiser buffers {sorted(saved_buffers) or 'none'}; this "
                              f"{type(optimizer).__name__} keeps {sorted(buffers) or 'none'}")
    for k, buf in buffers.items():
        if saved_buffers[k]["shape"] != list(buf.shape) or np.dtype(saved_buffers[k]["dtype"]) != buf.dtype:
            raise CheckpointError(f"checkpoint {path} holds the optimiser's {k} as {saved_buffers[k]['dtype']} "
                                  f"{saved_buffers[k]['shape']}; this network needs {buf.dtype} {list(buf.shape)}")


def _summary(config: dict[str, Any]) -> str:
    parts = []
    for spec in config.get("layers", []):
        if spec.get("type") == "Dense":
            parts.append(f"Dense({spec.get('in_features')}→{spec.get('out_features')})")
        else:
            args = ", ".join(f"{k}={v!r}" for k, v in spec.items() if k != "type")
            parts.append(f"{spec.get('type', '?')}({args})" if args else str(spec.get("type", "?")))
    return f"[{', '.join(parts)}] {config.get('loss')} {config.get('dtype')}"


def _with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with each built-in layer's spec as that layer writes it now.

    Older checkpoints left out fields that had their constructor's default then
    (a BatchNorm's momentum and eps); rebuilding the layer fills them in.
    """
    def current(spec: dict[str, Any]) -> dict[str, Any]:
        try:
            return _layer_from_spec(spec).spec()
        except (TypeError, ValueError):  # not a built-in layer, or not one that can be built: as saved
            return spec
    return {**config, "layers": [current(s) for s in config.get("layers", [])]}


# --------------------------------------------------------------------------
# A network from its config
# --------------------------------------------------------------------------
def _layer_from_spec(spec: dict[str, Any]) -> Layer:
    kind = spec.get("type")
    if kind not in LAYER_TYPES:
        raise ValueError(f"layer type {kind!r} cannot be rebuilt from a config")
    return LAYER_TYPES[kind](**{k: v for k, v in spec.items() if k != "type"})


def network_from_config(config: dict[str, Any], backend: str | Backend | None = None, seed: int = 0) -> Sequential:
    """A new :class:`Sequential` from what :meth:`Sequential.config` returned (fresh weights drawn from ``seed``).

    Built-in layers only (Dense, the activations, BatchNorm, Dropout). A
    BatchNorm gets its saved momentum and eps (checkpoints older than these
    fields held the defaults).
    """
    try:
        layers = [_layer_from_spec(s) for s in config["layers"]]
        return Sequential(layers, loss=config["loss"], backend=backend, dtype=config["dtype"], seed=seed,
                          input_dim=config["input_dim"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"the network config cannot be rebuilt ({type(exc).__name__}: {exc}); build the "
                              "network yourself and use load_checkpoint") from None


def _parameter_count(config: dict[str, Any]) -> int:
    """How many numbers the network of ``config`` holds, worked out without building it."""
    d, total = config["input_dim"], 0
    for spec in config["layers"]:
        if spec.get("type") == "Dense":
            d_in, d = spec.get("in_features"), spec.get("out_features")
            if not (is_int(d_in) and is_int(d)):
                return -1
            total += d_in * d + d
        elif spec.get("type") == "BatchNorm":
            total += 4 * d
    return total


def load_model(path: str | os.PathLike[str], backend: str | Backend | None = None) -> Sequential:
    """The network saved in a checkpoint, rebuilt from its config with its weights: ready to ``predict``.

    ``backend`` as for :class:`Sequential` (default: ``"auto"``). The optimiser
    state is not read. Layers must be built-in ones (see :func:`network_from_config`).
    """
    with _opened(path) as reader:
        meta, size, path = reader.metadata(), reader.size, reader.path
    config = meta["config"]
    itemsize = np.dtype(config["dtype"]).itemsize
    if not 0 <= _parameter_count(config) * itemsize <= size:
        raise CheckpointError(f"checkpoint {path} describes a network larger than the file itself; "
                              "it is damaged or not a gpu_backprop checkpoint")
    net = network_from_config(config, get_backend(backend))
    load_checkpoint(path, net, None)
    return net


#: the arguments of fit that a resumed run must repeat, as (the saved state's key, fit's argument)
_RESUMED = (("seed", "seed"), ("base_lr", "the optimizer's lr"), ("batch_size", "batch_size"),
            ("schedule", "schedule"), ("max_grad_norm", "max_grad_norm"), ("validation_fraction", "validation_fraction"))


def check_resumable(path: Any, saved: dict[str, Any], run: dict[str, Any]) -> None:
    """Refuse to resume from ``saved`` (a checkpoint's training state) a run that differs from it.

    Resuming continues the saved run: the seed, the base learning rate, the
    batch size, the schedule, the clipping, the validation split and the number
    of training samples must be those it was saved with (``epochs`` may grow). Each difference is
    one sentence; so is a state that does not hold what fit wrote.
    """
    epoch = saved.get("epoch")
    if not (is_int(epoch) and epoch >= 0):
        raise CheckpointError(f"checkpoint {path} holds no epoch count; it was not written by fit")
    _check_history(path, saved.get("history", {}))
    samples = saved.get("samples")
    if samples is not None and samples != run["samples"]:
        raise CheckpointError(f"checkpoint {path} was trained on {samples:,} samples but the training data has "
                              f"{run['samples']:,}; resume on the same data set")
    for key, what in _RESUMED:
        if key not in saved or (key == "schedule" and None in (saved[key], run[key])):  # older file; a callable
            continue
        if saved[key] != run[key]:
            raise CheckpointError(
                f"{what} {run[key]!r} differs from the checkpoint's {saved[key]!r}; pass "
                f"{key.replace('base_lr', 'lr')}={saved[key]!r} to continue the saved run, or train afresh "
                "without resume"
            )


def _check_history(path: Any, h: Any) -> None:
    """A saved :class:`History` has the types :meth:`History.from_dict` needs."""
    ok = (isinstance(h, dict)
          and isinstance(h.get("epochs", []), list)
          and all(isinstance(e, dict) and all(is_number(v) for v in e.values()) for e in h.get("epochs", []))
          and isinstance(h.get("steps", []), list)
          and all(isinstance(p, list) and len(p) == 2 and all(is_number(v) for v in p) for p in h.get("steps", []))
          and (h.get("stopped_reason") is None or isinstance(h.get("stopped_reason"), str))
          and (h.get("best_epoch") is None or is_number(h.get("best_epoch"))))
    if not ok:
        raise CheckpointError(f"checkpoint {path} holds a training history that fit did not write")
