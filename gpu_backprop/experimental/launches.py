"""How many kernels one training step launches on a GPU, counted on the CPU.

On a GPU a small network is bound by launches: each CuPy call is at least one
kernel (3–6 µs of GPU time, 10–50 µs of Python). This module counts them
without a GPU, by running the step on NumPy arrays that record every
operation a CuPy array would turn into a launch:

    with trace() as count:           # NumPy arrays made inside are traced
        ...                          # one training step
    count.total, count.by_kind(), count.allocations, count.synchronizations

    launch_budget(net, 128)          # per step of gb.fit, as a dict

The rules (CuPy 14, as the code calls it): a NumPy ufunc call or reduction
outside :mod:`gpu_backprop.kernels` is one CuPy kernel; ``matmul`` is one
cuBLAS call; fancy indexing, ``copy``, ``astype``, ``fill`` and creating a
filled array (``zeros``, ``full``, ``arange``) are one each; a function of
:mod:`gpu_backprop.kernels` counts the launches of its CuPy branch (table
below), not the NumPy body that stands in for it here. Converting an array
to a Python number (``float(loss)``) is a host synchronisation. What this
cannot see: cuBLAS may run more than one kernel for one GEMM (split-K) and
CuPy's ``argsort`` runs several; a profiler on a GPU gives the real count
(:func:`count_gpu_launches`, by CUPTI, or ``nsys profile --stats=true``).
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import kernels
from ..backend import Backend, BackendError

__all__ = ["LaunchCount", "count_gpu_launches", "count_launches", "launch_budget", "tally_device_events", "trace"]


@dataclass
class LaunchCount:
    """Launches by name (``"gemm"``, ``"kernel:momentum_sgd"``, ``"elementwise:add"``, ...), allocations, syncs."""

    launches: Counter[str] = field(default_factory=Counter)
    allocations: int = 0
    synchronizations: int = 0

    @property
    def total(self) -> int:
        """All launches."""
        return sum(self.launches.values())

    def by_kind(self) -> dict[str, int]:
        """Launches grouped by the part of the name before the colon (gemm, kernel, elementwise, reduce, ...)."""
        kinds: Counter[str] = Counter()
        for name, n in self.launches.items():
            kinds[name.split(":", 1)[0]] += n
        return dict(kinds)

    def __sub__(self, other: LaunchCount) -> LaunchCount:
        diff = Counter(self.launches)
        diff.subtract(other.launches)
        return LaunchCount(Counter({k: v for k, v in diff.items() if v}), self.allocations - other.allocations,
                           self.synchronizations - other.synchronizations)


# --------------------------------------------------------------------------
# The recorder
# --------------------------------------------------------------------------
class _State:
    counts: LaunchCount | None = None
    depth = 0  # > 0 inside a gpu_backprop.kernels function: its NumPy body is not what CuPy runs

    def recording(self) -> bool:
        return self.counts is not None and self.depth == 0

    def launch(self, name: str, n: int = 1) -> None:
        if self.recording():
            assert self.counts is not None
            self.counts.launches[name] += n

    def alloc(self, n: int = 1) -> None:
        if self.recording():
            assert self.counts is not None
            self.counts.allocations += n

    def sync(self) -> None:
        if self.recording():
            assert self.counts is not None
            self.counts.synchronizations += 1

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1


_state = _State()


def _plain(a: Any) -> Any:
    """``a`` as a plain ndarray (the same memory), recursing into tuples and lists."""
    if isinstance(a, _Traced):
        return a.view(np.ndarray)
    if isinstance(a, (tuple, list)):
        return type(a)(_plain(x) for x in a)
    return a


def _wrap(a: Any) -> Any:
    """Results as traced arrays; NumPy scalars become 0-d arrays, as CuPy returns them."""
    if isinstance(a, np.ndarray) and not isinstance(a, _Traced):
        return a.view(_Traced)
    if isinstance(a, np.generic):
        return np.asarray(a).view(_Traced)
    if isinstance(a, tuple):
        return tuple(_wrap(x) for x in a)
    return a


def _is_fancy(key: Any) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, (np.ndarray, list)) for k in keys)


#: NumPy functions that make views or read metadata: no launch
_FREE = {"reshape", "transpose", "ravel", "squeeze", "expand_dims", "broadcast_to", "shape", "ndim", "size",
         "result_type", "can_cast", "may_share_memory", "shares_memory", "atleast_1d", "atleast_2d", "iscomplexobj",
         "ascontiguousarray", "asarray", "asanyarray", "empty_like"}
_FUNC_KIND = {"sum": "reduce", "mean": "reduce", "max": "reduce", "min": "reduce", "amax": "reduce",
              "amin": "reduce", "argmax": "reduce", "argmin": "reduce", "var": "reduce", "std": "reduce",
              "vdot": "gemm", "dot": "gemm", "outer": "elementwise", "take": "index", "copyto": "copy",
              "concatenate": "copy", "argsort": "sort", "sort": "sort", "where": "elementwise"}


class _Traced(np.ndarray):
    """A NumPy array that records what the same call on a CuPy array would launch."""

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        out = kwargs.get("out")
        if ufunc is np.matmul:
            _state.launch("gemm")
        elif method == "__call__":
            _state.launch(f"elementwise:{ufunc.__name__}")
        else:
            _state.launch(f"{method}:{ufunc.__name__}")  # reduce, accumulate, at
        if not out and method != "at":
            _state.alloc()
        if out:
            kwargs["out"] = tuple(_plain(o) for o in out)
        with _state.inside():
            result = getattr(ufunc, method)(*_plain(inputs), **kwargs)
        if out:
            return out[0] if len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        name = func.__name__
        if name not in _FREE:
            _state.launch(f"{_FUNC_KIND.get(name, 'call')}:{name}")
            if "out" not in kwargs:
                _state.alloc()
        with _state.inside():
            result = func(*_plain(args), **{k: _plain(v) for k, v in kwargs.items()})
        return kwargs["out"] if "out" in kwargs and kwargs["out"] is not None else _wrap(result)

    def __getitem__(self, key: Any) -> Any:
        if _is_fancy(key):
            _state.launch("index:take")
            _state.alloc()
        with _state.inside():
            result = super().__getitem__(_plain(key))
        return _wrap(result)

    def __setitem__(self, key: Any, value: Any) -> None:
        _state.launch("index:scatter" if _is_fancy(key) else "copy:setitem")
        with _state.inside():
            super().__setitem__(_plain(key), _plain(value))

    # methods that do not go through a ufunc
    def argmax(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        _state.launch("reduce:argmax")
        _state.alloc()
        with _state.inside():
            return _wrap(self.view(np.ndarray).argmax(*args, **kwargs))

    def copy(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        _state.launch("copy:copy")
        _state.alloc()
        with _state.inside():
            return _wrap(self.view(np.ndarray).copy(*args, **kwargs))

    def astype(self, dtype: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if np.dtype(dtype) != self.dtype or kwargs.get("copy", True):
            _state.launch("copy:astype")
            _state.alloc()
        with _state.inside():
            return _wrap(self.view(np.ndarray).astype(dtype, *args, **kwargs))

    def fill(self, value: Any) -> None:
        _state.launch("copy:fill")
        self.view(np.ndarray).fill(value)

    def _to_host(self) -> np.ndarray:
        _state.sync()
        return self.view(np.ndarray)

    def __float__(self) -> float:
        return float(self._to_host())

    def __int__(self) -> int:
        return int(self._to_host())

    def __bool__(self) -> bool:
        return bool(self._to_host())

    def item(self, *args: Any) -> Any:
        return self._to_host().item(*args)

    def tolist(self) -> Any:
        return self._to_host().tolist()


# --------------------------------------------------------------------------
# What each gpu_backprop.kernels function launches on CuPy (read from its CuPy branch)
# --------------------------------------------------------------------------
def _bias_activation(z: Any, b: Any, kind: str, alpha: float = 0.01) -> tuple[list[str], int]:
    if b is None:
        return ([] if kind == "identity" else [f"{kind}_fwd"]), 0
    return [f"bias_{kind}_fwd"], 0


_KERNEL_LAUNCHES: dict[str, Callable[..., tuple[list[str], int]]] = {
    "bias_activation": _bias_activation,
    "activation_forward": _bias_activation,
    "activation_backward": lambda d, a, kind, alpha=0.01: ([] if kind == "identity" else [f"{kind}_bwd"], 0),
    # one row-wise kernel; CuPy's branch allocates dz's scratch when dz is absent
    "softmax_cross_entropy": lambda z, labels, targets, dz, rows: (["softmax_xent"], int(dz is None)),
    "softmax": lambda z: (["reduce:max", "elementwise:subtract", "elementwise:exp", "reduce:sum",
                           "elementwise:true_divide"], 3),
    "column_sum": lambda d, out: (["reduce:sum"], 0),
    "sgd_update": lambda p, g, v, *a, **k: (["momentum_sgd" if v is not None else "sgd"], 0),
    "adam_update": lambda *a, **k: (["adam"], 0),
    "gather_scale": lambda *a, **k: (["gather_scale"], 0),
    "dropout_forward": lambda *a, **k: (["dropout_fwd"], 0),
    "batchnorm_normalize": lambda *a, **k: (["bn_fwd"], 0),
    "batchnorm_backward": lambda *a, **k: (["bn_bwd"], 0),
    "hash_uniform": lambda *a, **k: (["hash_u32"], 1),
    "random_permutation": lambda *a, **k: (["hash_u32", "copy:astype", "elementwise:left_shift", "elementwise:arange",
                                            "elementwise:bitwise_or", "sort:argsort"], 4),
}


#: kernels functions that launch no kernel of their own: matmul and weight_grad are cuBLAS, which the traced
#: arrays count; the others decide or build things on the host
_NOT_KERNELS = {"matmul", "weight_grad", "scipy_blas", "defers_weight_grads", "blas_threads", "make_elementwise",
                "make_raw", "raw_source"}


def _one_launch(name: str) -> Callable[..., tuple[list[str], int]]:
    return lambda *a, **k: ([name], 0)


def _traced_kernel(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    table = _KERNEL_LAUNCHES.get(name, _one_launch(name))  # a function added later: one kernel, by its name

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        launched, allocations = table(*args, **kwargs)
        for k in launched:
            _state.launch(k if ":" in k else f"kernel:{k}")
        _state.alloc(allocations)
        with _state.inside():
            return _wrap(fn(*args, **kwargs))

    return wrapper


def _traced_creation(fn: Callable[..., Any], launch: str | None) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = fn(*_plain(args), **{k: _plain(v) for k, v in kwargs.items()})
        if launch == "copy?":  # ascontiguousarray: a copy only when it had to make one
            source = args[0] if args else kwargs.get("a")
            if not (isinstance(source, np.ndarray) and np.shares_memory(result, source)):
                _state.launch("copy:ascontiguousarray")
                _state.alloc()
        else:
            _state.alloc()
            if launch:
                _state.launch(launch)
        return _wrap(result)

    return wrapper


_CREATION = {"empty": None, "empty_like": None, "zeros": "copy:memset", "zeros_like": "copy:memset",
             "ones": "copy:fill", "ones_like": "copy:fill", "full": "copy:fill", "full_like": "copy:fill",
             "arange": "elementwise:arange", "ascontiguousarray": "copy?"}


@contextlib.contextmanager
def trace() -> Iterator[LaunchCount]:
    """Record, in the yielded :class:`LaunchCount`, what the enclosed NumPy code would launch on CuPy.

    Arrays created inside with ``np.empty``, ``np.zeros``, ... (and so every
    buffer of a network built inside) are traced; operations on them are
    counted. ``gpu_backprop.kernels`` functions count their CuPy launches.
    Not thread-safe: it patches NumPy's creation functions while it runs.
    """
    if _state.counts is not None:
        raise RuntimeError("launch tracing is already running; traces do not nest")
    counts = LaunchCount()
    saved_np = {name: getattr(np, name) for name in _CREATION}
    saved_k = {name: getattr(kernels, name) for name in {*_KERNEL_LAUNCHES, *kernels.__all__}
               if callable(getattr(kernels, name, None)) and name not in _NOT_KERNELS}
    try:
        for name, launch in _CREATION.items():
            setattr(np, name, _traced_creation(saved_np[name], launch))
        for name, fn in saved_k.items():
            setattr(kernels, name, _traced_kernel(name, fn))
        _state.counts, _state.depth = counts, 0
        yield counts
    finally:
        _state.counts = None
        for name, fn in saved_np.items():
            setattr(np, name, fn)
        for name, fn in saved_k.items():
            setattr(kernels, name, fn)


def count_launches(fn: Callable[[], Any]) -> LaunchCount:
    """Run ``fn()`` under :func:`trace` and return what it would launch on CuPy (arrays must be made inside)."""
    with trace() as counts:
        fn()
    return counts


# --------------------------------------------------------------------------
# The budget of one step of gb.fit
# --------------------------------------------------------------------------
_TRACED = Backend("traced", np, "CPU (launch tracing)", "launch tracing: NumPy standing in for CuPy")


def launch_budget(net: Any, batch_size: int, *, momentum: float = 0.9) -> dict[str, Any]:
    """Launches, allocations and host synchronisations per training step of :func:`gpu_backprop.fit`.

    Builds a traced NumPy copy of ``net`` and trains it for one epoch of 2 and
    of 4 steps of ``batch_size`` on random uint8 data (SGD with ``momentum``,
    no progress bar); the per-step figures are the difference divided by two,
    so the work done once per epoch (shuffle, the final read-back) cancels.
    At batch 1 the NumPy path forms ``dW = x ⊗ dz`` as an elementwise product
    where CuPy runs a GEMM: one launch either way.
    """
    from ..optim import SGD  # here: the trainer and optimisers are only needed for the budget
    from ..trainer import fit

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    rng = np.random.default_rng(0)
    runs = []
    for steps in (2, 4):
        n = steps * batch_size
        X = rng.integers(0, 256, (n, net.input_dim), dtype=np.uint8)
        y = rng.integers(0, max(net.output_dim, 2), n)
        with trace():
            traced = net.copy(backend=_TRACED)
            opt = SGD(traced, lr=1e-3, momentum=momentum)
        with trace() as counts:
            fit(traced, opt, X, y, epochs=1, batch_size=batch_size, progress=False)
        runs.append(counts)
    per2 = runs[1] - runs[0]
    launches = {k: v / 2 for k, v in sorted(per2.launches.items())}
    kinds = {k: v / 2 for k, v in sorted(per2.by_kind().items())}
    return {"batch_size": batch_size, "launches": per2.total / 2, "by_kind": kinds, "by_name": launches,
            "allocations": per2.allocations / 2, "synchronizations": per2.synchronizations / 2}


# --------------------------------------------------------------------------
# On a GPU: CUPTI
# --------------------------------------------------------------------------
def count_gpu_launches(fn: Callable[[], Any]) -> dict[str, Any]:
    """Count the kernels, memsets and copies ``fn()`` really issues on the GPU, with CUPTI's activity API.

    CUPTI through NVIDIA's ``cupti-python`` package (``pip install cupti-python``,
    matching the CUDA major version), or else through PyTorch's profiler (a CUDA
    build of PyTorch: its CUPTI records every kernel of the process, CuPy's too).
    Synchronises before and after ``fn``. Returns ``{"kernels": n, "memsets": n,
    "memcpys": n, "by_name": {kernel: n}, "counter": "cupti-python" or "torch.profiler"}``.
    Not yet run on a GPU (written against the documented bindings of both).
    """
    from ..backend import cupy_module

    sync = cupy_module().cuda.get_current_stream().synchronize
    try:
        from cupti import cupti
    except ImportError:
        return _count_with_torch(fn, sync)
    names: Counter[str] = Counter()
    kinds: Counter[int] = Counter()

    def requested() -> tuple[int, int]:
        return 8 << 20, 0

    def completed(activities: list[Any]) -> None:
        for a in activities:
            kinds[int(a.kind)] += 1
            if int(a.kind) == int(cupti.ActivityKind.CONCURRENT_KERNEL):
                names[str(a.name)] += 1

    wanted = (cupti.ActivityKind.CONCURRENT_KERNEL, cupti.ActivityKind.MEMSET, cupti.ActivityKind.MEMCPY)
    sync()
    cupti.activity_register_callbacks(requested, completed)
    for kind in wanted:
        cupti.activity_enable(kind)
    try:
        fn()
        sync()
    finally:
        cupti.activity_flush_all(1)
        for kind in wanted:
            cupti.activity_disable(kind)
    return {"kernels": kinds[int(wanted[0])], "memsets": kinds[int(wanted[1])], "memcpys": kinds[int(wanted[2])],
            "by_name": dict(names), "counter": "cupti-python"}


def _count_with_torch(fn: Callable[[], Any], sync: Callable[[], None]) -> dict[str, Any]:
    """:func:`count_gpu_launches` through ``torch.profiler`` (device activity only)."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or not torch.cuda.is_available():
        raise BackendError("counting GPU launches needs cupti-python (pip install cupti-python) or a CUDA build "
                           "of PyTorch; or run under `nsys profile --stats=true`")
    from torch.profiler import ProfilerActivity, profile

    sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        sync()
    device = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return {**tally_device_events(device), "counter": "torch.profiler"}


def tally_device_events(names: Iterable[str]) -> dict[str, Any]:
    """Kernels, memsets and copies among a profiler's device events, by name (``Memcpy …``, ``Memset …``)."""
    by_name: Counter[str] = Counter()
    memsets = memcpys = 0
    for name in names:
        if name.startswith("Memset"):
            memsets += 1
        elif name.startswith("Memcpy"):
            memcpys += 1
        else:
            by_name[name] += 1
    return {"kernels": sum(by_name.values()), "memsets": memsets, "memcpys": memcpys, "by_name": dict(by_name)}
