"""The bad-input suite: every way in, fed something wrong, gives one clear sentence and loses nothing.

Each case names the problem it feeds in, what must be raised (or, for the
command line, exit status 2 with one line on stderr and no traceback), and a
piece of the message that tells the user what is wrong or how to fix it.
After every case the network, the files and the directories are as before.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import gpu_backprop as gb
from gpu_backprop.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from gpu_backprop.data import DataError, load_dataset, read_idx, write_idx
from gpu_backprop.tools import cli

F32 = np.float32


class _FakeCupyArray:
    __module__ = "cupy._core.core"

    class device:  # noqa: N801
        id = 0


def _net() -> gb.MLP:
    return gb.MLP([6, 5, 3], backend="numpy", seed=0)


def _X(n: int = 4, d: int = 6, dtype: Any = F32) -> np.ndarray:
    return np.random.default_rng(0).random((n, d)).astype(dtype)


def _y(n: int = 4) -> np.ndarray:
    return np.arange(n) % 3


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _fit(X: Any, y: Any, **kw: Any) -> Callable[[], Any]:
    def run() -> Any:
        net = _net()
        return gb.fit(net, gb.SGD(net, lr=0.1), X, y, progress=False, **{"epochs": 1, "batch_size": 2, **kw})
    return run


API_CASES: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    ("images of the wrong size", lambda: _net().loss_and_grads(_X(d=8).reshape(4, 2, 4), _y()), ValueError,
     "8 features per sample"),
    ("X of rank 1", lambda: _net().loss_and_grads(_X()[0], _y(1)), ValueError, "one row per sample"),
    ("X too narrow", lambda: _net().loss_and_grads(_X(d=5), _y()), ValueError, "takes 6"),
    ("empty batch", lambda: _net().loss_and_grads(_X(n=0), _y(0)), ValueError, "empty"),
    ("integer X", lambda: _net().loss_and_grads(_X().astype(np.int64), _y()), TypeError, "float32/float64"),
    ("complex X", lambda: _net().loss_and_grads(_X().astype(np.complex64), _y()), TypeError, "complex"),
    ("complex data for fit", _fit(_X().astype(np.complex128), _y()), TypeError, "complex"),
    ("float16 X", lambda: _net().loss_and_grads(_X(dtype=np.float16), _y()), TypeError, "float16"),
    ("NaN in X", lambda: _net().loss_and_grads(np.full((4, 6), np.nan, F32), _y()), ValueError, "NaN"),
    ("Inf in X", lambda: _net().loss_and_grads(np.full((4, 6), -np.inf, F32), _y()), ValueError, "Inf"),
    ("label too large", lambda: _net().loss_and_grads(_X(), np.array([0, 1, 2, 3])), ValueError, "[0, 2]"),
    ("negative label", lambda: _net().loss_and_grads(_X(), np.array([0, -1, 2, 1])), ValueError, "from -1"),
    ("float labels", lambda: _net().loss_and_grads(_X(), _y().astype(F32)), TypeError, "integer class labels"),
    ("too few labels", lambda: _net().loss_and_grads(_X(), _y(3)), ValueError, "y has 3 rows"),
    ("targets of the wrong width", lambda: _net().loss_and_grads(_X(), np.zeros((4, 4))), ValueError, "(4, 3)"),
    ("NaN in targets", lambda: _net().loss_and_grads(_X(), np.full((4, 3), np.nan)), ValueError, "NaN"),
    ("string instead of X", lambda: _net().loss_and_grads("X", _y()), TypeError, "numeric array"),
    ("CuPy X for a NumPy network", lambda: _net().loss_and_grads(_FakeCupyArray(), _y()), TypeError,
     "X is a CuPy array"),
    ("unknown backend", lambda: gb.MLP([6, 3], backend="rocm"), ValueError, "unknown backend"),
    ("unknown activation", lambda: gb.MLP([6, 3], activation="gelu"), ValueError, "unknown activation"),
    ("unknown loss", lambda: gb.MLP([6, 3], loss="hinge"), ValueError, "unknown loss"),
    ("unknown optimiser", lambda: gb.optim.make_optimizer("lion", _net()), ValueError, "unknown optimizer"),
    ("unknown dataset", lambda: load_dataset("svhn"), ValueError, "unknown dataset"),
    ("zero learning rate", lambda: gb.SGD(_net(), lr=0.0), ValueError, "learning rate"),
    ("negative learning rate", lambda: gb.Adam(_net(), lr=-1e-3), ValueError, "learning rate"),
    ("batch size 0", _fit(_X(), _y(), batch_size=0), ValueError, "positive integer or 'full'"),
    ("batch larger than the data", _fit(_X(), _y(), batch_size=5), ValueError, "larger than the 4"),
    ("labels out of range in fit", _fit(_X(), np.array([0, 1, 2, 9])), ValueError, "from 0 to 9"),
    ("NaN in fit data", _fit(np.full((4, 6), np.nan, F32), _y()), ValueError, "NaN"),
    ("float16 fit data", _fit(_X(dtype=np.float16), _y()), TypeError, "uint8 images or float32"),
]


@pytest.mark.parametrize("name,call,error,fragment", API_CASES, ids=[c[0] for c in API_CASES])
def test_api(name: str, call: Callable[[], Any], error: type[Exception], fragment: str) -> None:
    with pytest.raises(error) as info:
        call()
    text = str(info.value)
    assert fragment in text and "\n" not in text, text


@pytest.mark.parametrize("make", [
    lambda X: X[:, ::2].repeat(2, axis=1),           # a non-contiguous view
    lambda X: _readonly(X.copy()),                   # a read-only array
    lambda X: np.asfortranarray(X),                  # column-major
], ids=["non-contiguous", "read-only", "fortran-order"])
def test_unusual_but_valid_layouts_work(make: Callable[[np.ndarray], np.ndarray]) -> None:
    X = _X()
    arr = make(X)
    net = _net()
    loss, _ = net.loss_and_grads(arr, _y())
    assert loss == pytest.approx(net.loss_and_grads(np.ascontiguousarray(arr), _y())[0])


def test_nothing_changes_when_an_input_is_refused() -> None:
    net = _net()
    opt = gb.SGD(net, lr=0.1, momentum=0.9)
    before = net.state_dict()
    bad = [(_X(d=5), _y()), (np.full((4, 6), np.nan, F32), _y()), (_X(), np.array([0, 1, 2, 7])),
           (_X(dtype=np.float16), _y()), (_X(n=0), _y(0))]
    for X, y in bad:
        with pytest.raises((ValueError, TypeError)):
            net.loss_and_grads(X, y)
        with pytest.raises((ValueError, TypeError)):
            gb.fit(net, opt, X, y, epochs=1, batch_size=1, progress=False)
    after = net.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert not np.any(opt.velocity)


# --------------------------------------------------------------------------
# The IDX reader
# --------------------------------------------------------------------------
def _header(kind: int, *dims: int, code: int = 0x08) -> bytes:
    """An IDX header: ``kind`` dimensions of sizes ``dims``, elements of type ``code`` (0x08 uint8, 0x0C int32)."""
    return struct.pack(">HBB", 0, code, kind) + struct.pack(f">{len(dims)}I", *dims)


READER_CASES = [
    ("truncated", _header(3, 2, 2, 2) + bytes(7), "truncated"),
    ("trailing bytes", _header(1, 3) + bytes(4), "trailing bytes"),
    ("wrong magic", b"\x12\x34\x56\x78" + bytes(8), "not an IDX file"),
    ("unknown type code", b"\x00\x00\x42\x01" + bytes(8), "not an IDX file"),
    ("empty file", b"", "too short"),
    ("header cut short", _header(3, 2)[:8], "truncated IDX header"),
]


@pytest.mark.parametrize("name,payload,fragment", READER_CASES, ids=[c[0] for c in READER_CASES])
def test_reader(tmp_path: Path, name: str, payload: bytes, fragment: str) -> None:
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=fragment) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_reader_bad_gzip(tmp_path: Path) -> None:
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(_header(1, 4) + bytes(4))[:-5])
    with pytest.raises(DataError, match="corrupt gzip"):
        read_idx(path)


def _idx_dir(root: Path, n_train_labels: int = 10) -> Path:
    rng = np.random.default_rng(0)
    write_idx(root / "train-images-idx3-ubyte", rng.integers(0, 255, (10, 4, 4), dtype=np.uint8))
    write_idx(root / "train-labels-idx1-ubyte", (np.arange(n_train_labels) % 3).astype(np.uint8))
    write_idx(root / "t10k-images-idx3-ubyte", rng.integers(0, 255, (4, 4, 4), dtype=np.uint8))
    write_idx(root / "t10k-labels-idx1-ubyte", (np.arange(4) % 3).astype(np.uint8))
    return root


def test_images_and_labels_of_different_counts(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="10 images but .* 9 labels"):
        load_dataset("idx", data_dir=_idx_dir(tmp_path, n_train_labels=9))


def test_a_stray_huge_label_is_a_damaged_file_not_a_huge_network(tmp_path: Path) -> None:
    root = _idx_dir(tmp_path)
    labels = (np.arange(10) % 3).astype(">i4")
    labels[7] = 2_147_483_647  # a damaged int32 labels file: 2**31 classes, a 72 GiB output layer
    (root / "train-labels-idx1-ubyte").write_bytes(_header(1, 10, code=0x0C) + labels.tobytes())
    with pytest.raises(DataError, match="holds the label 2,147,483,647, which would make a network of"):
        load_dataset("idx", data_dir=root)


# --------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------
def test_checkpoint_cases(tmp_path: Path) -> None:
    net = _net()
    path = save_checkpoint(tmp_path / "c.npz", net, gb.SGD(net, lr=0.1), {"epoch": 1})
    other = gb.MLP([6, 7, 3], backend="numpy")
    with pytest.raises(CheckpointError, match="different network"):
        load_checkpoint(path, other, None)
    blob = path.read_bytes()
    (tmp_path / "t.npz").write_bytes(blob[: len(blob) - 100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "t.npz", net, None)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.npz", net, None)


# --------------------------------------------------------------------------
# The command line: status 2, one line, no traceback, nothing half-written
# --------------------------------------------------------------------------
def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = cli.main(args)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def _cli_cases(tmp: Path) -> list[tuple[str, list[str], str]]:
    good = _idx_dir(tmp / "good")
    bad_magic = _idx_dir(tmp / "bad_magic")
    (bad_magic / "train-images-idx3-ubyte").write_bytes(b"GIF89a" + bytes(40))
    truncated = _idx_dir(tmp / "truncated")
    raw = (truncated / "t10k-images-idx3-ubyte").read_bytes()
    (truncated / "t10k-images-idx3-ubyte").write_bytes(raw[:-9])
    mismatch = _idx_dir(tmp / "mismatch", n_train_labels=8)
    other_arch = tmp / "other"
    assert cli.main(["train", "--dataset", "idx", "--data-dir", str(good), "--hidden", "7", "--epochs", "1",
                     "--batch-size", "5", "--no-progress", "--out", str(other_arch)]) == 0
    corrupt = tmp / "corrupt.npz"
    corrupt.write_bytes((other_arch / "checkpoint.npz").read_bytes()[:200])
    blocker = tmp / "a-file"
    blocker.write_text("not a directory")
    base = ["train", "--dataset", "idx", "--data-dir", str(good), "--epochs", "1", "--batch-size", "5",
            "--no-progress"]
    return [
        ("wrong magic", ["train", "--dataset", "idx", "--data-dir", str(bad_magic)], "not an IDX file"),
        ("truncated file", ["train", "--dataset", "idx", "--data-dir", str(truncated)], "truncated"),
        ("count mismatch", ["train", "--dataset", "idx", "--data-dir", str(mismatch)], "8 labels"),
        ("missing data dir", ["train", "--dataset", "idx", "--data-dir", str(tmp / "nope")], "does not exist"),
        # no --dataset: MNIST from the named directory, never the shipped sample in its place
        ("truncated file, default data set", ["train", "--data-dir", str(truncated)], "truncated"),
        ("missing data dir, default data set", ["train", "--data-dir", str(tmp / "nope")], "does not exist"),
        ("checkpoint of another architecture", [*base, "--hidden", "9", "--resume",
                                                str(other_arch / "checkpoint.npz")], "different network"),
        ("truncated checkpoint", [*base, "--hidden", "7", "--resume", str(corrupt)], "corrupt or truncated"),
        ("missing --resume file", [*base, "--resume", str(tmp / "none.npz")], "does not exist"),
        ("the --out directory given to --resume", [*base, "--hidden", "7", "--resume", str(other_arch)],
         f"is a directory; pass the checkpoint in it, --resume {other_arch / 'checkpoint.npz'}"),
        ("output dir that cannot be written", [*base, "--out", str(blocker / "sub")], "cannot write to --out"),
        ("batch size 0", [*base, "--batch-size", "0"], "at least 1"),
        ("batch size larger than the data", [*base, "--batch-size", "11"], "larger than the 9"),  # 1 held out
        ("a refusal once --out is made and locked", [*base, "--batch-size", "11", "--out", str(tmp / "new" / "sub")],
         "larger than the 9"),
        ("negative learning rate", [*base, "--lr", "-0.1"], "--lr must be a positive number"),
        ("non-numeric hidden sizes", [*base, "--hidden", "a,b"], "--hidden takes"),
        ("hidden sizes that are only commas", [*base, "--hidden", ",,,"], "--hidden takes"),
        ("an empty hidden size between two", [*base, "--hidden", "8,,8"], "--hidden takes"),
        ("momentum for Adam", [*base, "--optimizer", "adam", "--momentum", "0.5"], "--momentum has no effect"),
        ("TF32 for float64", [*base, "--dtype", "float64", "--tf32"], "--tf32 has no effect"),
        ("a data directory for the shipped sample", ["train", "--dataset", "mnist-sample", "--data-dir", str(good)],
         "--data-dir has no effect"),
        ("negative seed", [*base, "--seed", "-1"], "--seed must be an integer from 0"),
        ("validation fraction NaN", [*base, "--validation-fraction", "nan"], "--validation-fraction must be in"),
        ("negative validation fraction", [*base, "--validation-fraction", "-0.1"], "--validation-fraction must be"),
        ("patience without validation", [*base, "--patience", "2", "--validation-fraction", "0"],
         "--validation-fraction 0 holds out none: keep it above 0"),
        ("unknown initializer", [*base, "--init", "zeros"], "unknown initializer"),
        ("unknown backend", [*base, "--backend", "metal"], "invalid choice"),
        ("unknown dataset", ["train", "--dataset", "imagenet"], "invalid choice"),
        ("unknown preset", ["train", "--preset", "resnet"], "invalid choice"),
    ]


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = _cli_cases(tmp_path)
    capsys.readouterr()
    # with the bad gzip, the count mismatch, the stray huge label and the three checkpoint cases: the README's number
    tried = len(API_CASES) + len(READER_CASES) + 3 + 3 + len(cases)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"`tests/test_bad_input.py` tries {tried} such cases" in readme.replace("\n", " ")
    for name, args, fragment in cases:
        before = sorted(p for p in tmp_path.rglob("*"))
        code, err = _cli(args, capsys)
        assert code == 2, (name, err)
        assert fragment in err, (name, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (name, err)
        assert sorted(p for p in tmp_path.rglob("*")) == before, f"{name} left files behind"


def test_resume_with_a_contradicting_flag_is_one_line_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _idx_dir(tmp_path / "good")
    base = ["train", "--dataset", "idx", "--data-dir", str(good), "--hidden", "7", "--batch-size", "5",
            "--no-progress"]
    assert cli.main([*base, "--epochs", "1", "--momentum", "0", "--out", str(tmp_path / "run")]) == 0
    ckpt = tmp_path / "run" / "checkpoint.npz"
    capsys.readouterr()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for flags, fragment in ((["--momentum", "0.9"], "--momentum 0.9 differs from the checkpoint's 0.0"),
                            (["--lr", "0.5"], "--lr 0.5 differs from the checkpoint's 0.05"),
                            (["--seed", "2"], "--seed 2 differs from the checkpoint's 0")):
        code, err = _cli([*base, "--epochs", "2", *flags, "--resume", str(ckpt), "--out", str(tmp_path / "next")],
                         capsys)
        assert code == 2 and fragment in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
        assert not (tmp_path / "next").exists()


# --------------------------------------------------------------------------
# Appended: a training set of one class; complex numbers at the API
# --------------------------------------------------------------------------
def test_a_training_set_of_one_class_is_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """All labels 0: a one-output network whose softmax is always 1 would report accuracy by chance."""
    root = _idx_dir(tmp_path / "one")
    write_idx(root / "train-labels-idx1-ubyte", np.zeros(10, np.uint8))
    write_idx(root / "t10k-labels-idx1-ubyte", np.zeros(4, np.uint8))
    before = sorted(tmp_path.rglob("*"))
    code, err = _cli(["train", "--dataset", "idx", "--data-dir", str(root), "--epochs", "1", "--batch-size", "5",
                      "--no-progress", "--out", str(tmp_path / "run")], capsys)
    assert code == 2, err
    assert "are all 0" in err and "at least two classes" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert sorted(tmp_path.rglob("*")) == before


COMPLEX_CASES: list[tuple[str, Callable[[], Any]]] = [
    ("loss_and_grads X", lambda: _net().loss_and_grads(_X().astype(np.complex64) + 1j, _y())),
    ("predict X", lambda: _net().predict(_X().astype(np.complex128))),
    ("check_inputs targets", lambda: _net().check_inputs(_X(), np.zeros((4, 3), np.complex64))),
    ("fit X", _fit(_X().astype(np.complex64), _y())),
    ("fit validation X", _fit(_X(), _y(), validation=(_X().astype(np.complex64), _y()))),
    ("evaluate X", lambda: gb.evaluate(_net(), _X().astype(np.complex128), _y())),
]


@pytest.mark.parametrize("name,call", COMPLEX_CASES, ids=[c[0] for c in COMPLEX_CASES])
def test_complex_data_is_refused_not_cut_to_its_real_part(name: str, call: Callable[[], Any]) -> None:
    with pytest.raises(TypeError) as info:
        call()
    assert "complex" in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_float64_values_beyond_float32_are_one_sentence_not_an_inf_later() -> None:
    """1e300 is finite in float64 and infinite in float32: refused at the boundary, where the data is converted."""
    big = _X(dtype=np.float64)
    big[0, 0] = 1e300
    for call in (lambda: _net().loss_and_grads(big, _y()), _fit(big, _y()), lambda: _net().predict_proba(big),
                 lambda: gb.evaluate(_net(), big, _y())):
        with pytest.raises(ValueError, match=r"too large for float32 .*use dtype='float64'"):
            call()
    net64 = gb.MLP([6, 5, 3], backend="numpy", dtype="float64", seed=0)
    assert np.isfinite(net64.loss_and_grads(big, _y())[0])  # a float64 network takes them
