"""The IDX reader and the data sets: every file problem is a DataError naming the file."""

from __future__ import annotations

import gzip
import hashlib
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpu_backprop import data
from gpu_backprop.data import DataError, load_dataset, parse_idx, read_idx, write_idx


def _write_set(directory: Path, n_train: int = 12, n_test: int = 5, classes: int = 4, gz: bool = True,
               seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    ext = ".gz" if gz else ""
    write_idx(directory / f"train-images-idx3-ubyte{ext}", rng.integers(0, 256, (n_train, 6, 5), dtype=np.uint8))
    write_idx(directory / f"train-labels-idx1-ubyte{ext}", (np.arange(n_train) % classes).astype(np.uint8))
    write_idx(directory / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 6, 5), dtype=np.uint8))
    write_idx(directory / "t10k-labels-idx1-ubyte", (np.arange(n_test) % classes).astype(np.uint8))


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_round_trip(tmp_path: Path, name: str) -> None:
    a = np.random.default_rng(1).integers(0, 256, (7, 4, 3), dtype=np.uint8)
    write_idx(tmp_path / name, a)
    np.testing.assert_array_equal(read_idx(tmp_path / name), a)
    assert list(tmp_path.iterdir()) == [tmp_path / name]  # no temporary file left behind


@pytest.mark.parametrize("payload,match", [
    (b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 2, 2) + bytes(5), "truncated"),
    (b"\x00\x00\x08\x01" + struct.pack(">I", 3) + bytes(4), "trailing bytes"),
    (b"\x00\x00\x08\x03" + bytes(3), "truncated IDX header"),
    (b"PK\x03\x04" + bytes(20), "not an IDX file"),
    (b"\x00\x00\x42\x01" + bytes(8), "not an IDX file"),
    (b"\x00", "too short"),
])
def test_bad_files_name_the_file(tmp_path: Path, payload: bytes, match: str) -> None:
    p = tmp_path / "train-labels-idx1-ubyte"
    p.write_bytes(payload)
    with pytest.raises(DataError, match=match) as info:
        read_idx(p)
    assert str(p) in str(info.value)


