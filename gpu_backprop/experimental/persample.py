"""Per-sample SGD fused into one launch: a run of K samples, forward, backward and update, in one kernel.

Per-sample (batch-1) SGD through the general path costs about twenty launches a
sample (three GEMMs forward, five backward, the elementwise steps, the
optimiser), each a few microseconds on a GPU and tens of microseconds of Python:
far from the 100,000 samples/s the project aims for. Here a whole run of
samples is one launch of one persistent kernel, and the same mathematics is
written a second time in NumPy as its readable specification.

    loss_sum, correct = per_sample_sgd(net, opt, X, y, order)   # samples X[order[0]], X[order[1]], ...

The mathematics, sample by sample (one row ``x``, label ``t``; a Dense layer l
holds ``W`` (D, M) and ``b`` (M,), activation f; N = 1)::

    h⁰ = x,   hˡ⁺¹ = f(hˡ W + b)                         forward
    d = softmax(h^L) − onehot(t)                         softmax cross-entropy, dZ = (A − Y)/N
    for l = L−1 … 0:
        dz = d ⊙ f'(hˡ⁺¹)                                 (f' from the output)
        d  = W dz            (layers after the first)     dX = dZ Wᵀ, with W before its update
        W ← sgd(W, hˡ ⊗ dz), b ← sgd(b, dz)               dW = Xᵀ dZ is a rank-1 matrix
    sgd(p, g):  g' = g + λp (weights only);  v ← μv + g';  p ← p − η v   (Nesterov: p ← p − η (g' + μv))

Updating layer l right after its ``dX`` is computed is the same as updating
all layers after the backward pass: ``dX`` reads W before the update, and no
later step of the sample reads layer l again. So the weights after K samples
equal those of ``net.train_step_grads(x[None], t[None]); opt.step()`` repeated
K times, to float rounding (tested).

The kernel (``per_sample_sgd`` in :data:`KERNEL_SOURCE`) is one persistent,
cooperative grid, one block per SM, that loops over the samples. Its phases are
separated by a grid-wide barrier; per sample, for L layers, there are 2L − 1:

    F_l    l = 1 … L−1   zˡ += hˡ⁻¹ Wˡ  (hˡ⁻¹ = f(zˡ⁻¹ + bˡ⁻¹) computed on the fly; atomics into zˡ)
    B_L−1                softmax cross-entropy in every warp, update W^{L−1}, dX += W dz (atomics)
    B_l    l = L−2 … 1   dz = dX ⊙ f'(hˡ⁺¹), update Wˡ and bˡ, dX for the layer before
    B_0 + F_0(next)      update W⁰, and with the new weights start the next sample's z⁰ += x' W⁰

Each warp owns the same tiles of each weight matrix (R rows × 32 columns) in
the forward and the backward phases, so a weight is only ever read and written
by one SM, while everything that crosses SMs (z, h, dX, biases) goes through
L2 (``__ldcg``, atomics). See docs/gpu_fast_path.md for the design, the
expected bound (an estimate, not a measurement) and what remains to measure.

Supported: Dense layers with fused identity/relu/leaky_relu/sigmoid/tanh
activations, at least one hidden layer, softmax cross-entropy on integer labels,
SGD with or without (Nesterov) momentum and weight decay, float32 or float64,
inputs float or uint8 (scaled on the fly: the data set stays on the device as
it is). Anything else runs through the general path.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from .. import backend, checks, kernels
from ..batches import Batches
from ..kernels.activations import FORMULAS
from ..layers import Dense
from ..losses import SoftmaxCrossEntropy
from ..network import Sequential
from ..optim import SGD

__all__ = [
    "KERNEL_SOURCE",
    "LayerSpec",
    "PerSampleUnsupported",
    "can_fuse",
    "fused_grid",
    "fuses",
    "kernel_source",
    "layer_specs",
    "per_sample_sgd",
    "per_sample_sgd_reference",
    "scratch_size",
    "train_run",
]

Array = Any
ACT_CODES = {kind: code for code, kind in enumerate(FORMULAS)}  # the kernel's c_act table: 0 = identity, ...
BLOCK = 256  # threads per block of the fused kernel: 8 warps
MIN_TILE_ROWS = 4  # a warp's tile is at least 4 rows × 32 columns (fewer atomics per column)


class PerSampleUnsupported(ValueError):
    """The network or optimiser is outside what the fused per-sample kernel implements."""


# --------------------------------------------------------------------------
# What the kernel needs to know about a network
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerSpec:
    """One Dense layer as the fused kernel sees it: shapes, offsets in the flat buffer, activation."""

    d_in: int
    d_out: int
    w_offset: int
    b_offset: int
    activation: str
    alpha: float


def layer_specs(net: Sequential) -> list[LayerSpec]:
    """The Dense layers of ``net`` in order, or :class:`PerSampleUnsupported` saying what does not fit."""
    if not isinstance(net, Sequential):
        raise TypeError(f"per_sample_sgd takes a gpu_backprop network, got {type(net).__name__}")
    if not isinstance(net.loss, SoftmaxCrossEntropy):
        raise PerSampleUnsupported(
            f"the fused per-sample step implements softmax cross-entropy only, this network uses {net.loss.name}")
    if net.dtype.name not in ("float32", "float64"):
        raise PerSampleUnsupported(f"the fused per-sample step runs float32 or float64, not {net.dtype.name}")
    specs = []
    for layer in net.steps:
        if not isinstance(layer, Dense):
            raise PerSampleUnsupported(
                f"the fused per-sample step takes Dense layers with activations only, not {type(layer).__name__}")
        act = layer.activation
        specs.append(LayerSpec(layer.in_features, layer.out_features, net.slot(layer, "W").offset,
                               net.slot(layer, "b").offset, act.kind if act is not None else "identity",
                               act.alpha if act is not None else 0.0))
    if len(specs) < 2:
        raise PerSampleUnsupported("the fused per-sample step needs at least one hidden layer (two Dense layers)")
    return specs


def _check_optimizer(net: Sequential, opt: Any) -> None:
    if not isinstance(opt, SGD):
        raise PerSampleUnsupported(f"the fused per-sample step implements SGD, not {type(opt).__name__}")
    if opt.net is not net:
        raise ValueError("the optimizer was built for another network; build it with gb.SGD(net, ...)")


# --------------------------------------------------------------------------
# The NumPy reference: the readable specification of the kernel
# --------------------------------------------------------------------------
def per_sample_sgd_reference(net: Sequential, opt: SGD, X: Array, y: Array, order: Array, *,
                             scale: float = 1.0, lr: float | Array | None = None) -> tuple[Array, Array]:
    """The fused kernel's algorithm in NumPy, sample by sample, layer by layer (see the module docstring).

    Trains ``net`` in place on ``X[order[0]], X[order[1]], ...`` and returns
    ``(loss_sum, correct)``: the summed loss before each update and the
    number of samples whose prediction (argmax) was right, as 0-d arrays.
    ``lr`` is a float, one rate per sample, or None for ``opt.lr``.
    """
    specs = layer_specs(net)
    _check_optimizer(net, opt)
    xp = net.xp
    dtype = net.dtype
    order_h = np.asarray(backend.to_numpy(order)).reshape(-1)
    y_h = np.asarray(backend.to_numpy(y))
    lrs = _per_sample_rates(opt, lr, len(order_h))
    mu, wd, nesterov = opt.momentum, opt.weight_decay, opt.nesterov
    velocity = opt.velocity  # None without momentum
    flat, n_decay = net.flat_params, net.n_decay

    def view(buf: Array, off: int, shape: tuple[int, ...]) -> Array:
        return buf[off:off + int(np.prod(shape))].reshape(shape)

    layers = []
    for s in specs:
        W, b = view(flat, s.w_offset, (s.d_in, s.d_out)), view(flat, s.b_offset, (s.d_out,))
        vW = view(velocity, s.w_offset, W.shape) if velocity is not None else None
        vb = view(velocity, s.b_offset, b.shape) if velocity is not None else None
        decayed_w = int(np.clip(n_decay - s.w_offset, 0, W.size))
        decayed_b = int(np.clip(n_decay - s.b_offset, 0, b.size))
        layers.append((s, W, b, vW, vb, decayed_w, decayed_b))

    loss_sum, correct = 0.0, 0
    for k, row in enumerate(order_h):
        rate = float(lrs[k])
        x = X[int(row)].astype(dtype)
        if scale != 1.0:
            x *= scale                                    # as kernels.gather_scale does
        t = int(y_h[int(row)])
        # forward: h[l+1] = f(h[l] W + b)
        h = [x]
        for s, W, b, *_ in layers:
            z = h[-1] @ W
            h.append(kernels.bias_activation(z, b, s.activation, s.alpha))
        # softmax cross-entropy: loss = logsumexp(out) - out[t], d out = softmax(out) - onehot(t)
        out = h[-1]
        e = xp.exp(out - out.max())
        total = e.sum()
        loss_sum += float(xp.log(total) + out.max() - out[t])
        correct += int(int(out.argmax()) == t)
        d = e * (1 / total)
        d[t] -= 1
        # backward, updating each layer as soon as its dX is known
        for li in range(len(layers) - 1, -1, -1):
            s, W, b, vW, vb, decayed_w, decayed_b = layers[li]
            dz = kernels.activation_backward(d, h[li + 1], s.activation, s.alpha)
            if li > 0:
                d = W @ dz                                 # dX = dZ Wᵀ, before W changes
            for p, v, g, decayed in ((W, vW, xp.outer(h[li], dz), decayed_w), (b, vb, dz.copy(), decayed_b)):
                kernels.sgd_update(p.reshape(-1), g.reshape(-1), None if v is None else v.reshape(-1),
                                   xp.empty(p.size, dtype), lr=rate, momentum=mu, weight_decay=wd,
                                   nesterov=nesterov, n_decay=decayed)
    opt.steps += len(order_h)
    return xp.asarray(loss_sum, dtype=xp.float64), xp.asarray(correct, dtype=xp.int64)


def _per_sample_rates(opt: SGD, lr: float | Array | None, k: int) -> np.ndarray:
    """One learning rate per sample, on the host (float64)."""
    if lr is None:
        return np.full(k, opt.lr)
    if np.ndim(lr) == 0:
        return np.full(k, float(lr))
    rates = np.asarray(backend.to_numpy(lr), dtype=np.float64).reshape(-1)
    if rates.shape != (k,):
        raise ValueError(f"lr has {rates.size} rates for {k} samples; pass one per sample or a single float")
    return rates


# --------------------------------------------------------------------------
# The CUDA kernel
# --------------------------------------------------------------------------
#: The fused per-sample kernel (``persample.cu`` beside this file). ``kernel_source(net, ...)`` prepends
#: the network's shapes (``NL``, ``SUM_OUT``, the ``c_*`` tables) and the types ``real`` (float/double)
#: and ``xin_t`` (the data set's element type).
KERNEL_SOURCE = (resources.files(__package__) / "persample.cu").read_text(encoding="utf-8")
_CTYPE = {"float32": "float", "float64": "double", "uint8": "unsigned char"}


def kernel_source(net: Sequential, x_dtype: Any = "uint8", *, block: int = BLOCK) -> str:
    """The CUDA source of the fused per-sample kernel for ``net``'s shapes and dtype.

    ``x_dtype`` is the element type of the data set the kernel reads rows from
    (uint8 images, or the network's float dtype). The network's layer sizes,
    parameter offsets and activations are compiled in as constant tables.
    """
    specs = layer_specs(net)
    xd = np.dtype(x_dtype).name
    if xd not in ("uint8", net.dtype.name):
        raise PerSampleUnsupported(f"the fused per-sample step reads uint8 or {net.dtype.name} data, not {xd}")
    hoff = np.concatenate([[0], np.cumsum([s.d_out for s in specs])]).astype(int)

    def table(ctype: str, name: str, values: list[Any]) -> str:
        return f"__constant__ {ctype} {name}[NL] = {{{', '.join(str(v) for v in values)}}};"

    real = _CTYPE[net.dtype.name]
    head = [
        f"// fused per-sample SGD for {' -> '.join(str(s.d_in) for s in specs)} -> {specs[-1].d_out}, {real}",
        f"typedef {real} real;",
        f"typedef {_CTYPE[xd]} xin_t;",
        f"#define NL {len(specs)}",
        f"#define SUM_OUT {int(hoff[-1])}",
        f"#define BLOCK {int(block)}",
        f"#define MIN_TILE_ROWS {MIN_TILE_ROWS}",
        table("int", "c_in", [s.d_in for s in specs]),
        table("int", "c_out", [s.d_out for s in specs]),
        table("long long", "c_woff", [f"{s.w_offset}LL" for s in specs]),
        table("long long", "c_boff", [f"{s.b_offset}LL" for s in specs]),
        table("int", "c_hoff", [int(h) for h in hoff[:-1]]),
        table("int", "c_act", [ACT_CODES[s.activation] for s in specs]),
        table("real", "c_alpha", [repr(float(s.alpha)) for s in specs]),
    ]
    return "\n".join(head) + "\n" + KERNEL_SOURCE.replace("ACTIVATION_FUNCTIONS", _activation_functions())


_C_TYPE_T = re.compile(r"\bT\b")  # the element type in FORMULAS; this kernel calls it ``real``


def _activation_functions() -> str:
    """``act_f`` and ``act_grad`` in CUDA C, one ``case`` per kind of :data:`ACT_CODES`, from ``FORMULAS``."""
    def switch(fn: str, arg: str, which: int) -> str:
        cases = [f"        case {code}: return {_C_TYPE_T.sub('real', FORMULAS[kind][which])};"
                 for kind, code in ACT_CODES.items()]
        return (f"__device__ __forceinline__ real {fn}(int kind, real {arg}, real alpha) {{\n"
                f"    switch (kind) {{\n" + "\n".join(cases) + "\n        default: return (real)0;\n    }\n}\n")
    return switch("act_f", "x", 0) + "\n" + switch("act_grad", "a", 1)


def scratch_size(net: Sequential) -> int:
    """Elements of the kernel's scratch buffer: z twice (by sample parity), hidden outputs, dX."""
    return 4 * sum(s.d_out for s in layer_specs(net))


class _Plan:
    """The compiled kernel and its device buffers for one network and data type, built once."""

    def __init__(self, net: Sequential, x_dtype: np.dtype, blocks: int | None, cooperative: bool) -> None:
        cp = backend.cupy_module()
        self.source = kernel_source(net, x_dtype)
        self.kernel = cp.RawKernel(self.source, "per_sample_sgd", enable_cooperative_groups=cooperative)
        self.scratch = cp.zeros(scratch_size(net), dtype=net.dtype)
        self.barrier = cp.zeros(2, dtype=cp.uint32)
        self.err = cp.zeros(1, dtype=cp.int32)
        self.dummy = cp.zeros(1, dtype=net.dtype)
        dev = cp.cuda.Device()
        sms = int(dev.attributes["MultiProcessorCount"])
        try:  # never ask for more blocks than fit at once: the barrier needs them all resident
            per_sm = cp.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(self.kernel.kernel.ptr, BLOCK, 0)
        except Exception:  # noqa: BLE001 - an older CuPy without the binding: one block per SM fits
            per_sm = 1
        self.blocks = max(1, min(blocks or sms, sms * max(per_sm, 1)))

    def check(self) -> None:
        """Raise if a barrier timed out in an earlier launch (a synchronisation: for tests and debugging)."""
        if int(self.err.get()[0]):
            self.err.fill(0)
            self.barrier.fill(0)
            raise RuntimeError("the fused per-sample kernel's grid barrier timed out (were all blocks resident?); "
                               "pass fewer blocks= or use method='general'")


_plans: weakref.WeakKeyDictionary[Sequential, dict[tuple[str, int | None, bool], _Plan]] = weakref.WeakKeyDictionary()


def fused_grid(net: Sequential, x_dtype: Any, blocks: int | None = None, cooperative: bool = True) -> int:
    """The blocks the fused kernel launches for ``blocks=`` (one per SM for None; never more than fit at once)."""
    return _plan(net, np.dtype(x_dtype), blocks, cooperative).blocks


def _plan(net: Sequential, x_dtype: np.dtype, blocks: int | None, cooperative: bool) -> _Plan:
    per_net = _plans.setdefault(net, {})
    key = (x_dtype.name, blocks, cooperative)
    if key not in per_net:
        per_net[key] = _Plan(net, x_dtype, blocks, cooperative)
    return per_net[key]


def can_fuse(net: Sequential, opt: Any) -> bool:
    """Whether the fused kernel implements this network and optimiser (else use the general path)."""
    try:
        layer_specs(net)
        _check_optimizer(net, opt)
    except (PerSampleUnsupported, TypeError, ValueError):
        return False
    return True


def fuses(net: Sequential, opt: Any, batch: int, ranks: int, max_grad_norm: float | None) -> bool:
    """Whether :func:`gpu_backprop.fit` runs these settings as the fused kernel, a run of samples per launch.

    Batch 1 on CuPy, in one process, without gradient clipping, for the
    networks and optimisers it implements (:func:`can_fuse`: Dense layers with
    their activations and a hidden layer, softmax cross-entropy on labels, SGD).
    Anything else, BatchNorm and Dropout included, takes the general path.
    """
    return batch == 1 and ranks == 1 and max_grad_norm is None and net.backend.is_gpu and can_fuse(net, opt)


def train_run(net: Sequential, opt: SGD, data: Batches, order: Array, rates: list[float]) -> tuple[Array, Array]:
    """The trainer's unit of work when :func:`fuses`: the samples ``order`` of ``data``, sample j at ``rates[j]``.

    Returns ``(loss_sum, correct)`` as :func:`per_sample_sgd` does; ``opt.lr`` is left at the last rate.
    """
    opt.lr = rates[-1]
    same = rates.count(rates[0]) == len(rates)
    lr = rates[0] if same else net.xp.asarray(np.array(rates), dtype=net.dtype)
    return per_sample_sgd(net, opt, data.X, data.y, order, scale=data.scale, lr=lr, method="kernel")


# --------------------------------------------------------------------------
# The public entry
# --------------------------------------------------------------------------
def per_sample_sgd(net: Sequential, opt: SGD, X: Array, y: Array, order: Array, *, scale: float = 1.0,
                   lr: float | Array | None = None, method: str = "auto", blocks: int | None = None,
                   cooperative: bool = True, check: bool = False) -> tuple[Array, Array]:
    """Per-sample SGD over ``X[order[0]], X[order[1]], ...``: one update per sample, in order.

    Parameters
    ----------
    X : the data set on the network's device, ``(N, D)`` C-contiguous, uint8
        (multiplied by ``scale`` on the fly, e.g. 1/255) or the network's dtype.
    y : integer labels ``(N,)`` (int64 on a GPU).
    order : int64 indices ``(K,)`` into X: the samples of this run, in order.
        On a GPU their range is not checked (that would synchronise) unless ``check=True``.
    lr : None for ``opt.lr``, a float, or one rate per sample (K,) for schedules.
    method : ``"auto"`` (the fused kernel on CuPy where the network fits it,
        else the general path), ``"kernel"``, ``"reference"`` (the NumPy
        specification) or ``"general"`` (``opt.train_step`` per sample).
    blocks : blocks of the fused kernel's grid (default: one per SM).
    check : validate ``order`` and, after the kernel, its barrier status (both synchronise).

    Returns ``(loss_sum, correct)`` as 0-d device arrays (float64, int64): the
    summed loss of the K samples, each before its update, and how many were
    predicted right. Nothing is read back to the host unless ``check=True``.
    After the fused kernel, ``net.flat_grads`` and ``net.last_output`` are not filled.
    """
    if method not in ("auto", "kernel", "reference", "general"):
        raise ValueError(f"unknown method {method!r}; choose auto, kernel, reference or general")
    if not isinstance(net, Sequential) or not isinstance(opt, SGD) or opt.net is not net:
        raise TypeError("per_sample_sgd needs a gpu_backprop network and an SGD optimizer built for it")
    _check_data(net, X, y, order, check)
    if method == "auto":
        method = "kernel" if net.backend.is_gpu and can_fuse(net, opt) else "general"
    if method == "reference":
        return per_sample_sgd_reference(net, opt, X, y, order, scale=scale, lr=lr)
    if method == "general":
        return _general(net, opt, X, y, order, scale, lr)
    if not net.backend.is_gpu:
        raise backend.BackendError("method='kernel' runs on CuPy; this network is on NumPy (use method='auto')")
    return _launch(net, opt, X, y, order, scale, lr, blocks, cooperative, check)


def _check_data(net: Sequential, X: Array, y: Array, order: Array, check: bool) -> None:
    checks.check_same_device(net.backend, X=X, y=y, order=order)
    if X.ndim != 2 or X.shape[1] != net.input_dim:
        raise ValueError(f"X must be (N, {net.input_dim}), got shape {X.shape}")
    if X.dtype != np.uint8 and X.dtype != net.dtype:
        raise TypeError(f"X has dtype {X.dtype}; pass uint8 data (with scale=) or {net.dtype.name}")
    if y.shape != (X.shape[0],) or y.dtype.kind not in "iu":
        raise ValueError(f"y must be integer labels of shape ({X.shape[0]},), got {y.dtype} {y.shape}")
    if order.ndim != 1 or order.dtype.kind not in "iu":
        raise ValueError(f"order must be a 1-D integer array of row indices, got {order.dtype} {order.shape}")
    if check and order.size:
        lo, hi = int(order.min()), int(order.max())
        if lo < 0 or hi >= X.shape[0]:
            raise ValueError(f"order holds rows {lo}..{hi} but X has {X.shape[0]} rows")


def _general(net: Sequential, opt: SGD, X: Array, y: Array, order: Array, scale: float,
             lr: float | Array | None) -> tuple[Array, Array]:
    """The general path, one sample at a time: what the fused kernel must equal."""
    xp = net.xp
    rates = _per_sample_rates(opt, lr, int(order.shape[0]))
    xb = xp.empty((1, X.shape[1]), dtype=net.dtype)
    staging = None if X.dtype == net.dtype else xp.empty((1, X.shape[1]), dtype=X.dtype)
    loss_sum = xp.zeros((), dtype=xp.float64)
    correct = xp.zeros((), dtype=xp.int64)
    saved = opt.lr
    try:
        for k in range(order.shape[0]):
            rows = order[k:k + 1]
            opt.lr = float(rates[k])
            kernels.gather_scale(X, rows, scale, xb, staging)
            yb = y[rows]
            loss_sum += opt.train_step(xb, yb)
            kernels.count_correct(net.last_output, yb, correct, net.loss.threshold)
    finally:
        opt.lr = saved
    return loss_sum, correct


def _launch(net: Sequential, opt: SGD, X: Array, y: Array, order: Array, scale: float, lr: float | Array | None,
            blocks: int | None, cooperative: bool, check: bool) -> tuple[Array, Array]:
    cp = backend.cupy_module()
    layer_specs(net)
    _check_optimizer(net, opt)
    k = int(order.shape[0])
    if k == 0:
        return cp.zeros((), dtype=cp.float64), cp.zeros((), dtype=cp.int64)
    plan = _plan(net, np.dtype(X.dtype), blocks, cooperative)
    real = net.dtype.type
    use_lrs = lr is not None and np.ndim(lr) != 0
    if use_lrs:
        lrs = cp.ascontiguousarray(cp.asarray(lr).reshape(-1), dtype=net.dtype)
        if lrs.shape != (k,):
            raise ValueError(f"lr has {lrs.size} rates for {k} samples; pass one per sample or a single float")
    else:
        lrs = plan.dummy
    rate = opt.lr if lr is None or use_lrs else float(lr)
    velocity = opt.velocity
    loss_sum, correct = cp.empty((), dtype=cp.float64), cp.empty((), dtype=cp.int64)  # written by the kernel
    # the kernel reads every array through a plain pointer: row-major, of the element type it declares
    # (no copy where it already is)
    X = cp.ascontiguousarray(X)
    labels = cp.ascontiguousarray(y, dtype=cp.int64)
    order = cp.ascontiguousarray(order, dtype=cp.int64)
    plan.kernel(
        (plan.blocks,), (BLOCK,),
        (net.flat_params, velocity if velocity is not None else plan.dummy, X, labels, order, np.int64(k),
         real(scale), real(rate), lrs, np.int32(use_lrs), real(opt.momentum), real(opt.weight_decay),
         np.int64(net.n_decay), np.int32(velocity is not None), np.int32(opt.nesterov),
         plan.scratch, plan.barrier, plan.err, loss_sum, correct),
    )
    opt.steps += k
    if check:
        plan.check()
    return loss_sum, correct
