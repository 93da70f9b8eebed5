"""Data-parallel training over MPI: 2 ranks equal 1 process, faults stop the job, bad setups are refused.

The MPI tests start real jobs with ``mpiexec -n 2`` (each well under a
second, the command-line ones a few seconds) and skip, saying why, where
mpi4py or mpiexec is missing; ``pip install -e '.[test,mpi]'`` brings both
(MPICH from PyPI). An Open MPI ``mpiexec`` works too: the launches set the
variables it needs to run as root and with more ranks than cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import gpu_backprop as gb
from gpu_backprop import distributed
from gpu_backprop.distributed import Communicator, SingleProcess, init_distributed, launcher_world, mpiexec_path

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("_distributed_worker.py")
sys.path.insert(0, str(WORKER.parent))
from _distributed_worker import toy  # noqa: E402

if importlib.util.find_spec("mpi4py") is None:
    MPI_PROBLEM: str | None = "mpi4py is not installed (pip install -e '.[mpi]')"
elif mpiexec_path() is None:
    MPI_PROBLEM = "mpiexec not found (pip install -e '.[mpi]' brings MPICH's)"
else:
    MPI_PROBLEM = None

needs_mpi = pytest.mark.skipif(MPI_PROBLEM is not None, reason=MPI_PROBLEM or "")


def _launch(n: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``mpiexec -n N python ARGS`` from the repository root, its output captured."""
    env = {**os.environ, **distributed.OPEN_MPI_ENV, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([mpiexec_path() or "mpiexec", "-n", str(n), sys.executable, *args], check=False,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def _worker(n: int, out: Path, *flags: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return _launch(n, str(WORKER), str(out), *flags, timeout=timeout)


def _single_process(dtype: str, batch: int, epochs: int = 3) -> np.ndarray:
    """What the worker's training gives in one process with the same global batch."""
    X, y = toy()
    net = gb.MLP([10, 8, 3], activation="tanh", backend="numpy", dtype=dtype, seed=0)
    gb.fit(net, gb.SGD(net, lr=0.1, momentum=0.9), X.astype(dtype), y, epochs=epochs, batch_size=batch, seed=4,
           progress=False)
    return net.flat_params


# --------------------------------------------------------------------------
# Semantics
# --------------------------------------------------------------------------
@needs_mpi
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-4)])
def test_two_ranks_equal_one_process(tmp_path: Path, dtype: str, rtol: float) -> None:
    proc = _worker(2, tmp_path / "w.npz", "--dtype", dtype, "--batch", "16", "--manual")
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = np.load(tmp_path / "w.npz")
    one = _single_process(dtype, 16)
    assert not np.allclose(one, _single_process(dtype, 8), rtol=rtol), "the test cannot tell batch 8 from batch 16"
    np.testing.assert_allclose(saved["params"], one, rtol=rtol, atol=rtol * 1e-2)
    # fit keeps the contract written out as a plain loop (shard r of the shared permutation, one all-reduce)
    np.testing.assert_allclose(saved["manual"], saved["params"], rtol=1e-12 if dtype == "float64" else 1e-6)


