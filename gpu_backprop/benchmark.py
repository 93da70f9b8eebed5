"""The benchmark suite: training throughput per regime, against the hardware limit and a peer.

    python -m gpu_backprop bench                 # the full suite (several minutes on a 2-core CPU)
    python -m gpu_backprop bench --quick         # under a minute
    python benchmarks/run.py --model 784-512-10 --batch 1 64 full

For each backend present (NumPy; CuPy where a device answers) and each model
and regime (batch 1, mini-batches, the full 60,000-sample batch) it times
whole training steps — gather the batch from the device-resident uint8 data
set, scale, forward, backward, SGD with momentum — after a warm-up, and takes
the median. It measures the float32 GEMM rate of the same device in the same
run and reports each regime as a fraction of it (the step's FLOPs over that
rate). PyTorch (eager, CPU or CUDA) and scikit-learn's MLPClassifier run the
same model, batch and optimiser side by side when they are importable.

The frameworks are timed interleaved — a block of ours, a block of PyTorch's,
a block of scikit-learn's, and again — so that all of them see the same drift
of a noisy machine; the median block counts. On Linux each block also records
how many cores the *other* processes of the machine kept busy while it ran
(``/proc/stat`` less this process's own CPU time); a block that shared the
machine with more than ``--max-load`` cores of someone else's work is run
again (twice at most), and the report gives that load next to every figure.

Reports are JSON (every number), Markdown, and a PNG plot when matplotlib is
installed, written to ``--out`` (default ``benchmarks/results``) under a name
made of the date and the device (``2026-11-22-cpu-amd-epyc-2core``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import itertools
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, kernels
from .backend import Backend, cupy_available, get_backend, per_sample_blas, set_tf32, tf32_enabled
from .layers import Dense
from .network import MLP
from .optim import SGD

__all__ = [
    "MODELS",
    "TARGETS",
    "breakdown",
    "gemm_rate",
    "machine_facts",
    "main",
    "run_suite",
    "step_flops",
    "to_markdown",
]

MODELS = {"mlp-256": [784, 256, 256, 10], "mlp-1024": [784, 1024, 1024, 10]}
N_TRAIN = 60_000
PAUSE = 0.2  # seconds between two timed blocks: the previous framework's BLAS threads stop spinning
LR, MOMENTUM = 0.01, 0.9

#: the NumPy backend's targets on a CPU (issue 4), checked on mlp-1024 in every report that has the rows
TARGETS = (
    {"batch": 128, "what": "ours/PyTorch samples/s", "key": "ours_over_torch", "at_least": 1.15},
    {"batch": "full", "what": "fraction of the GEMM limit", "key": "fraction_of_limit", "at_least": 0.90},
    {"batch": 1, "what": "ours/PyTorch samples/s", "key": "ours_over_torch", "at_least": 5.0},
)


def step_flops(sizes: list[int]) -> int:
    """FLOPs of one training step per sample: forward 2·Σ sᵢsᵢ₊₁, dW the same, dX for all but the first layer."""
    pairs = [a * b for a, b in itertools.pairwise(sizes)]
    return 2 * sum(pairs) + 2 * sum(pairs) + 2 * sum(pairs[1:])


# --------------------------------------------------------------------------
# Timing, and the load the rest of the machine put on it meanwhile
# --------------------------------------------------------------------------
def _machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine has been busy, all cores, hypervisor steal included (Linux)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


class _LoadMeter:
    """Cores' worth of CPU time used by other processes between ``start()`` and ``stop()`` (None off Linux)."""

    def start(self) -> None:
        self.busy, self.own, self.t0 = _machine_busy_seconds(), _own_seconds(), time.perf_counter()

    def stop(self) -> float | None:
        busy = _machine_busy_seconds()
        if busy is None or self.busy is None:
            return None
        wall = max(time.perf_counter() - self.t0, 1e-9)
        foreign = (busy - self.busy) - (_own_seconds() - self.own)
        # both clocks tick every 10 ms, and a VM may book stolen time in bursts: keep it within [0, cores]
        return min(max(0.0, foreign / wall), float(os.cpu_count() or 1))


class _Runner:
    """One framework's training step, ready to be timed in blocks of ``calls`` steps.

    ``block()`` records seconds per step for one block — CUDA events around the
    block for CuPy, otherwise ``perf_counter`` after a synchronisation — and the
    cores other processes kept busy meanwhile.
    """

    def __init__(self, step: Callable[[], Any], sync: Callable[[], None], events: Any = None,
                 samples_per_call: int = 1, context: Callable[[], Any] = contextlib.nullcontext) -> None:
        self.step, self.sync, self.events, self.samples_per_call = step, sync, events, samples_per_call
        self.context = context  # entered around every timed block (e.g. one BLAS thread for batch 1)
        self.calls = 1
        self.times: list[float] = []
        self.loads: list[float | None] = []
        self.rerun = 0  # blocks timed again because the machine was busy
        self._meter = _LoadMeter()

    def calibrate(self, budget: float) -> None:
        """Warm up (buffers, kernels, caches) and pick how many steps make a block of about ``budget`` s."""
        with self.context():
            self.step()
            self.sync()
            n, t0 = 0, time.perf_counter()
            while True:  # time enough steps (50 ms) that one slow step does not shorten every block
                self.step()
                self.sync()
                n, elapsed = n + 1, time.perf_counter() - t0
                if elapsed >= min(0.05, budget / 4) or n >= 1000:
                    break
        self.calls = max(1, min(5000, round(budget * n / elapsed)))

    def block(self) -> None:
        with self.context():
            self._meter.start()
            self.times.append(self._timed_block())
            self.loads.append(self._meter.stop())

    def drop_last(self) -> None:
        self.times.pop()
        self.loads.pop()
        self.rerun += 1

    def _timed_block(self) -> float:
        if self.events is not None:
            start, stop = self.events.Event(), self.events.Event()
            start.record()
            for _ in range(self.calls):
                self.step()
            stop.record()
            stop.synchronize()
            return self.events.get_elapsed_time(start, stop) / 1e3 / self.calls
        self.sync()
        t0 = time.perf_counter()
        for _ in range(self.calls):
            self.step()
        self.sync()
        return (time.perf_counter() - t0) / self.calls

    @property
    def seconds(self) -> float:
        """Median seconds per call over the kept blocks."""
        return statistics.median(self.times)

    @property
    def load(self) -> float | None:
        """Median cores used by other processes during the kept blocks."""
        known = [x for x in self.loads if x is not None]
        return statistics.median(known) if known else None


