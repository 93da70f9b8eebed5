"""The command line: what it prints, what it writes, and how it fails (status 2, one line, no traceback)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gpu_backprop.tools import cli

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["train", "--dataset", "mnist-sample", "--epochs", "1", "--hidden", "32", "--no-progress"]


def strict_json(text: str) -> Any:
    """``json.loads`` that refuses NaN and Infinity, which are not JSON (Python writes them unless told not to)."""
    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(args)
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_json_is_all_of_stdout_and_the_lines_for_people_go_to_stderr(capsys, tmp_path: Path) -> None:
    code, out, err = run([*QUICK, "--json", "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    assert len(out.splitlines()) == 1  # stdout holds the JSON line and nothing else
    metrics = strict_json(out)
    for key in ("test_accuracy", "test_loss", "train_seconds", "samples_per_second", "backend", "device"):
        assert key in metrics
    assert 0.5 < metrics["test_accuracy"] <= 1 and metrics["samples_per_second"] > 0
    assert len(metrics["epoch_seconds"]) == metrics["epochs"] and sum(metrics["epoch_seconds"]) == pytest.approx(
        metrics["train_seconds"])
    lines = err.strip().splitlines()
    assert lines[0].startswith("gpu_backprop") and "mnist-sample" in lines[0]
    assert lines[1].startswith("backend numpy")
    assert lines[2].startswith("epoch 1/1: loss") and lines[-1].startswith("test accuracy")
    written = sorted(p.name for p in (tmp_path / "run").iterdir() if not p.name.startswith("."))
    assert {"checkpoint.npz", "checkpoint.json", "history.json"} <= set(written)


def test_the_default_data_falls_back_to_the_sample_only_when_mnist_is_nowhere(
        capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    from gpu_backprop import data

    real = data.load_dataset
    problem: list[Exception] = []

    def load(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "mnist":
            raise problem[0]
        return real(name, *args, **kwargs)

    monkeypatch.setattr(data, "load_dataset", load)
    train = ["train", "--epochs", "1", "--hidden", "8", "-b", "500", "--no-progress"]
    problem[:] = [data.DataNotFound("mnist was not found and downloads failed")]
    code, out, err = run(train, capsys)
    assert code == 0 and "the 10,000-digit sample shipped" in out + err, err
    problem[:] = [data.DataError("train-images-idx3-ubyte is truncated")]  # a corrupt cached file: said, not hidden
    code, out, err = run(train, capsys)
    assert code == 2 and "truncated" in err and "epoch" not in out + err, err


def test_resume_continues_from_the_checkpoint(capsys, tmp_path: Path) -> None:
    out_dir = tmp_path / "run"
    assert run([*QUICK, "--out", str(out_dir)], capsys)[0] == 0
    code, out, err = run([*QUICK, "--epochs", "2", "--resume", str(out_dir / "checkpoint.npz"), "--json"], capsys)
    assert code == 0, err
    assert strict_json(out)["epochs"] == 2


@pytest.mark.parametrize("args,match", [
    (["train", "--batch-size", "zero"], "--batch-size takes an integer or 'full'"),
    (["train", "--batch-size", "0"], "at least 1"),
    (["train", "--hidden", "256,x"], "--hidden takes comma-separated"),
    (["train", "--lr", "-1"], "--lr must be a positive number"),
    (["train", "--epochs", "0"], "--epochs must be at least 1"),
    (["train", "--resume", "/nonexistent/ckpt.npz"], "does not exist"),
    (["train", "--dataset", "idx"], "needs a directory"),
    (["train", "--dataset", "idx", "--data-dir", "/nonexistent"], "does not exist"),
    (["train", "--dataset", "mnist-sample", "--batch-size", "100000", "--epochs", "1"], "larger than"),
    (["train", "--dataset", "mnist-sample", "--init", "orthogonal"], "unknown initializer"),
    (["train", "--dataset", "mnist-sample", "--momentum", "1.5"], "momentum"),
    (["train", "--dataset", "mnist-sample", "--schedule", "linear"], "unknown schedule"),
])
def test_bad_flags_exit_2_with_one_line(capsys, args: list[str], match: str) -> None:
    code, _, err = run(args, capsys)
    assert code == 2
    assert match in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("args", [["train", "--backend", "tpu"], ["train", "--optimizer", "rmsprop"],
                                  ["train", "--dataset", "cifar"], ["fly"]])
def test_unknown_choices_are_argparse_errors(capsys, args: list[str]) -> None:
    code, _, err = run(args, capsys)
    assert code == 2 and "invalid choice" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out_dir(capsys, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    code, _, err = run([*QUICK, "--out", str(ro / "x")], capsys)
    assert code == 2 and "cannot write" in err


def test_out_dir_that_is_a_file(capsys, tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    code, _, err = run([*QUICK, "--out", str(f)], capsys)
    assert code == 2 and "cannot write to --out" in err


def test_corrupt_resume_file(capsys, tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    code, _, err = run([*QUICK, "--resume", str(bad)], capsys)
    assert code == 2 and "corrupt or truncated" in err


def test_divergence_exits_3(capsys) -> None:
    code, _, err = run([*QUICK, "--lr", "1e12", "--momentum", "0", "--activation", "identity"], capsys)
    assert code == 3 and "diverged" in err


def test_the_script_runs_as_a_subprocess(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_mnist.py"), "--dataset", "mnist-sample",
                           "--epochs", "1", "--json", "--no-progress"],
                          check=False, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert strict_json(proc.stdout)["dataset"] == "mnist-sample"


def test_module_entry_point_reports_bad_flags_without_traceback() -> None:
    proc = subprocess.run([sys.executable, "-m", "gpu_backprop", "train", "--batch-size", "-3"],
                          check=False, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_bench_is_reachable_through_the_module(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "--help"])
    assert info.value.code == 0 and "--quick" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "--backend", "tpu"])
    assert info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_book_crossentropy_decay_is_lambda_over_the_training_set_loaded(capsys) -> None:
    """Nielsen's L2 term is λ/n with n the training samples: 5/8,000 on the shipped sample, not 5/60,000."""
    base = ["train", "--preset", "book-crossentropy", "--dataset", "mnist-sample", "--epochs", "1", "--hidden", "8",
            "--no-progress"]
    code, out, err = run(base, capsys)
    assert code == 0, err
    assert "weight decay 0.000625," in out.splitlines()[1]
    code, out, err = run([*base, "--weight-decay", "0"], capsys)  # an explicit flag wins over the preset
    assert code == 0, err
    assert "weight decay" not in out.splitlines()[1]