def test_corrupt_gzip(tmp_path: Path) -> None:
    p = tmp_path / "x.gz"
    p.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 4) + bytes(4))[:-6])
    with pytest.raises(DataError, match=r"x.gz: corrupt gzip"):
        read_idx(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot be read"):
        read_idx(tmp_path / "nope")


def test_idx_directory_with_mixed_gz_and_raw(tmp_path: Path) -> None:
    _write_set(tmp_path, classes=4)
    ds = load_dataset("idx", data_dir=tmp_path)
    assert ds.x_train.shape == (12, 6, 5) and ds.x_train.dtype == np.uint8
    assert ds.y_train.dtype == np.int64 and ds.num_classes == 4
    assert ds.x_test.shape == (5, 6, 5)


def test_images_and_labels_of_different_counts(tmp_path: Path) -> None:
    _write_set(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(11, np.uint8))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz holds 12 images but .*train-labels"):
        load_dataset("idx", data_dir=tmp_path)


def test_idx_needs_a_directory_and_names_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("idx")
    with pytest.raises(DataError, match="lacks train-images-idx3-ubyte"):
        load_dataset("idx", data_dir=tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("idx", data_dir=tmp_path / "missing")


def test_unknown_dataset() -> None:
    with pytest.raises(ValueError, match="choose one of mnist, fashion-mnist, mnist-sample, idx"):
        load_dataset("cifar10")


def test_mnist_sample_is_shipped_stratified_and_real() -> None:
    ds = load_dataset("mnist-sample")
    assert ds.x_train.shape == (8000, 28, 28) and ds.x_test.shape == (2000, 28, 28)
    assert ds.x_train.dtype == np.uint8 and ds.num_classes == 10
    tr, te = np.bincount(ds.y_train, minlength=10), np.bincount(ds.y_test, minlength=10)
    assert np.all(np.abs(te - 0.2 * (tr + te)) <= 1)
    assert 25 < ds.x_train.mean() < 45 and ds.x_train.max() == 255  # MNIST's ink, not noise


def test_cache_dir_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPU_BACKPROP_DATA", str(tmp_path))
    assert data.default_cache_dir() == tmp_path
    _write_set(tmp_path / "mnist")
    assert load_dataset("mnist", download=False).source == str(tmp_path / "mnist")


def test_fashion_mnist_found_where_debian_puts_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPU_BACKPROP_DATA", str(tmp_path / "empty-cache"))
    monkeypatch.setitem(data.SYSTEM_DIRS, "fashion-mnist", tmp_path / "system")
    _write_set(tmp_path / "system")
    assert load_dataset("fashion-mnist", download=False).source == str(tmp_path / "system")


def _fake_sources(monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes], digests: dict[str, str]) -> None:
    monkeypatch.setitem(data.SOURCES, "mnist", {"mirrors": ("https://mirror.invalid/",), "md5": digests})


def test_download_verifies_checksums_and_writes_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _write_set(src)
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (src / f"{stem}.gz").write_bytes(gzip.compress((src / stem).read_bytes()))
    blobs = {p.name: p.read_bytes() for p in src.glob("*.gz")}
    digests = {k: hashlib.md5(v).hexdigest() for k, v in blobs.items()}
    _fake_sources(monkeypatch, blobs, digests)
    monkeypatch.setenv("GPU_BACKPROP_DATA", str(tmp_path / "cache"))
    ds = load_dataset("mnist", fetch=lambda url: blobs[url.rsplit("/", 1)[1]])
    assert ds.x_train.shape == (12, 6, 5) and "downloaded" in ds.source
    assert sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir()) == sorted(blobs)


def test_bad_checksum_deletes_the_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_sources(monkeypatch, {}, {"train-images-idx3-ubyte.gz": "0" * 32})
    monkeypatch.setenv("GPU_BACKPROP_DATA", str(tmp_path))
    with pytest.raises(DataError, match="checksum mismatch .* the download was deleted"):
        load_dataset("mnist", fetch=lambda url: b"not the file")
    assert list((tmp_path / "mnist").iterdir()) == []


def test_offline_with_nothing_found_lists_the_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPU_BACKPROP_DATA", str(tmp_path))
    monkeypatch.setitem(data.SYSTEM_DIRS, "fashion-mnist", tmp_path / "none")

    def offline(url: str) -> bytes:
        raise urllib.error.URLError("no network")

    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", fetch=offline)
    text = str(info.value)
    for way in ("--data-dir", "GPU_BACKPROP_DATA", "apt-get install dataset-fashion-mnist", "mnist-sample"):
        assert way in text
    with pytest.raises(DataError, match="not found locally"):
        load_dataset("mnist", download=False)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | st.builds(
    lambda dims, body: b"\x00\x00\x08" + bytes([len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + body,
    st.lists(st.integers(0, 4), min_size=1, max_size=4), st.binary(max_size=80)))
def test_arbitrary_bytes_parse_exactly_or_raise_data_error(blob: bytes) -> None:
    try:
        arr = parse_idx(blob)
    except DataError as exc:
        assert "\n" not in str(exc)
        return
    ndim = blob[3]
    header = 4 + 4 * ndim
    assert arr.size * arr.dtype.itemsize == len(blob) - header  # every byte accounted for, none beyond
    assert arr.tobytes() == blob[header:]


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").exists(),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_from_debian() -> None:
    ds = load_dataset("fashion-mnist", data_dir=FASHION)
    assert ds.x_train.shape == (60000, 28, 28) and ds.x_test.shape == (10000, 28, 28)
    assert ds.num_classes == 10 and np.all(np.bincount(ds.y_train) == 6000)
