"""benchmarks/gpu_targets.py: a rehearsal on the CuPy stand-in, the table of targets, and the launch tally."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _stand_in import COMPILER_PROBLEM, needs_compiler, stand_in, subprocess_env

from gpu_backprop import backend
from gpu_backprop.experimental import launches

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_targets.py"


def _module() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_targets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_targets"] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


targets = _module()


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict[str, Any],
                                                                  Path]:
    """One small run of every section but torch.compile, on the stand-in (its kernels built with g++)."""
    if COMPILER_PROBLEM:
        pytest.skip(COMPILER_PROBLEM)
    out = tmp_path_factory.mktemp("targets")
    proc = subprocess.run([sys.executable, "-m", "fakecupy", str(SCRIPT), "--small", "--no-peers", "--out", str(out),
                           "--only", "suite", "persample", "agreement", "launches", "costs", "graphs"],
                          env=subprocess_env(), capture_output=True, text=True, timeout=600, check=False)
    return proc, json.loads((out / "targets.json").read_text()), out


def test_a_rehearsal_runs_every_section_and_saves_the_report(rehearsal) -> None:
    proc, report, out = rehearsal
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["complete"] and list(report["sections"]) == ["suite", "persample", "agreement", "launches", "costs",
                                                               "graphs"]
    assert not [name for name, s in report["sections"].items() if "error" in s]
    suite = report["sections"]["suite"]["runs"]
    assert [r["batch"] for r in suite["mlp-256"]["results"]] == [1, 128]
    assert suite["mlp-1024-fp32"]["limits"]["cupy"]["precision"] == "fp32"
    assert suite["mlp-1024-tf32"]["limits"]["cupy"]["precision"] == "tf32"
    assert suite["mlp-1024-tf32"]["results"][0]["precision"] == "tf32"
    runs = report["sections"]["persample"]["runs"]
    assert runs and all(r["samples_per_second"] > 0 for r in runs)
    assert [r["blocks"] for r in runs] == [2, 4]  # the stand-in's 2 SMs, then 4; a grid of 2 again is not rerun
    plot = ["targets.png"] if importlib.util.find_spec("matplotlib") else []  # drawn where matplotlib is installed
    assert sorted(os.listdir(out)) == ["targets.json", "targets.md", *plot]


def test_numpy_and_the_stand_in_agree_to_float32_tolerance(rehearsal) -> None:
    a = rehearsal[1]["sections"]["agreement"]
    assert a["met"] and a["steps"] == 2 and a["data"] == "random bytes"
    assert 0 < a["numpy_float32_vs_float64"]["loss"] < 1e-5  # float32 is not float64, and close to it
    assert a["cupy_float32_vs_float64"]["loss"] <= 2 * a["numpy_float32_vs_float64"]["loss"]
    assert a["cupy_float32_vs_float64"]["weights"] <= 2 * a["numpy_float32_vs_float64"]["weights"]


def test_without_cupti_the_launch_model_is_kept_and_the_count_is_skipped(rehearsal) -> None:
    s = rehearsal[1]["sections"]["launches"]
    assert "cupti-python" in s["skipped"] and "CUDA build of PyTorch" in s["skipped"]
    for batch in ("1", "128"):
        assert s["batches"][batch]["budget"] > 5 and "counted_per_step" not in s["batches"][batch]


def test_each_kind_of_call_is_timed_on_the_host_and_on_the_device(rehearsal) -> None:
    costs = rehearsal[1]["sections"]["costs"]
    assert len(costs["calls"]) == 9 and costs["product_seconds"] > 0
    for name, t in costs["calls"].items():
        assert t["host_seconds"] > 0 and t["device_seconds"] > 0 and t["calls"] >= 2, name
        assert t["covered"] is False  # the stand-in runs every call on the host, as it is issued
    assert "| training step, batch 128 |" in (rehearsal[2] / "targets.md").read_text()


def test_a_capture_that_fails_is_a_finding_and_the_run_goes_on(rehearsal) -> None:
    graphs = rehearsal[1]["sections"]["graphs"]
    for entry in graphs["batches"].values():  # the stand-in has no stream capture
        assert entry["captured"] is False and "begin_capture" in entry["error"]
    for entry in graphs["direct_cublas"].values():  # nor libcublas (or, where CUDA is installed, no capture)
        assert entry["captured"] is False and ("libcublas" in entry["error"] or "begin_capture" in entry["error"])


def test_the_markdown_has_a_row_per_target(rehearsal) -> None:
    md = (rehearsal[2] / "targets.md").read_text()
    for case in ("mlp-256, batch 1, fused per-sample kernel", "mlp-256, batch 128", "mlp-1024, full batch, FP32",
                 "mlp-1024, full batch, TF32", "Fashion-MNIST (preset fashion, or better)", "NumPy and CuPy agree",
                 "launches per step, batch 128", "CUDA graph of a step, batch 1"):
        assert f"| {case}" in md
    assert "**Incomplete**" not in md


def _report(**sections: Any) -> dict[str, Any]:
    return {"facts": {"gpu": "GPU 0: NVIDIA H200"}, "sections": sections, "complete": True}


def _suite(run: str, batch: Any, **row: Any) -> dict[str, Any]:
    return {"runs": {run: {"results": [{"batch": batch, **row}]}}}


def _verdict(report: dict[str, Any], case: str) -> dict[str, Any]:
    return next(t for t in targets.verdicts(report) if t["case"] == case)


def test_batch_128_is_met_only_at_a_million_samples_and_twice_pytorch() -> None:
    case = "mlp-256, batch 128"
    assert _verdict(_report(suite=_suite("mlp-256", 128, samples_per_second=1.2e6, ours_over_torch=2.5)), case)["met"]
    assert not _verdict(_report(suite=_suite("mlp-256", 128, samples_per_second=1.2e6, ours_over_torch=1.9)),
                        case)["met"]
    assert not _verdict(_report(suite=_suite("mlp-256", 128, samples_per_second=9e5, ours_over_torch=3.0)),
                        case)["met"]
    alone = _verdict(_report(suite=_suite("mlp-256", 128, samples_per_second=2e6)), case)
    assert alone["met"] is None and "no PyTorch" in alone["measured"]  # without the peer it cannot be judged
    assert _verdict(_report(), case) == {"case": case, "target": "≥ 1,000,000 samples/s and ≥ 2× PyTorch eager",
                                         "measured": "not measured", "met": None, "ratio_to_target": None}


def test_full_batch_shares_and_the_best_grid_of_the_fused_kernel() -> None:
    report = _report(suite={"runs": {
        "mlp-1024-fp32": {"results": [{"batch": "full", "fraction_of_limit": 0.69, "samples_per_second": 1e6}]},
        "mlp-1024-tf32": {"results": [{"batch": "full", "fraction_of_limit": 0.51, "samples_per_second": 2e6}]}}},
        persample={"runs": [{"blocks": 132, "samples_per_second": 90_000.0}, {"blocks": 264, "error": "too many"},
                            {"blocks": 66, "samples_per_second": 120_000.0}]})
    assert _verdict(report, "mlp-1024, full batch, FP32")["met"] is False
    assert _verdict(report, "mlp-1024, full batch, TF32")["met"] is True
    fused = _verdict(report, "mlp-256, batch 1, fused per-sample kernel")
    assert fused["met"] and fused["measured"] == "120,000 samples/s (66 blocks)" and fused["ratio_to_target"] == 1.2


def test_the_fashion_runs_are_judged_on_accuracy_and_training_time() -> None:
    case = "Fashion-MNIST (preset fashion, or better)"
    preset = {"test_accuracy": 0.8931, "epochs": 10, "train_seconds": 0.84, "wall_seconds": 6.1,
              "sizes": [784, 256, 256, 10], "batch_size": 128}
    report = _report()
    report["fit"] = [preset]  # one run
    v = _verdict(report, case)
    assert v["met"] and v["measured"] == ("784-256-256-10, batch 128: 89.31% after 10 epochs, 0.84 s of training "
                                          "(6.1 s wall)")
    wider = {**preset, "test_accuracy": 0.8951, "epochs": 20, "train_seconds": 1.2, "sizes": [784, 512, 512, 10],
             "batch_size": 256}
    report["fit"] = [{**preset, "train_seconds": 1.3}, wider]  # each too slow
    v = _verdict(report, case)
    assert v["met"] is False and v["ratio_to_target"] == pytest.approx(1 / 1.2)
    assert v["measured"].endswith("; 784-512-512-10, batch 256: 89.51% after 20 epochs, 1.20 s of training "
                                  "(6.1 s wall)")
    report["fit"] = [{**preset, "test_accuracy": 0.8899}, {**wider, "train_seconds": 0.9}]  # the wider one meets it
    v = _verdict(report, case)
    assert v["met"] is True and v["ratio_to_target"] == pytest.approx(0.8951 / 0.89)
    report["fit"] = [{**preset, "epoch_seconds": [0.3] + [0.06] * 9}]  # the first epoch's start-up shown
    assert _verdict(report, case)["measured"] == ("784-256-256-10, batch 128: 89.31% after 10 epochs, 0.84 s of "
                                                  "training (first epoch 0.30 s, 6.1 s wall)")
    del report["fit"]
    report["fit_error"] = "JSONDecodeError: Expecting value: line 1 column 1 (char 0)"  # a fit.json cut short
    v = _verdict(report, case)
    assert v["met"] is None and v["measured"] == ("--fit-json could not be read: JSONDecodeError: Expecting value: "
                                                  "line 1 column 1 (char 0)")


def test_render_writes_the_markdown_of_a_saved_run_again(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    replayed = {"captured": True, "speedup": 3.5, "replay_seconds_per_step": 4e-5, "max_abs_difference_after": 0.0}
    refused = {"captured": False, "error": "NotImplementedError: calling cuBLAS API during stream capture"}
    path.write_text(json.dumps(_report(graphs={"batches": {"128": refused}, "direct_cublas": {"128": replayed}})))
    assert targets.main(["--render", str(path)]) == 0
    md = (tmp_path / "targets.md").read_text()
    assert ("| CUDA graph of a step, batch 128 | captures on CuPy 14.2? if so, replay time | not captured: "
            "NotImplementedError: calling cuBLAS") in md
    assert ("| CUDA graph of a step, batch 128, cuBLAS called directly | captures on CuPy 14.2? if so, replay time "
            "| replay 3.50× faster than eager (40 µs a step; weights apart by 0.0e+00) |") in md


@pytest.mark.parametrize("content", [None, "{not json", '{"facts": {}}', "[1, 2]"])
def test_render_refuses_what_is_not_a_report_in_one_line(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "targets.json"
    if content is not None:
        path.write_text(content)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--render", str(path)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 2 and "not a report of this script" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ([] if content is None else ["targets.json"])  # nothing half-written


@pytest.mark.skipif(backend.cupy_available(), reason="a CUDA device answers here")
def test_without_a_device_it_refuses_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 2 and "no CUDA device answers here" in proc.stderr
    assert "Traceback" not in proc.stderr and os.listdir(tmp_path) == []


def test_device_events_are_told_apart_by_name() -> None:
    names = ["cupy_add", "Memcpy HtoD (Pageable -> Device)", "sgemm_128x64_nn", "cupy_add", "Memset (Device)"]
    assert launches.tally_device_events(names) == {"kernels": 3, "memsets": 1, "memcpys": 1,
                                                   "by_name": {"cupy_add": 2, "sgemm_128x64_nn": 1}}


class _Stream:
    """CuPy's capture calls, scripted: which of them raise, and what was called."""

    def __init__(self, fail: str = "") -> None:
        self.fail, self.calls = fail, []

    def begin_capture(self) -> None:
        self.calls.append("begin")
        if self.fail == "begin":
            raise RuntimeError("cudaErrorStreamCaptureUnsupported")

    def end_capture(self) -> str:
        self.calls.append("end")
        if self.fail in ("end", "body+end"):
            raise RuntimeError("cudaErrorStreamCaptureInvalidated")
        return "graph"