# --------------------------------------------------------------------------
# --help, short flags, --device
# --------------------------------------------------------------------------
def test_help_shows_the_defaults_and_the_short_flags(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    assert "--lr LR learning rate (default: 0.05; the preset's value with --preset)" in text
    assert "--seed SEED seeds the initial weights and the shuffling (default: 0)" in text
    assert "(default: auto, or $GPU_BACKPROP_BACKEND)" in text
    for short in ("-b N, --batch-size N", "-e N, --epochs N", "-o DIR, --out DIR", "-r CHECKPOINT, --resume CHECKPOINT",
                  "-q, --quiet", "--device N"):
        assert short in text, short


def test_short_flags_train_and_resume(capsys, tmp_path: Path) -> None:
    base = ["train", "--dataset", "mnist-sample", "--hidden", "8", "-b", "500", "-q", "--json"]
    code, out, err = run([*base, "-e", "1", "-o", str(tmp_path / "run")], capsys)
    assert code == 0, err
    assert strict_json(out)["batch_size"] == 500 and (tmp_path / "run" / "checkpoint.npz").is_file()
    code, out, err = run([*base, "-e", "2", "-r", str(tmp_path / "run" / "checkpoint.npz")], capsys)
    assert code == 0, err
    assert strict_json(out)["epochs"] == 2


def test_device_asks_the_backend_for_that_gpu_before_choosing_it(capsys, monkeypatch) -> None:
    """The CLI's side of --device: devices.use_device(N), before the backend describes its device."""
    from gpu_backprop import devices
    from gpu_backprop.backend import BackendError

    asked: list[int] = []
    monkeypatch.setattr(devices, "use_device", asked.append)
    code, _, err = run([*QUICK, "--hidden", "8", "-q", "--device", "1"], capsys)
    assert code == 0 and asked == [1], err

    def no_such_device(n: int) -> None:
        raise BackendError(f"there is no CUDA device {n}: this machine has 1 (device 0); pass --device 0")

    monkeypatch.setattr(devices, "use_device", no_such_device)
    for flags, fragment in ((["--device", "7"], "--device 7: there is no CUDA device 7"),
                            (["--device", "-1"], "--device takes a CUDA device number"),
                            (["--device", "0", "--backend", "numpy"], "--backend numpy does not use")):
        code, _, err = run([*QUICK, *flags], capsys)
        assert code == 2 and fragment in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_device_that_is_not_there_is_one_sentence(capsys) -> None:
    code, _, err = run([*QUICK, "--device", "99"], capsys)
    assert code == 2 and "device 99" in err and "unrecognized" not in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


# --------------------------------------------------------------------------
# Output: progress, --quiet, divergence said once, valid JSON, a reader that goes away
# --------------------------------------------------------------------------
def test_no_progress_frames_when_stderr_is_not_a_terminal(capsys) -> None:
    code, out, err = run(["train", "--dataset", "mnist-sample", "--epochs", "2", "--hidden", "8"], capsys)
    assert code == 0, err
    assert "\r" not in err and "\r" not in out  # no progress bar frames in a log
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("epoch")] == ["epoch 1/2", "epoch 2/2"]