@needs_mpi
def test_each_collective_gives_what_it_says_on_every_rank(tmp_path: Path) -> None:
    proc = _worker(2, tmp_path / "w.npz", "--collectives", "--epochs", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "collectives ok" in proc.stdout
    assert re.search(r"2 ranks \(mpi, .*\): rank 0 = pid \d+ on .*, rank 1 = pid \d+", proc.stdout), proc.stdout


@needs_mpi
def test_a_distributed_run_resumes_exactly(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.npz"
    first = _worker(2, tmp_path / "a.npz", "--epochs", "2", "--checkpoint", str(ckpt))
    assert first.returncode == 0, first.stderr[-2000:]
    second = _worker(2, tmp_path / "b.npz", "--epochs", "3", "--resume", str(ckpt))
    assert second.returncode == 0, second.stderr[-2000:]
    resumed = np.load(tmp_path / "b.npz")["params"]
    np.testing.assert_allclose(resumed, _single_process("float64", 16, epochs=3), rtol=1e-10, atol=1e-12)
    assert not np.allclose(np.load(tmp_path / "a.npz")["params"], resumed)  # epoch 3 did happen


# --------------------------------------------------------------------------
# Faults: the job ends, within seconds, naming the rank
# --------------------------------------------------------------------------
@needs_mpi
def test_a_rank_that_raises_stops_the_job(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    proc = _worker(2, tmp_path / "w.npz", "--fail-rank", "1", "--fail-step", "3", timeout=30)
    assert time.perf_counter() - t0 < 30
    assert proc.returncode != 0
    assert "rank 1: RuntimeError: injected failure at step 3; stopping all 2 ranks" in proc.stderr
    assert not (tmp_path / "w.npz").exists()


@needs_mpi
def test_a_rank_that_exits_inside_the_guard_stops_the_job(tmp_path: Path) -> None:
    # sys.exit on one rank would leave the other waiting in its all-reduce for ever; the guard aborts instead
    proc = _worker(2, tmp_path / "w.npz", "--fail-rank", "1", "--fail-how", "exit", "--guard", timeout=30)
    assert proc.returncode != 0
    assert "rank 1: SystemExit: 3 (during training); stopping all 2 ranks" in proc.stderr
    assert not (tmp_path / "w.npz").exists()


@needs_mpi
def test_a_rank_that_is_killed_stops_the_job_and_the_pid_names_it(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    proc = _worker(2, tmp_path / "w.npz", "--fail-rank", "1", "--fail-how", "kill", timeout=30)
    assert time.perf_counter() - t0 < 30
    assert proc.returncode != 0
    pid = re.search(r"rank 1 = pid (\d+)", proc.stdout)
    assert pid, proc.stdout
    said = proc.stdout + proc.stderr  # MPICH's launcher names the pid; Open MPI's the rank and the pid
    assert f"PID {pid.group(1)}" in said or re.search(rf"rank 1 with PID {pid.group(1)}", said), said[-2000:]
    assert not (tmp_path / "w.npz").exists()


@needs_mpi
def test_ranks_that_drift_apart_are_caught(tmp_path: Path) -> None:
    proc = _worker(2, tmp_path / "w.npz", "--perturb-rank", "1", timeout=30)
    assert proc.returncode != 0
    assert re.search(r"rank \d: RuntimeError: the weights after step 5 differ from rank 0's on rank 1 by up to "
                     r"0\.\d+: the ranks have diverged", proc.stderr), proc.stderr[-2000:]


@needs_mpi
def test_a_diverging_run_stops_on_every_rank_at_the_same_step(tmp_path: Path) -> None:
    # rank 0 would refresh (and look at its loss) every step and rank 1 never: they must still agree
    proc = _worker(2, tmp_path / "w.npz", "--activation", "relu", "--lr", "1e10", "--dtype", "float32",
                   "--rank-refresh", timeout=30)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reasons = [(tmp_path / f"w.npz.rank{r}.txt").read_text() for r in (0, 1)]
    assert reasons[0].startswith("stopped: training diverged"), reasons
    assert reasons[0] == reasons[1]


@needs_mpi
def test_an_mpiexec_from_another_mpi_is_refused() -> None:
    # what each process sees when the launcher's MPI is not mpi4py's: it is alone, but the launcher said 2
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RANK": "0", "WORLD_SIZE": "2"}
    code = "from gpu_backprop.distributed import init_distributed; init_distributed('mpi')"
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode != 0
    assert "the launcher started 2 processes but MPI sees 1" in proc.stderr, proc.stderr[-2000:]


@needs_mpi
def test_the_cupy_code_paths_with_a_stand_in_for_cupy() -> None:
    # NCCL's calls (CuPy's signatures), the device per rank, the NCCL id, dtypes, errors; MPI's host staging
    fake = str(WORKER.with_name("_fake_cupy_worker.py"))
    proc = _launch(2, fake, "ok")
    assert proc.returncode == 0 and "stand-in ok" in proc.stdout, proc.stderr[-3000:]
    proc = _launch(2, fake, "one-gpu")
    assert proc.stdout.count("refused: rank 0 (and 1 other rank(s)): 2 ranks share a node with 1 GPU(s)") == 2
    proc = _launch(2, fake, "one-gpu-each")  # but each rank sees its own GPU (CUDA_VISIBLE_DEVICES): fine
    assert proc.returncode == 0 and "stand-in ok" in proc.stdout, proc.stderr[-3000:]
    proc = _launch(2, fake, "no-nccl")
    assert proc.stdout.count("CuPy cannot load NCCL; install it with `pip install nvidia-nccl-cu12`") == 2


# --------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------
@needs_mpi
def test_the_command_line_trains_and_resumes_on_two_ranks(tmp_path: Path) -> None:
    common = ("-m", "gpu_backprop", "train", "--dataset", "mnist-sample", "--hidden", "32", "--distributed", "mpi",
              "--json", "--no-progress", "--out", str(tmp_path / "run"))
    proc = _launch(2, *common, "--epochs", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    json_lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(json_lines) == 1  # rank 0 only
    assert json.loads(json_lines[0])["test_accuracy"] > 0.8
    assert "2 ranks (mpi" in proc.stderr  # (with --json the lines for people go there)
    ckpt = tmp_path / "run" / "checkpoint.npz"
    assert ckpt.exists()
    proc = _launch(2, *common, "--epochs", "2", "--resume", str(ckpt))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert result["epochs"] == 2 and result["test_accuracy"] > 0.85


@needs_mpi
def test_the_command_line_refuses_a_batch_that_does_not_divide(tmp_path: Path) -> None:
    proc = _launch(2, "-m", "gpu_backprop", "train", "--dataset", "mnist-sample", "--hidden", "8", "--epochs", "1",
                   "--batch-size", "127", "--distributed", "mpi", "--no-progress")
    assert proc.returncode != 0
    assert "the global batch of 127 does not divide across 2 ranks; use a multiple of 2" in proc.stderr


@needs_mpi
def test_the_scaling_benchmark_reports_what_it_measured(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--configs", "1x1", "2x1",
                           "--sizes", "20-16-4", "--batch", "8", "--steps", "3", "--warmup", "1", "--repeats", "1",
                           "--wait-quiet", "0", "--retries", "0", "--name", "test", "--out", str(tmp_path)],
                          check=False, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(next(tmp_path.glob("*-scaling-test.json")).read_text())
    one, two = sorted(report["rows"], key=lambda r: r["ranks"])
    nbytes = gb.MLP([20, 16, 4], backend="numpy").flat_grads.nbytes  # 404 parameters, padded
    assert (one["ranks"], one["allreduce_bytes"], two["ranks"], two["allreduce_bytes"]) == (1, 0, 2, nbytes)
    assert two["parameters"] == 20 * 16 + 16 + 16 * 4 + 4
    assert two["busbw_gb_per_s"] == pytest.approx(two["algbw_gb_per_s"])  # 2 (R - 1) / R = 1 for two ranks
    assert two["shard"] == 4 and two["samples_per_second"] > 0
    assert f"All-reduce volume: {nbytes:,} bytes per step" in next(tmp_path.glob("*-scaling-test.md")).read_text()


# --------------------------------------------------------------------------
# Without MPI
# --------------------------------------------------------------------------
class _FakeComm(Communicator):
    def __init__(self, size: int) -> None:
        self.size, self.rank = size, 0


def test_a_global_batch_that_does_not_divide_is_refused_before_training() -> None:
    X = np.zeros((40, 4), np.float32)
    y = np.zeros(40, int)
    net = gb.MLP([4, 2], backend="numpy")
    with pytest.raises(ValueError, match="does not divide across 3 ranks"):
        gb.fit(net, gb.SGD(net, lr=0.1), X, y, batch_size=10, comm=_FakeComm(3), progress=False)
    with pytest.raises(ValueError, match="5 ranks but only 4"):
        gb.fit(net, gb.SGD(net, lr=0.1), X[:4], y[:4], batch_size="full", comm=_FakeComm(5), progress=False)


def test_single_process_engine_and_names() -> None:
    comm = init_distributed("none")
    assert isinstance(comm, SingleProcess) and comm.size == 1 and comm.rank == 0 and comm.engine == "single"
    a = np.arange(4.0)
    comm.allreduce_mean_(a)
    comm.broadcast_(a)
    comm.check_same("a", a)
    comm.barrier()
    np.testing.assert_array_equal(a, np.arange(4.0))
    assert comm.allreduce_sum_scalar(2.5) == 2.5
    with pytest.raises(ValueError, match="root 1 is not a rank of a single process"):
        comm.broadcast_(a, root=1)
    with pytest.raises(ValueError, match="unknown distributed engine 'gloo'; choose one of none, mpi, nccl"):
        init_distributed("gloo")
    with pytest.raises(KeyError), comm.guard():  # one process: nothing to abort, the error goes on
        raise KeyError("x")


def test_the_launcher_environment_is_read() -> None:
    assert launcher_world({}) is None
    assert launcher_world({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4"}) == (3, 4)
    assert launcher_world({"PMI_RANK": "1", "PMI_SIZE": "2", "RANK": "0", "WORLD_SIZE": "8"}) == (1, 2)
    assert launcher_world({"RANK": "5", "WORLD_SIZE": "8"}) == (5, 8)
    assert launcher_world({"RANK": "x", "WORLD_SIZE": "8"}) is None
    assert launcher_world({"RANK": "8", "WORLD_SIZE": "8"}) is None


def test_no_distribution_under_a_launcher_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.warns(RuntimeWarning, match="rank 1 of 2 processes .* each process trains alone"):
        assert init_distributed("none").size == 1


def test_cuda_aware_detection_can_be_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(distributed.CUDA_AWARE_ENV, "1")
    assert distributed.mpi_cuda_aware() is True
    monkeypatch.setenv(distributed.CUDA_AWARE_ENV, "0")
    assert distributed.mpi_cuda_aware() is False


def test_mpi4py_is_imported_only_when_asked_for() -> None:
    code = ("import sys, gpu_backprop, gpu_backprop.distributed, gpu_backprop.tools.cli; "
            "assert 'mpi4py' not in sys.modules, 'imported'; "
            "gpu_backprop.distributed.init_distributed('none')")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]


# --------------------------------------------------------------------------
# GPUs (skipped without them)
# --------------------------------------------------------------------------
def _gpus() -> int:
    try:
        return gb.backend.cupy_module().cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001 - no CuPy, no driver, no device: all mean none
        return 0


@pytest.mark.gpu
@needs_mpi
@pytest.mark.skipif(_gpus() < 1, reason="needs a CUDA device")
@pytest.mark.parametrize("engine,ranks", [("nccl", 1), ("mpi", 2)])  # NCCL on one GPU; MPI staging CuPy buffers
def test_cupy_buffers_through_each_engine(tmp_path: Path, engine: str, ranks: int) -> None:
    proc = _worker(ranks, tmp_path / "w.npz", "--engine", engine, "--backend", "cupy", "--collectives", "--manual")
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = np.load(tmp_path / "w.npz")
    np.testing.assert_allclose(saved["params"], _single_process("float64", 16), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(saved["manual"], saved["params"], rtol=1e-9, atol=1e-11)


@pytest.mark.gpu
@needs_mpi
@pytest.mark.skipif(_gpus() < 2, reason="needs two CUDA devices")
def test_two_gpus_through_nccl_equal_one_process(tmp_path: Path) -> None:
    proc = _worker(2, tmp_path / "w.npz", "--engine", "nccl", "--backend", "cupy", "--collectives", "--manual")
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "w.npz")["params"], _single_process("float64", 16), rtol=1e-9,
                               atol=1e-11)
