"""The CPU runtime of the NumPy bodies: a thread pool, cache-sized row blocks, and BLAS dispatch.

NumPy's elementwise functions run on one core; the work of a large step is
memory-bound, so the bodies split it across the cores (NumPy releases the
GIL) and into blocks of rows that stay in cache between passes. The matrix
products go to SciPy's BLAS where that is measured to pay (see
:func:`gemm_call`), with BLAS threads set up for single-sample steps
(:func:`blas_threads`). Every machine-tuned constant is here, with what it
was measured on.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..backend import Backend

Array = Any

#: below this many elements a thread hand-off costs more than it saves (measured on a 2-core EPYC)
PARALLEL_MIN = 1 << 20
#: worker threads of the pool (the cores, at most 8: the passes are memory-bound beyond that)
WORKERS = min(os.cpu_count() or 1, 8)
#: a row block of 256 KB stays in L2 between the passes over it
BLOCK_BYTES = 1 << 18
#: batches from 2 to this many rows run their products on SciPy's BLAS (see :func:`gemm_call`; measured
#: on a 2-core EPYC: +43% samples/s at batch 32, +18% at 128, +6% at 512, none at 1024; SciPy's OpenBLAS
#: is a little slower than NumPy's on large products; one row stays on NumPy's gemv on one thread: SciPy's
#: gemm with one row measured 2x slower, its gemv on two threads 5-8% slower)
SCIPY_MAX_BATCH = 512

_pool: Any = None
_scipy_blas: Any = None  # scipy.linalg.blas once looked for; False when SciPy is not installed


def in_parallel(body: Any, n: int, min_n: int = PARALLEL_MIN) -> list[Any]:
    """Run ``body(slice)`` over ``range(n)`` split across the CPU cores (NumPy releases the GIL).

    Elementwise NumPy is single-threaded; an optimiser step over a few million
    parameters is memory-bound, and two cores move about twice the bytes.
    Returns what ``body`` returned for each slice, in the order of the slices
    (never in the order the threads finished, which depends on timing).
    """
    global _pool
    workers = WORKERS
    if n < min_n or workers == 1:
        return [body(slice(0, n))]
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(workers, thread_name_prefix="gpu_backprop")
    step = -(-n // workers)
    step = -(-step // 64) * 64  # keep chunk boundaries aligned
    return list(_pool.map(body, [slice(i, min(i + step, n)) for i in range(0, n, step)]))


def in_row_blocks(body: Any, n_rows: int, row_bytes: int) -> None:
    """Run ``body(rows)`` over cache-sized blocks of rows, the blocks split across the CPU cores.

    For the elementwise work on large batches (a full batch is 60,000 rows):
    several passes over one block hit the cache instead of memory, and two
    cores move about twice the bytes. Small arrays take one call, as before.
    """
    if n_rows * row_bytes < 4 * PARALLEL_MIN:
        body(slice(0, n_rows))
        return
    per_block = max(1, BLOCK_BYTES // row_bytes)

    def part(sl: slice) -> None:
        lo, hi, _ = sl.indices(n_rows)
        for i in range(lo, hi, per_block):
            body(slice(i, min(i + per_block, hi)))

    in_parallel(part, n_rows, min_n=0)


def scipy_blas() -> Any:
    """``scipy.linalg.blas``, or None without SciPy (it is optional: ``pip install 'gpu_backprop[cpu]'``)."""
    global _scipy_blas
    if _scipy_blas is None:
        try:
            from scipy.linalg import blas as _scipy_blas
        except ImportError:
            _scipy_blas = False
    return _scipy_blas or None


def defers_weight_grads(backend: str, batch: int, nesterov: bool) -> bool:
    """Whether an SGD step should take ``dW = Xᵀ dZ`` into :func:`.updates.sgd_update` instead of ``flat_grads``.

    On NumPy with SciPy's BLAS, for one sample (``ger`` into the velocity instead of
    writing a rank-1 matrix out and reading it back) and for batches of up to
    ``SCIPY_MAX_BATCH`` rows without Nesterov momentum (``gemm`` with ``beta = 1``;
    Nesterov would need ``dW`` twice). Measured on a 2-core EPYC: mlp-1024 +43%
    samples/s at batch 32, +18% at 128, nothing at 1024 (see :data:`SCIPY_MAX_BATCH`).
    """
    if backend != "numpy" or scipy_blas() is None:
        return False
    return batch == 1 or (not nesterov and batch <= SCIPY_MAX_BATCH)


def blas_function(name: str, like: Array) -> Any:
    """SciPy's BLAS routine ``name`` (``"axpy"``, ``"scal"``, ``"ger"``) for arrays like ``like``, or None.

    None without SciPy, and for anything but a plain float32/float64 ndarray (a
    subclass such as the launch counter's traced arrays takes the NumPy route).
    """
    blas = scipy_blas()
    if blas is None or type(like) is not np.ndarray or like.dtype.char not in "fd":
        return None
    return blas.get_blas_funcs(name, (like,))


def axpy(a: float, x: Array, y: Array, scratch: Array, blas: bool = False) -> None:
    """``y += a·x`` in place over 1-D arrays; ``x`` may be ``y`` itself.

    ``blas``: SciPy's BLAS ``axpy`` where it applies (one pass, its own threads);
    otherwise NumPy across the cores, through ``scratch`` (like ``y``). Use BLAS
    only where SciPy's BLAS ran the step's products: one OpenBLAS's idle workers
    spin for about 0.1 s after each call, and NumPy's and SciPy's, each woken in
    turn, spin against each other (measured: an update on SciPy's BLAS after
    products on NumPy's made a 1024-row step of mlp-1024 twice as slow).
    """
    f = blas_function("axpy", y) if blas else None
    if f is not None and x.dtype == y.dtype and y.flags.c_contiguous and x.flags.c_contiguous:
        f(x, y, a=a)
        return

    def body(sl: slice) -> None:
        np.multiply(x[sl], a, out=scratch[sl])
        np.add(y[sl], scratch[sl], out=y[sl])

    in_parallel(body, y.shape[0])


def scal(a: float, x: Array, blas: bool = False) -> None:
    """``x *= a`` in place over a 1-D array: SciPy's BLAS ``scal`` if ``blas`` (see :func:`axpy`), else NumPy."""
    f = blas_function("scal", x) if blas else None
    if f is not None and x.flags.c_contiguous:
        f(a, x)
        return
    in_parallel(lambda sl: np.multiply(x[sl], a, out=x[sl]), x.shape[0])


def gemm_call(a: Array, b: Array, out: Array, batch: int | None = None) -> tuple[Any, tuple[Any, int],
                                                                                 tuple[Any, int]] | None:
    """SciPy's ``?gemm`` and its operands for ``out = a b``, or None where it does not apply.

    BLAS is column-major: ``outᵀ = bᵀ aᵀ``, and the transpose of a row-major array is a
    column-major one, so every operand that is row-major or a transposed view of one is
    read in place (a ``trans`` flag instead of a copy); ``out`` must be row-major. Plain
    ndarrays only: a subclass (such as the launch counter's traced arrays) takes
    ``numpy.matmul``, which it can see.
    """
    blas = scipy_blas()
    if not 2 <= (out.shape[0] if batch is None else batch) <= SCIPY_MAX_BATCH:
        return None
    if (blas is None or type(out) is not np.ndarray or out.ndim != 2 or out.shape[0] < 2
            or not out.flags.c_contiguous or out.dtype.char not in "fd"):
        return None
    ops = []
    for m in (b, a):
        if type(m) is not np.ndarray or m.ndim != 2 or m.dtype != out.dtype or np.may_share_memory(m, out):
            return None
        mt = m.T
        if mt.flags.f_contiguous:
            ops.append((mt, 0))
        elif mt.flags.c_contiguous:
            ops.append((m, 1))
        else:
            return None
    return blas.get_blas_funcs("gemm", (out,)), ops[0], ops[1]


def blas_threads(backend: Backend, batch: int) -> contextlib.AbstractContextManager[Any]:
    """A context that sets BLAS threads up for training steps of ``batch`` rows on ``backend``.

    It acts on single-sample steps on the CPU only (NumPy backend, ``batch == 1``);
    for other batches and backends, and without ``threadpoolctl``
    (``pip install 'gpu_backprop[cpu]'``), it does nothing. Per-sample steps are
    matrix–vector products (NumPy's BLAS) and rank-1 updates (SciPy's BLAS, see
    ``SGD.train_step``). Measured on 2 cores, they run fastest with NumPy's BLAS
    on one thread — its idle workers otherwise spin against SciPy's, which
    loads a second OpenBLAS — and SciPy's on all.
    """
    if backend.name != "numpy" or batch != 1:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return contextlib.nullcontext()
    controller = ThreadpoolController()
    numpy_blas = [i["filepath"] for i in controller.info()
                  if i.get("user_api") == "blas" and "numpy" in i["filepath"]]
    if not numpy_blas:  # NumPy on a system BLAS: nothing of its own to tell apart
        return controller.limit(limits=1, user_api="blas")
    return controller.select(filepath=numpy_blas).limit(limits=1)
