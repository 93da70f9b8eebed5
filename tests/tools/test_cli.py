"""The command line: what it prints, what it writes, and how it fails (status 2, one line, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpu_backprop.tools import cli

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["train", "--dataset", "mnist-sample", "--epochs", "1", "--hidden", "32", "--no-progress"]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(args)
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_json_is_the_last_line_and_config_comes_first(capsys, tmp_path: Path) -> None:
    code, out, err = run([*QUICK, "--json", "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("gpu_backprop") and "mnist-sample" in lines[0]
    assert lines[1].startswith("backend numpy")
    metrics = json.loads(lines[-1])
    for key in ("test_accuracy", "test_loss", "train_seconds", "samples_per_second", "backend", "device"):
        assert key in metrics
    assert 0.5 < metrics["test_accuracy"] <= 1 and metrics["samples_per_second"] > 0
    written = sorted(p.name for p in (tmp_path / "run").iterdir() if not p.name.startswith("."))
    assert {"checkpoint.npz", "checkpoint.json", "history.json"} <= set(written)


def test_resume_continues_from_the_checkpoint(capsys, tmp_path: Path) -> None:
    out_dir = tmp_path / "run"
    assert run([*QUICK, "--out", str(out_dir)], capsys)[0] == 0
    code, out, err = run([*QUICK, "--epochs", "2", "--resume", str(out_dir / "checkpoint.npz"), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["epochs"] == 2


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
    code, out, err = run(args, capsys)
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
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["dataset"] == "mnist-sample"


def test_module_entry_point_reports_bad_flags_without_traceback() -> None:
    proc = subprocess.run([sys.executable, "-m", "gpu_backprop", "train", "--batch-size", "-3"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
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
