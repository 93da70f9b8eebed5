"""Data-parallel training over MPI: R ranks equal 1 process, faults stop the job, bad setups are refused.

The MPI tests start real jobs with ``mpiexec -n 2`` (some with 3 and 4; each
a second or two, the command-line ones a few seconds) and skip, saying why, where
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
from typing import Any

import numpy as np
import pytest

import gpu_backprop as gb
from gpu_backprop import distributed
from gpu_backprop.distributed import (
    SingleProcess,
    init_distributed,
    launcher_mismatch,
    launcher_world,
    mpiexec_path,
)

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("_distributed_worker.py")
sys.path.insert(0, str(WORKER.parent))
from _distributed_worker import toy, train  # noqa: E402

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


def _single_process(dtype: str, batch: int, epochs: int = 3) -> Any:
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
@pytest.mark.parametrize("dtype,rtol,batch", [("float64", 1e-10, 21), ("float32", 1e-4, 16)])
def test_two_ranks_equal_one_process(tmp_path: Path, dtype: str, rtol: float, batch: int) -> None:
    # batch 21: shards of 11 and 10 rows, and a last batch of 96 - 4 * 21 = 12; batch 16: even shards throughout
    proc = _worker(2, tmp_path / "w.npz", "--dtype", dtype, "--batch", str(batch), "--manual")
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = np.load(tmp_path / "w.npz")
    one = _single_process(dtype, batch)
    assert not np.allclose(one, _single_process(dtype, batch - 1), rtol=rtol), "the test cannot tell the batches apart"
    np.testing.assert_allclose(saved["params"], one, rtol=rtol, atol=rtol * 1e-2)
    # fit keeps the contract written out as a plain loop (shard r of the shared permutation, one all-reduce)
    np.testing.assert_allclose(saved["manual"], saved["params"], rtol=1e-12 if dtype == "float64" else 1e-6)


#: (samples, global batch) pairs: the last batch of 100 with batch 16 has 4 rows (the issue's case for 2 and 4
#: ranks: dropped before); 97 with 12 leaves a last batch of 1 row, fewer than the ranks (the others get none);
#: a batch of 3 splits unevenly over 2 ranks, evenly over 3, and leaves one of 4 ranks without rows every step
SWEEP = ((100, 16), (97, 12), (40, 3))


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_ranks_equal_one_process_for_any_data_set_and_batch(tmp_path: Path, ranks: int) -> None:
    pairs = ",".join(f"{n}:{b}" for n, b in SWEEP)
    proc = _worker(ranks, tmp_path / "w.npz", "--sweep", pairs, "--epochs", "2", "--collectives", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "collectives ok" in proc.stdout
    saved = np.load(tmp_path / "w.npz")
    for i, (n, batch) in enumerate(SWEEP):
        params, history, steps = train(None, "float64", n, batch, epochs=2)
        assert int(saved[f"steps{i}"]) == steps == 2 * -(-n // batch), (n, batch)  # the last partial batch too
        np.testing.assert_allclose(saved[f"params{i}"], params, rtol=1e-10, atol=1e-12, err_msg=f"{n}:{batch}")
        # the loss and accuracy fit reports are those of all the rows, as one process's are
        np.testing.assert_allclose(saved[f"loss{i}"], history.metric("loss"), rtol=1e-10, err_msg=f"{n}:{batch}")
        np.testing.assert_array_equal(saved[f"accuracy{i}"], history.metric("accuracy"), err_msg=f"{n}:{batch}")


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
    # the worker asks for the check through the communicator: init_distributed('mpi', check_every=5)
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
def test_an_open_mpi_launcher_with_mpich_is_told_which_mpiexec_to_use(tmp_path: Path) -> None:
    # what Open MPI's mpiexec sets for each rank; MPICH from PyPI would abort in MPI_Init ("unsupported PMI
    # version PMIx", an error stack per rank): instead, one sentence before MPI starts, exit status 2
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_"))}
    env.update(PYTHONPATH=str(ROOT), OMPI_COMM_WORLD_RANK="0", OMPI_COMM_WORLD_SIZE="2", PMIX_RANK="0",
               PMIX_NAMESPACE="prterun-host-12345@1")
    code = "import mpi4py.MPI as M; print(M.Get_library_version().split(chr(10))[0])"
    library = subprocess.run([sys.executable, "-c", "import mpi4py; mpi4py.rc.initialize = False; " + code],
                             check=True, capture_output=True, text=True, timeout=60).stdout
    if not library.startswith("MPICH") or "pmix" in library.lower():
        pytest.skip(f"mpi4py uses {library.strip()}, not an MPICH without PMIx")
    proc = subprocess.run([sys.executable, "-m", "gpu_backprop", "train", "--dataset", "mnist-sample", "--epochs", "1",
                           "--distributed", "mpi", "--out", str(tmp_path / "run")], check=False, capture_output=True,
                          text=True, timeout=60, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Fatal error" not in proc.stderr, proc.stderr[-2000:]
    assert lines[0].startswith("error: this process was started by Open MPI's mpiexec (OMPI_COMM_WORLD_SIZE and "
                               "PMIX_NAMESPACE are set), but mpi4py uses MPICH"), lines[0]
    assert f"start it with MPICH's mpiexec instead: {distributed._mpiexec_for('MPICH')} -n 2 python" in lines[0]
    assert not (tmp_path / "run").exists()  # the command line made --out, wrote nothing in it, and removed it


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
    # a global batch of 127 that neither the ranks nor the 8,000 training digits divide (refused before)
    common = ("-m", "gpu_backprop", "train", "--dataset", "mnist-sample", "--hidden", "32", "--distributed", "mpi",
              "--batch-size", "127", "--json", "--no-progress", "--out", str(tmp_path / "run"))
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
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_a_global_batch_is_cut_into_contiguous_shards_of_nearly_equal_rows(size: int) -> None:
    for b in range(13):
        rows = np.arange(100, 100 + b)
        shards = [distributed.shard_rows(rows, r, size) for r in range(size)]
        np.testing.assert_array_equal(np.concatenate(shards), rows)  # every row once, in order
        assert [len(s) for s in shards] == [b // size + (r < b % size) for r in range(size)]


def test_a_single_process_weighs_its_buffer_as_the_only_rank() -> None:
    comm = SingleProcess()
    a = np.arange(4.0)
    comm.allreduce_weighted_mean_(a, 8, 8)  # the whole batch: unchanged
    np.testing.assert_array_equal(a, np.arange(4.0))
    comm.allreduce_weighted_mean_(a, 2, 8)
    np.testing.assert_array_equal(a, np.arange(4.0) / 4)
    b = np.full(3, np.nan)
    comm.allreduce_weighted_mean_(b, 0, 8)  # no rows: nothing of the buffer counts
    np.testing.assert_array_equal(b, np.zeros(3))
    with pytest.raises(ValueError, match="takes a weight from 0 to the total 8 .this rank's rows., got 9"):
        comm.allreduce_weighted_mean_(a, 9, 8)
    with pytest.raises(ValueError, match="needs a positive total"):
        comm.allreduce_weighted_mean_(a, 0, 0)
    with pytest.raises(TypeError, match="averages float32 or float64 arrays, got int64"):
        comm.allreduce_weighted_mean_(np.arange(3), 1, 2)


def test_check_every_belongs_to_the_communicator() -> None:
    assert init_distributed("none").check_every is None
    comm = init_distributed("none", check_every=7)
    assert comm.check_every == 7
    comm.check_every = None
    assert comm.check_every is None
    for bad in (0, -3, 2.5, True, "5"):
        with pytest.raises(ValueError, match=f"check_every must be a positive number of steps or None, got {bad!r}"):
            init_distributed("none", check_every=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="check_every must be a positive number of steps"):
            comm.check_every = bad  # type: ignore[assignment]


OPEN_MPI_RANK = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
                 "PMIX_RANK": "1", "PMIX_NAMESPACE": "prterun-host-4242@1", "PMIX_SERVER_URI41": "prterun-host-4242@0.0"}
HYDRA_RANK = {"PMI_RANK": "1", "PMI_SIZE": "4", "PMI_FD": "7", "MPI_LOCALNRANKS": "4"}
MPICH_WHEEL = ("MPICH Version:      5.0.2\nMPICH Release date: Fri Sep 25 2026\nMPICH Device:       ch4:ucx ofi\n"
               "MPICH configure:    --with-device=ch4:ucx,ofi --with-pm=hydra:gforker\n")
OPEN_MPI = "Open MPI v5.0.6, package: Open MPI builder Distribution, ident: 5.0.6, repo rev: v5.0.6, Nov 15, 2024"


@pytest.mark.parametrize("beside", [True, False])
def test_an_mpich_library_under_a_pmix_launcher_names_the_mpiexec_to_use(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, beside: bool) -> None:
    # a virtual environment with the mpich wheel (mpiexec and mpiexec.hydra beside python), or without
    (tmp_path / "bin").mkdir()
    for name in ("python", "mpiexec", "mpiexec.hydra") if beside else ("python",):
        (tmp_path / "bin" / name).touch()
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    use = f"{tmp_path / 'bin' / 'mpiexec'}" if beside else "mpiexec.hydra"
    said = launcher_mismatch(MPICH_WHEEL, OPEN_MPI_RANK)
    assert said == ("this process was started by Open MPI's mpiexec (OMPI_COMM_WORLD_SIZE and PMIX_NAMESPACE are "
                    "set), but mpi4py uses MPICH Version: 5.0.2, built without PMIx, which cannot join that job "
                    "(MPI would abort every rank with \"unsupported PMI version PMIx\"); start it with MPICH's "
                    f"mpiexec instead: {use} -n 4 python ...")
    slurm = {"PMIX_RANK": "0", "PMIX_NAMESPACE": "slurm.pmix.77.0", "SLURM_PROCID": "0"}
    said = launcher_mismatch(MPICH_WHEEL, slurm)
    assert said is not None and said.startswith("this process was started by a PMIx launcher (PMIX_NAMESPACE is set)")
    assert f"MPICH's mpiexec (under Slurm, srun --mpi=pmi2) instead: {use} -n N python ..." in said


def test_launchers_that_suit_the_library_pass() -> None:
    assert launcher_mismatch(MPICH_WHEEL, HYDRA_RANK) is None  # MPICH's own mpiexec
    assert launcher_mismatch(MPICH_WHEEL, {}) is None  # no launcher: a job of one
    assert launcher_mismatch(OPEN_MPI, OPEN_MPI_RANK) is None  # Open MPI's own
    assert launcher_mismatch(MPICH_WHEEL.replace("--with-pm=hydra", "--with-pmix=/usr"), OPEN_MPI_RANK) is None
    assert launcher_mismatch("Intel(R) MPI Library 2021.13 for Linux* OS", OPEN_MPI_RANK) is None  # not judged
    # the sizes tell the other mismatches apart after MPI_Init (test_an_mpiexec_from_another_mpi_is_refused)
    assert launcher_mismatch(OPEN_MPI, HYDRA_RANK) is None


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


RANK_SCRIPT = """
import sys
import numpy as np, gpu_backprop as gb
from gpu_backprop.distributed import init_distributed
comm = init_distributed("mpi")
rng = np.random.default_rng(0)

