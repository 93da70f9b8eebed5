"""Data-parallel training over MPI: 2 ranks equal 1 process, faults stop the job, bad setups are refused.

These start real MPI jobs with ``mpiexec -n 2`` and skip (saying why) where
mpi4py or mpiexec is missing; ``pip install -e '.[test,mpi]'`` brings both.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import gpu_backprop as gb
from gpu_backprop.distributed import Communicator, SingleProcess, init_distributed

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("_distributed_worker.py")


def _mpiexec() -> str | None:
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


try:
    import mpi4py  # noqa: F401

    MPI_PROBLEM = None if _mpiexec() else "mpiexec not found (pip install '.[mpi]')"
except ImportError:
    MPI_PROBLEM = "mpi4py is not installed (pip install '.[mpi]')"

needs_mpi = pytest.mark.skipif(MPI_PROBLEM is not None, reason=MPI_PROBLEM or "")


def _launch(n: int, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_mpiexec(), "-n", str(n), sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _single_process(dtype: str, batch: int) -> np.ndarray:
    sys.path.insert(0, str(WORKER.parent))
    from _distributed_worker import toy

    X, y = toy()
    net = gb.MLP([10, 8, 3], activation="tanh", backend="numpy", dtype=dtype, seed=0)
    gb.fit(net, gb.SGD(net, lr=0.1, momentum=0.9), X.astype(dtype), y, epochs=3, batch_size=batch, seed=4,
           progress=False)
    return net.flat_params


@needs_mpi
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-4)])
def test_two_ranks_equal_one_process(tmp_path: Path, dtype: str, rtol: float) -> None:
    proc = _launch(2, str(WORKER), str(tmp_path / "w.npz"), dtype, "16")
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = np.load(tmp_path / "w.npz")["params"]
    one = _single_process(dtype, 16)
    np.testing.assert_allclose(two, one, rtol=rtol, atol=rtol * 1e-2)


@needs_mpi
def test_a_rank_that_raises_stops_the_job(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    proc = _launch(2, str(WORKER), str(tmp_path / "w.npz"), "float64", "16", "1", "3", timeout=60)
    assert time.perf_counter() - t0 < 60
    assert proc.returncode != 0
    assert "rank 1" in proc.stderr + proc.stdout and "injected failure" in proc.stderr + proc.stdout
    assert not (tmp_path / "w.npz").exists()


@needs_mpi
def test_the_command_line_trains_on_two_ranks(tmp_path: Path) -> None:
    proc = _launch(2, "-m", "gpu_backprop", "train", "--dataset", "mnist-sample", "--epochs", "1", "--hidden", "32",
                   "--distributed", "mpi", "--json", "--no-progress", "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    json_lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(json_lines) == 1  # rank 0 only
    assert json.loads(json_lines[0])["test_accuracy"] > 0.8
    assert (tmp_path / "run" / "checkpoint.npz").exists()


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
    assert isinstance(comm, SingleProcess) and comm.size == 1 and comm.rank == 0
    a = np.arange(4.0)
    comm.allreduce_mean_(a)
    np.testing.assert_array_equal(a, np.arange(4.0))
    with pytest.raises(ValueError, match="unknown distributed engine 'gloo'"):
        init_distributed("gloo")
