"""Saving and loading: temporary files, file modes, resuming the same run, hostile checkpoints, pickling, export.

Each group names the defect it guards against; every test here failed on the
code before these fixes (see the commit that added this file).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import multiprocessing
import os
import pickle
import re
import socket
import struct
import subprocess
import sys
import threading
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _custom_layers import Shifted

import gpu_backprop as gb
from gpu_backprop import backend, data
from gpu_backprop._io import LOCK_NAME, atomic_write_bytes, lock_directory
from gpu_backprop.checkpoint import (
    FORMAT,
    CheckpointError,
    checkpoint_metadata,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from gpu_backprop.data import load_dataset, write_idx
from gpu_backprop.tools import cli

ROOT = Path(__file__).resolve().parent.parent


def _toy(n: int = 40, d: int = 6, c: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, c, n)


def _net(**kw: Any) -> gb.MLP:
    return gb.MLP([6, 8, 3], backend="numpy", seed=1, **kw)


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(args)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str) -> None:
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


# ==========================================================================
# 1. Temporary files: a process deletes only its own
# ==========================================================================
def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:48]


def test_a_save_leaves_other_processes_and_users_temporary_files_alone(tmp_path: Path) -> None:
    net = _net()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        others = [
            f".checkpoint.npz.gbtmp.{_host()}.{sleeper.pid}.0123456789ab.tmp",  # another run, writing right now
            ".checkpoint.npz.abc123.tmp",  # an older version's (or anyone's) temporary name
            ".checkpoint.notes.tmp",  # the user's own file
        ]
        for name in others:
            (tmp_path / name).write_text("mine")
        save_checkpoint(tmp_path / "checkpoint.npz", net, None, {"epoch": 0})
        for name in others:
            assert (tmp_path / name).read_text() == "mine", f"{name} was deleted"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_temporary_file_of_a_killed_process_is_removed_by_the_next_save(tmp_path: Path) -> None:
    stale = tmp_path / f".checkpoint.npz.gbtmp.{_host()}.{_dead_pid()}.0123456789ab.tmp"
    stale.write_bytes(b"half a checkpoint")
    save_checkpoint(tmp_path / "checkpoint.npz", _net(), None, {"epoch": 0})
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "checkpoint.npz"]


_SAVER = """
import sys, time
import numpy as np
sys.path.insert(0, {root!r})
import gpu_backprop as gb
from gpu_backprop.checkpoint import save_checkpoint
net = gb.MLP([64, 256, 10], backend="numpy", seed=0)
end = time.monotonic() + 2.0
while time.monotonic() < end:
    save_checkpoint({path!r}, net, None, {{"epoch": 0}})
"""


def test_two_processes_checkpointing_into_one_directory_both_finish(tmp_path: Path) -> None:
    code = _SAVER.format(root=str(ROOT), path=str(tmp_path / "checkpoint.npz"))
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE) for _ in range(2)]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    read_checkpoint(tmp_path / "checkpoint.npz")
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_second_run_into_the_same_out_directory_is_refused_up_front(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    with lock_directory(out):  # as a first run holds it while it trains
        code, _, err = _run(["train", "--dataset", "mnist-sample", "--hidden", "8", "--epochs", "1",
                             "--no-progress", "--out", str(out)], capsys)
    assert code == 2 and "--out" in err and "in use by another run" in err, err
    _one_line(err)
    assert not (out / "checkpoint.npz").exists()


def test_a_refused_run_never_removes_the_directory_and_lock_of_the_run_that_holds_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Both runs found --out missing and the other one locked it first: the refused run's clean-up leaves it."""
    out = tmp_path / "new" / "run"
    first_run = contextlib.ExitStack()
    check_out_dir = cli._check_out_dir

    def then_the_other_run_locks_it(path: str) -> tuple[Path, bool]:
        made = check_out_dir(path)
        first_run.enter_context(lock_directory(out, remove_when_alone=True))
        return made

    monkeypatch.setattr(cli, "_check_out_dir", then_the_other_run_locks_it)
    with first_run:
        code, _, err = _run(["train", "--dataset", "mnist-sample", "--hidden", "8", "--epochs", "1",
                             "--no-progress", "--out", str(out)], capsys)
        assert code == 2 and "in use by another run" in err, err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # still there, still locked
    assert out.is_dir() and not (out / LOCK_NAME).exists()  # the holder, alone in it, took its lock file with it