class Quiet:
    """How long a run may wait for the machine's other processes to go quiet, and what counts as quiet.

    ``max_load``: cores of other processes' work tolerated during a timed block;
    ``patience``: seconds of waiting the whole run may spend before it times blocks anyway.
    """

    def __init__(self, max_load: float = 0.25, patience: float = 120.0) -> None:
        self.max_load, self.patience, self.waited = max_load, patience, 0.0

    def wait(self, timeout: float = 30.0) -> None:
        """Sleep in 0.25 s windows until one passes with at most ``max_load`` foreign cores."""
        meter, t0 = _LoadMeter(), time.perf_counter()
        while time.perf_counter() - t0 < min(timeout, self.patience - self.waited):
            meter.start()
            time.sleep(0.25)
            load = meter.stop()
            if load is None or load <= self.max_load:
                break
        self.waited += time.perf_counter() - t0


def _interleaved(runners: dict[str, _Runner], budget: float, repeats: int, quiet: Quiet | None = None,
                 reruns: int = 3) -> dict[str, float]:
    """Median seconds per call of each runner, their blocks interleaved (A B C A B C ...).

    Interleaving puts every framework under the same drift of a noisy machine; the pause of
    ``PAUSE`` seconds between them lets the previous one's worker threads go to sleep before
    the next one is timed (an idle OpenBLAS worker spins about 0.1 s after each call,
    measured; PyTorch's OpenMP pool spins briefly too). A block during which other
    processes kept more than ``quiet.max_load`` cores busy is dropped, and after a wait for
    the machine to go quiet it is timed again, ``reruns`` times at most; if every try was
    loaded, the least loaded one counts (and the report shows its load).
    """
    quiet = quiet or Quiet()
    for r in runners.values():
        r.calibrate(budget)
    for _ in range(repeats):
        for r in runners.values():
            tries: list[tuple[float, float, float | None]] = []
            for _attempt in range(reruns + 1):
                time.sleep(PAUSE)
                r.block()
                load = r.loads[-1]
                tries.append((load if load is not None else 0.0, r.times[-1], load))
                if load is None or load <= quiet.max_load:
                    break
                r.drop_last()
                if _attempt < reruns:
                    quiet.wait()
            else:  # every try was loaded: keep the least loaded one
                r.rerun -= 1
                best = min(tries)
                r.times.append(best[1])
                r.loads.append(best[2])
    return {name: r.seconds for name, r in runners.items()}


def gemm_rate(be: Backend, n: int, repeats: int, quiet: Quiet | None = None) -> dict[str, Any]:
    """Measured float32 GEMM rate for an n×n×n product on ``be``'s device: ``{"flops": FLOP/s, "load": cores}``."""
    xp = be.xp
    rng = np.random.default_rng(0)
    a = xp.asarray(rng.standard_normal((n, n), dtype=np.float32))
    b = xp.asarray(rng.standard_normal((n, n), dtype=np.float32))
    c = xp.empty((n, n), dtype=xp.float32)
    runner = _Runner(lambda: xp.matmul(a, b, out=c), be.synchronize, xp.cuda if be.name == "cupy" else None)
    seconds = _interleaved({"gemm": runner}, budget=0.3, repeats=repeats, quiet=quiet)["gemm"]
    return {"flops": 2.0 * n**3 / seconds, "load": runner.load}