@pytest.mark.parametrize("where,flags,bar", [
    ("terminal", [], True), ("terminal", ["--no-progress"], False), ("terminal", ["-q"], False),
    ("notebook", [], True), ("pipe", [], False),
])
def test_the_bar_is_shown_where_someone_watches(capsys, monkeypatch, where: str, flags: list[str], bar: bool) -> None:
    from gpu_backprop import trainer

    seen: list[bool] = []
    real_fit = trainer.fit

    def fit(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["progress"])
        return real_fit(*args, **{**kwargs, "progress": False})

    monkeypatch.setattr(trainer, "fit", fit)
    if where == "terminal":
        monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    if where == "notebook":  # what a Jupyter kernel has imported; tqdm.auto then draws a widget
        shell = type("ZMQInteractiveShell", (), {})()
        monkeypatch.setitem(sys.modules, "IPython", type(sys)("IPython"))
        monkeypatch.setattr(sys.modules["IPython"], "get_ipython", lambda: shell, raising=False)
    code, _, err = run(["train", "--dataset", "mnist-sample", "--epochs", "1", "--hidden", "8", *flags], capsys)
    assert code == 0, err
    assert seen == [bar]


def test_quiet_prints_the_final_line_alone(capsys) -> None:
    code, out, err = run([*QUICK, "--hidden", "8", "--quiet"], capsys)
    assert code == 0, err
    assert err == "" and len(out.splitlines()) == 1 and out.startswith("test accuracy ")


def test_divergence_is_said_once_and_the_files_stay_valid_json(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "gpu_backprop", *QUICK, "--lr", "1e12", "--momentum", "0",
                           "--activation", "identity", "--json", "--out", str(tmp_path / "run")],
                          check=False, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.count("training diverged") == 1, proc.stderr  # not a warning with a source line, then again
    assert "RuntimeWarning" not in proc.stderr
    result = strict_json(proc.stdout)
    assert result["diverged"].startswith("training diverged")
    history = strict_json((tmp_path / "run" / "history.json").read_text())
    assert history["stopped_reason"] == "diverged" and history["stop_message"] == result["diverged"]