@pytest.mark.parametrize("fail", ["", "begin", "body", "end", "body+end"])
def test_a_capture_always_leaves_capture_mode_and_names_what_refused_it(fail: str) -> None:
    stream = _Stream(fail)

    def body() -> None:
        stream.calls.append("body")
        if fail.startswith("body"):
            raise RuntimeError("cuBLAS is not supported during stream capture")

    graph, error = targets._capture(stream, body)
    assert stream.calls == (["begin"] if fail == "begin" else ["begin", "body", "end"])
    first = {"begin": "Unsupported", "body": "cuBLAS", "body+end": "cuBLAS", "end": "Invalidated"}
    if fail:
        assert graph is None and first[fail] in str(error)  # the first refusal, not what it caused
    else:
        assert (graph, error) == ("graph", None)


@needs_compiler
def test_a_replay_is_timed_against_eager_steps_from_the_same_state() -> None:
    from gpu_backprop.tools.bench.peers import OurStep

    with stand_in() as cp:
        be = backend.get_backend("cupy")
        step = OurStep(be, [784, 16, 10], 4)
        rows = step.order[:4].copy()
        labels = step.batches.y[rows]

        def body() -> None:
            step.opt.train_step(step.batches.get(rows), labels)

        class Replay:  # a graph that runs the captured step again: replays must then equal the eager steps
            def launch(self, stream: Any = None) -> None:
                body()

        stream = cp.cuda.Stream(non_blocking=True)
        with stream:
            start = [a.copy() for a in targets._state(step)]
            out = targets._replay_against_eager(cp, stream, Replay(), body, step, start,
                                                [cp.empty_like(a) for a in start], 3)
        assert out["max_abs_difference_after"] == 0.0 and out["steps"] == 3
        assert out["eager_seconds_per_step"] > 0 and out["replay_seconds_per_step"] > 0
        assert not any(bool((a == s).all()) for a, s in zip(targets._state(step), start))  # it trained