# --------------------------------------------------------------------------
# Our training step and the peers'
# --------------------------------------------------------------------------
def _data(n: int, d: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random bytes of the training set's shape (60,000 × 784 for MNIST) and random labels."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, d), dtype=np.uint8), rng.integers(0, classes, n)


class _OurStep:
    """gpu_backprop's step as :func:`gpu_backprop.fit` runs it: batch from the device-resident data, update.

    ``opt.train_step(Xb, yb)`` is ``net.train_step_grads(Xb, yb)`` then ``opt.step()``; for a single
    sample on NumPy with SciPy present it fuses the rank-1 update (same weights, tested).
    """

    def __init__(self, be: Backend, sizes: list[int], batch: int) -> None:
        from .trainer import _Batches

        xp = be.xp
        Xh, yh = _data(max(N_TRAIN, batch), sizes[0], sizes[-1])
        self.X, self.y = xp.asarray(Xh), xp.asarray(yh)
        self.net = MLP(sizes, activation="relu", backend=be, seed=0)
        self.opt = SGD(self.net, lr=LR, momentum=MOMENTUM)
        self.batches = _Batches(self.net, self.X, 1.0 / 255)
        self.order = kernels.random_permutation(xp, self.X.shape[0], 0, 0)
        self.batch, self.i = batch, 0

    def next_batch(self) -> tuple[Any, Any]:
        """The next batch, gathered and scaled on the device (the whole set for a full batch)."""
        if self.batch == self.X.shape[0]:  # full batch: the whole set, scaled once (as fit does)
            return self.batches.full(), self.y
        i = self.i if self.i + self.batch <= self.X.shape[0] else 0
        rows = self.order[i:i + self.batch]
        self.i = i + self.batch
        return self.batches.get(rows), self.y[rows]

    def __call__(self) -> None:
        self.opt.train_step(*self.next_batch())


def ours(be: Backend, sizes: list[int], batch: int) -> _Runner:
    """A runner for gpu_backprop's training step (see :class:`_OurStep`)."""
    return _Runner(_OurStep(be, sizes, batch), be.synchronize, be.xp.cuda if be.name == "cupy" else None,
                   context=lambda: per_sample_blas(be, batch))  # as gb.fit does


def torch_peer(device: str, sizes: list[int], batch: int) -> _Runner | None:
    """The same model, data handling and optimiser in PyTorch eager (None if torch is missing)."""
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    dev = torch.device(device)
    layers: list[Any] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    lossf = torch.nn.CrossEntropyLoss()
    Xh, yh = _data(max(N_TRAIN, batch), sizes[0], sizes[-1])
    X, y = torch.from_numpy(Xh).to(dev), torch.from_numpy(yh).to(dev)
    order = torch.randperm(X.shape[0], device=dev)
    whole = X.float().mul_(1.0 / 255) if batch == X.shape[0] else None  # full batch: scaled once, like ours
    state = {"i": 0}

    def step() -> None:
        if whole is not None:
            xb, yb = whole, y
        else:
            i = state["i"] if state["i"] + batch <= X.shape[0] else 0
            rows = order[i:i + batch]
            state["i"] = i + batch
            xb, yb = X.index_select(0, rows).float().mul_(1.0 / 255), y.index_select(0, rows)
        opt.zero_grad(set_to_none=True)
        lossf(model(xb), yb).backward()
        opt.step()

    if dev.type != "cuda":
        return _Runner(step, lambda: None)
    torch.backends.cuda.matmul.allow_tf32 = tf32_enabled()  # the same precision as ours

    class _TorchEvents:  # CUDA events with CuPy's interface, for _Runner
        @staticmethod
        def Event() -> Any:  # the name _Runner calls, as on CuPy
            return torch.cuda.Event(enable_timing=True)

        @staticmethod
        def get_elapsed_time(start: Any, stop: Any) -> float:
            return float(start.elapsed_time(stop))  # milliseconds, as CuPy's

    return _Runner(step, torch.cuda.synchronize, _TorchEvents)


def sklearn_peer(sizes: list[int], batch: int, budget: float) -> _Runner | None:
    """scikit-learn's MLPClassifier (SGD with momentum); one call is a ``partial_fit`` pass over k batches.

    ``partial_fit`` checks its input, shuffles and runs ``k`` mini-batch steps of ``batch_size``
    rows on data already scaled to floats; ``k`` is chosen so one call fills the block budget,
    which spreads the per-call overhead as thinly as the framework allows.
    """
    try:
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier
    except ImportError:
        return None
    Xh, yh = _data(max(N_TRAIN, batch), sizes[0], sizes[-1])
    X = Xh.astype(np.float32) / 255
    clf = MLPClassifier(hidden_layer_sizes=tuple(sizes[1:-1]), activation="relu", solver="sgd",
                        learning_rate_init=LR, momentum=MOMENTUM, nesterovs_momentum=False, batch_size=batch,
                        random_state=0)
    warnings.simplefilter("ignore", ConvergenceWarning)
    clf.partial_fit(X[:batch], yh[:batch], classes=np.arange(sizes[-1]))
    t0 = time.perf_counter()
    clf.partial_fit(X[:batch], yh[:batch])
    k = max(1, min(N_TRAIN // batch, int(budget / max(time.perf_counter() - t0, 1e-6))))
    chunk = X[: k * batch], yh[: k * batch]
    return _Runner(lambda: clf.partial_fit(*chunk), lambda: None, samples_per_call=k)  # k steps per call


# --------------------------------------------------------------------------
# Where a step's time goes (measured, for the notes)
# --------------------------------------------------------------------------
def _median_time(fn: Callable[[], Any], sync: Callable[[], None], repeats: int) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def breakdown(be: Backend, sizes: list[int], batch: int, repeats: int = 30) -> dict[str, Any]:
    """Seconds per phase of our step, and the same step's matrix products timed alone.

    Each of ``repeats`` steps is cut into ``gather`` (the batch from the device-resident
    set, scaled), ``fwd_bwd`` (forward, loss, backward) and ``update`` (the optimiser — where
    SGD fuses ``dW = Xᵀ dZ`` into its update, that product is timed here and not in
    ``fwd_bwd``), a synchronised host clock around each; medians are reported, and ``step``
    is the median uncut step. ``gemm`` times all the step's products alone on the same shapes
    and BLAS — ``X W`` and ``Xᵀ dZ`` for every layer, ``dZ Wᵀ`` for all but the first (for one
    sample with the fused update, the ``x ⊗ dz`` outer products are left to the update).
    ``other_load_cores``: what other processes ran meanwhile (see :class:`_LoadMeter`).
    ``update_bytes`` is the least a momentum update moves: the gradient read, the weights and
    the velocity read and written.
    """
    from .optim import _blas

    s = _OurStep(be, sizes, batch)
    xp, sync = be.xp, be.synchronize
    net, opt = s.net, s.opt
    dense = [layer for layer in net._steps if isinstance(layer, Dense)]
    n = min(s.X.shape[0], batch)
    fused = _blas(net, s.X[:n], opt.nesterov) is not None
    rng = np.random.default_rng(1)
    acts = [xp.asarray(rng.random((n, d), dtype=np.float32)) for d in sizes]
    outs = [xp.empty((n, d), dtype=xp.float32) for d in sizes]
    reps = max(3, repeats if n < N_TRAIN else 3)

    def gemms() -> None:
        for i, layer in enumerate(dense):
            W = layer.params["W"]
            kernels.matmul(acts[i], W, outs[i + 1])
            if n > 1 or xp is not np:
                kernels.matmul(acts[i].T, acts[i + 1], layer.grads["W"], batch=n)
            elif not fused:  # one sample: an outer product (fused: BLAS ger, inside the update)
                np.multiply(acts[i].T, acts[i + 1], out=layer.grads["W"])
            if i:
                kernels.matmul(acts[i + 1], W.T, outs[i])

    phases: dict[str, list[float]] = {"gather": [], "fwd_bwd": [], "update": []}
    meter = _LoadMeter()
    meter.start()
    with per_sample_blas(be, batch):
        for r in range(reps + 2):
            sync()
            t0 = time.perf_counter()
            xb, yb = s.next_batch()
            sync()
            t1 = time.perf_counter()
            for layer in dense:
                layer.defer_rank1 = fused
            try:
                net.train_step_grads(xb, yb)
            finally:
                for layer in dense:
                    layer.defer_rank1 = False
            sync()
            t2 = time.perf_counter()
            if fused:
                opt._rank1_update(_blas(net, xb), dense)
            else:
                opt.step()
            sync()
            t3 = time.perf_counter()
            if r >= 2:  # the first two warm up
                for k, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2)):
                    phases[k].append(dt)
        step = _median_time(s, sync, reps)
        gemm = _median_time(gemms, sync, reps)
    return {"model": "-".join(map(str, sizes)), "batch": "full" if n == N_TRAIN else batch, "backend": be.name,
            "step": step, **{k: statistics.median(v) for k, v in phases.items()}, "gemm": gemm,
            "fused_update": fused, "other_load_cores": meter.stop(), "update_bytes": 5 * net.flat_params.nbytes, "params": net.num_params}


# --------------------------------------------------------------------------
# Time to accuracy
# --------------------------------------------------------------------------
def time_to_accuracy(be: Backend, target: float = 0.89, max_epochs: int = 10) -> dict[str, Any]:
    """Wall time until Fashion-MNIST test accuracy ≥ ``target``.

    784-256-256-10 ReLU, SGD with momentum 0.9, lr 0.05 on a cosine schedule over ``max_epochs``,
    batch 128 (the command line's ``fashion`` preset), evaluated after every epoch.
    """
    from .data import DataError, load_dataset
    from .trainer import fit

    try:
        ds = load_dataset("fashion-mnist", download=False)
    except DataError as exc:
        return {"skipped": f"Fashion-MNIST not available ({str(exc).split(';')[0]})"}
    net = MLP([784, 256, 256, 10], backend=be, seed=0)
    opt = SGD(net, lr=0.05, momentum=0.9)  # the `fashion` preset of the command line
    t0 = time.perf_counter()
    history = fit(net, opt, ds.x_train, ds.y_train, epochs=max_epochs, batch_size=128, schedule="cosine",
                  validation=(ds.x_test, ds.y_test), progress=False,
                  callback=lambda record: record["val_accuracy"] >= target)
    seconds = time.perf_counter() - t0
    accs = history.metric("val_accuracy")
    return {"target": target, "reached": accs[-1] >= target, "seconds": seconds, "epochs": len(accs),
            "max_epochs": max_epochs, "accuracies": accs,
            "includes": "data upload, training, and a test evaluation after each epoch"}


# --------------------------------------------------------------------------
# Machine facts
# --------------------------------------------------------------------------
def machine_facts(backends: list[Backend]) -> dict[str, Any]:
    """CPU, BLAS and its threads, GPU, driver and library versions, and the machine's load at the start."""
    facts: dict[str, Any] = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "cpu": _cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "numpy": np.__version__, "gpu_backprop": __version__,
        "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                                "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUPY_TF32")},
    }
    with contextlib.suppress(OSError):
        facts["loadavg_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    with contextlib.suppress(OSError, ValueError):  # e.g. "32768K"
        size = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
        facts["l3_cache_mb"] = int(size.rstrip("K")) / 1024 if size.endswith("K") else None
    try:
        import scipy
        import scipy.linalg  # loads SciPy's own BLAS, so that threadpoolctl lists it

        facts["scipy"] = scipy.__version__
    except ImportError:
        facts["scipy"] = None
    try:
        from threadpoolctl import threadpool_info

        facts["blas"] = [{"library": os.path.basename(i.get("filepath", "")),
                          **{k: i.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}}
                         for i in threadpool_info() if i.get("user_api") == "blas"]
    except ImportError:
        try:
            cfg = np.show_config(mode="dicts")
            facts["blas"] = cfg.get("Build Dependencies", {}).get("blas", {})
        except (TypeError, AttributeError):  # older NumPy: no mode=
            facts["blas"] = "unknown"
    try:
        import torch

        facts["torch"] = torch.__version__
        facts["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            facts["torch_cuda"] = torch.version.cuda
    except ImportError:
        facts["torch"] = None
    try:
        import sklearn

        facts["sklearn"] = sklearn.__version__
    except ImportError:
        facts["sklearn"] = None
    for be in backends:
        if be.name == "cupy":
            cp = be.xp
            props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
            facts["gpu"] = be.device
            facts["gpu_memory_gib"] = round(props["totalGlobalMem"] / 2**30, 1)
            facts["cuda_driver"] = cp.cuda.runtime.driverGetVersion()
            facts["cuda_runtime"] = cp.cuda.runtime.runtimeGetVersion()
            facts["cupy"] = cp.__version__
            facts["tf32"] = tf32_enabled()
    return facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --------------------------------------------------------------------------
# The suite
# --------------------------------------------------------------------------
def run_suite(models: dict[str, list[int]], batches: list[int | str], backends: list[Backend], *,
              budget: float, repeats: int, gemm_n: int, peers: bool, sklearn: bool = True, tta: bool,
              breakdown_batches: Sequence[int | str] = (), quiet: Quiet | None = None,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every (backend, model, batch) and return the report as a dict."""
    quiet = quiet or Quiet()
    report: dict[str, Any] = {"facts": machine_facts(backends), "limits": {}, "results": [],
                              "flops_per_sample": {m: step_flops(s) for m, s in models.items()},
                              "settings": {"budget_s": budget, "repeats": repeats, "max_load_cores": quiet.max_load,
                                           "patience_s": quiet.patience,
                                           "lr": LR, "momentum": MOMENTUM, "data": "random uint8 bytes, "
                                           f"{N_TRAIN} rows, resident on the device"}}
    for be in backends:
        n = gemm_n if be.name == "numpy" else max(gemm_n, 8192)
        lim: dict[str, Any] = {"gemm_n": n, "device": be.device}
        if be.name == "cupy":  # FP32 and TF32 both measured; the limit is the one the run uses
            tf32 = tf32_enabled()
            set_tf32(False)
            lim["gemm_fp32_flops"] = gemm_rate(be, n, max(3, repeats), quiet)["flops"]
            set_tf32(True)
            lim["gemm_tf32_flops"] = gemm_rate(be, n, max(3, repeats), quiet)["flops"]
            set_tf32(tf32)
            lim["gemm_flops"] = lim["gemm_tf32_flops" if tf32 else "gemm_fp32_flops"]
            lim["precision"] = "tf32" if tf32 else "fp32"
        else:
            g = gemm_rate(be, n, max(3, repeats), quiet)
            lim.update(gemm_flops=g["flops"], precision="fp32", load=g["load"])
        report["limits"][be.name] = lim
        log(f"{be.name}: {lim['precision']} GEMM {n}³ at {lim['gemm_flops'] / 1e9:,.1f} GFLOP/s on {be.device}")
    rows = []
    for name, sizes in models.items():
        for batch in batches:
            b = N_TRAIN if batch == "full" else int(batch)
            for be in backends:
                runners: dict[str, _Runner | None] = {"ours": ours(be, sizes, b)}
                if peers:
                    runners["torch"] = torch_peer("cuda" if be.name == "cupy" else "cpu", sizes, b)
                    if sklearn and be.name == "numpy" and batch != "full":
                        runners["sklearn"] = sklearn_peer(sizes, b, budget)
                present = {k: r for k, r in runners.items() if r is not None}
                secs = _interleaved(present, budget, repeats, quiet)
                secs = {k: t / present[k].samples_per_call for k, t in secs.items()}  # per step
                limit = report["limits"][be.name]["gemm_flops"]
                flops = step_flops(sizes) * b
                mine = present["ours"]
                row: dict[str, Any] = {"model": name, "sizes": sizes, "batch": batch, "backend": be.name,
                                       "device": be.device, "seconds_per_step": secs["ours"],
                                       "samples_per_second": b / secs["ours"],
                                       "fraction_of_limit": flops / secs["ours"] / limit,
                                       "steps_per_block": mine.calls, "blocks": len(mine.times),
                                       "blocks_rerun": mine.rerun, "other_load_cores": mine.load}
                if "torch" in secs:
                    row.update(torch_samples_per_second=b / secs["torch"],
                               torch_fraction_of_limit=flops / secs["torch"] / limit,
                               ours_over_torch=secs["torch"] / secs["ours"],
                               torch_other_load_cores=present["torch"].load)
                if "sklearn" in secs:
                    row.update(sklearn_samples_per_second=b / secs["sklearn"],
                               ours_over_sklearn=secs["sklearn"] / secs["ours"],
                               sklearn_other_load_cores=present["sklearn"].load)
                rows.append(row)
                log(_row_text(row))
                del runners, present  # free the full-batch buffers before the next row
    report["results"] = rows
    for be in backends:
        for name, sizes in models.items():
            for batch in breakdown_batches:
                b = N_TRAIN if batch == "full" else int(batch)
                tries = []
                for _attempt in range(3):  # like a timed block: again after a wait if the machine was busy
                    quiet.wait()
                    tries.append(breakdown(be, sizes, b))
                    if (tries[-1]["other_load_cores"] or 0.0) <= quiet.max_load:
                        break
                res = min(tries, key=lambda t: t["other_load_cores"] or 0.0)
                report.setdefault("breakdown", []).append(res)
                log(f"{be.name} {name} batch {batch}: " + ", ".join(
                    f"{k} {res[k] * 1e3:.3f} ms" for k in ("step", "gather", "fwd_bwd", "update", "gemm")))
    if tta:
        for be in backends:
            report.setdefault("time_to_accuracy", {})[be.name] = res = time_to_accuracy(be)
            log(f"{be.name}: time to 89% on Fashion-MNIST: {res}")
    report["settings"]["waited_for_quiet_s"] = quiet.waited
    report["targets"] = check_targets(report)
    return report


def check_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Where each of :data:`TARGETS` stands in this report (NumPy, mlp-1024), with the margin."""
    out = []
    for t in TARGETS:
        row = next((r for r in report["results"] if r["backend"] == "numpy" and r["sizes"] == MODELS["mlp-1024"]
                    and r["batch"] == t["batch"]), None)
        if row is None or t["key"] not in row:
            continue
        value = row[t["key"]]
        out.append({**t, "value": value, "met": value >= t["at_least"], "ratio_to_target": value / t["at_least"]})
    return out


def analysis(report: dict[str, Any]) -> list[str]:
    """Notes on what bounds each regime of the targets, from this run's own measurements (rows and breakdown)."""
    notes = []
    limit = report["limits"].get("numpy", {}).get("gemm_flops")
    for t in report.get("targets", []):
        row = next((r for r in report["results"] if r["backend"] == "numpy" and r["sizes"] == MODELS["mlp-1024"]
                    and r["batch"] == t["batch"]), None)
        bd = next((b for b in report.get("breakdown", []) if b["backend"] == "numpy"
                   and b["model"] == "784-1024-1024-10" and b["batch"] == t["batch"]), None)
        if row is None or bd is None or limit is None:
            continue
        n = N_TRAIN if t["batch"] == "full" else int(t["batch"])
        flops = step_flops(MODELS["mlp-1024"]) * n
        head = (f"- **mlp-1024, batch {t['batch']}** ({'met' if t['met'] else 'missed'}: {t['value']:.2f} against "
                f"≥ {t['at_least']:g}). ")
        rest = bd["step"] - bd["gemm"]
        drift = row["seconds_per_step"] / bd["step"] - 1
        if abs(drift) > 0.2:  # the machine's speed changed between the row and the breakdown
            head += ("(The interleaved row and the breakdown, timed minutes apart, differ by more than 20% "
                     "per step: the machine's speed changed in between.) ")
        if t["batch"] == 1:
            notes.append(head + (
                f"A step took {bd['step'] * 1e3:.3f} ms in the breakdown ({1 / bd['step']:,.0f} samples/s; "
                f"{row['seconds_per_step'] * 1e3:.3f} ms in the interleaved row): forward and backward "
                f"{bd['fwd_bwd'] * 1e3:.3f} ms, of which the matrix–vector products alone are "
                f"{bd['gemm'] * 1e3:.3f} ms (NumPy's gemv on one thread, reading {bd['params'] * 4 / 1e6:.1f} MB of "
                f"weights and most of it again for dX; the rest is elementwise work, the loss and Python), and the "
                f"fused momentum update {bd['update'] * 1e3:.3f} ms, which must move at least "
                f"{bd['update_bytes'] / 1e6:.0f} MB (gradient read, weights and velocity read and written): "
                f"{bd['update_bytes'] / bd['update'] / 1e9:.0f} GB/s (weights and velocity are "
                f"{bd['update_bytes'] * 2 / 5 / 1e6:.0f} MB; L3 {report['facts'].get('l3_cache_mb', '?')} MB). "
                f"The step is bound by bytes moved and Python, not FLOPs; PyTorch's took "
                f"{1e3 / row['torch_samples_per_second']:.3f} ms in this run."
                + ("" if t["met"] else f" {t['at_least']:g}× PyTorch needs "
                   f"{1e3 / row['torch_samples_per_second'] / t['at_least']:.3f} ms per step.")))
        elif t["batch"] == "full":
            notes.append(head + (
                f"A step took {bd['step']:.2f} s; its GEMMs alone {bd['gemm']:.2f} s "
                f"({flops / bd['gemm'] / 1e9:.0f} GFLOP/s against the {limit / 1e9:.0f} of the 2048³ product), "
                f"so the GEMMs' own rate sets the ceiling at {flops / bd['gemm'] / limit:.0%} of the limit; the "
                f"other {rest:.2f} s are the elementwise passes over 60,000 × 1024 activations (bias and ReLU, "
                f"ReLU's derivative, bias gradients), bound by memory bandwidth, and the loss."))
        else:
            notes.append(head + (
                f"A step took {bd['step'] * 1e3:.2f} ms in the breakdown ({n / bd['step']:,.0f} samples/s; "
                f"{row['seconds_per_step'] * 1e3:.2f} ms in the interleaved row), of which the step's GEMMs alone "
                f"take {bd['gemm'] * 1e3:.2f} ms ({flops / bd['gemm'] / 1e9:.0f} GFLOP/s, "
                f"{flops / bd['gemm'] / limit:.0%} of the 2048³ rate: at 128 rows the products run below the "
                f"large-matrix rate); everything else — gather, elementwise work, loss, Python and the update's "
                f"passes beyond its dW product — {max(rest, 0) * 1e3:.2f} ms. With the GEMMs alone a step would "
                f"give {n / bd['gemm']:,.0f} samples/s, {n / bd['gemm'] / row['torch_samples_per_second']:.2f}× "
                f"PyTorch's {row['torch_samples_per_second']:,.0f}: the bound is the GEMMs' rate at this size."))
    return notes


def _row_text(r: dict[str, Any]) -> str:
    text = (f"{r['backend']:5} {r['model']:9} batch {r['batch']!s:>5}: {r['samples_per_second']:>12,.0f} samples/s "
            f"({r['fraction_of_limit']:.0%} of the GEMM limit)")
    if "torch_samples_per_second" in r:
        text += f"; torch {r['torch_samples_per_second']:,.0f} ({r['ours_over_torch']:.2f}x)"
    if "sklearn_samples_per_second" in r:
        text += f"; sklearn {r['sklearn_samples_per_second']:,.0f}"
    if r.get("other_load_cores") is not None:
        text += f"; other processes {r['other_load_cores']:.2f} cores"
    return text


# --------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------
def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def to_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: machine facts, the table, targets, breakdown, time to accuracy, notes."""
    f = report["facts"]
    blas = "; ".join(f"{b.get('library') or b.get('internal_api')} {b.get('version')} "
                     f"({b.get('num_threads')} threads, {b.get('architecture')} kernels)"
                     for b in f.get("blas", [])) if isinstance(f.get("blas"), list) else json.dumps(f.get("blas"))
    env = ", ".join(f"{k}={v}" for k, v in f.get("env", {}).items() if v is not None) or "none set"
    lines = [f"# gpu_backprop benchmark, {f['date']}", "",
             (f"- CPU: {f['cpu']}, {f['cores']} cores; Python {f['python']}; NumPy {f['numpy']}; "
             f"SciPy {f.get('scipy')}"),
             f"- BLAS: {blas}",
             (f"- BLAS/OpenMP environment: {env}; load average at the start: "
             f"{' '.join(f.get('loadavg_at_start', ['?']))}"),
             f"- PyTorch: {f.get('torch')} ({f.get('torch_threads', '—')} threads); scikit-learn: {f.get('sklearn')}"]
    if "gpu" in f:
        lines.append(f"- GPU: {f['gpu']}, {f['gpu_memory_gib']} GiB; driver {f['cuda_driver']}, CUDA runtime "
                     f"{f['cuda_runtime']}, CuPy {f['cupy']}, TF32 {'on' if f['tf32'] else 'off'}")
    for name, lim in report["limits"].items():
        extra = ""
        if "gemm_tf32_flops" in lim:
            extra = (f" (FP32 {lim['gemm_fp32_flops'] / 1e12:,.1f} TFLOP/s, TF32 {lim['gemm_tf32_flops'] / 1e12:,.1f}"
                     " TFLOP/s)")
        lines.append(f"- {name}: measured {lim['precision']} GEMM ({lim['gemm_n']}³) "
                     f"{lim['gemm_flops'] / 1e9:,.1f} GFLOP/s{extra} — the limit below")
    lines += ["", ("Whole training steps (gather a batch from the device-resident uint8 set and scale it, forward, "
              "backward, SGD with momentum 0.9; float32, ReLU, softmax cross-entropy) on random bytes of the "
              "training set's shape (60,000 × 784), so no data set is needed; full batch = all 60,000 rows, "
              "gathered and scaled once. Ours runs `opt.train_step(Xb, yb)` (= `net.train_step_grads` + "
              "`opt.step()`, as `fit` does). The frameworks are timed interleaved block by block, median of the "
              "blocks after a warm-up. *Limit* = the step's FLOPs at the measured GEMM rate. *Load* = cores "
              "kept busy by other processes during our blocks (blocks over "
              f"{report['settings']['max_load_cores']} cores were dropped and, after a wait for quiet, timed again, three times at most; "
              f"this run waited {report['settings'].get('waited_for_quiet_s', 0):.0f} s)."), "",
              ("| backend | model | batch | samples/s | ms/step | of limit | PyTorch samples/s | ours/PyTorch | "
              "sklearn samples/s | ours/sklearn | load |"),
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["results"]:
        lines.append(f"| {r['backend']} | {r['model']} | {r['batch']} | {r['samples_per_second']:,.0f} | "
                     f"{r['seconds_per_step'] * 1e3:.3f} | {r['fraction_of_limit']:.1%} | "
                     f"{_fmt(r.get('torch_samples_per_second'), ',.0f')} | {_fmt(r.get('ours_over_torch'), '.2f')} | "
                     f"{_fmt(r.get('sklearn_samples_per_second'), ',.0f')} | "
                     f"{_fmt(r.get('ours_over_sklearn'), '.2f')} | {_fmt(r.get('other_load_cores'), '.2f')} |")
    if report.get("targets"):
        lines += ["", "## Targets (NumPy backend, mlp-1024, this run)", "",
                  "| batch | what | target | measured | |", "| --- | --- | ---: | ---: | --- |"]
        for t in report["targets"]:
            verdict = "met" if t["met"] else f"missed by {1 - t['ratio_to_target']:.0%}"
            lines.append(f"| {t['batch']} | {t['what']} | ≥ {t['at_least']:g} | {t['value']:.2f} | {verdict} |")
    if report.get("breakdown"):
        lines += ["", "## Where a step's time goes (NumPy/CuPy phases, synchronised host clock, medians)", "",
                  ("| model | batch | step ms | gather | forward+backward | update | GEMMs alone | update GB/s "
                  "(least bytes) | step at GEMMs alone |"),
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for b in report["breakdown"]:
            n = N_TRAIN if b["batch"] == "full" else b["batch"]
            rate = (b["update_bytes"] / max(b["update"], 1e-12) / 1e9
                    if n == 1 or not b.get("fused_update") else None)  # a fused batch update also holds dW
            lines.append(f"| {b['model']} | {b['batch']} | {b['step'] * 1e3:.3f} | {b['gather'] * 1e3:.3f} | "
                         f"{b['fwd_bwd'] * 1e3:.3f} | {b['update'] * 1e3:.3f} | {b['gemm'] * 1e3:.3f} | "
                         f"{_fmt(rate, ',.0f')} | "
                         f"{n / b['gemm']:,.0f} samples/s |")
        lines += ["", ("*forward+backward* includes the GEMMs; what it has beyond *GEMMs alone* is the "
                  "elementwise work, the loss and Python. *update* is the optimiser; on NumPy with SciPy, SGD takes "
                  "`dW = Xᵀ dZ` into its update (BLAS `gemm` with β = 1, `ger` for one sample), so *update* then "
                  "holds those products and *forward+backward* does not (for one sample *GEMMs alone* are then the "
                  "forward and `dX` products only). *update GB/s* is the least a "
                  "momentum update moves (gradient read, weights and velocity read and written) over its time.")]
    for be, res in report.get("time_to_accuracy", {}).items():
        lines += ["", f"Time to accuracy ({be}): " + (
            res["skipped"] if "skipped" in res else
            f"{res['seconds']:.1f} s to {max(res['accuracies']):.2%} test accuracy on Fashion-MNIST in "
            f"{res['epochs']} epochs (target {res['target']:.0%}, {'reached' if res['reached'] else 'NOT reached'}"
            f" within {res['max_epochs']} epochs; 784-256-256-10, SGD momentum 0.9, lr 0.05 cosine, batch 128; "
            f"{res['includes']})")]
    notes = [*analysis(report), *report.get("notes", [])]
    if notes:
        lines += ["", "## Notes (from this run's measurements)", "", *notes]
    lines += ["", f"Command: `{report.get('command', '')}`"]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> bool:
    """Samples/s against batch size, log-log, one line per backend and peer, the limit dotted."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    models = list(dict.fromkeys(r["model"] for r in report["results"]))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = [r for r in report["results"] if r["model"] == model]
        for be in sorted({r["backend"] for r in rows}):
            mine = [r for r in rows if r["backend"] == be]
            xs = [N_TRAIN if r["batch"] == "full" else r["batch"] for r in mine]
            ax.plot(xs, [r["samples_per_second"] for r in mine], "o-", label=f"gpu_backprop ({be})")
            for peer, key in (("PyTorch", "torch_samples_per_second"), ("scikit-learn", "sklearn_samples_per_second")):
                pts = [(x, r[key]) for x, r in zip(xs, mine) if key in r]
                if pts:
                    ax.plot(*zip(*pts), "s--", label=f"{peer} ({'cuda' if be == 'cupy' else 'cpu'})")
            lim = report["limits"][be]
            ax.axhline(lim["gemm_flops"] / report["flops_per_sample"][model], linestyle=":", color="gray",
                       label=f"limit: {lim['precision']} GEMM rate ({be})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size (60,000 = full batch)")
        ax.set_ylabel("training samples/s")
        ax.set_title(f"{model} ({report['facts']['date'][:10]})")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48]


def default_stem(backends: list[Backend], facts: dict[str, Any]) -> str:
    """``DATE-cpu-<cpu>-<N>core`` or ``DATE-gpu-<gpu>[-tf32]`` (the GPU when one was benchmarked)."""
    date = facts["date"][:10]
    if any(be.name == "cupy" for be in backends):
        return f"{date}-gpu-{_slug(facts['gpu'].split(':', 1)[-1])}" + ("-tf32" if facts.get("tf32") else "")
    cpu = _slug(re.sub(r"\d+-Core Processor|Processor|\(R\)|\(TM\)|CPU", "", facts["cpu"]))
    return f"{date}-cpu-{cpu}-{facts['cores']}core"


def _parse_batches(p: Any, items: list[str]) -> list[int | str]:
    out: list[int | str] = []
    for item in items:
        if item == "full":
            out.append("full")
        elif item.isdigit() and 0 < int(item) <= N_TRAIN:
            out.append(int(item))
        else:
            p.error(f"--batch takes integers from 1 to {N_TRAIN} or 'full', got {item!r}")
    return out


def _parse_models(p: Any, items: list[str]) -> dict[str, list[int]]:
    models = {}
    for item in items:
        if item in MODELS:
            models[item] = MODELS[item]
        elif re.fullmatch(r"[1-9]\d*(-[1-9]\d*)+", item):
            models[f"mlp-{item}"] = [int(s) for s in item.split("-")]
        else:
            p.error(f"--model takes {', '.join(MODELS)} or sizes like 784-512-10, got {item!r}")
    return models


def main(argv: list[str] | None = None) -> int:
    """``python -m gpu_backprop bench [flags]``; returns the exit status (2 for a bad flag)."""
    from .cli import _Parser  # one-line errors, like the rest of the command line

    p = _Parser(prog="python -m gpu_backprop bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a short run (under a minute on a 2-core CPU): mlp-256, batch 1 128 full, no time to accuracy")
    p.add_argument("--model", nargs="+", help="mlp-256, mlp-1024, or sizes like 784-512-10 (default: both)")
    p.add_argument("--batch", nargs="+", help="batch sizes and/or 'full' (default: 1 32 128 1024 full)")
    p.add_argument("--backend", choices=["all", "numpy", "cupy"], default="all",
                   help="all = NumPy and, where a CUDA device answers, CuPy")
    p.add_argument("--no-peers", action="store_true", help="skip PyTorch and scikit-learn")
    p.add_argument("--no-sklearn", action="store_true", help="skip scikit-learn (it is slow at batch 1)")
    p.add_argument("--tf32", action="store_true", help="TF32 matrix products (CuPy); the limit is then the TF32 rate")
    p.add_argument("--no-tta", action="store_true", help="skip the time-to-accuracy run (Fashion-MNIST)")
    p.add_argument("--breakdown", nargs="*", metavar="BATCH",
                   help="time the phases of our step at these batches (alone: 1 128 full, the default of a full run)")
    p.add_argument("--no-breakdown", action="store_true", help="skip the phase timing")
    p.add_argument("--repeats", type=int, help="timed blocks per measurement, median taken (default 5, quick 3)")
    p.add_argument("--seconds", type=float, help="length of one block in seconds (default 1.0, quick 0.3)")
    p.add_argument("--max-load", type=float, default=0.25,
                   help="re-time a block when other processes used more cores than this meanwhile (default 0.25)")
    p.add_argument("--patience", type=float,
                   help="seconds the run may spend waiting for other processes to go quiet (default 120, quick 10)")
    p.add_argument("--gemm-n", type=int, help="size of the GEMM that sets the limit (default 2048, quick 1024)")
    p.add_argument("--out", default=None, help="report directory (default: benchmarks/results of the source tree)")
    p.add_argument("--name", help="report file stem (default: DATE-cpu-MODEL-Ncore or DATE-gpu-MODEL)")
    p.add_argument("--render", metavar="REPORT.json",
                   help="only write the Markdown and the plot of a saved report again, next to it (nothing is timed)")
    args = p.parse_args(argv)
    if args.render:
        return _render(Path(args.render))
    for flag in ("repeats", "gemm_n"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(args, flag)}")
    if args.seconds is not None and not args.seconds > 0:
        p.error(f"--seconds must be positive, got {args.seconds}")
    if args.name is not None and not re.fullmatch(r"[\w.-]+", args.name):
        p.error(f"--name must be a plain file stem (letters, digits, . _ -), got {args.name!r}")

    models = _parse_models(p, args.model or (["mlp-256"] if args.quick else list(MODELS)))
    batches = _parse_batches(p, args.batch or (["1", "128", "full"] if args.quick else
                                               ["1", "32", "128", "1024", "full"]))
    if args.no_breakdown:
        breakdown_batches: list[int | str] = []
    elif args.breakdown:
        breakdown_batches = _parse_batches(p, args.breakdown)
    elif args.breakdown is None and args.quick:
        breakdown_batches = []
    else:
        breakdown_batches = [b for b in (1, 128, "full") if b in batches]
    backends = [get_backend("numpy")] if args.backend in ("all", "numpy") else []
    if args.backend in ("all", "cupy"):
        if cupy_available():
            backends.append(get_backend("cupy"))
        elif args.backend == "cupy":
            print("error: --backend cupy: no CUDA device answers here; run with --backend numpy", file=sys.stderr)
            return 2
    if args.tf32:
        set_tf32(True)
    out = Path(args.out) if args.out else Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: cannot create the report directory {out} ({exc.strerror}); pass --out DIR", file=sys.stderr)
        return 2
    report = run_suite(models, batches, backends, budget=args.seconds or (0.3 if args.quick else 1.0),
                       repeats=args.repeats or (3 if args.quick else 5),
                       gemm_n=args.gemm_n or (1024 if args.quick else 2048), peers=not args.no_peers,
                       sklearn=not args.no_sklearn, tta=not (args.quick or args.no_tta),
                       breakdown_batches=breakdown_batches, quiet=Quiet(args.max_load, args.patience if args.patience is not None else (10.0 if args.quick else 120.0)))
    report["command"] = "python -m gpu_backprop bench " + " ".join(argv if argv is not None else sys.argv[1:])
    stem = args.name or default_stem(backends, report["facts"])
    if not args.name:  # a second run on the same day and device gets -2, -3, ...: no report is overwritten
        base, k = stem, 2
        while (out / f"{stem}.json").exists():
            stem, k = f"{base}-{k}", k + 1
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / f"{stem}.md").write_text(to_markdown(report))
    made_png = plot(report, out / f"{stem}.png")
    print(f"wrote {out / stem}.json, .md" + (", .png" if made_png else ""))
    return 0


def _render(path: Path) -> int:
    """Write ``path``'s Markdown and plot again from its JSON (the numbers are the run's, untouched)."""
    try:
        report = json.loads(path.read_text())
        if not all(k in report for k in ("results", "facts", "limits")):
            raise KeyError("results, facts or limits")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"error: --render {path}: not a benchmark report ({exc}); pass a .json this suite wrote",
              file=sys.stderr)
        return 2
    path.with_suffix(".md").write_text(to_markdown(report))
    made_png = plot(report, path.with_suffix(".png"))
    print(f"wrote {path.with_suffix('.md')}" + (", .png" if made_png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
