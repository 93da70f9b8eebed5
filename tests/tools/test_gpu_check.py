"""scripts/gpu_check.sh without a GPU: it stops after the preflight, plans in a dry run, and keeps its time boxes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpu_backprop import backend
from gpu_backprop.data import write_idx

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
BASH, TIMEOUT = shutil.which("bash"), shutil.which("timeout")
pytestmark = pytest.mark.skipif(BASH is None or TIMEOUT is None, reason="needs bash and coreutils' timeout")
PHASES = ["preflight", "doctor", "gpu-tests", "fit", "targets"]


def _run(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], dict[str, list[str]]]:
    out = tmp_path / "out"
    proc = subprocess.run([BASH, str(SCRIPT), *args], env={**os.environ, "PYTHON": sys.executable, "OUT": str(out),
                                                            **env},
                          check=False, capture_output=True, text=True, timeout=180)
    lines = (out / "summary.txt").read_text().splitlines()
    summary = {line.split()[0]: line.split(None, 3)[1:] for line in lines}  # phase -> [status, seconds, detail]
    assert list(summary) == PHASES, proc.stdout[-2000:]
    assert proc.stdout.rstrip().endswith("\n".join(lines))  # the summary is the last thing printed
    return proc, summary


def _tiny_fashion(directory: Path) -> Path:
    rng = np.random.default_rng(0)
    directory.mkdir()
    for split, n in (("train", 1200), ("t10k", 50)):  # 1,080 to train on: the third run takes batches of 1,024
        write_idx(directory / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(directory / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))
    return directory


@pytest.mark.skipif(backend.cupy_available(), reason="a CUDA device answers: the check would run for minutes")
def test_without_a_device_the_check_stops_after_the_preflight(tmp_path: Path) -> None:
    proc, summary = _run(tmp_path)
    assert proc.returncode == 2
    status, _, detail = summary["preflight"]
    assert status == "FAILED"
    assert detail.startswith(("cupy missing", "CuPy is installed but no CUDA device answers"))
    assert all(summary[p][0] == "SKIPPED" and summary[p][2] == "the preflight stopped the run" for p in PHASES[1:])
    assert sorted(os.listdir(tmp_path / "out")) == ["preflight.log", "summary.txt"]


def test_a_dry_run_plans_every_phase_in_its_box(tmp_path: Path) -> None:
    proc, summary = _run(tmp_path, "--dry-run", "--backend", "numpy", "--data-dir", str(_tiny_fashion(tmp_path / "d")))
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert summary["preflight"][0] == "ok"
    assert all(summary[p][0] == "DRY-RUN" for p in PHASES[1:])
    assert "-m pytest -m gpu -ra -p no:cacheprovider" in summary["gpu-tests"][2]
    assert "(at most 180s" in summary["gpu-tests"][2]
    assert "train --preset fashion --backend numpy --data-dir" in summary["fit"][2]
    # a rehearsal runs the targets small on the stand-in, with the fit's result for their table
    assert "-m fakecupy benchmarks/gpu_targets.py --out " in summary["targets"][2]
    assert f"--fit-json {tmp_path / 'out' / 'fit.json'} --small --no-peers" in summary["targets"][2]


def test_a_phase_that_outruns_its_box_is_stopped_and_the_next_one_runs(tmp_path: Path) -> None:
    # a rehearsal on NumPy: the GPU tests cannot end in 1 s; the fits of a 1,200-image set can, and the targets'
    # suite cannot end in 3 s, but what they saved before is summed up
    proc, summary = _run(tmp_path, "--backend", "numpy", "--data-dir", str(_tiny_fashion(tmp_path / "d")),
                         BOX_DOCTOR="1", BOX_TESTS="1", BOX_FIT="120", BOX_TARGETS="3")
    assert proc.returncode == 1
    assert summary["gpu-tests"][0] == "TIMEOUT"
    assert summary["fit"][0] == "ok" and summary["fit"][2].startswith("test accuracy ")
    assert summary["fit"][2].endswith(" samples/s (exit 0)")
    assert summary["targets"][0] == "TIMEOUT" and summary["targets"][2].endswith("(exit 124)")
    out = tmp_path / "out"
    assert (out / "targets.log").exists() and (out / "gpu-tests.log").exists()
    runs = [json.loads(line) for line in (out / "fit.json").read_text().splitlines()]  # the preset, wider, fewer
    assert [r["sizes"] for r in runs] == [[784, 256, 256, 10], [784, 512, 512, 10], [784, 512, 512, 10]]
    assert [r["batch_size"] for r in runs] == [128, 256, 1024] and [r["epochs"] for r in runs] == [10, 20, 30]
    assert "; 784-512-512-10, batch 256: test accuracy " in summary["fit"][2]
    assert "; 784-512-512-10, batch 1024: test accuracy " in summary["fit"][2]
    assert len(os.listdir(out)) <= 8  # what the device tool brings back


def test_a_deadline_already_spent_skips_the_phases(tmp_path: Path) -> None:
    proc, summary = _run(tmp_path, "--backend", "numpy", "--data-dir", str(tmp_path / "none"),
                         GPU_CHECK_DEADLINE="0")
    assert proc.returncode == 0
    assert summary["gpu-tests"][0] == "SKIPPED" and "no time left before the 0 s deadline" in summary["gpu-tests"][2]
    assert summary["fit"][2].startswith("no Fashion-MNIST IDX files in ")
    assert summary["targets"][0] == "SKIPPED"