class _ColumnMajorSgemm:
    """libcublas's calls as CublasDirect makes them, on host memory (the stand-in's device memory is host memory):
    ``cublasSgemm_v2`` computes ``C = alpha op(A) op(B) + beta C`` on column-major matrices, as cuBLAS does."""

    def __init__(self) -> None:
        self.streams: list[int] = []

    def cublasCreate_v2(self, handle: Any) -> int:
        return 0

    def cublasSetStream_v2(self, handle: Any, stream: Any) -> int:
        self.streams.append(stream.value)
        return 0

    def cublasSgemm_v2(self, handle: Any, ta: int, tb: int, m: int, n: int, k: int, alpha: Any, A: Any, lda: int,
                       B: Any, ldb: int, beta: Any, C: Any, ldc: int) -> int:
        import ctypes

        import numpy as np

        def matrix(ptr: Any, rows: int, cols: int, ld: int) -> Any:  # column-major, ld ≥ rows
            assert ld >= rows
            memory = (ctypes.c_float * (ld * cols)).from_address(ptr.value)
            return np.frombuffer(memory, np.float32).reshape(cols, ld).T[:rows]

        a = matrix(A, *((m, k) if ta == 0 else (k, m)), lda)
        b = matrix(B, *((k, n) if tb == 0 else (n, k)), ldb)
        c = matrix(C, m, n, ldc)
        c[...] = alpha.contents.value * ((a if ta == 0 else a.T) @ (b if tb == 0 else b.T)) + beta.contents.value * c
        return 0