def say(verdict: str) -> None:  # to a file of the rank's own (the ranks' lines on one stdout can interleave)
    with open(f"{sys.argv[1]}.rank{comm.rank}", "w") as f:
        f.write(verdict)
"""


def _verdicts(tmp_path: Path, body: str, ranks: int = 2) -> list[str]:
    """Run ``RANK_SCRIPT`` + ``body`` on ``ranks`` ranks over MPI; what each rank passed to ``say``, by rank."""
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT + body)
    proc = _launch(ranks, str(script), str(tmp_path / "out"), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [(tmp_path / f"out.rank{r}").read_text() for r in range(ranks)]


EARLY_STOPPING_WITH_BATCHNORM = """
y = rng.integers(0, 3, 400)
X = rng.normal(0, 1, (400, 10)) + np.eye(3, 10)[y] * 0.5
net = gb.MLP([10, 16, 3], batchnorm=True, backend="numpy", dtype="float64", seed=0)
h = gb.fit(net, gb.SGD(net, lr=0.01, momentum=0.9), X, y, epochs=60, batch_size=8, seed=1, progress=False,
           comm=comm, validation_fraction=0.25, patience=1)
say(f"stopped after {len(h.epochs)} epochs at {h.epochs[-1]['val_loss']!r}")
"""


VALIDATION_ON_RANK_0_ONLY = """
y = rng.integers(0, 3, 200)
X = rng.normal(0, 1, (200, 10)) + np.eye(3, 10)[y]
net = gb.MLP([10, 8, 3], backend="numpy", dtype="float64", seed=0)
h = gb.fit(net, gb.SGD(net, lr=0.1), X[:150], y[:150], epochs=2, batch_size=10, progress=False, comm=comm,
           validation=(X[150:], y[150:]) if comm.rank == 0 else None)
