"""The benchmark suite runs and writes a well-formed report (how fast is not a test's business)."""

from __future__ import annotations

import json
from pathlib import Path

from gpu_backprop import benchmark


def test_step_flops_match_the_counts_in_the_docs() -> None:
    assert benchmark.step_flops([784, 256, 256, 10]) == 1_211_392
    assert benchmark.step_flops([784, 1024, 1024, 10]) == 9_564_160


def test_quick_run_writes_a_well_formed_report(tmp_path: Path) -> None:
    code = benchmark.main(["--quick", "--model", "20-16-10", "--batch", "1", "8", "full", "--repeats", "1",
                           "--seconds", "0.02", "--no-peers", "--out", str(tmp_path), "--name", "r"])
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["facts"]["cpu"] and report["facts"]["numpy"]
    assert report["limits"]["numpy"]["gemm_flops"] > 0
    assert [r["batch"] for r in report["results"]] == [1, 8, "full"]
    for r in report["results"]:
        assert r["samples_per_second"] > 0 and r["seconds_per_step"] > 0 and r["fraction_of_limit"] > 0
    md = (tmp_path / "r.md").read_text()
    assert "| numpy | mlp-20-16-10 | full |" in md


def test_bad_flags_are_refused(tmp_path: Path) -> None:
    import pytest

    with pytest.raises(SystemExit, match="--batch"):
        benchmark.main(["--batch", "0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--model"):
        benchmark.main(["--model", "resnet", "--out", str(tmp_path)])
