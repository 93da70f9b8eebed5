"""The benchmark suite runs and writes a well-formed report (how fast is not a test's business)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from gpu_backprop.backend import get_backend
from gpu_backprop.network import MLP
from gpu_backprop.optim import SGD
from gpu_backprop.tools import bench as benchmark
from gpu_backprop.tools.bench import peers, report, suite, timing


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
    assert report["complete"] is True and report["planned_rows"] == 3
    assert {r["precision"] for r in report["results"]} == {"fp32"}
    md = (tmp_path / "r.md").read_text()
    assert "| numpy | mlp-20-16-10 | full |" in md and "## Where a step's time goes" in md
    assert "Float32 matrix products on numpy: gpu_backprop FP32" in md and "Incomplete" not in md
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
    (["--seconds", "inf"], "--seconds must be a positive number"),
    (["--gemm-n", "1000000", "--model", "784-10", "--batch", "1"], "GiB; choose a smaller --gemm-n"),  # 11,176 GiB
    (["--name", "../x"], "--name"),
    (["--batch", "²"], "--batch"),  # "²".isdigit() is True, int("²") fails
    (["--model", "784-1²-10"], "--model"),
    (["--model", "784--10"], "--model"),
    (["--model", "784-99999999999-10", "--batch", "1"], "GiB"),  # refused before anything is allocated
    (["--patience", "-1"], "--patience"),
    (["--patience", "5", "--no-wait"], "--no-wait"),
])
def test_bad_flags_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           flags: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        benchmark.main([*flags, "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_sizes_are_read_as_int_reads_them() -> None:
    parser = benchmark.Parser(prog="bench")
    assert benchmark._parse_batches(parser, ["１２", "full"]) == [12, "full"]  # full-width digits are decimal
    assert benchmark._parse_models(parser, ["７８４-１０"]) == {"mlp-784-10": [784, 10]}


def test_the_script_in_benchmarks_runs_from_a_source_tree(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "run.py"), "--help"], capture_output=True,
                         text=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, timeout=60, check=False)
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


class _NoSleep(timing.Quiet):
    """Endless patience, and waits that take no time (a test must not sleep)."""

    def __init__(self) -> None:
        super().__init__(max_load=0.25, patience=math.inf)

    def wait(self, timeout: float = 30.0) -> None:
        pass


def test_blocks_under_load_are_timed_again_but_not_forever() -> None:
    quiet_after_one = _FakeRunner([0.9, 0.0, 0.0])
    always_busy = _FakeRunner([0.9, 0.7, 0.8] * 2)
    timing.interleaved({"a": quiet_after_one, "b": always_busy}, budget=0.0, repeats=2, quiet=_NoSleep(), reruns=2)
    assert quiet_after_one.loads == [0.0, 0.0] and quiet_after_one.rerun == 1
    assert always_busy.loads == [0.7, 0.7] and always_busy.rerun == 4  # the least loaded of three tries
    assert always_busy.load == 0.7


def test_without_patience_a_loaded_block_is_kept_and_not_timed_again() -> None:
    """``--patience 0``/``--no-wait``: no waits, and no block timed again (that is time spent on the load too)."""
    busy = _FakeRunner([0.9, 0.0, 0.0])
    timing.interleaved({"a": busy}, budget=0.0, repeats=2, quiet=timing.Quiet(max_load=0.25, patience=0.0))
    assert busy.loads == [0.9, 0.0] and busy.rerun == 0


class _BusyMeter:
    """A load meter that always sees 1.5 cores of other processes' work."""

    def start(self) -> None:
        pass

    def stop(self) -> float:
        return 1.5