say(repr([e["val_loss"] for e in h.epochs]))
"""


@needs_mpi
def test_validation_data_on_rank_0_alone_is_every_ranks(tmp_path: Path) -> None:
    said = _verdicts(tmp_path, VALIDATION_ON_RANK_0_ONLY)
    assert said[0] == said[1] and said[0].startswith("[") and "nan" not in said[0], said


@needs_mpi
def test_ranks_whose_batchnorm_statistics_differ_stop_early_together(tmp_path: Path) -> None:
    """Each rank's running statistics are its own, so is its validation loss: all decide on rank 0's."""
    said = _verdicts(tmp_path, EARLY_STOPPING_WITH_BATCHNORM)  # (had each stopped on its own, one would wait)
    assert said[0].startswith("stopped after") and said[0] == said[1], said


@needs_mpi
def test_a_flag_refused_on_one_rank_alone_stops_the_whole_job(tmp_path: Path) -> None:
    """The communicator starts before the flags are checked: a rank that refuses them stops the others."""
    train = ["-m", "gpu_backprop", "train", "--dataset", "mnist-sample", "--epochs", "1", "-b", "500", "--hidden", "8",
             "--no-progress", "--distributed", "mpi"]
    proc = _launch(1, *train, ":", "-n", "1", sys.executable, *train,  # (_launch runs `mpiexec -n 1 python ...`)
                   "--resume", str(tmp_path / "missing.npz"), timeout=120)  # rank 1 alone: its file is not there
    assert proc.returncode == 2 and "--resume" in proc.stdout + proc.stderr and "does not exist" in proc.stderr
