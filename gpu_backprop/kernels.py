"""The elementwise work of a training step: each step once in NumPy, once as a named CuPy kernel.

Matrix products go to BLAS/cuBLAS through ``xp.matmul``; everything between
them is here. Each public function takes its arrays, looks at where they live,
and runs either its NumPy body (the reference) or a CuPy kernel of the same
name, built on first use. The GPU tests compare the two on fresh random inputs.

Activations are written so that their derivatives come from their *outputs*
(``relu' = A > 0``, ``sigmoid' = A(1 - A)``, ``tanh' = 1 - A²``), which is
what lets a Dense layer and its activation share one buffer.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from . import backend

__all__ = [
    "ACTIVATIONS",
    "activation_backward",
    "activation_forward",
    "adam_update",
    "bias_activation",
    "column_sum",
    "dropout_forward",
    "hash_uniform",
    "random_permutation",
    "sgd_update",
    "softmax_cross_entropy",
    "softmax",
]

Array = Any

# --------------------------------------------------------------------------
# Activations: forward f(x) and derivative from the output a = f(x), as C and NumPy.
# --------------------------------------------------------------------------
_ACT_C: dict[str, tuple[str, str]] = {
    "identity": ("x", "(T)1"),
    "relu": ("x > (T)0 ? x : (T)0", "a > (T)0 ? (T)1 : (T)0"),
    "leaky_relu": ("x > (T)0 ? x : (T)alpha * x", "a > (T)0 ? (T)1 : (T)alpha"),
    # 0.5 tanh(x/2) + 0.5 never overflows (exp(-x) does for x < -88 in float32)
    "sigmoid": ("(T)0.5 * tanh((T)0.5 * x) + (T)0.5", "a * ((T)1 - a)"),
    "tanh": ("tanh(x)", "(T)1 - a * a"),
}
ACTIVATIONS = tuple(_ACT_C)


def _np_act_inplace(z: np.ndarray, kind: str, alpha: float) -> None:
    """Apply f in place: z <- f(z)."""
    if kind == "relu":
        np.maximum(z, 0, out=z)
    elif kind == "leaky_relu":
        np.multiply(z, np.where(z > 0, 1.0, alpha).astype(z.dtype, copy=False), out=z)
    elif kind == "sigmoid":
        np.multiply(z, 0.5, out=z)
        np.tanh(z, out=z)
        np.multiply(z, 0.5, out=z)
        np.add(z, 0.5, out=z)
    elif kind == "tanh":
        np.tanh(z, out=z)
    elif kind != "identity":
        raise ValueError(f"unknown activation {kind!r}")


def _np_act_grad(a: np.ndarray, kind: str, alpha: float, out: np.ndarray) -> np.ndarray:
    """Multiply ``out`` (holding dA) in place by f'(a), f' written in terms of a = f(z)."""
    if kind == "relu":
        np.multiply(out, a > 0, out=out)
    elif kind == "leaky_relu":
        np.multiply(out, np.where(a > 0, 1.0, alpha).astype(a.dtype, copy=False), out=out)
    elif kind == "sigmoid":
        np.multiply(out, a, out=out)
        np.multiply(out, 1 - a, out=out)
    elif kind == "tanh":
        np.multiply(out, 1 - a * a, out=out)
    elif kind != "identity":
        raise ValueError(f"unknown activation {kind!r}")
    return out


# --------------------------------------------------------------------------
# Building CuPy kernels lazily, once per name
# --------------------------------------------------------------------------
_kernels: dict[str, Any] = {}


#: every elementwise kernel: name -> (input params, output params, operation)
ELEMENTWISE: dict[str, tuple[str, str, str]] = {}


def _define(name: str, in_params: str, out_params: str, operation: str) -> None:
    ELEMENTWISE[name] = (in_params, out_params, operation)


def _elementwise(name: str) -> Any:
    """The ``cupy.ElementwiseKernel`` called ``name``, built on first use."""
    k = _kernels.get(name)
    if k is None:
        cp = backend.cupy_module()
        in_params, out_params, operation = ELEMENTWISE[name]
        k = _kernels[name] = cp.ElementwiseKernel(in_params, out_params, operation, name)
    return k


def _raw(name: str, source: str, dtype: np.dtype) -> Any:
    """A cached ``cupy.RawKernel`` from ``source`` with ``T`` replaced by the C type of ``dtype``."""
    ctype = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}[np.dtype(dtype)]
    key = f"{name}_{ctype}"
    k = _kernels.get(key)
    if k is None:
        cp = backend.cupy_module()
        code = source.replace("KERNEL_NAME", key).replace("T ", f"{ctype} ").replace("T*", f"{ctype}*")
        k = _kernels[key] = cp.RawKernel(code, key)
    return k


for _kind, (_fwd, _bwd) in _ACT_C.items():
    _define(f"{_kind}_fwd", "T alpha", "T x", f"x = {_fwd}")
    _define(f"bias_{_kind}_fwd", "T b, T alpha", "T x", f"x = x + b; x = {_fwd}")
    _define(f"{_kind}_bwd", "T a, T alpha", "T d", f"d = d * ({_bwd})")


_POOL: Any = None
_PARALLEL_MIN = 1 << 20  # below this, a thread hand-off costs more than it saves (measured)
_WORKERS = min(os.cpu_count() or 1, 8)


def _in_parallel(body: Any, n: int, min_n: int = _PARALLEL_MIN) -> list[Any]:
    """Run ``body(slice)`` over ``range(n)`` split across the CPU cores (NumPy releases the GIL).

    Elementwise NumPy is single-threaded; an optimiser step over a few million
    parameters is memory-bound, and two cores move about twice the bytes.
    Returns what ``body`` returned for each slice, in the order of the slices
    (never in the order the threads finished, which depends on timing).
    """
    global _POOL
    workers = _WORKERS
    if n < min_n or workers == 1:
        return [body(slice(0, n))]
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(workers, thread_name_prefix="gpu_backprop")
    step = -(-n // workers)
    step = -(-step // 64) * 64  # keep chunk boundaries aligned
    return list(_POOL.map(body, [slice(i, min(i + step, n)) for i in range(0, n, step)]))


_BLOCK_BYTES = 1 << 18  # a row block of 256 KB stays in L2 between the passes over it


def _in_row_blocks(body: Any, n_rows: int, row_bytes: int) -> None:
    """Run ``body(rows)`` over cache-sized blocks of rows, the blocks split across the CPU cores.

    For the elementwise work on large batches (a full batch is 60,000 rows):
    several passes over one block hit the cache instead of memory, and two
    cores move about twice the bytes. Small arrays take one call, as before.
    """
    if n_rows * row_bytes < 4 * _PARALLEL_MIN:
        body(slice(0, n_rows))
        return
    per_block = max(1, _BLOCK_BYTES // row_bytes)

    def part(sl: slice) -> None:
        lo, hi, _ = sl.indices(n_rows)
        for i in range(lo, hi, per_block):
            body(slice(i, min(i + per_block, hi)))

    _in_parallel(part, n_rows, min_n=0)


_SCIPY_BLAS: Any = None  # scipy.linalg.blas once looked for; False when SciPy is not installed
#: batches from 2 to this many rows run their products on SciPy's BLAS (see ``matmul``; measured on a
#: 2-core EPYC: +43% samples/s at batch 32, +18% at 128, +6% at 512, none at 1024; SciPy's OpenBLAS
#: is a little slower than NumPy's on large products; one row stays on NumPy's gemv on one thread: SciPy's
#: gemm with one row measured 2x slower, its gemv on two threads 5-8% slower)
SCIPY_MAX_BATCH = 512


def scipy_blas() -> Any:
    """``scipy.linalg.blas``, or None without SciPy (it is optional: ``pip install 'gpu_backprop[cpu]'``)."""
    global _SCIPY_BLAS
    if _SCIPY_BLAS is None:
        try:
            from scipy.linalg import blas as _SCIPY_BLAS
        except ImportError:
            _SCIPY_BLAS = False
    return _SCIPY_BLAS or None


def _gemm_call(a: Array, b: Array, out: Array, batch: int | None = None) -> tuple[Any, tuple[Any, int],
                                                                                   tuple[Any, int]] | None:
    """SciPy's ``?gemm`` and its operands for ``out = a b``, or None where it does not apply.

    BLAS is column-major: ``outᵀ = bᵀ aᵀ``, and the transpose of a row-major array is a
    column-major one, so every operand that is row-major or a transposed view of one is
    read in place (a ``trans`` flag instead of a copy); ``out`` must be row-major. Plain
    ndarrays only: a subclass (such as :mod:`gpu_backprop.launches`' traced arrays) takes
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


def matmul(a: Array, b: Array, out: Array, alpha: float = 1.0, beta: float = 0.0, batch: int | None = None) -> Array:
    """``out = alpha · a b + beta · out``: the products of a step (``Z = X W``, ``dW = Xᵀ dZ``, ``dX = dZ Wᵀ``).

    ``out`` is ``(N, M)`` and row-major; ``a`` ``(N, K)`` and ``b`` ``(K, M)`` may be transposed
    views; ``batch`` is the step's batch size (default ``N``; for ``dW`` it is the inner size).
    CuPy: cuBLAS through ``cupy.matmul``. NumPy, batches of 2 to :data:`SCIPY_MAX_BATCH`
    rows: SciPy's BLAS ``gemm`` when SciPy is installed, so that SGD can take ``dW`` straight
    into its update (``beta = 1`` accumulates into ``out`` with no pass of its own) and the
    whole step runs on one BLAS — NumPy and SciPy each bring an OpenBLAS, and one's idle
    workers spin (about 0.1 s after each call) against the other's. Otherwise ``numpy.matmul``.
    """
    call = None if _on_gpu(out) else _gemm_call(a, b, out, batch)
    if call is not None:
        gemm, (A, ta), (B, tb) = call
        c = gemm(alpha, A, B, beta=beta, c=out.T, trans_a=ta, trans_b=tb, overwrite_c=1)
        if not np.may_share_memory(c, out):  # SciPy made a copy after all: put the result where it belongs
            out[...] = c.T
        return out
    xp = backend.get_array_module(out)
    if alpha == 1.0 and beta == 0.0:
        return xp.matmul(a, b, out=out)
    prod = xp.matmul(a, b)
    if beta != 1.0:
        out *= beta
    prod *= alpha
    out += prod
    return out


def _on_gpu(*arrays: Array) -> bool:
    return any(backend.is_cupy_array(a) for a in arrays)


# --------------------------------------------------------------------------
# Forward: A = f(Z + b), in place
# --------------------------------------------------------------------------
def bias_activation(z: Array, b: Array | None, kind: str, alpha: float = 0.01) -> Array:
    """In place ``z <- f(z + b)`` (bias broadcast over rows); ``b=None`` skips the bias.

    Kernels: ``bias_<kind>_fwd`` and ``<kind>_fwd``.
    """
    if kind not in _ACT_C:
        raise ValueError(f"unknown activation {kind!r}; choose one of {', '.join(ACTIVATIONS)}")
    if _on_gpu(z):
        if b is None:
            if kind != "identity":
                _elementwise(f"{kind}_fwd")(alpha, z)
        else:
            _elementwise(f"bias_{kind}_fwd")(b, alpha, z)
        return z

    def body(rows: slice) -> None:
        zr = z[rows]
        if b is not None:
            np.add(zr, b, out=zr)
        _np_act_inplace(zr, kind, alpha)

    _in_row_blocks(body, z.shape[0], z[:1].nbytes)
    return z


activation_forward = bias_activation


def activation_backward(d: Array, a: Array, kind: str, alpha: float = 0.01) -> Array:
    """In place ``d <- d ⊙ f'(·)``, with f' computed from the output ``a``.

    This is the ``dZ = dA ⊙ f'(Z)`` of backprop. Kernel: ``<kind>_bwd``.
    """
    if kind not in _ACT_C:
        raise ValueError(f"unknown activation {kind!r}; choose one of {', '.join(ACTIVATIONS)}")
    if kind == "identity":
        return d
    if _on_gpu(d, a):
        _elementwise(f"{kind}_bwd")(a, alpha, d)
        return d
    _in_row_blocks(lambda rows: _np_act_grad(a[rows], kind, alpha, d[rows]), d.shape[0], d[:1].nbytes)
    return d


def column_sum(d: Array, out: Array) -> Array:
    """``out = Σ_rows d``: the bias gradient ``db`` of a Dense layer, ``(N, M) -> (M,)``.

    NumPy sums a large batch in one part per core, then adds the parts in row
    order, so the rounding never depends on which thread finished first.
    """
    if _on_gpu(d) or d.nbytes < 4 * _PARALLEL_MIN:
        backend.get_array_module(d).sum(d, axis=0, out=out)
        return out
    parts = _in_parallel(lambda rows: d[rows].sum(axis=0), d.shape[0], min_n=0)
    np.sum(parts, axis=0, out=out)
    return out


# --------------------------------------------------------------------------
# Softmax + cross-entropy, forward, loss and backward in one row-wise pass
# --------------------------------------------------------------------------
_SOFTMAX_XENT_SRC = r"""
extern "C" __global__
void KERNEL_NAME(const T* z, const long long* labels, const T* targets,
                 T* dz, T* loss_rows, const int n, const int c, const int use_labels,
                 const int want_grad, const T scale)
{
    // one thread per row: row max, exp and sum, then (softmax - target) * scale
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n) return;
    const T* zr = z + (size_t)r * c;
    T* dr = dz + (size_t)r * c;
    T m = zr[0];
    for (int j = 1; j < c; ++j) m = zr[j] > m ? zr[j] : m;
    T s = 0;
    for (int j = 0; j < c; ++j) { T e = exp(zr[j] - m); dr[j] = e; s += e; }
    const T lse = log(s) + m;          // log sum exp z, computed safely
    const T inv = (T)1 / s;
    T loss = 0;
    if (use_labels) {
        const long long t = labels[r];
        loss = lse - zr[t];
        if (want_grad)
            for (int j = 0; j < c; ++j) dr[j] = (dr[j] * inv - (j == t ? (T)1 : (T)0)) * scale;
    } else {
        const T* tr = targets + (size_t)r * c;
        for (int j = 0; j < c; ++j) {
            loss += tr[j] * (lse - zr[j]);  // soft targets: −Σ t log softmax
            if (want_grad) dr[j] = (dr[j] * inv - tr[j]) * scale;
        }
    }
    loss_rows[r] = loss;
}
"""


def softmax_cross_entropy(
    z: Array, labels: Array | None, targets: Array | None, dz: Array | None, loss_rows: Array
) -> Array:
    """Row-wise softmax cross-entropy: fills ``loss_rows`` and (if given) ``dz = (softmax(z) - Y) / N``.

    Give either integer ``labels`` (N,) — no one-hot matrix is built — or
    ``targets`` (N, C) holding one-hot or soft targets. The loss per row is
    ``logsumexp(z) - z[label]``, computed with the row max subtracted. Kernel:
    ``softmax_xent``. Returns ``loss_rows``.
    """
    n, c = z.shape
    scale = 1.0 / n
    if _on_gpu(z):
        cp = backend.cupy_module()
        # the scratch row exps need somewhere to go even when no gradient is wanted
        out = dz if dz is not None else cp.empty_like(z)
        unused = cp.empty(1, dtype=z.dtype)
        lab = labels if labels is not None else cp.empty(1, dtype=cp.int64)
        tgt = targets if targets is not None else unused
        threads = 128
        _raw("softmax_xent", _SOFTMAX_XENT_SRC, z.dtype)(
            ((n + threads - 1) // threads,), (threads,),
            (z, lab, tgt, out, loss_rows, np.int32(n), np.int32(c), np.int32(labels is not None),
             np.int32(dz is not None), z.dtype.type(scale)),
        )
        return loss_rows
    m = z.max(axis=1, keepdims=True)
    e = dz if dz is not None else np.empty_like(z)
    np.subtract(z, m, out=e)
    np.exp(e, out=e)
    s = e.sum(axis=1, keepdims=True)
    lse = np.log(s) + m
    if labels is not None:
        rows = np.arange(n)
        np.subtract(lse[:, 0], z[rows, labels], out=loss_rows)
        if dz is not None:
            np.divide(e, s, out=e)
            e[rows, labels] -= 1
            np.multiply(e, scale, out=e)
    else:
        assert targets is not None, "give labels or targets"
        np.sum(targets * (lse - z), axis=1, out=loss_rows)
        if dz is not None:
            np.divide(e, s, out=e)
            np.subtract(e, targets, out=e)
            np.multiply(e, scale, out=e)
    return loss_rows


def softmax(z: Array) -> Array:
    """Row-wise softmax with the row max subtracted (a new array)."""
    xp = backend.get_array_module(z)
    e = z - z.max(axis=1, keepdims=True)
    xp.exp(e, out=e)
    e /= e.sum(axis=1, keepdims=True)
    return e


# --------------------------------------------------------------------------
# Optimiser updates over the flat parameter buffer (one kernel each)
# --------------------------------------------------------------------------
_DECAY = "T gd = g + (i < n_decay ? wd * p : (T)0);"
_define("sgd", "T g, T lr, T wd, int64 n_decay", "T p", _DECAY + "p = p - lr * gd;")
_define("momentum_sgd", "T g, T lr, T mu, T wd, int64 n_decay, bool nesterov", "T p, T v",
        _DECAY + "v = mu * v + gd; p = p - lr * (nesterov ? gd + mu * v : v);")


def sgd_update(
    p: Array, g: Array, v: Array | None, scratch: Array, *,
    lr: float, momentum: float, weight_decay: float, nesterov: bool, n_decay: int,
) -> None:
    """One SGD step in place over flat buffers (PyTorch's convention, no dampening).

    ``g' = g + wd·p`` (for the first ``n_decay`` entries: weights, not biases),
    ``v <- μ v + g'``, then ``p <- p - lr·v`` or, with Nesterov, ``p <- p - lr (g' + μ v)``.
    Without momentum (``v is None``): ``p <- p - lr g'``. Kernel: ``momentum_sgd``.
    """
    if _on_gpu(p):
        if v is None:
            _elementwise("sgd")(g, lr, weight_decay, n_decay, p)
        else:
            _elementwise("momentum_sgd")(g, lr, momentum, weight_decay, n_decay, nesterov, p, v)
        return
    def body(sl: slice) -> None:
        pp, gg, ss = p[sl], g[sl], scratch[sl]
        gd = gg
        lo, hi, _ = sl.indices(p.shape[0])
        k = min(max(n_decay - lo, 0), hi - lo)  # how many entries of this slice take weight decay
        if weight_decay and k:
            gd = ss
            np.copyto(gd, gg)
            gd[:k] += weight_decay * pp[:k]
        if v is None:
            _subtract_scaled(pp, gd, lr, ss)
            return
        vv = v[sl]
        np.multiply(vv, momentum, out=vv)
        np.add(vv, gd, out=vv)
        if nesterov:
            _subtract_scaled(pp, gd, lr, ss)
            _subtract_scaled(pp, vv, lr * momentum, ss)
        else:
            _subtract_scaled(pp, vv, lr, ss)

    _in_parallel(body, p.shape[0])


def _subtract_scaled(p: np.ndarray, x: np.ndarray, alpha: float, scratch: np.ndarray) -> None:
    """``p -= alpha * x`` through ``scratch`` (which may be ``x`` itself)."""
    np.multiply(x, alpha, out=scratch)
    np.subtract(p, scratch, out=p)


_define(
    "adam",
    "T g, T lr, T b1, T b2, T eps, T wd, bool decoupled, T bc1, T bc2, int64 n_decay",
    "T p, T m, T v",
    "T wdi = i < n_decay ? wd : (T)0;"
    "T gd = decoupled ? g : g + wdi * p;"
    "if (decoupled) p = p * ((T)1 - lr * wdi);"
    "m = b1 * m + ((T)1 - b1) * gd;"
    "v = b2 * v + ((T)1 - b2) * gd * gd;"
    "p = p - lr * (m / bc1) / (sqrt(v / bc2) + eps);",
)


def adam_update(
    p: Array, g: Array, m: Array, v: Array, scratch: Array, *,
    lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
    decoupled: bool, step: int, n_decay: int,
) -> None:
    """One Adam (or, with ``decoupled=True``, AdamW) step in place over flat buffers.

    Adam: ``g' = g + wd·p``; AdamW: ``p <- p (1 - lr·wd)`` before the step.
    ``m <- β1 m + (1-β1) g'``, ``v <- β2 v + (1-β2) g'²``,
    ``p <- p - lr · m̂ / (√v̂ + ε)`` with the bias corrections ``m̂ = m/(1-β1ᵗ)``, ``v̂ = v/(1-β2ᵗ)``.
    Kernel: ``adam``.
    """
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    if _on_gpu(p):
        _elementwise("adam")(g, lr, beta1, beta2, eps, weight_decay, decoupled, bc1, bc2, n_decay, p, m, v)
        return
    def body(sl: slice) -> None:
        pp, gg, mm, vv, ss = p[sl], g[sl], m[sl], v[sl], scratch[sl]
        lo, hi, _ = sl.indices(p.shape[0])
        k = min(max(n_decay - lo, 0), hi - lo)
        gd = gg
        if weight_decay and k:
            if decoupled:
                pp[:k] *= 1.0 - lr * weight_decay
            else:
                gd = ss
                np.copyto(gd, gg)
                gd[:k] += weight_decay * pp[:k]
        mm *= beta1
        mm += (1.0 - beta1) * gd
        vv *= beta2
        vv += (1.0 - beta2) * np.square(gd)
        denom = np.sqrt(vv / bc2)
        denom += eps
        pp -= (lr / bc1) * mm / denom

    _in_parallel(body, p.shape[0])


# --------------------------------------------------------------------------
# Counter-based random numbers: the same bits on NumPy and CuPy
# --------------------------------------------------------------------------
# A stateless hash of (seed, counter, index) gives uniform numbers that are
# identical on both backends, need no generator state beyond two integers
# (so a checkpoint restores them exactly), and cost one elementwise pass.
_HASH_C = """
unsigned int h = (unsigned int)i * 0x9E3779B1u ^ (unsigned int)key;
h ^= (unsigned int)(key >> 32);
h ^= h >> 16; h *= 0x85EBCA6Bu; h ^= h >> 13; h *= 0xC2B2AE35u; h ^= h >> 16;
h += (unsigned int)i; h ^= h >> 15; h *= 0x2C1B3C6Du; h ^= h >> 12; h *= 0x297A2D39u; h ^= h >> 15;
"""


_define("hash_u32", "uint64 key", "uint32 out", _HASH_C + "out = h;")
_define("dropout_fwd", "uint64 key, uint32 threshold, T scale", "T x, T mask",
        _HASH_C + "mask = h >= threshold ? scale : (T)0; x = x * mask;")


def _mix_key(seed: int, counter: int) -> int:
    """Mix seed and counter into one 64-bit key (splitmix64)."""
    z = (seed * 0x9E3779B97F4A7C15 + counter * 0xD1B54A32D192ED03 + 0x632BE59BD9B4E019) & (2**64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return z ^ (z >> 31)


def _np_hash(n: int, key: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        i = np.arange(n, dtype=np.uint32)
        h = i * np.uint32(0x9E3779B1) ^ np.uint32(key & 0xFFFFFFFF)
        h ^= np.uint32(key >> 32)
        for shift, mult in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):
            h ^= h >> np.uint32(shift)
            h *= np.uint32(mult)
        h ^= h >> np.uint32(16)
        h += i
        for shift, mult in ((15, 0x2C1B3C6D), (12, 0x297A2D39)):
            h ^= h >> np.uint32(shift)
            h *= np.uint32(mult)
        h ^= h >> np.uint32(15)
    return h


def hash_uniform(xp: Any, n: int, seed: int, counter: int) -> Array:
    """``n`` uint32 random words from (seed, counter), identical on NumPy and CuPy. Kernel: ``hash_u32``."""
    key = _mix_key(seed, counter)
    if xp is np:
        return _np_hash(n, key)
    out = xp.empty(n, dtype=xp.uint32)
    _elementwise("hash_u32")(np.uint64(key), out)
    return out


def random_permutation(xp: Any, n: int, seed: int, counter: int) -> Array:
    """A permutation of ``range(n)`` drawn on the device from (seed, counter), the same on both backends."""
    keys = hash_uniform(xp, n, seed, counter).astype(xp.uint64)
    keys <<= 32
    keys |= xp.arange(n, dtype=xp.uint64)  # ties broken by index: a total order
    return xp.argsort(keys)


def dropout_forward(x: Array, p: float, seed: int, counter: int, mask: Array) -> Array:
    """Inverted dropout in place: ``x <- x ⊙ mask`` with ``mask = [u ≥ p] / (1 - p)``.

    ``mask`` (same shape as x) is filled for the backward pass. Kernel: ``dropout_fwd``.
    """
    keep_scale = 1.0 / (1.0 - p)
    threshold = min(int(p * 2.0**32), 2**32 - 1)
    key = _mix_key(seed, counter)
    if _on_gpu(x):
        _elementwise("dropout_fwd")(np.uint64(key), np.uint32(threshold), keep_scale, x, mask)
        return x
    h = _np_hash(x.size, key).reshape(x.shape)
    np.multiply(h >= np.uint32(threshold), keep_scale, out=mask)
    np.multiply(x, mask, out=x)
    return x



# --------------------------------------------------------------------------
# BatchNorm's elementwise halves (the reductions are xp.sum / xp.mean)
# --------------------------------------------------------------------------
_define("bn_fwd", "T x, T mean, T inv_std, T gamma, T beta", "T xhat, T y",
        "xhat = (x - mean) * inv_std; y = gamma * xhat + beta;")
_define("bn_bwd", "T dy, T xhat, T scale, T dgamma, T dbeta, T inv_n", "T dx",
        "dx = scale * (dy - dbeta * inv_n - xhat * dgamma * inv_n);")


def batchnorm_normalize(
    x: Array, mean: Array, inv_std: Array, gamma: Array, beta: Array, xhat: Array, y: Array
) -> None:
    """``xhat = (x - mean) · inv_std``, ``y = gamma · xhat + beta`` (per feature). Kernel: ``bn_fwd``."""
    if _on_gpu(x):
        _elementwise("bn_fwd")(x, mean, inv_std, gamma, beta, xhat, y)
        return
    np.subtract(x, mean, out=xhat)
    np.multiply(xhat, inv_std, out=xhat)
    np.multiply(xhat, gamma, out=y)
    np.add(y, beta, out=y)


def batchnorm_backward(
    dy: Array, xhat: Array, scale: Array, dgamma: Array, dbeta: Array, n: int, dx: Array
) -> None:
    """``dx = scale · (dy - dbeta/N - xhat · dgamma/N)`` with ``scale = gamma · inv_std``. Kernel: ``bn_bwd``.

    ``dgamma = Σ_rows dy ⊙ xhat`` and ``dbeta = Σ_rows dy`` are computed first.
    """
    inv_n = 1.0 / n
    if _on_gpu(dy):
        _elementwise("bn_bwd")(dy, xhat, scale, dgamma, dbeta, inv_n, dx)
        return
    np.multiply(xhat, dgamma * inv_n, out=dx)
    np.subtract(dy, dx, out=dx)
    np.subtract(dx, dbeta * inv_n, out=dx)
    np.multiply(dx, scale, out=dx)


# --------------------------------------------------------------------------
# Batches: gather rows of the device-resident data set and scale them to floats
# --------------------------------------------------------------------------
_define("gather_scale", "raw S src, raw int64 rows, int64 d, T scale", "T out",
        "out = (T)src[rows[i / d] * d + i % d] * scale;")


def gather_scale(src: Array, rows: Array, scale: float, out: Array, staging: Array | None = None) -> Array:
    """``out = src[rows] * scale`` as floats: a batch from the data set kept on the device (uint8).

    ``src`` is ``(N, D)``, ``rows`` int64 ``(B,)``, ``out`` float ``(B, D)``.
    ``staging`` (same dtype as src, ``(B, D)``) avoids an allocation on NumPy.
    Kernel: ``gather_scale`` (one launch for the gather, the cast and the scale).
    """
    if _on_gpu(src):
        _elementwise("gather_scale")(src, rows, src.shape[1], scale, out)
        return out
    if src.dtype == out.dtype:
        np.take(src, rows, axis=0, out=out)
    else:
        if staging is None:
            staging = np.empty(out.shape, dtype=src.dtype)
        np.take(src, rows, axis=0, out=staging)
        out[...] = staging
    if scale != 1.0:
        np.multiply(out, scale, out=out)
    return out