def test_a_wait_for_quiet_is_announced_once_and_bounded_by_the_patience(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setattr(timing, "LoadMeter", _BusyMeter)
    lines: list[str] = []
    quiet = timing.Quiet(max_load=0.25, patience=0.6, say=lines.append)
    t0 = time.perf_counter()
    quiet.wait(timeout=30)
    quiet.wait(timeout=30)  # the patience is spent: returns at once, says nothing
    assert time.perf_counter() - t0 < 1.5 and quiet.exhausted and 0.6 <= quiet.waited < 1.0
    assert len(lines) == 1
    assert lines[0].startswith("waiting for other processes to go quiet: 1.5 cores busy, up to ")
    assert "--no-wait" in lines[0] and "\n" not in lines[0]


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


# --------------------------------------------------------------------------
# PyTorch on CUDA, without a GPU: a stand-in with PyTorch's own names
# --------------------------------------------------------------------------
class _TorchCudaEvent:
    """``torch.cuda.Event`` as PyTorch has it: no timing unless ``enable_timing=True``; ``elapsed_time`` in ms."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False,
                 external: bool = False) -> None:
        self.enable_timing = enable_timing

    def record(self, stream: object = None) -> None:
        import time

        self.t = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end_event: _TorchCudaEvent) -> float:
        if not (self.enable_timing and end_event.enable_timing):
            raise RuntimeError("Both events must be created with argument 'enable_timing=True'.")
        return (end_event.t - self.t) * 1e3


def _fake_torch() -> object:
    """Enough of ``torch`` for ``peers.torch_peer("cuda", ...)``: tensors that only know their rows.

    ``torch.cuda`` has ``Event`` and ``synchronize`` and no ``get_elapsed_time`` (PyTorch has none);
    ``torch.backends`` holds PyTorch's TF32 switches at their defaults, and every optimiser step
    records what they were while it ran.
    """
    import types

    torch = types.ModuleType("torch")

    class Tensor:
        def __init__(self, rows: int) -> None:
            self.shape = (rows, 1)

        def to(self, *args: object) -> Tensor:
            return self

        def float(self) -> Tensor:
            return self

        def mul_(self, scale: float) -> Tensor:
            return self

        def index_select(self, dim: int, rows: Tensor) -> Tensor:
            return Tensor(rows.shape[0])

        def __getitem__(self, s: slice) -> Tensor:
            return Tensor(len(range(*s.indices(self.shape[0]))))

        def backward(self) -> None:
            pass

    class Model:
        def __init__(self, *layers: object) -> None:
            pass

        def to(self, device: object) -> Model:
            return self

        def parameters(self) -> list[object]:
            return []

        def __call__(self, x: Tensor) -> Tensor:
            return x

    class SGD:
        def __init__(self, params: object, lr: float, momentum: float) -> None:
            pass

        def zero_grad(self, set_to_none: bool = True) -> None:
            pass

        def step(self) -> None:
            torch.seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))

    torch.seen = []
    torch.manual_seed = lambda seed: None
    torch.device = lambda name: types.SimpleNamespace(type=name)
    torch.from_numpy = lambda a: Tensor(a.shape[0])
    torch.randperm = lambda n, device=None: Tensor(n)
    torch.nn = types.SimpleNamespace(Linear=lambda a, b: None, ReLU=lambda: None, Sequential=Model,
                                     CrossEntropyLoss=lambda: (lambda out, y: Tensor(1)))
    torch.optim = types.SimpleNamespace(SGD=SGD)
    torch.cuda = types.SimpleNamespace(Event=_TorchCudaEvent, synchronize=lambda: None)
    torch.backends = types.SimpleNamespace(cuda=types.SimpleNamespace(matmul=types.SimpleNamespace(allow_tf32=False)),
                                           cudnn=types.SimpleNamespace(allow_tf32=True))
    return torch


@pytest.mark.parametrize("tf32", [False, True])
def test_the_pytorch_cuda_peer_is_timed_with_events_and_runs_at_our_precision(
        monkeypatch: pytest.MonkeyPatch, tf32: bool) -> None:
    torch = _fake_torch()
    monkeypatch.setitem(sys.modules, "torch", torch)
    runner = peers.torch_peer("cuda", [6, 5, 3], 4, tf32=tf32)
    runner.calibrate(0.01)
    runner.block()
    assert runner.seconds > 0 and runner.precision == ("tf32" if tf32 else "fp32")
    assert torch.seen and set(torch.seen) == {(tf32, tf32)}  # cuBLAS and cuDNN both, during every step
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, True)  # restored


def test_the_pytorch_stand_in_has_pytorchs_names() -> None:
    """The stand-in above keeps PyTorch's API (checked against torch where it is installed, CPU builds too)."""
    import inspect

    torch = pytest.importorskip("torch")
    real = inspect.signature(torch.cuda.Event.__new__).parameters
    assert real["enable_timing"].default is False  # timing is off unless asked for
    assert list(real)[1:] == list(inspect.signature(_TorchCudaEvent).parameters)
    for method in ("record", "synchronize", "elapsed_time"):
        assert hasattr(torch.cuda.Event, method), method
    assert not hasattr(torch.cuda, "get_elapsed_time")
    assert isinstance(torch.backends.cuda.matmul.allow_tf32, bool) and isinstance(torch.backends.cudnn.allow_tf32, bool)


# --------------------------------------------------------------------------
# The command line as an installed tool: where reports go, what is refused before anything runs
# --------------------------------------------------------------------------
TINY = ["--quick", "--model", "12-8-3", "--repeats", "1", "--seconds", "0.01", "--gemm-n", "64", "--no-peers",
        "--patience", "0"]


def _status(argv: list[str]) -> int:
    """The exit status of ``bench argv``, whether it returns it or exits with it."""
    try:
        return benchmark.main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def test_reports_go_to_the_checkouts_results_or_else_the_current_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Not next to the installed package (site-packages): where the command is run."""
    monkeypatch.chdir(tmp_path)
    assert benchmark.default_out() == tmp_path
    assert benchmark.main([*TINY, "--batch", "4", "--name", "here"]) == 0
    assert (tmp_path / "here.json").is_file() and (tmp_path / "here.md").is_file()
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)  # the root of a source checkout
    assert benchmark.default_out() == results
    assert benchmark.main([*TINY, "--batch", "4", "--name", "there"]) == 0
    assert (results / "there.json").is_file() and not (tmp_path / "there.json").exists()
    with pytest.raises(SystemExit):
        benchmark.main(["--help"])
    assert "current directory" in " ".join(capsys.readouterr().out.split())


def _unwritable_dir(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        return locked
    import tempfile

    try:  # root writes anywhere but where the kernel says no (/sys, in a container)
        with tempfile.NamedTemporaryFile(dir="/sys"):
            pass
    except OSError:
        return Path("/sys")
    pytest.skip("no directory here that this user cannot write")


@pytest.mark.parametrize("where", ["a file", "under a file", "not writable"])
def test_a_report_folder_that_cannot_be_written_fails_before_the_suite_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], where: str) -> None:
    (tmp_path / "file").write_text("x")
    out = {"a file": tmp_path / "file", "under a file": tmp_path / "file" / "reports",
           "not writable": None}[where] or _unwritable_dir(tmp_path)
    monkeypatch.setattr(benchmark, "run_suite", lambda *a, **k: pytest.fail("the suite ran"))
    assert _status([*TINY, "--batch", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--out" in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("stop", [RuntimeError("the device fell off the bus"), KeyboardInterrupt()])
def test_a_run_that_stops_keeps_every_finished_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   stop: BaseException) -> None:
    real, calls = suite.interleaved, []

    def third_row_fails(*args: object, **kwargs: object) -> dict[str, float]:
        calls.append(1)
        if len(calls) == 3:
            raise stop
        return real(*args, **kwargs)

    monkeypatch.setattr(suite, "interleaved", third_row_fails)
    flags = [*TINY, "--batch", "1", "4", "8", "--out", str(tmp_path), "--name", "cut"]
    if isinstance(stop, KeyboardInterrupt):
        assert benchmark.main(flags) == 130
    else:
        with pytest.raises(RuntimeError):
            benchmark.main(flags)
    report = json.loads((tmp_path / "cut.json").read_text())
    assert [r["batch"] for r in report["results"]] == [1, 4] and report["complete"] is False
    assert "**Incomplete: 2 of 3 rows.**" in (tmp_path / "cut.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.json", "cut.md"]  # no temporary file left


def test_the_report_is_saved_after_every_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = report.write

    def spy(rep: dict, out: Path, stem: str, final: bool = False) -> list[Path]:
        written = real(rep, out, stem, final)
        seen.append(len(json.loads((out / f"{stem}.json").read_text())["results"]))
        return written

    monkeypatch.setattr(benchmark, "write", spy)
    assert benchmark.main([*TINY, "--batch", "1", "4", "--out", str(tmp_path), "--name", "r"]) == 0
    assert seen == [0, 1, 2, 2]  # after the limits, after each row, and the final write


def test_the_limit_is_the_fastest_gemm_block_with_the_load_of_each() -> None:
    g = timing.gemm_rate(get_backend("numpy"), 64, repeats=3, quiet=timing.Quiet(patience=0.0))
    assert g["flops"] >= g["median_flops"] > 0 and len(g["block_loads"]) == 3


def _report(rows: list[dict], **facts: object) -> dict:
    base = {"date": "2026-11-27T10:00:00", "cpu": "AMD EPYC", "cores": 2, "python": "3.11.9", "numpy": "2.4.6",
            "scipy": "1.17.1", "blas": [], "env": {}, "torch": "2.13.0", "sklearn": "1.9.1"}
    return {"facts": {**base, **facts}, "results": rows, "flops_per_sample": {"mlp-256": 1_211_392},
            "limits": {"numpy": {"gemm_n": 2048, "device": "CPU", "gemm_flops": 2e11, "precision": "fp32"}},
            "settings": {"max_load_cores": 0.25, "patience_s": 10}}


def _row(batch: int | str, fraction: float = 0.5, **extra: object) -> dict:
    return {"model": "mlp-256", "sizes": [784, 256, 256, 10], "batch": batch, "backend": "numpy",
            "samples_per_second": 1000.0, "seconds_per_step": 1e-3, "fraction_of_limit": fraction,
            "precision": "fp32", **extra}


def test_figures_above_the_limit_are_explained_in_the_report() -> None:
    md = report.to_markdown(_report([_row(128, 1.3), _row("full", 0.9)]))
    assert "**Above 100% of the limit:** numpy mlp-256 batch 128 (130%)." in md
    assert "batch full" not in md.split("**Above 100% of the limit:**")[1].split("\n")[0]
    assert "Above 100%" not in report.to_markdown(_report([_row(128, 0.99)]))


def test_the_machine_facts_read_as_sentences_without_threadpoolctl_or_scipy() -> None:
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]  # what the suite records without threadpoolctl
    md = report.to_markdown(_report([_row(1)], blas=blas, scipy=None, torch=None, sklearn=None))
    line = next(x for x in md.splitlines() if x.startswith("- BLAS:"))
    assert "{" not in line and '"' not in line and str(blas["name"]) in line and "threadpoolctl" in line
    assert "SciPy not installed" in md and "PyTorch: not installed" in md and "scikit-learn: not installed" in md
    assert "None" not in md


def test_one_batch_size_is_drawn_as_bars_and_several_as_lines() -> None:
    pytest.importorskip("matplotlib")
    one = report.figure(_report([_row(1, torch_samples_per_second=400.0, sklearn_samples_per_second=150.0)]))
    ax = one.axes[0]
    assert len(ax.patches) == 3 and ax.get_xscale() == "linear" and not ax.lines
    several = report.figure(_report([_row(1), _row(128), _row("full")]))
    assert several.axes[0].get_xscale() == "log" and several.axes[0].lines and not several.axes[0].patches


def test_reports_of_one_machine_share_one_naming_scheme() -> None:
    assert report.machine_slug("cpu", "AMD EPYC 7B13 64-Core Processor", 2) == "cpu-amd-epyc-7b13-2core"
    assert report.machine_slug("cpu", "AMD EPYC", 2) == "cpu-amd-epyc-2core"
    assert report.machine_slug("gpu", "GPU 0: NVIDIA H100 80GB HBM3", tf32=True) == "gpu-nvidia-h100-80gb-hbm3-tf32"
    gpu_facts = {"date": "2026-11-27T10:00:00", "gpu": "GPU 0: NVIDIA H100 80GB HBM3", "tf32": False}
    assert report.default_stem([types.SimpleNamespace(name="cupy")], gpu_facts) == "2026-11-27-gpu-nvidia-h100-80gb-hbm3"
    import importlib.util

    spec = importlib.util.spec_from_file_location("scaling", Path(__file__).resolve().parents[2] / "benchmarks" / "scaling.py")
    scaling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scaling)
    machine = {"device": get_backend("numpy").device, "cores": os.cpu_count()}
    assert scaling._slug(machine, "mpi", [1, 2]) == report.machine_slug("cpu", suite.cpu_model(), os.cpu_count())
    assert scaling._slug({"device": "GPU 0: NVIDIA H100 80GB HBM3"}, "nccl", [1, 4]) == "gpu-nvidia-h100-80gb-hbm3-x4"


def test_a_step_longer_than_a_block_is_not_run_again_to_calibrate() -> None:
    """A full batch on a CPU: the warm-up step already says one step per block (no second step spent)."""
    import time

    calls: list[int] = []
    runner = timing.Runner(lambda: (calls.append(1), time.sleep(0.03)), lambda: None)
    runner.calibrate(0.02)
    assert runner.calls == 1 and len(calls) == 1


def test_every_committed_report_renders_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Reports written by earlier versions of the suite (no load meter, no precision) render too."""
    results = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    reports = [p for p in results.glob("*.json") if "-scaling-" not in p.name]
    assert reports
    for path in reports:
        copy = tmp_path / path.name
        copy.write_bytes(path.read_bytes())
        assert benchmark.main(["--render", str(copy)]) == 0, capsys.readouterr().err
        table = next(x for x in path.with_suffix(".md").read_text().splitlines() if x.startswith("| numpy |"))
        assert table in copy.with_suffix(".md").read_text()  # the same figures as the committed Markdown


@pytest.mark.parametrize("mend", [lambda r: r.update(results=[None]), lambda r: r.update(facts=[]),
                                  lambda r: r.update(limits=None), lambda r: r.update(results=[{"x": 1}])],
                         ids=["a null row", "facts as a list", "no limits", "a row of other fields"])
def test_a_damaged_report_renders_as_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          mend) -> None:
    results = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    report = json.loads(next(p for p in sorted(results.glob("*.json")) if "-scaling-" not in p.name).read_text())
    mend(report)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    assert benchmark.main(["--render", str(path)]) == 2
    err = capsys.readouterr().err
    assert "the report lacks a field" in err and err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no Markdown or plot half made


def test_a_model_too_big_for_the_gpu_is_refused_with_the_gpus_memory() -> None:
    """CuPy's ``Device().mem_info`` is (free, total) bytes; a stand-in GPU of 0.5 GiB."""
    gpu = types.SimpleNamespace(name="cupy", xp=types.SimpleNamespace(
        cuda=types.SimpleNamespace(Device=lambda: types.SimpleNamespace(mem_info=(2**28, 2**29)))))
    problem = benchmark._memory_problem({"mlp-784-100000-10": [784, 100_000, 10]}, 128, [gpu])
    assert problem is not None and "the GPU has 0.5 GiB" in problem and "79,500,010 parameters" in problem
    problem = benchmark._memory_problem({"mlp-784-1000-10": [784, 1000, 10]}, 60_000, [gpu])
    assert problem == ("--gemm-n 2048: the GEMM that sets the limit (8,192²) needs 0.8 GiB and the GPU has 0.5 GiB; "
                       "a GPU's is at least 8,192²: use --backend numpy")  # (three float32 matrices)
    assert benchmark._memory_problem({"mlp-784-1000-10": [784, 1000, 10]}, 60_000, []) is None
