"""The benchmark suite runs and writes a well-formed report (how fast is not a test's business)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpu_backprop.tools import bench as benchmark
from gpu_backprop.tools.bench import peers, report, suite, timing
from gpu_backprop.backend import get_backend
from gpu_backprop.network import MLP
from gpu_backprop.optim import SGD


def test_step_flops_match_the_counts_in_the_docs() -> None:
    # forward 2·Σ sᵢsᵢ₊₁ + dW 2·Σ sᵢsᵢ₊₁ + dX 2·Σ sᵢsᵢ₊₁ without the first layer
    assert suite.step_flops([784, 256, 256, 10]) == 4 * (784 * 256 + 256 * 256 + 256 * 10) + 2 * (256 * 256 + 2560)
    assert round(suite.step_flops([784, 256, 256, 10]) / 1e6, 2) == 1.21
    assert round(suite.step_flops([784, 1024, 1024, 10]) / 1e6, 2) == 9.56


def _is_positive_number(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_quick_run_writes_a_well_formed_report(tmp_path: Path) -> None:
    code = benchmark.main(["--quick", "--model", "20-16-10", "--batch", "1", "8", "full", "--repeats", "1",
                           "--seconds", "0.02", "--gemm-n", "256", "--no-peers", "--breakdown", "1", "full",
                           "--patience", "0",  # a busy CI machine must not make the test wait
                           "--out", str(tmp_path), "--name", "r"])
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    facts = report["facts"]
    for key in ("date", "cpu", "cores", "numpy", "blas", "env", "python"):
        assert facts[key], key
    assert _is_positive_number(report["limits"]["numpy"]["gemm_flops"])
    assert report["flops_per_sample"] == {"mlp-20-16-10": suite.step_flops([20, 16, 10])}
    assert [r["batch"] for r in report["results"]] == [1, 8, "full"]
    for r in report["results"]:
        for key in ("samples_per_second", "seconds_per_step", "fraction_of_limit"):
            assert _is_positive_number(r[key]), (key, r)
        n = 60_000 if r["batch"] == "full" else r["batch"]
        assert r["samples_per_second"] == pytest.approx(n / r["seconds_per_step"])
        assert "torch_samples_per_second" not in r  # --no-peers
    assert [b["batch"] for b in report["breakdown"]] == [1, "full"]
    for b in report["breakdown"]:
        for key in ("step", "gather", "fwd_bwd", "update", "gemm"):
            assert _is_positive_number(b[key]), (key, b)
    md = (tmp_path / "r.md").read_text()
    assert "| numpy | mlp-20-16-10 | full |" in md and "## Where a step's time goes" in md
    assert "Command: `python -m gpu_backprop bench --quick" in md
    png = tmp_path / "r.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not png.exists()
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("flags, message", [
    (["--batch", "0"], "--batch"),
    (["--batch", "ten"], "--batch"),
    (["--model", "resnet"], "--model"),
    (["--model", "784-0-10"], "--model"),
    (["--repeats", "0"], "--repeats"),
    (["--seconds", "-1"], "--seconds"),
    (["--name", "../x"], "--name"),
])
def test_bad_flags_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           flags: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        benchmark.main([*flags, "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_script_in_benchmarks_runs_from_a_source_tree(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "run.py"), "--help"], capture_output=True,
                         text=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert out.returncode == 0 and "--quick" in out.stdout


def test_other_processes_load_is_measured() -> None:
    if timing.machine_busy_seconds() is None:
        pytest.skip("no /proc/stat here")
    meter = timing.LoadMeter()
    meter.start()
    subprocess.run([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 0.4: pass"],
                   check=True)
    assert meter.stop() > 0.4  # the child's busy loop is someone else's work (close to 1 core)


class _FakeRunner(timing.Runner):
    """A runner whose blocks take no time and report a scripted load."""

    def __init__(self, loads: list[float]) -> None:
        super().__init__(lambda: None, lambda: None)
        self.script = list(loads)

    def block(self) -> None:
        self.times.append(1.0)
        self.loads.append(self.script.pop(0))


def test_blocks_under_load_are_timed_again_but_not_forever() -> None:
    quiet_after_one = _FakeRunner([0.9, 0.0, 0.0])
    always_busy = _FakeRunner([0.9, 0.7, 0.8] * 2)
    patience = timing.Quiet(max_load=0.25, patience=0.0)  # no waiting in a test
    timing.interleaved({"a": quiet_after_one, "b": always_busy}, budget=0.0, repeats=2, quiet=patience,
                           reruns=2)
    assert quiet_after_one.loads == [0.0, 0.0] and quiet_after_one.rerun == 1
    assert always_busy.loads == [0.7, 0.7] and always_busy.rerun == 4  # the least loaded of three tries
    assert always_busy.load == 0.7


def test_targets_are_checked_with_their_margin() -> None:
    sizes = suite.MODELS["mlp-1024"]
    report = {"results": [
        {"backend": "numpy", "sizes": sizes, "batch": 128, "ours_over_torch": 1.38},
        {"backend": "numpy", "sizes": sizes, "batch": "full", "fraction_of_limit": 0.81},
        {"backend": "numpy", "sizes": [784, 10], "batch": 1, "ours_over_torch": 9.0},  # another model
    ]}
    got = {t["batch"]: t for t in suite.check_targets(report)}
    assert set(got) == {128, "full"}
    assert got[128]["met"] and got[128]["ratio_to_target"] == pytest.approx(1.2)
    assert not got["full"]["met"] and got["full"]["ratio_to_target"] == pytest.approx(0.9)


def test_report_names_say_date_and_device() -> None:
    facts = {"date": "2026-11-22T13:00:00", "cpu": "AMD EPYC 7B13 64-Core Processor", "cores": 2}
    assert report.default_stem([get_backend("numpy")], facts) == "2026-11-22-cpu-amd-epyc-7b13-2core"


def test_the_timed_single_sample_step_gives_the_general_paths_weights() -> None:
    """The benchmark times ``opt.train_step`` (fused for one sample); it must train like grads + step."""
    sizes = [20, 16, 12, 10]
    step = peers.OurStep(get_backend("numpy"), sizes, 1)
    ref = MLP(sizes, backend="numpy", seed=0)
    ref_opt = SGD(ref, lr=peers.LR, momentum=peers.MOMENTUM)
    for _ in range(60):
        xb, yb = step.next_batch()
        ref.train_step_grads(xb, yb)
        ref_opt.step()
        step.opt.train_step(xb, yb)
    for name, p in ref.params.items():
        np.testing.assert_allclose(step.net.params[name], p, rtol=2e-5, atol=2e-6, err_msg=name)
    assert not np.array_equal(ref.params["layers.0.W"], MLP(sizes, backend="numpy", seed=0).params["layers.0.W"])


class _HostEvents:
    """Stands in for ``cupy.cuda`` (``Event()``, ``get_elapsed_time``) so the GPU timing branch runs here."""

    class Event:
        def record(self) -> None:
            import time

            self.t = time.perf_counter()

        def synchronize(self) -> None:
            pass

    @staticmethod
    def get_elapsed_time(start: _HostEvents.Event, stop: _HostEvents.Event) -> float:
        return (stop.t - start.t) * 1e3  # milliseconds, as CuPy's


def test_event_timed_blocks_give_seconds_per_step() -> None:
    import time

    runner = timing.Runner(lambda: time.sleep(0.002), lambda: None, _HostEvents)
    runner.calibrate(0.05)
    runner.block()
    assert runner.calls >= 5 and 0.002 <= runner.seconds < 0.05


def test_a_second_run_gets_its_own_name_and_render_rewrites_the_markdown(tmp_path: Path) -> None:
    flags = ["--quick", "--model", "12-8-3", "--batch", "4", "--repeats", "1", "--seconds", "0.01", "--gemm-n", "64",
             "--no-peers", "--patience", "0", "--out", str(tmp_path)]
    assert benchmark.main(flags) == 0 and benchmark.main(flags) == 0
    first, second = sorted(tmp_path.glob("*.json"), key=lambda p: len(p.name))
    assert second.stem == first.stem + "-2"  # the first report is not overwritten
    md = first.with_suffix(".md")
    md.unlink()
    assert benchmark.main(["--render", str(first)]) == 0
    assert "| numpy | mlp-12-8-3 | 4 |" in md.read_text()
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert benchmark.main(["--render", str(bad)]) == 2