def test_a_full_disk_names_the_file_and_leaves_the_old_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from gpu_backprop import _io

    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")  # as a write that ran out of room: no file name attached

    monkeypatch.setattr(_io.os, "fsync", full)
    with pytest.raises(OSError) as info:
        atomic_write_bytes(target, b"new")
    assert info.value.filename == str(target) and target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]  # no temporary file left
    code, _, err = _run(["train", "--dataset", "mnist-sample", "--hidden", "8", "--epochs", "1", "--no-progress",
                         "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and err.strip() == (f"error: no space left on the device ({tmp_path / 'run' / 'checkpoint.npz'}); "
                                         "free some space or choose another --out (what was written is intact)"), err


# ==========================================================================
# 5. Files get the mode a plain open() gives them
# ==========================================================================
@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_mode_open_would_give(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "f.bin", b"x")
        save_checkpoint(tmp_path / "c.npz", _net(), None, {"epoch": 0})
        write_idx(tmp_path / "labels-idx1-ubyte", np.arange(3, dtype=np.uint8))
    finally:
        os.umask(old)
    for name in ("f.bin", "c.npz", "c.json", "labels-idx1-ubyte"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_replacing_a_file_keeps_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    target.chmod(0o640)
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o640


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_a_downloaded_data_set_is_readable_by_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    for stem, array in zip(stems, (rng.integers(0, 256, (6, 4, 4), dtype=np.uint8), np.arange(6, dtype=np.uint8) % 3,
                                   rng.integers(0, 256, (3, 4, 4), dtype=np.uint8), np.arange(3, dtype=np.uint8))):
        write_idx(src / f"{stem}.gz", array)
    blobs = {f"{s}.gz": (src / f"{s}.gz").read_bytes() for s in stems}
    monkeypatch.setenv("GPU_BACKPROP_DATA", str(tmp_path / "cache"))
    monkeypatch.setitem(data.MIRRORS, "mnist", ("https://one.invalid/mnist/",))
    monkeypatch.setitem(data.CHECKSUMS, "mnist", {n: (len(b), (("sha256", hashlib.sha256(b).hexdigest()),))
                                                  for n, b in blobs.items()})
    old = os.umask(0o022)
    try:
        load_dataset("mnist", fetch=lambda url: io.BytesIO(blobs[url.rsplit("/", 1)[1]]))
    finally:
        os.umask(old)
    files = list((tmp_path / "cache" / "mnist").iterdir())
    assert len(files) == 4 and all(p.stat().st_mode & 0o777 == 0o644 for p in files)


# ==========================================================================
# 2. Resuming continues the saved run; a contradicting setting is one sentence
# ==========================================================================
QUICK = ["train", "--dataset", "mnist-sample", "--hidden", "8", "--batch-size", "500", "--no-progress"]


@pytest.fixture(scope="module")
def saved_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two one-epoch runs of a planned three: one without momentum, one with momentum 0.9, lr 0.1, seed 3."""
    root = tmp_path_factory.mktemp("runs")
    ds = load_dataset("mnist-sample")
    runs = {}
    for name, momentum in (("plain", 0.0), ("momentum", 0.9)):
        net = gb.MLP([784, 8, 10], seed=3, backend="numpy")
        opt = gb.SGD(net, lr=0.1, momentum=momentum)
        gb.fit(net, opt, ds.x_train, ds.y_train, epochs=3, batch_size=500, seed=3, progress=False,
               checkpoint=root / name / "checkpoint.npz", callbacks=[lambda record: True])  # stops after epoch 1
        runs[name] = root / name / "checkpoint.npz"
    return runs


@pytest.mark.parametrize("run,flags,fragment", [
    ("plain", ["--momentum", "0.9"], "--momentum 0.9 differs from the checkpoint's 0.0"),
    ("momentum", ["--momentum", "0"], "--momentum 0.0 differs from the checkpoint's 0.9"),
    ("momentum", ["--lr", "0.05"], "--lr 0.05 differs from the checkpoint's 0.1"),
    ("momentum", ["--seed", "0"], "--seed 0 differs from the checkpoint's 3"),
    ("momentum", ["--nesterov"], "--nesterov on differs from the checkpoint's off"),
    ("momentum", ["--batch-size", "100"], "--batch-size 100 differs from the checkpoint's 500"),
    ("momentum", ["--schedule", "cosine"], "--schedule cosine differs from the checkpoint's constant"),
    ("momentum", ["--optimizer", "adam"], "--optimizer adam differs from the checkpoint's sgd"),
    ("momentum", ["--hidden", "16"], "--hidden 16 asks for a different network than the checkpoint's (hidden 8)"),
    ("momentum", ["--dtype", "float64"], "--dtype float64 asks for a different network"),
    ("momentum", ["--preset", "quick"], "--preset quick"),
    ("momentum", ["--epochs", "1"], "the checkpoint has done 1 epoch and --epochs asks for 1, so there is nothing"),
    ("momentum", ["--patience", "2"], "the saved run holds out no validation data: drop --patience"),
    ("momentum", ["--optimizer", "sgd", "--tf32", "--dtype", "float64"], "--dtype float64 asks for a different"),
])
def test_a_flag_that_contradicts_the_checkpoint_is_one_sentence(saved_runs: dict[str, Path], run: str,
                                                                 flags: list[str], fragment: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    before = saved_runs[run].read_bytes()
    args = [a for a in QUICK if a not in ("--batch-size", "500", "--hidden", "8")]
    code, _, err = _run([*args, *flags, "--resume", str(saved_runs[run])], capsys)
    assert code == 2 and fragment in err, err
    _one_line(err)
    assert saved_runs[run].read_bytes() == before


def test_resuming_continues_the_saved_run_and_says_so(saved_runs: dict[str, Path],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(["train", "--dataset", "mnist-sample", "--no-progress", "--json",
                           "--resume", str(saved_runs["momentum"])], capsys)
    assert code == 0, err
    header = err.splitlines()[1]  # (with --json the lines for people go to stderr)
    # the saved settings, not the defaults (lr 0.05, batch 128, 5 epochs, seed 0, 256,256)
    assert "network 784-8-10 relu" in header and "sgd lr 0.1 momentum 0.9," in header, header
    assert "batch 500, 3 epochs, seed 3" in header, header
    assert f"resumed from {saved_runs['momentum']} at epoch 1" in header, header
    assert json.loads(out.splitlines()[-1])["epochs"] == 3


def test_resuming_with_the_same_flags_given_explicitly_is_fine(saved_runs: dict[str, Path],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run([*QUICK, "--lr", "0.1", "--momentum", "0.9", "--seed", "3", "--epochs", "2",
                           "--schedule", "constant", "--json", "--resume", str(saved_runs["momentum"])], capsys)
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["epochs"] == 2


def _fit_args() -> dict[str, Any]:
    return {"epochs": 3, "batch_size": 10, "seed": 4, "progress": False}


@pytest.fixture
def api_checkpoint(tmp_path: Path) -> Path:
    X, y = _toy()
    net = _net()
    gb.fit(net, gb.SGD(net, lr=0.1, momentum=0.9), X, y, **_fit_args(), checkpoint=tmp_path / "c.npz",
           callbacks=[lambda record: True])
    return tmp_path / "c.npz"


@pytest.mark.parametrize("make_opt,fit_kw,fragment", [
    (lambda n: gb.SGD(n, lr=0.1), {}, "momentum 0.0 differs from the checkpoint's 0.9"),
    (lambda n: gb.SGD(n, lr=0.1, momentum=0.5), {}, "momentum 0.5 differs from the checkpoint's 0.9"),
    (lambda n: gb.SGD(n, lr=0.1, momentum=0.9, nesterov=True), {}, "nesterov True differs"),
    (lambda n: gb.SGD(n, lr=0.1, momentum=0.9, weight_decay=1e-4), {}, "weight_decay 0.0001 differs"),
    (lambda n: gb.SGD(n, lr=0.2, momentum=0.9), {}, "lr 0.2 differs from the checkpoint's 0.1"),
    (lambda n: gb.SGD(n, lr=0.1, momentum=0.9), {"seed": 5}, "seed 5 differs from the checkpoint's 4"),
    (lambda n: gb.SGD(n, lr=0.1, momentum=0.9), {"batch_size": 20}, "batch_size 20 differs"),
    (lambda n: gb.SGD(n, lr=0.1, momentum=0.9), {"schedule": "cosine"}, "schedule 'cosine' differs"),
    (lambda n: gb.SGD(n, lr=0.1, momentum=0.9), {"max_grad_norm": 1.0}, "max_grad_norm 1.0 differs"),
])
def test_fit_refuses_to_resume_a_different_run(api_checkpoint: Path, make_opt: Any, fit_kw: dict[str, Any],
                                               fragment: str) -> None:
    X, y = _toy()
    net = _net()
    opt = make_opt(net)
    before = net.flat_params.copy()
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        gb.fit(net, opt, X, y, **(_fit_args() | fit_kw), resume=api_checkpoint)
    np.testing.assert_array_equal(net.flat_params, before)  # nothing loaded
    assert opt.steps == 0


def test_fit_refuses_to_resume_on_other_data(api_checkpoint: Path) -> None:
    X, y = _toy(n=50)
    net = _net()
    with pytest.raises(ValueError, match="trained on 40 samples but the training data has 50"):
        gb.fit(net, gb.SGD(net, lr=0.1, momentum=0.9), X, y, **_fit_args(), resume=api_checkpoint)


def test_the_optimizer_state_cannot_set_arbitrary_attributes() -> None:
    net = _net()
    opt = gb.SGD(net, lr=0.1)
    state = opt.state_dict()
    state["hyper"] = {"lr": 0.1, "net": 0}
    with pytest.raises(ValueError, match="unknown hyper-parameter 'net'"):
        opt.load_state_dict(state)
    assert opt.net is net
    state["hyper"] = {"lr": 0.1, "momentum": 2.0}
    with pytest.raises(ValueError, match="momentum must be in"):
        opt.load_state_dict(state)
    assert opt.momentum == 0.0


def test_optimizer_buffers_missing_or_extra_are_one_sentence() -> None:
    net = _net()
    with_velocity = gb.SGD(net, lr=0.1, momentum=0.9).state_dict()
    plain = gb.SGD(net, lr=0.1)
    with pytest.raises(ValueError, match="holds velocity, which this SGD.*does not keep"):
        plain.load_state_dict(with_velocity)
    with pytest.raises(ValueError, match="lacks velocity, which this SGD.*needs"):
        gb.SGD(net, lr=0.1, momentum=0.9).load_state_dict(plain.state_dict())
    with pytest.raises(ValueError, match="has momentum 0.9, this optimizer 0; build it with momentum=0.9"):
        plain.load_state_dict({"name": "sgd", "steps": 0, "hyper": {"momentum": 0.9}})  # no velocity to use it
    assert plain.momentum == 0.0 and plain.velocity is None
    with pytest.raises(ValueError, match="has momentum 0, this optimizer 0.9"):
        gb.SGD(net, lr=0.1, momentum=0.9).load_state_dict(dict(with_velocity, hyper={"momentum": 0.0}))
    huge = dict(with_velocity, velocity=np.full(net.flat_params.shape, 1e300))
    with pytest.raises(ValueError, match="velocity contains NaN or Inf in float32"):
        gb.SGD(net, lr=0.1, momentum=0.9).load_state_dict(huge)


def test_a_batchnorm_network_resumes_bit_for_bit(tmp_path: Path) -> None:
    X, y = _toy()

    def new() -> tuple[gb.MLP, gb.SGD]:
        net = _net(batchnorm=True, dropout=0.1)
        return net, gb.SGD(net, lr=0.05, momentum=0.9)

    straight, opt = new()
    gb.fit(straight, opt, X, y, **_fit_args())
    first, opt1 = new()
    gb.fit(first, opt1, X, y, **_fit_args(), checkpoint=tmp_path / "c.npz", callbacks=[lambda record: True])
    resumed, opt2 = new()  # fresh: its BatchNorm has no running statistics yet
    gb.fit(resumed, opt2, X, y, **_fit_args(), resume=tmp_path / "c.npz")
    np.testing.assert_array_equal(resumed.flat_params, straight.flat_params)


# ==========================================================================
# 3. Hostile or broken checkpoints: checked before they are trusted
# ==========================================================================
def _canonical_digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _rewrite(src: Path, dst: Path, edit_meta: Any = None, members: dict[str, bytes] | None = None,
             resign: bool = True) -> Path:
    """Copy a checkpoint, editing its metadata (then re-signing it, unless told not to) and members."""
    with zipfile.ZipFile(src) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    raw = np.lib.format.read_array(io.BytesIO(entries["__meta__.npy"]))
    meta = json.loads(raw.tobytes())
    if edit_meta is not None:
        meta = edit_meta(meta)
        if resign and isinstance(meta, dict) and "sha256" in meta:
            meta["sha256"] = _canonical_digest({k: v for k, v in meta.items() if k != "sha256"})
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    entries["__meta__.npy"] = buf.getvalue()
    entries.update(members or {})
    with zipfile.ZipFile(dst, "w") as z:
        for name, blob in entries.items():
            z.writestr(name, blob)
    return dst


@pytest.fixture
def good(tmp_path: Path) -> Path:
    net = _net()
    return save_checkpoint(tmp_path / "good.npz", net, gb.SGD(net, lr=0.1, momentum=0.9), {"epoch": 1})


def _npy_header_only(shape: tuple[int, ...], dtype: str = "<f8") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + bytes(64)


def test_a_huge_array_header_is_refused_before_anything_is_allocated(good: Path, tmp_path: Path) -> None:
    # 20000 x 20000 float64 promised (3.2 GB), 64 bytes there: the reader must not allocate first
    bad = _rewrite(good, tmp_path / "bad.npz", members={"model/layers.0.W.npy": _npy_header_only((20000, 20000))})
    net = _net()
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(bad, net, gb.SGD(net, lr=0.1, momentum=0.9))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"{peak / 2**20:.0f} MiB allocated while reading a 1 MB file"
    assert "layers.0.W" in str(info.value)


def test_metadata_is_covered_by_the_checksum(good: Path, tmp_path: Path) -> None:
    def later(meta: dict[str, Any]) -> dict[str, Any]:
        meta["state"]["epoch"] = 7
        return meta
    bad = _rewrite(good, tmp_path / "bad.npz", later, resign=False)
    net = _net()
    with pytest.raises(CheckpointError, match="fails its checksum"):
        load_checkpoint(bad, net, gb.SGD(net, lr=0.1, momentum=0.9))


def _nested(depth: int) -> Any:
    v: Any = 0
    for _ in range(depth):
        v = [v]
    return v


@pytest.mark.parametrize("edit,fragment", [
    (lambda m: [1, 2], "not a JSON object"),
    (lambda m: m | {"config": "mlp"}, "no network config"),
    (lambda m: m | {"config": m["config"] | {"layers": ["Dense"]}}, "layers are not a list of layer descriptions"),
    (lambda m: m | {"config": m["config"] | {"input_dim": "6"}}, "input_dim is not a positive integer"),
    (lambda m: m | {"optimizer": m["optimizer"] | {"hyper": "fast"}}, "hyper-parameters"),
    (lambda m: m | {"optimizer": m["optimizer"] | {"hyper": m["optimizer"]["hyper"] | {"net": 0}}},
     "hyper-parameter 'net'"),
    (lambda m: m | {"optimizer": m["optimizer"] | {"steps": -1}}, "step count"),
    (lambda m: m | {"state": None}, "no training state"),
    (lambda m: m | {"state": {"deep": _nested(200)}}, "nested deeper than"),
    (lambda m: {k: v for k, v in m.items() if k != "sha256"}, "no valid checksum"),
    (lambda m: m | {"arrays": {"model/layers.0.W": {"dtype": "|O", "shape": [6, 8], "sha256": "0"}}},
     "array manifest"),
])
def test_malformed_metadata_is_one_sentence(good: Path, tmp_path: Path, edit: Any, fragment: str) -> None:
    bad = _rewrite(good, tmp_path / "bad.npz", edit)
    net = _net()
    opt = gb.SGD(net, lr=0.1, momentum=0.9)
    with pytest.raises(CheckpointError, match=fragment) as info:
        load_checkpoint(bad, net, opt)
    assert "\n" not in str(info.value)
    assert opt.net is net and opt.steps == 0


def test_json_nested_past_the_parsers_limit_is_one_sentence(good: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(good) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.frombuffer(b"[" * 100_000 + b"]" * 100_000, dtype=np.uint8))
    entries["__meta__.npy"] = buf.getvalue()
    with zipfile.ZipFile(tmp_path / "deep.npz", "w") as z:
        for name, blob in entries.items():
            z.writestr(name, blob)
    with pytest.raises(CheckpointError, match="nested deeper"):
        load_checkpoint(tmp_path / "deep.npz", _net(), None)


def test_entries_the_manifest_does_not_list_are_refused(good: Path, tmp_path: Path) -> None:
    bad = _rewrite(good, tmp_path / "bad.npz", members={"extra.npy": _npy_header_only((2,))})
    with pytest.raises(CheckpointError, match="entries its manifest does not list"):
        load_checkpoint(bad, _net(), None)


def test_only_the_arrays_that_are_needed_are_read(good: Path, tmp_path: Path) -> None:
    # a damaged optimiser entry does not stop loading the network alone, and is caught with the optimiser
    with zipfile.ZipFile(good) as z:
        velocity = bytearray(z.read("optim/velocity.npy"))
    velocity[-1] ^= 0xFF
    bad = _rewrite(good, tmp_path / "bad.npz", members={"optim/velocity.npy": bytes(velocity)})
    net = _net()
    load_checkpoint(bad, net, None)
    with pytest.raises(CheckpointError, match="fails its checksum in the entry optim/velocity"):
        load_checkpoint(bad, net, gb.SGD(net, lr=0.1, momentum=0.9))


def test_a_npy_file_given_to_resume_is_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "weights.npy", np.zeros(3))
    code, _, err = _run([*QUICK, "--epochs", "1", "--resume", str(tmp_path / "weights.npy")], capsys)
    assert code == 2 and "is a NumPy .npy array, not a gpu_backprop checkpoint" in err, err
    _one_line(err)
    (tmp_path / "notes.txt").write_text("hello")
    code, _, err = _run([*QUICK, "--epochs", "1", "--resume", str(tmp_path / "notes.txt")], capsys)
    assert code == 2 and "not a gpu_backprop checkpoint" in err, err
    _one_line(err)


def test_a_checkpoint_of_the_previous_format_still_loads(tmp_path: Path) -> None:
    """Format 1: no manifest, a checksum over the arrays only (written here as 0.1.0 wrote it)."""
    net = _net(dropout=0.1)
    opt = gb.SGD(net, lr=0.1, momentum=0.9)
    X, y = _toy()
    net.train_step_grads(X, y)
    opt.step()
    arrays = {f"model/{k}": v for k, v in net.state_dict().items()}
    opt_state = opt.state_dict()
    arrays["optim/velocity"] = opt_state.pop("velocity")
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(key.encode())
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    meta = {"format": "gpu_backprop-checkpoint-1", "config": net.config(), "optimizer": opt_state,
            "state": {"epoch": 1}, "sha256": h.hexdigest()}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(tmp_path / "old.npz", **arrays)
    twin = _net(dropout=0.1)
    twin_opt = gb.SGD(twin, lr=0.1, momentum=0.9)
    assert load_checkpoint(tmp_path / "old.npz", twin, twin_opt) == {"epoch": 1}
    np.testing.assert_array_equal(twin.flat_params, net.flat_params)
    np.testing.assert_array_equal(twin_opt.velocity, opt.velocity)
    assert twin_opt.steps == 1 and FORMAT != meta["format"]


def test_load_model_refuses_a_config_larger_than_its_file(good: Path, tmp_path: Path) -> None:
    def giant(meta: dict[str, Any]) -> dict[str, Any]:
        meta["config"]["layers"][0]["out_features"] = 10**9
        return meta
    bad = _rewrite(good, tmp_path / "bad.npz", giant)
    with pytest.raises(CheckpointError, match="larger than the file"):
        gb.load_model(bad, backend="numpy")


# ==========================================================================
# 4. Values are checked in the network's dtype
# ==========================================================================
def test_a_value_that_overflows_float32_is_refused_by_name() -> None:
    net = _net()
    state = {k: v.astype(np.float64) for k, v in net.state_dict().items()}
    state["layers.2.W"][0, 0] = 1e300  # finite in float64, inf in float32
    before = net.flat_params.copy()
    with pytest.raises(ValueError, match="state entry layers.2.W contains NaN or Inf in float32"):
        net.load_state_dict(state)
    np.testing.assert_array_equal(net.flat_params, before)


# ==========================================================================
# 6. Pickling, load_model and export
# ==========================================================================
def _trained(**kw: Any) -> tuple[gb.MLP, gb.SGD]:
    X, y = _toy()
    net = gb.MLP([6, 8, 8, 3], backend="numpy", seed=2, **kw)
    opt = gb.SGD(net, lr=0.05, momentum=0.9)
    gb.fit(net, opt, X, y, epochs=2, batch_size=10, progress=False)
    return net, opt


@pytest.mark.parametrize("kw", [{}, {"batchnorm": True, "dropout": 0.2, "activation": "leaky_relu"}],
                         ids=["plain", "batchnorm-dropout"])
def test_a_network_and_its_optimizer_pickle_and_train_on_alike(kw: dict[str, Any]) -> None:
    net, opt = _trained(**kw)
    net2, opt2 = pickle.loads(pickle.dumps((net, opt)))
    assert type(net2) is gb.MLP and net2.sizes == net.sizes and opt2.net is net2
    assert net2.flat_params is not net.flat_params
    assert "_scratch" not in opt.__getstate__()  # the update's work buffer is made again, not stored
    assert np.shares_memory(net2.params["layers.0.W"], net2.flat_params)  # the views are rebuilt
    X, y = _toy()
    np.testing.assert_array_equal(net2.predict(X), net.predict(X))
    for n, o in ((net, opt), (net2, opt2)):
        n.train_step_grads(X, y)
        o.step()
    np.testing.assert_array_equal(net2.flat_params, net.flat_params)
    clone = copy.deepcopy(net)
    np.testing.assert_array_equal(clone.predict(X), net.predict(X))


def test_a_pickled_layer_of_the_users_own_keeps_its_arrays_but_not_the_last_batch() -> None:
    X, _ = _toy(n=2000)
    nets = [gb.Sequential([gb.Dense(6, 8), gb.ReLU(), last], backend="numpy", seed=2)
            for last in (gb.Dense(8, 3), Shifted(8, 3))]
    nets[1].layers[2].shift = np.linspace(-1, 1, 3, dtype=np.float32)
    nets[1].load_state_dict(nets[0].state_dict())
    for net in nets:
        net.predict(X)  # a batch of 2,000 rows: what the layers keep for backward is 64 kB
    plain, own = (pickle.dumps(net) for net in nets)
    assert len(own) < len(plain) + 1_000  # the layer's class, its name and shift, not the batch
    twin = pickle.loads(own)
    assert not any(hasattr(twin.layers[2], name) for name in gb.Dense.per_batch)
    np.testing.assert_array_equal(twin.layers[2].shift, nets[1].layers[2].shift)
    np.testing.assert_array_equal(twin.predict(X), nets[1].predict(X))
    assert not np.array_equal(twin.predict(X), nets[0].predict(X))  # the shift is in it


def test_a_layer_of_the_users_own_is_saved_as_its_kind_and_copied_whole(tmp_path: Path) -> None:
    X, _ = _toy(n=20)
    net = gb.Sequential([gb.Dense(6, 8), gb.ReLU(), Shifted(8, 3)], backend="numpy", seed=2)
    net.layers[2].shift = np.full(3, 100.0, np.float32)
    np.testing.assert_array_equal(net.copy().predict(X), net.predict(X))  # copy() kept the shift
    np.testing.assert_allclose(net.copy(dtype="float64").predict(X), net.predict(X), rtol=1e-5)
    path = save_checkpoint(tmp_path / "c", net, None, {})
    plain = gb.Sequential([gb.Dense(6, 8), gb.ReLU(), gb.Dense(8, 3)], backend="numpy")
    with pytest.raises(CheckpointError, match="different network"):
        load_checkpoint(path, plain, None)  # a Shifted is not a Dense: its outputs differ by 100
    with pytest.raises(CheckpointError, match="layer type 'Shifted' cannot be rebuilt"):
        gb.load_model(path)
    with pytest.raises(TypeError, match="layers.2. is a Shifted, which has no PyTorch counterpart"):
        gb.export_weights(net, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_checkpoint_names_and_seeds_as_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    X, y = _toy(n=40)
    net = gb.Sequential([gb.Dense(6, 4), gb.Dropout(0.5, seed=2**64 - 5), gb.Dense(4, 3)], backend="numpy")
    opt = gb.SGD(net, lr=0.1)
    gb.fit(net, opt, X, y, epochs=1, batch_size=10, checkpoint=tmp_path / "run.ckpt", progress=False)
    assert (tmp_path / "run.ckpt.npz").is_file()  # the writer's name; the reader finds it from the name given
    gb.fit(net, opt, X, y, epochs=2, batch_size=10, resume=tmp_path / "run.ckpt", progress=False)
    assert gb.load_model(tmp_path / "run.ckpt").layers[1].seed == 2**64 - 5  # 64 bits, kept in an int64
    with pytest.raises(CheckpointError, match="is a directory; pass the checkpoint file in it"):
        gb.load_model(tmp_path)
    out = tmp_path / "cli"
    assert _run([*QUICK, "--epochs", "1", "--out", str(out)], capsys)[0] == 0
    assert _run([*QUICK, "--epochs", "2", "--resume", str(out / "checkpoint")], capsys)[0] == 0  # no .npz, as above
    before = net.state_dict()  # (its own copies)
    with pytest.raises(ValueError, match="state entry layers.1.counter is -1; a dropout counter is 0 or more"):
        net.load_state_dict({**before, "layers.1.counter": np.array(-1)})
    assert all(np.array_equal(v, before[k]) for k, v in net.state_dict().items())


class _Counted(gb.Layer):
    """A layer of the user's own with a state only after its first forward pass, which its load_state reads."""

    def forward(self, x: Any, train: bool = False) -> Any:
        self.seen = getattr(self, "seen", 0) + len(x)
        return x

    def backward(self, dy: Any, need_dx: bool = True, need_dw: bool = True) -> Any:
        return dy

    def state(self) -> dict[str, Any]:
        return {"seen": self.seen} if hasattr(self, "seen") else {}

    def load_state(self, state: dict[str, Any]) -> None:
        self.seen = int(state["seen"])


def test_a_layer_with_no_state_yet_is_not_asked_to_load_an_empty_one() -> None:
    net = gb.Sequential([_Counted(), gb.Dense(6, 3)], backend="numpy", input_dim=6)
    net.restore_layer_states(net.layer_states())  # nothing to put back
    twin = pickle.loads(pickle.dumps(net))  # (unpickling loads the state dict)
    twin.load_state_dict(net.state_dict())
    assert not hasattr(twin.layers[0], "seen") and not hasattr(net.layers[0], "seen")


def test_a_layer_that_gains_its_state_in_forward_is_never_asked_to_load_an_empty_one() -> None:
    """gradcheck repeats each evaluation from the states saved before it: here, none."""
    net = gb.Sequential([_Counted(), gb.Dense(6, 3)], backend="numpy", input_dim=6, dtype="float64")
    X, y = _toy(n=5)
    assert gb.gradcheck(net, X, y).checked > 0
    assert gb.gradcheck(_Counted(), X).checked > 0


def test_releasing_the_buffers_lets_go_of_the_last_batch() -> None:
    net = gb.MLP([6, 8, 3], backend="numpy", seed=2)
    X, y = _toy(n=500)
    net.train_step_grads(X, y)
    for layer in net.layers:
        layer.release_buffers()
        assert not any(hasattr(layer, name) for name in layer.per_batch), type(layer).__name__


def test_every_built_in_layer_names_what_it_keeps_for_backward() -> None:
    layers = [gb.Dense(6, 8), gb.Tanh(), gb.BatchNorm(8), gb.ReLU(), gb.Dropout(0.2), gb.Dense(8, 3)]
    net = gb.Sequential(layers, backend="numpy")
    before = [set(vars(layer)) for layer in layers]
    X, y = _toy(n=5)
    net.train_step_grads(X, y)
    for layer, names in zip(layers, before):
        kept = set(vars(layer)) - names
        assert kept == (set(layer.per_batch) if layer in net.steps else set()), type(layer).__name__


def _predict_in_child(blob: bytes, X: np.ndarray) -> np.ndarray:
    return pickle.loads(blob).predict(X)


def test_a_network_goes_to_another_process() -> None:
    net, _ = _trained()
    X, _ = _toy()
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        theirs = pool.apply(_predict_in_child, (pickle.dumps(net), X))
        theirs_direct = pool.apply(net.predict, (X,))  # the network itself as the callable's owner
    np.testing.assert_array_equal(theirs, net.predict(X))
    np.testing.assert_array_equal(theirs_direct, net.predict(X))


@pytest.mark.skipif(backend.cupy_available(), reason="needs a machine where CuPy cannot run")
def test_a_network_pickled_on_cupy_comes_back_on_numpy_here() -> None:
    net, _ = _trained()
    saved = net.__getstate__()
    saved["backend"] = "cupy"
    twin = gb.MLP.__new__(gb.MLP)
    with pytest.warns(RuntimeWarning, match="pickled on cupy, which cannot run here"):
        twin.__setstate__(saved)
    assert twin.backend.name == "numpy"
    X, _ = _toy()
    np.testing.assert_array_equal(twin.predict(X), net.predict(X))


@pytest.mark.parametrize("kw", [{}, {"batchnorm": True, "dropout": 0.2, "output_activation": "sigmoid"}],
                         ids=["plain", "batchnorm-dropout"])
def test_load_model_rebuilds_the_network_from_its_checkpoint(tmp_path: Path, kw: dict[str, Any]) -> None:
    net, opt = _trained(**kw)
    save_checkpoint(tmp_path / "c.npz", net, opt, {"epoch": 2})
    model = gb.load_model(tmp_path / "c.npz", backend="numpy")
    assert model.config() == net.config()
    X, _ = _toy()
    np.testing.assert_array_equal(model.predict(X), net.predict(X))


def _bn_net(momentum: float = 0.1, eps: float = 1e-5) -> gb.Sequential:
    return gb.Sequential([gb.Dense(6, 8), gb.BatchNorm(8, momentum=momentum, eps=eps), gb.ReLU(), gb.Dense(8, 3)],
                         backend="numpy", seed=1)


def test_a_batchnorm_keeps_its_momentum_and_eps_through_a_checkpoint(tmp_path: Path) -> None:
    net = _bn_net(momentum=0.3, eps=1e-1)
    X, y = _toy()
    gb.fit(net, gb.SGD(net, lr=0.05), X, y, epochs=1, batch_size=16, progress=False)
    save_checkpoint(tmp_path / "c.npz", net, None, {"epoch": 1})
    model = gb.load_model(tmp_path / "c.npz", backend="numpy")
    bn = model.layers[1]
    assert (bn.momentum, bn.eps) == (0.3, 1e-1)
    np.testing.assert_array_equal(model.predict(X), net.predict(X))  # eps 1e-5 would change them
    with pytest.raises(CheckpointError, match=r"eps=0\.1.*eps=1e-05"):  # another eps is another network
        load_checkpoint(tmp_path / "c.npz", _bn_net(momentum=0.3), None)


def test_a_checkpoint_from_before_batchnorm_kept_momentum_and_eps_still_loads(tmp_path: Path) -> None:
    net = _bn_net()
    save_checkpoint(tmp_path / "new.npz", net, None, {"epoch": 1})

    def older(meta: dict[str, Any]) -> dict[str, Any]:  # what checkpoints held before: no momentum, no eps
        meta["config"]["layers"][1] = {"type": "BatchNorm", "num_features": 8}
        return meta
    old = _rewrite(tmp_path / "new.npz", tmp_path / "old.npz", older)
    load_checkpoint(old, _bn_net(), None)  # they were the defaults
    assert gb.load_model(old, backend="numpy").layers[1].eps == 1e-5
    with pytest.raises(CheckpointError, match="different network"):
        load_checkpoint(old, _bn_net(eps=1e-3), None)


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A reader of the safetensors format written from its description, with NumPy only."""
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    data_start, tensors, end = 8 + n, {}, 0
    dtypes = {"F32": "<f4", "F64": "<f8", "I64": "<i8"}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, stop = entry["data_offsets"]
        assert begin == end, "tensors are back to back"
        end = stop
        tensors[name] = np.frombuffer(blob[data_start + begin:data_start + stop],
                                      dtype=dtypes[entry["dtype"]]).reshape(entry["shape"])
    assert data_start + end == len(blob) and n % 8 == 0
    return header, tensors


def test_exported_weights_are_safetensors_in_torch_layout(tmp_path: Path) -> None:
    net, _ = _trained(batchnorm=True)
    gb.export_weights(net, tmp_path / "m.safetensors")
    header, t = _read_safetensors(tmp_path / "m.safetensors")
    # layers: 0 Dense, 1 BatchNorm, 2 ReLU, 3 Dense, 4 BatchNorm, 5 ReLU, 6 Dense
    assert sorted(t) == sorted([f"{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]
                               + [f"{i}.{p}" for i in (1, 4) for p in ("weight", "bias", "running_mean",
                                                                        "running_var", "num_batches_tracked")])
    assert header["0.weight"]["dtype"] == "F32" and t["0.weight"].shape == (8, 6)  # (out, in)
    np.testing.assert_array_equal(t["0.weight"], net.params["layers.0.W"].T)
    assert json.loads(header["__metadata__"]["gpu_backprop_config"]) == net.config()
    # the forward pass from the file alone gives our predictions
    X, _ = _toy()
    a = X.astype(np.float32)
    for i in (0, 3, 6):
        a = a @ t[f"{i}.weight"].T + t[f"{i}.bias"]
        if i < 6:
            bn = i + 1
            a = (a - t[f"{bn}.running_mean"]) / np.sqrt(t[f"{bn}.running_var"] + 1e-5) * t[f"{bn}.weight"] \
                + t[f"{bn}.bias"]
            a = np.maximum(a, 0)
    e = np.exp(a - a.max(axis=1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(axis=1, keepdims=True), net.predict(X), rtol=1e-5, atol=1e-6)


def test_pytorch_loads_the_exported_weights(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    net, _ = _trained(batchnorm=True, dropout=0.1)
    gb.export_weights(net, tmp_path / "m.safetensors")
    nn = torch.nn
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.1),
                          nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 3))
    model.load_state_dict(safetensors_torch.load_file(str(tmp_path / "m.safetensors")), strict=True)
    model.eval()
    X, _ = _toy()
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(X)), dim=1).numpy()
    np.testing.assert_allclose(probs, net.predict(X), rtol=1e-5, atol=1e-6)


def test_an_entry_the_zip_directory_says_is_larger_than_the_file_is_refused(good: Path, tmp_path: Path) -> None:
    """A crafted central directory: a stored entry claiming 3.2 GB in a small file, read without a network."""
    huge = (20000, 20000)

    def claim(meta: dict[str, Any]) -> dict[str, Any]:
        meta["arrays"]["model/layers.0.W"].update(shape=list(huge), dtype="<f8")
        return meta
    bad = _rewrite(good, tmp_path / "bad.npz", claim, members={"model/layers.0.W.npy": _npy_header_only(huge)})
    blob = bytearray(bad.read_bytes())
    name = b"model/layers.0.W.npy"
    at = next(i for i in range(len(blob)) if blob.startswith(b"PK\x01\x02", i) and blob[i + 46:i + 46 + len(name)] == name)
    claimed = len(_npy_header_only(huge)) - 64 + 8 * huge[0] * huge[1]
    struct.pack_into("<II", blob, at + 20, claimed, claimed)  # its compressed and uncompressed sizes
    bad.write_bytes(bytes(blob))
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="larger than the file itself"):
            read_checkpoint(bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"{peak / 2**20:.0f} MiB allocated"


class _WithModule(Shifted):
    """A layer of the user's own that keeps a module and a lock, which no deepcopy copies."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.xp, self.lock = np, threading.Lock()
        self.shift = np.ones(self.out_features, np.float32)


def test_a_copy_of_a_layer_that_keeps_a_module_or_a_lock_still_works() -> None:
    X, _ = _toy(n=10)
    net = gb.Sequential([gb.Dense(6, 8), gb.ReLU(), _WithModule(8, 3)], backend="numpy", seed=1)
    twin = net.copy(dtype="float64")  # gradcheck copies a float32 network so
    assert twin.layers[2].xp is np and twin.layers[2].lock is net.layers[2].lock  # shared: no copy can be made
    assert twin.layers[2].shift is not net.layers[2].shift  # the rest is copied, value by value
    np.testing.assert_allclose(twin.predict(X), net.predict(X), rtol=1e-5)
    gb.gradcheck(net, X, np.arange(10) % 3)


def test_a_copy_is_of_the_same_class_with_its_attributes() -> None:
    net = gb.MLP([4, 5, 3], dropout=0.2, backend="numpy", seed=3)
    twin = net.copy(dtype="float64")
    assert type(twin) is gb.MLP and twin.sizes == [4, 5, 3] and twin.sizes is not net.sizes
    assert twin.layers[2].seed == net.layers[2].seed and twin.dtype == np.float64


def test_a_dropout_seed_of_64_bits_is_kept_by_pickles_and_checkpoints(tmp_path: Path) -> None:
    X, y = _toy(n=40)

    def new() -> gb.MLP:
        return gb.MLP([6, 8, 3], dropout=0.5, backend="numpy", seed=2**62)  # a large seed, as time.time_ns() gives

    straight = new()
    assert straight.layers[2].seed >= 2**63  # its 64 bits do not fit an int64 as a number
    assert pickle.loads(pickle.dumps(straight)).layers[2].seed == straight.layers[2].seed
    gb.fit(straight, gb.SGD(straight, lr=0.1), X, y, epochs=2, batch_size=10, progress=False)
    first, resumed = new(), new()
    gb.fit(first, gb.SGD(first, lr=0.1), X, y, epochs=1, batch_size=10, checkpoint=tmp_path / "c.npz",
           progress=False)
    gb.fit(resumed, gb.SGD(resumed, lr=0.1), X, y, epochs=2, batch_size=10, resume=tmp_path / "c.npz",
           progress=False)
    np.testing.assert_array_equal(resumed.flat_params, straight.flat_params)


def test_a_checkpoint_of_format_2_with_a_layer_of_the_users_own_still_loads(tmp_path: Path) -> None:
    """Format 2 wrote a Dense subclass as "Dense": its own network loads it, and so (as then) does a plain one."""
    net = gb.Sequential([gb.Dense(6, 8), gb.ReLU(), Shifted(8, 3)], backend="numpy", seed=2)
    net.layers[2].shift = np.zeros(3, np.float32)
    path = save_checkpoint(tmp_path / "new.npz", net, None, {"epoch": 1})

    def as_format_2(meta: dict[str, Any]) -> dict[str, Any]:
        meta["format"] = "gpu_backprop-checkpoint-2"
        meta["config"]["layers"][2]["type"] = "Dense"
        return meta

    old = _rewrite(path, tmp_path / "old.npz", as_format_2)
    for layers in ([gb.Dense(6, 8), gb.ReLU(), Shifted(8, 3)], [gb.Dense(6, 8), gb.ReLU(), gb.Dense(8, 3)]):
        twin = gb.Sequential(layers, backend="numpy")
        assert load_checkpoint(old, twin, None) == {"epoch": 1}
        np.testing.assert_array_equal(twin.flat_params, net.flat_params)
    with pytest.raises(CheckpointError, match="different network"):  # format 3 tells them apart
        load_checkpoint(path, gb.Sequential([gb.Dense(6, 8), gb.ReLU(), gb.Dense(8, 3)], backend="numpy"), None)
    assert checkpoint_metadata(path)["format"] == FORMAT  # needed here; a plain network's is read by older versions
    plain = save_checkpoint(tmp_path / "plain.npz", gb.MLP([6, 8, 3], dropout=0.1, batchnorm=True), None, {})
    assert checkpoint_metadata(plain)["format"] == "gpu_backprop-checkpoint-2"