def test_a_test_loss_that_is_not_finite_exits_3(capsys, tmp_path: Path) -> None:
    """A weight decay so large that one full-batch step leaves finite weights whose outputs overflow.

    The training loss (computed before the update) is finite; the held-out validation loss after the
    epoch is not, which stops the run as a divergence; without validation, the final test loss would.
    """
    code, out, err = run([*QUICK, "--hidden", "16", "--batch-size", "full", "--loss", "mse", "--weight-decay", "1e15",
                          "--json", "--out", str(tmp_path / "run")], capsys)
    assert code == 3
    assert "validation loss became inf" in err and "weight decay" in err and "Traceback" not in err
    result = strict_json(out)
    assert "validation loss became inf" in result["diverged"]
    assert strict_json((tmp_path / "run" / "history.json").read_text())["stopped_reason"] == "diverged"
    code, out, err = run([*QUICK, "--hidden", "16", "--batch-size", "full", "--loss", "mse", "--weight-decay", "1e15",
                          "--validation-fraction", "0", "--json"], capsys)
    assert code == 3 and "test loss is inf" in err and "--weight-decay" in err
    assert strict_json(out)["test_loss"] is None


def test_a_reader_that_goes_away_does_not_fail_the_run(tmp_path: Path) -> None:
    """``train ... | head -1``: the run finishes, writes its files, and exits with its own status."""
    proc = subprocess.Popen([sys.executable, "-m", "gpu_backprop", *QUICK, "--hidden", "8", "--out",
                             str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith("gpu_backprop")
    proc.stdout.close()  # as head does after its line
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert "Broken pipe" not in err and "Traceback" not in err and "Exception ignored" not in err
    assert (tmp_path / "run" / "history.json").is_file()


# --------------------------------------------------------------------------
# The curves and the test set
# --------------------------------------------------------------------------
def test_the_curves_say_what_they_show(capsys, monkeypatch, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.figure

    figures: list[Any] = []
    savefig = matplotlib.figure.Figure.savefig

    def keep(fig: Any, *args: Any, **kwargs: Any) -> Any:
        figures.append(fig)
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    code, _, err = run(["train", "--dataset", "mnist-sample", "--epochs", "3", "--hidden", "8", "--batch-size", "500",
                        "-q", "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    assert (tmp_path / "run" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    (fig,) = figures
    title = fig._suptitle.get_text()
    for part in ("mnist-sample", "784-8-10 relu", "sgd lr 0.05", "batch 500", "numpy"):
        assert part in title, title
    for ax in fig.axes:
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["training", "validation"]
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_the_test_set_is_evaluated_once_at_the_end_and_reported_as_test(capsys, monkeypatch) -> None:
    from gpu_backprop import trainer

    calls: list[int] = []
    real_evaluate = trainer.evaluate

    def evaluate(net: Any, X: Any, y: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(y))
        return real_evaluate(net, X, y, *args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", evaluate)
    code, out, err = run([*QUICK, "--hidden", "8", "--epochs", "2", "--json"], capsys)
    assert code == 0, err
    assert calls == [2000]  # the shipped sample's 2,000 test digits, once
    assert err.strip().splitlines()[-1].startswith("test accuracy ") and "test_accuracy" in strict_json(out)


# --------------------------------------------------------------------------
# SIGTERM: a clean exit, status 143, nothing half-written
# --------------------------------------------------------------------------
SLOW_DOWNLOAD = """
import io, sys, time
from gpu_backprop import data
from gpu_backprop.tools import cli

class Slow(io.RawIOBase):  # a mirror that sends a kilobyte every 50 ms
    def readable(self):
        return True
    def read(self, n=-1):
        time.sleep(0.05)
        return bytes(1024)

data._urlopen = lambda url: Slow()
sys.exit(cli.main(["train", "--dataset", "mnist", "--epochs", "1", "--no-progress"]))
"""

SLOW_CHECKPOINT = """
import os, sys, time
from gpu_backprop.tools import cli

fsync = os.fsync
os.fsync = lambda fd: (time.sleep(60), fsync(fd))  # every write stays in its temporary file for a minute
sys.exit(cli.main(["train", "--dataset", "mnist-sample", "--hidden", "8", "--epochs", "2", "--no-progress",
                   "--out", sys.argv[1]]))
"""


def _terminate_when(proc: subprocess.Popen[str], appears: Callable[[], list[Path]]) -> list[Path]:
    deadline = time.monotonic() + 60
    while not (found := appears()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    return found


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM")
def test_sigterm_during_a_download_leaves_no_part_file(tmp_path: Path) -> None:
    env = {**os.environ, "GPU_BACKPROP_DATA": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_DOWNLOAD], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path)
    _terminate_when(proc, lambda: list((tmp_path / "cache").rglob("*.part")))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip() == "terminated; the last checkpoint (if --out was given) is intact"
    assert not list((tmp_path / "cache").rglob("*.part"))


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM")
def test_sigterm_while_a_checkpoint_is_written_leaves_no_temporary_file(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CHECKPOINT, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    _terminate_when(proc, lambda: list(out.glob(".checkpoint.npz.*.tmp")) if out.is_dir() else [])
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "terminated; the last checkpoint (if --out was given) is intact"
    assert "Traceback" not in err
    left = [p.name for p in out.iterdir()] if out.exists() else []  # (the first checkpoint: nothing, no --out)
    assert not [name for name in left if name.endswith(".tmp")]


@pytest.mark.parametrize("error, said", [
    (OSError(28, "No space left on device"), "no space left on the device; free some space or choose another --out"),
    (IsADirectoryError(21, "Is a directory", "run/history.json"), "Is a directory (run/history.json); check that path"),
])
def test_a_file_system_error_is_one_sentence_with_what_to_do(capsys, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path, error: OSError, said: str) -> None:
    from gpu_backprop import trainer

    def fail(*args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(trainer, "save_checkpoint", fail)
    code, _, err = run([*QUICK, "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith(f"error: {said}"), err
    assert "Traceback" not in err


def test_early_stopping_saves_the_tested_weights_beside_the_resumable_checkpoint(capsys, tmp_path: Path) -> None:
    import gpu_backprop as gb
    from gpu_backprop.data import load_dataset

    out = tmp_path / "run"
    code, stdout, err = run(["train", "--dataset", "mnist-sample", "--epochs", "30", "--patience", "1", "--lr", "0.5",
                             "-b", "500", "--hidden", "8", "--no-progress", "--json", "--out", str(out)], capsys)
    assert code == 0 and "early stopping" in err and f"are in {out / 'model.npz'}" in err, err
    ds = load_dataset("mnist-sample")
    tested = gb.evaluate(gb.load_model(out / "model.npz", backend="numpy"), ds.x_test, ds.y_test)
    last = gb.evaluate(gb.load_model(out / "checkpoint.npz", backend="numpy"), ds.x_test, ds.y_test)
    reported = strict_json(stdout)
    assert (reported["test_loss"], reported["test_accuracy"]) == tested != last


@pytest.mark.parametrize("hidden, network", [("", "784-10"), ("16,", "784-16-10"), (" 16 , 8 ", "784-16-8-10")])
def test_hidden_sizes_as_written(capsys, hidden: str, network: str) -> None:
    code, out, err = run(["train", "--dataset", "mnist-sample", "--epochs", "1", "-b", "500", "--no-progress",
                          "--hidden", hidden], capsys)
    assert code == 0 and f"network {network} relu" in out, err