@needs_compiler
def test_direct_cublas_products_equal_the_librarys_for_every_layout_a_step_uses() -> None:
    """X W (forward), Xᵀ dZ into the gradient with beta (dW), dZ Wᵀ (dX): row-major arrays, transposed views."""
    import numpy as np

    from gpu_backprop import kernels

    rng = np.random.default_rng(5)
    x, w, dz, g = (rng.standard_normal(shape).astype(np.float32) for shape in ((7, 5), (5, 3), (7, 3), (5, 3)))
    with stand_in() as cp:
        lib = _ColumnMajorSgemm()
        direct = targets.CublasDirect(lib, 1234)
        assert lib.streams == [1234]
        cases = [((x, w), None, 1.0, 0.0), ((x.T, dz), g, 0.5, 1.0), ((dz, w.T), None, 1.0, 0.0)]
        for (a, b), start, alpha, beta in cases:
            expected = np.zeros((a.shape[0], b.shape[1]), np.float32) if start is None else start.copy()
            kernels.matmul(a, b, expected, alpha, beta)  # the NumPy body
            out = cp.asarray(expected * 0 + 3 if start is None else start)
            got = direct.matmul(cp.asarray(a.T).T if a.flags.f_contiguous else cp.asarray(a),
                                cp.asarray(b.T).T if b.flags.f_contiguous else cp.asarray(b), out, alpha, beta)
            assert got is out
            np.testing.assert_allclose(out.get(), expected, rtol=1e-5, atol=1e-6)
        with pytest.raises(TypeError, match="float32"):
            direct.matmul(cp.asarray(x.astype(np.float64)), cp.asarray(w), cp.empty((7, 3), np.float32))


def test_the_step_s_products_go_through_the_probe_s_gemm_and_come_back() -> None:
    import numpy as np

    import gpu_backprop as gb
    from gpu_backprop import kernels
    from gpu_backprop.kernels import linalg

    calls = []

    def counted(a: Any, b: Any, out: Any, alpha: float = 1.0, beta: float = 0.0, batch: int | None = None) -> Any:
        calls.append(out.shape)
        return linalg_matmul(a, b, out, alpha, beta, batch)

    linalg_matmul = linalg.matmul
    net = gb.MLP([6, 5, 3], backend="numpy", seed=0)
    opt = gb.SGD(net, lr=0.1, momentum=0.9)
    X, y = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32), np.array([0, 1, 2, 0])
    with targets._products_through(counted):
        opt.train_step(X, y)
    assert sorted(calls) == sorted([(4, 5), (4, 3), (6, 5), (5, 3), (4, 5)])  # X W twice, dW twice, one dX
    assert kernels.matmul is linalg_matmul and linalg.matmul is linalg_matmul
