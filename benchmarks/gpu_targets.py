"""The GPU targets in one run: every figure the GPU measurements need, saved as it goes.

    python benchmarks/gpu_targets.py --out DIR [--data-dir FASHION] [--fit-json FIT.json]
    python benchmarks/gpu_targets.py --render DIR/targets.json      # the Markdown and the plot again

Made for the few minutes a CUDA machine is lent (``scripts/gpu_check.sh`` runs it). It writes
``targets.json`` and ``targets.md`` after every section, so that a time-out keeps what was
finished, and a section that fails leaves its error in the report and the next one runs.
The sections, in order:

``suite``      the benchmark suite's rows beside PyTorch eager on the same GPU, in the same run:
               mlp-256 at batch 1 and 128, mlp-1024 at full batch in FP32 and again in TF32,
               each against the FP32 or TF32 GEMM rate (8192³) measured in the same run
``persample``  mlp-256 at batch 1 through the fused per-sample kernel: one epoch of 60,000
               samples for each grid size (one block per SM, then 66, 132 and 264 blocks; a grid
               launched already, such as 132 on a 132-SM card, is not timed again)
``agreement``  NumPy and CuPy from the same initial weights over the same batches for an epoch
               (Fashion-MNIST with ``--data-dir``, else random bytes), float64 beside them
``launches``   kernels per training step, counted by CUPTI, against ``launches.launch_budget``
``costs``      where a step's time goes: the host's and the device's time for each kind of call
               the step makes (a GEMM, a column sum, a reduction, a ufunc, an elementwise and a
               raw kernel, a fancy index) and for whole steps at batch 1 and 128
``graphs``     whether one training step can be captured in a CUDA graph (CuPy's stream
               capture), and if so what a replay costs against the same step run eagerly; again
               with the products through libcublas called directly, which CuPy's wrapper forbids
``compile``    ``torch.compile`` at batch 128, the suite's peer compiled (last: compiling is slow)

``--fit-json`` adds the Fashion-MNIST runs of ``gpu_backprop train --preset fashion --json`` (one
JSON line each: the preset, and settings that do better) to the table of targets. ``--small``
rehearses the whole run with small networks and few samples (the tests run it on the CuPy
stand-in); ``--only`` picks sections. The plot (``targets.png``, each target as
measured/target) is drawn at the end, or later by ``--render``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import gpu_backprop as gb  # noqa: E402
from gpu_backprop import kernels  # noqa: E402
from gpu_backprop._io import atomic_write_bytes, save_png, strict_json  # noqa: E402
from gpu_backprop.backend import Backend, BackendError, cupy_available, get_backend, one_line  # noqa: E402
from gpu_backprop.devices import set_tf32  # noqa: E402
from gpu_backprop.experimental import launches  # noqa: E402
from gpu_backprop.experimental.persample import fused_grid, per_sample_sgd  # noqa: E402
from gpu_backprop.tools.bench.peers import LR, MOMENTUM, OurStep, ours, random_data, torch_peer  # noqa: E402
from gpu_backprop.tools.bench.suite import GPU_GEMM_N, MODELS, machine_facts, run_suite  # noqa: E402
from gpu_backprop.tools.bench.timing import Quiet, event_seconds, interleaved  # noqa: E402


@dataclass(frozen=True)
class Plan:
    """The sizes of a run: the issue's (default) or a rehearsal's (``--small``)."""

    small_model: list[int]       # "mlp-256"
    large_model: list[int]       # "mlp-1024"
    gemm_n: int = GPU_GEMM_N
    budget: float = 0.3          # seconds per timed block
    repeats: int = 3             # timed blocks per figure (median)
    persample_samples: int = 60_000  # one epoch of the fused kernel
    agreement_rows: int = 60_000     # the agreement's data set without Fashion-MNIST
    grids: tuple[int | None, ...] = (None, 66, 132, 264)  # fused kernel's blocks (None: one per SM)
    timed_steps: int = 100       # graph replays and eager steps timed against each other
    cost_calls: int = 200        # calls of each kind timed together (whole steps: an eighth as many)


FULL = Plan(MODELS["mlp-256"], MODELS["mlp-1024"])
SMALL = Plan([784, 32, 32, 10], [784, 64, 64, 10], gemm_n=256, budget=0.05, repeats=1,
             persample_samples=8, agreement_rows=256, grids=(None, 4, 2), timed_steps=5,
             cost_calls=8)


class Run:
    """The report as it grows, written out after every section."""

    def __init__(self, out: Path, plan: Plan, backend: Backend, peers: bool, data_dir: str | None) -> None:
        self.out, self.plan, self.be, self.peers, self.data_dir = out, plan, backend, peers, data_dir
        self.report: dict[str, Any] = {"facts": {}, "plan": asdict(plan), "sections": {}, "complete": False}

    def section(self, name: str, body: Callable[[Run], dict[str, Any]]) -> None:
        """Run one section; its result, or the error that stopped it, goes into the report."""
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            result = body(self)
        except Exception as exc:  # noqa: BLE001 - a failed section is a finding; the next one runs
            partial = self.report["sections"].get(name, {})  # what it saved before it failed
            result = {**partial, "error": one_line(exc), "error_type": type(exc).__name__}
            print(f"   {name} failed: {result['error']}", flush=True)
        result["seconds"] = round(time.perf_counter() - t0, 2)
        self.report["sections"][name] = result
        self.save()

    def save(self, plot_too: bool = False) -> None:
        self.report["targets"] = verdicts(self.report)
        atomic_write_bytes(self.out / "targets.json", (strict_json(self.report, indent=1) + "\n").encode())
        atomic_write_bytes(self.out / "targets.md", to_markdown(self.report).encode())
        if plot_too:
            plot(self.report, self.out / "targets.png")


# --------------------------------------------------------------------------
# The sections
# --------------------------------------------------------------------------
def suite(run: Run) -> dict[str, Any]:
    """mlp-256 at batch 1 and 128, mlp-1024 at full batch in FP32 and in TF32, PyTorch eager beside each."""
    plan, be = run.plan, run.be
    reports: dict[str, Any] = {}

    def saved(key: str, report: dict[str, Any]) -> None:  # after the limits and after every row
        reports[key] = report
        run.report["sections"]["suite"] = {"runs": reports, "partial": True}
        run.save()

    def one(key: str, model: str, sizes: list[int], batches: list[int | str], tf32: bool) -> None:
        set_tf32(tf32)
        try:
            first = next(iter(reports.values()), None)  # the GEMM rates are measured once, by the first run
            run_suite({model: sizes}, batches, [be], budget=plan.budget, repeats=plan.repeats, gemm_n=plan.gemm_n,
                      gpu_gemm_n=plan.gemm_n, peers=run.peers, sklearn=False, tta=False,
                      quiet=Quiet(max_load=1.0, patience=5.0), facts=run.report["facts"],
                      log=lambda line: print("  ", line, flush=True), progress=lambda r: saved(key, r),
                      limits=first["limits"] if first else None)
        finally:
            set_tf32(False)

    one("mlp-256", "mlp-256", plan.small_model, [1, 128], tf32=False)
    one("mlp-1024-fp32", "mlp-1024", plan.large_model, ["full"], tf32=False)
    one("mlp-1024-tf32", "mlp-1024", plan.large_model, ["full"], tf32=True)
    return {"runs": reports}


def persample(run: Run) -> dict[str, Any]:
    """One epoch of single-sample SGD through the fused kernel, per grid size, timed with CUDA events."""
    plan, be = run.plan, run.be
    cp = be.xp
    n = plan.persample_samples
    Xh, yh = random_data(n, plan.small_model[0], plan.small_model[-1])
    X, y = cp.asarray(Xh), cp.asarray(yh)
    order = cp.asarray(np.random.default_rng(0).permutation(n).astype(np.int64))
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    result: dict[str, Any] = {"model": plan.small_model, "samples": n, "multiprocessors": sms, "runs": []}
    timed: set[int] = set()  # grids launched so far (on a 132-SM card, one per SM is 132 blocks)
    for blocks in plan.grids:
        entry: dict[str, Any] = {"blocks": blocks or sms}
        try:
            net = gb.MLP(plan.small_model, backend=be, seed=0)
            opt = gb.SGD(net, lr=LR, momentum=MOMENTUM)
            entry["blocks"] = fused_grid(net, X.dtype, blocks)  # what it launches: at most what fits at once
            if entry["blocks"] in timed:
                print(f"   {entry['blocks']} blocks: timed already", flush=True)
                continue
            timed.add(entry["blocks"])
            per_sample_sgd(net, opt, X, y, order[: min(n, 1000)], scale=1 / 255, method="kernel", blocks=blocks,
                           check=True)  # compiles, plans, and checks the grid's barrier
            sums: list[Any] = []  # the epoch's loss sum and correct count

            def epoch(net: Any = net, opt: Any = opt, blocks: int | None = blocks) -> None:
                sums[:] = per_sample_sgd(net, opt, X, y, order, scale=1 / 255, method="kernel", blocks=blocks)

            seconds = event_seconds(cp.cuda, epoch, 1)
            entry.update(seconds=seconds, samples_per_second=n / seconds, mean_loss=float(sums[0]) / n,
                         accuracy=int(sums[1]) / n)
            print(f"   {entry['blocks']} blocks: {n / seconds:,.0f} samples/s", flush=True)
        except Exception as exc:  # noqa: BLE001 - e.g. more blocks than can be co-resident
            entry["error"] = one_line(exc)
            print(f"   {entry['blocks']} blocks: {entry['error']}", flush=True)
        result["runs"].append(entry)
    return result


def agreement(run: Run) -> dict[str, Any]:
    """One epoch at batch 128 on NumPy (float32 and float64) and on CuPy from the same weights, same batches.

    float32 on NumPy drifts from float64 by some δ over the epoch (per-step losses, relative;
    final weights, relative to the largest weight). The backends agree "to float32 tolerance"
    when CuPy's float32 stays as close to float64, within a factor of 2: then the two float32
    runs are at most 3δ apart, and neither is less exact than the other by more than that factor.
    """
    plan, be = run.plan, run.be
    cp = be.xp
    if run.data_dir:
        data = gb.load_dataset("fashion-mnist", data_dir=run.data_dir, download=False)
        n = min(plan.agreement_rows, len(data.x_train))
        X, y, source = data.x_train[:n].reshape(n, -1), data.y_train[:n], f"Fashion-MNIST ({data.source})"
    else:
        X, y = random_data(plan.agreement_rows, plan.small_model[0], plan.small_model[-1])
        source = "random bytes"
    batch = min(128, len(X))
    ref = gb.MLP(plan.small_model, backend="numpy", seed=0)
    nets = {"numpy": ref, "float64": ref.copy(dtype="float64"), "cupy": ref.copy(backend=be)}
    opts = {k: gb.SGD(net, lr=LR, momentum=MOMENTUM) for k, net in nets.items()}
    losses: dict[str, list[float]] = {k: [] for k in nets}
    order = np.random.default_rng(0).permutation(len(X))
    for i in range(0, len(X) - batch + 1, batch):
        rows = order[i:i + batch]
        xb, yb = X[rows].astype(np.float32) / np.float32(255), y[rows]
        losses["numpy"].append(float(opts["numpy"].train_step(xb, yb)))
        losses["float64"].append(float(opts["float64"].train_step(xb.astype(np.float64), yb)))
        losses["cupy"].append(float(opts["cupy"].train_step(cp.asarray(xb), cp.asarray(yb))))
    exact = np.array(losses["float64"])
    params = {k: gb.to_numpy(net.flat_params).astype(np.float64) for k, net in nets.items()}
    scale = float(np.abs(params["float64"]).max())

    def apart(a: str, b: str) -> dict[str, float]:
        return {"loss": float(np.max(np.abs(np.array(losses[a]) - np.array(losses[b])) / np.abs(exact))),
                "weights": float(np.abs(params[a] - params[b]).max() / scale)}

    numpy_error, cupy_error = apart("numpy", "float64"), apart("cupy", "float64")
    return {"data": source, "model": plan.small_model, "batch": batch, "steps": len(exact), "tf32": False,
            "cupy_vs_numpy": apart("cupy", "numpy"), "numpy_float32_vs_float64": numpy_error,
            "cupy_float32_vs_float64": cupy_error, "tolerance": "CuPy within 2× NumPy's distance from float64",
            "met": all(cupy_error[k] <= 2 * numpy_error[k] for k in numpy_error),
            "last_loss": {k: v[-1] for k, v in losses.items()}}


def launches_per_step(run: Run) -> dict[str, Any]:
    """Kernels, memsets and copies per training step at batch 1 and 128, counted by CUPTI, beside the model.

    The model (``launches.launch_budget``) is counted in any case; the count on the device needs
    cupti-python or a CUDA build of PyTorch, and without either the section says so and goes on.
    """
    plan, be = run.plan, run.be
    result: dict[str, Any] = {"model": plan.small_model, "batches": {}}
    steps = 10  # counted together, reported per step
    for batch in (1, 128):
        step = OurStep(be, plan.small_model, batch)
        budget = launches.launch_budget(step.net, batch)
        entry: dict[str, Any] = {"budget": budget["launches"], "budget_by_name": budget["by_name"],
                                 "budget_synchronizations": budget["synchronizations"]}
        result["batches"][str(batch)] = entry
        if "skipped" in result:  # no counter here: the first batch found that out
            continue
        for _ in range(3):  # compiled, buffers made
            step()

        def ten_steps(step: OurStep = step) -> None:
            for _ in range(steps):
                step()

        try:
            counted = launches.count_gpu_launches(ten_steps)
        except BackendError as exc:  # no CUPTI here: the model's figures stay
            result["skipped"] = one_line(exc)
            print(f"   batch {batch}: the model says {budget['launches']:g}; not counted: {result['skipped']}",
                  flush=True)
            continue
        per_step = {k: counted[k] / steps for k in ("kernels", "memsets", "memcpys")}
        entry.update(counted_per_step=per_step, counted_with=counted["counter"],
                     by_name={k: v / steps for k, v in sorted(counted["by_name"].items())})
        print(f"   batch {batch}: {per_step['kernels']:g} kernels per step (the model: {budget['launches']:g})",
              flush=True)
    return result


def costs(run: Run) -> dict[str, Any]:
    """Host and device time of each kind of call a step of mlp-256 makes, at batch 128's shapes, and of whole steps.

    Each kind is called ``cost_calls`` times in a row. The host time is the wall time of issuing
    the calls. The device time is the CUDA-event interval over the same calls issued again behind
    a large product that keeps the device busy until they are all queued, so that the device runs
    them back to back: it leaves out the gaps the host makes. ``covered`` says whether the product
    did outlast the issuing; where it did not, the device time includes gaps. A step is bound by the
    larger of its two times: when the host's is larger, fewer or cheaper calls make it faster.
    """
    plan, be = run.plan, run.be
    cp = be.xp
    sizes = plan.small_model
    rng = np.random.default_rng(0)

    def rand(*shape: int) -> Any:
        return cp.asarray(rng.standard_normal(shape).astype(np.float32))

    n, d, m, c = 128, sizes[0], sizes[1], sizes[-1]
    x, w, z, logits = rand(n, d), rand(d, m), rand(n, m), rand(n, c)
    b, db, v, losses = rand(m), rand(m), rand(m), rand(n)
    labels, acc = cp.asarray(rng.integers(0, c, n)), cp.zeros((), cp.int64)
    steps = {batch: OurStep(be, sizes, batch) for batch in (1, 128)}
    y, rows = steps[128].y, steps[128].order[:n]  # the training set's labels, and a batch's rows
    calls: dict[str, tuple[Callable[[], Any], int]] = {
        f"GEMM {n}×{d} by {d}×{m} (cupy.matmul)": (lambda: kernels.matmul(x, w, z), 1),
        f"column sum {n}×{m} (db; a CuPy reduction)": (lambda: kernels.column_sum(z, db), 1),
        f"sum of {n} values (the loss; a reduction with its result allocated)": (lambda: losses.sum(), 1),
        f"ufunc on {m} values (cupy.multiply, out=)": (lambda: cp.multiply(v, 1.0001, out=v), 1),
        f"elementwise kernel {n}×{m} (bias + ReLU)": (lambda: kernels.bias_activation(z, b, "relu"), 1),
        f"raw kernel {n}×{c} (count_correct)": (lambda: kernels.count_correct(logits, labels, acc), 1),
        f"fancy index of {n} labels (y[rows])": (lambda: y[rows], 1),
        "training step, batch 1": (steps[1], 8),  # 25 steps: their launches stay within CUDA's launch queue
        "training step, batch 128": (steps[128], 8),
    }
    big = cp.asarray(rng.standard_normal((2048, 2048)).astype(np.float32))
    big_out = cp.empty_like(big)
    stream = cp.cuda.get_current_stream()

    def busy() -> None:  # one large product: the device's work while the calls are queued behind it
        cp.matmul(big, big, out=big_out)

    busy()  # warmed up
    product = event_seconds(cp.cuda, busy, 3)
    result: dict[str, Any] = {"model": sizes, "product_seconds": product, "calls": {}}
    for name, (fn, fewer) in calls.items():
        k = max(2, plan.cost_calls // fewer)
        for _ in range(3):  # compiled, buffers made
            fn()
        stream.synchronize()
        t0 = time.perf_counter()
        for _ in range(k):
            fn()
        host = (time.perf_counter() - t0) / k
        stream.synchronize()
        queued, start, stop = cp.cuda.Event(), cp.cuda.Event(), cp.cuda.Event()
        queued.record(stream)
        t0 = time.perf_counter()
        for _ in range(int(2 * host * k / product) + 2):  # twice the device time the issuing should take
            busy()
        start.record(stream)
        for _ in range(k):
            fn()
        t2 = time.perf_counter()
        stop.record(stream)
        stop.synchronize()
        device = cp.cuda.get_elapsed_time(start, stop) / 1e3 / k
        covered = cp.cuda.get_elapsed_time(queued, start) / 1e3 >= t2 - t0  # still busy when the last call was queued
        result["calls"][name] = {"host_seconds": host, "device_seconds": device, "calls": k, "covered": covered}
        print(f"   {name}: host {host * 1e6:.1f} µs, device {device * 1e6:.1f} µs"
              + ("" if covered else " (the device idled while they were issued)"), flush=True)
    return result


def graphs(run: Run) -> dict[str, Any]:
    """Capture one training step (gather, forward, backward, SGD) in a CUDA graph; replay it against eager steps.

    Twice for each batch: as the library runs the step (its products through ``cupy.matmul``,
    whose cuBLAS wrapper refuses to run while a stream is capturing: cupy#6290), and with the
    products through libcublas called directly on a handle of the capture's own (:class:`CublasDirect`),
    which tells whether the rest of the step captures and what a replayed step would cost.
    """
    plan, be = run.plan, run.be
    cp = be.xp
    result: dict[str, Any] = {"model": plan.small_model, "batches": {}, "direct_cublas": {}}
    try:
        lib, no_lib = _load_cublas(), None
    except Exception as exc:  # noqa: BLE001 - no libcublas to call: the direct captures' finding
        lib, no_lib = None, _refused(exc)
    for batch in (1, 128):  # each capture on a stream of its own
        entry = _capture_a_step(cp, be, cp.cuda.Stream(non_blocking=True), plan.small_model, batch, plan.timed_steps)
        result["batches"][str(batch)] = entry
        print(f"   batch {batch}: {entry}", flush=True)
        entry = no_lib or _capture_with_direct_products(cp, be, cp.cuda.Stream(non_blocking=True), lib,
                                                        plan.small_model, batch, plan.timed_steps)
        result["direct_cublas"][str(batch)] = entry
        print(f"   batch {batch}, cuBLAS called directly: {entry}", flush=True)
    return result


def _capture_a_step(cp: Any, be: Backend, stream: Any, sizes: list[int], batch: int, k: int) -> dict[str, Any]:
    """One step on the same batch captured on ``stream``, then replayed ``k`` times against ``k`` eager steps."""
    step = OurStep(be, sizes, batch)
    rows = step.order[:batch].copy()
    labels = step.batches.y[rows]

    def body() -> None:  # the same batch each time
        step.opt.train_step(step.batches.get(rows), labels)

    with stream:
        body()  # the step's buffers made and its kernels compiled, on this stream, before the capture
        stream.synchronize()
        start = [a.copy() for a in _state(step)]
        after = [cp.empty_like(a) for a in start]  # made before the capture: the graph's temporaries go back
        graph, error = _capture(stream, body)      # to the pool after it, and every replay writes them again
        if error is not None:
            return _refused(error)
        return {"captured": True, **_replay_against_eager(cp, stream, graph, body, step, start, after, k)}


def _capture_with_direct_products(cp: Any, be: Backend, stream: Any, lib: Any, sizes: list[int], batch: int,
                                  k: int) -> dict[str, Any]:
    """:func:`_capture_a_step` with the step's products through :class:`CublasDirect` on ``stream``."""
    try:
        direct = CublasDirect(lib, stream.ptr)
    except Exception as exc:  # noqa: BLE001 - cuBLAS refused a handle: the finding
        return _refused(exc)
    try:
        with _products_through(direct.matmul):
            return _capture_a_step(cp, be, stream, sizes, batch, k)
    finally:
        direct.close()


def _refused(error: BaseException) -> dict[str, Any]:
    """A capture that did not happen, and what stopped it."""
    return {"captured": False, "error": one_line(error), "error_type": type(error).__name__}


class CublasDirect:
    """Float32 products through libcublas called as a C library, on a handle of its own bound to one stream.

    CuPy's cuBLAS wrappers set the handle's stream before every call and refuse while that stream is
    capturing (``cupy_backends/cuda/libs/cublas.pyx``), so a step with a product cannot be captured
    through CuPy. cuBLAS itself can be captured; ``matmul`` stands in for ``kernels.matmul`` during the
    graph probe. ``lib``: libcublas as ``ctypes.CDLL`` (:func:`_load_cublas`) or a double with its calls.
    """

    OP_N, OP_T = 0, 1  # cublasOperation_t

    def __init__(self, lib: Any, stream_ptr: int) -> None:
        self.lib, self.handle = lib, ctypes.c_void_p()
        self._check(lib.cublasCreate_v2(ctypes.byref(self.handle)), "cublasCreate")
        self._check(lib.cublasSetStream_v2(self.handle, ctypes.c_void_p(stream_ptr)), "cublasSetStream")

    def close(self) -> None:
        """Destroy the handle (its status is not checked: after a failed call the context may be gone too)."""
        self.lib.cublasDestroy_v2(self.handle)

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what} returned cuBLAS status {status}")

    def _operand(self, a: Any) -> tuple[int, int, int]:
        """A row-major matrix as column-major cuBLAS reads it: (pointer, operation, leading dimension)."""
        if a.flags.c_contiguous:
            return a.data.ptr, self.OP_N, max(1, a.shape[1])
        if a.flags.f_contiguous:  # a transposed view, e.g. W.T
            return a.data.ptr, self.OP_T, max(1, a.shape[0])
        raise ValueError("CublasDirect multiplies C- or F-contiguous matrices only")

    def matmul(self, a: Any, b: Any, out: Any, alpha: float = 1.0, beta: float = 0.0,
               batch: int | None = None) -> Any:
        """``out = alpha · a b + beta · out`` for float32 ``(N, K) (K, M) -> (N, M)``, ``out`` row-major.

        Row-major ``out`` is column-major ``outᵀ = bᵀ aᵀ``: one SGEMM with the operands swapped.
        """
        if not (out.dtype == a.dtype == b.dtype == np.float32 and out.flags.c_contiguous):
            raise TypeError("CublasDirect multiplies float32 matrices into a C-contiguous float32 output")
        (pa, op_a, lda), (pb, op_b, ldb) = self._operand(a), self._operand(b)
        n, m = out.shape
        self._check(self.lib.cublasSgemm_v2(
            self.handle, op_b, op_a, m, n, a.shape[1], ctypes.pointer(ctypes.c_float(alpha)), ctypes.c_void_p(pb),
            ldb, ctypes.c_void_p(pa), lda, ctypes.pointer(ctypes.c_float(beta)), ctypes.c_void_p(out.data.ptr),
            max(1, m)), "cublasSgemm")
        return out


def _load_cublas() -> Any:
    """libcublas through ctypes: where CuPy's library finder puts it, else by its name (CuPy has loaded it)."""
    def places() -> Iterator[str]:  # each looked up only when the one before did not load
        try:
            from cuda.pathfinder import load_nvidia_dynamic_lib

            path = load_nvidia_dynamic_lib("cublas").abs_path
            if path:
                yield path
        except Exception:  # noqa: BLE001 - no pathfinder: the names below
            pass
        yield from ("libcublas.so.13", "libcublas.so.12")
        yield ctypes.util.find_library("cublas") or "libcublas.so"

    errors = []
    for place in places():
        try:
            lib = ctypes.CDLL(place)
            break
        except OSError as exc:
            errors.append(str(exc))
    else:
        raise OSError(f"libcublas not found: {'; '.join(errors)}")
    lib.cublasCreate_v2.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    lib.cublasSetStream_v2.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.cublasDestroy_v2.argtypes = [ctypes.c_void_p]
    f = ctypes.POINTER(ctypes.c_float)
    i = ctypes.c_int
    lib.cublasSgemm_v2.argtypes = [ctypes.c_void_p, i, i, i, i, i, f, ctypes.c_void_p, i, ctypes.c_void_p, i, f,
                                   ctypes.c_void_p, i]
    return lib


@contextlib.contextmanager
def _products_through(matmul: Callable[..., Any]) -> Iterator[None]:
    """The library's products (``kernels.matmul``, and ``weight_grad`` through it) go to ``matmul`` inside."""
    from gpu_backprop.kernels import linalg

    saved = kernels.matmul, linalg.matmul
    kernels.matmul = linalg.matmul = matmul  # type: ignore[assignment]
    try:
        yield
    finally:
        kernels.matmul, linalg.matmul = saved  # type: ignore[assignment]


def _capture(stream: Any, body: Callable[[], None]) -> tuple[Any, BaseException | None]:
    """``body()`` captured into a CUDA graph on ``stream``: ``(graph, None)``, or ``(None, what refused it)``."""
    try:
        stream.begin_capture()
    except Exception as exc:  # noqa: BLE001 - what CuPy says is the finding
        return None, exc
    error = None
    try:
        body()
    except Exception as exc:  # noqa: BLE001
        error = exc
    try:
        graph = stream.end_capture()  # also after a failure: the stream must leave capture mode
    except Exception as exc:  # noqa: BLE001
        return None, error or exc
    return (None, error) if error is not None else (graph, None)


def _state(step: OurStep) -> list[Any]:
    """The arrays a training step changes: the parameters and the optimiser's state."""
    return [step.net.flat_params, *step.opt.state_buffers().values()]


def _replay_against_eager(cp: Any, stream: Any, graph: Any, body: Callable[[], None], step: OurStep,
                          start: list[Any], after: list[Any], k: int) -> dict[str, Any]:
    """k eager steps and k replays from the same ``start``: the time of each and whether the weights agree.

    ``after`` receives the state after the eager steps (buffers like ``start``'s, made before the capture).
    """

    def timed(fn: Callable[[], None]) -> float:
        for a, s in zip(_state(step), start):
            a[...] = s
        return event_seconds(cp.cuda, fn, k)  # on the current stream: the capture's

    eager = timed(body)
    for a, s in zip(after, _state(step)):
        a[...] = s
    replay = timed(lambda: graph.launch(stream=stream))
    diff = max(float(cp.abs(a - b).max()) for a, b in zip(_state(step), after))
    return {"eager_seconds_per_step": eager, "replay_seconds_per_step": replay, "speedup": eager / replay,
            "steps": k, "max_abs_difference_after": diff}


def compiled_peer(run: Run) -> dict[str, Any]:
    """Ours at batch 128 against ``torch.compile`` of the same PyTorch model, interleaved."""
    plan, be = run.plan, run.be
    peer = torch_peer("cuda", plan.small_model, 128, compiled=True) if run.peers else None
    if peer is None:
        return {"skipped": "PyTorch is not installed" if run.peers else "--no-peers"}
    runners = {"ours": ours(be, plan.small_model, 128), "torch_compile": peer}
    secs = interleaved(runners, plan.budget, plan.repeats, Quiet(max_load=1.0, patience=5.0))
    return {"model": plan.small_model, "batch": 128, "samples_per_second": 128 / secs["ours"],
            "torch_compile_samples_per_second": 128 / secs["torch_compile"],
            "ours_over_torch_compile": secs["torch_compile"] / secs["ours"]}


BODIES: dict[str, Callable[[Run], dict[str, Any]]] = {
    "suite": suite, "persample": persample, "agreement": agreement, "launches": launches_per_step,
    "costs": costs, "graphs": graphs, "compile": compiled_peer}
SECTIONS = tuple(BODIES)  # in the order they run


# --------------------------------------------------------------------------
# The targets, the Markdown and the plot
# --------------------------------------------------------------------------
def _first_epoch(fit: dict[str, Any]) -> str:
    """The first epoch's time, where a run says it: it holds cuBLAS's start and the kernels' first loads."""
    epochs = fit.get("epoch_seconds") or []
    return f"first epoch {epochs[0]:.2f} s, " if len(epochs) > 1 else ""


def _suite_row(report: dict[str, Any], run: str, batch: int | str) -> dict[str, Any] | None:
    rows = report["sections"].get("suite", {}).get("runs", {}).get(run, {}).get("results", [])
    return next((r for r in rows if r["batch"] == batch), None)


def verdicts(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the GPU issue with its measured figure and whether it is met (None: not judged)."""
    s = report["sections"]
    out: list[dict[str, Any]] = []

    def target(case: str, wanted: str) -> dict[str, Any]:
        out.append({"case": case, "target": wanted, "measured": "not measured", "met": None, "ratio_to_target": None})
        return out[-1]

    t = target("mlp-256, batch 1, fused per-sample kernel", "≥ 100,000 samples/s")
    runs = [r for r in s.get("persample", {}).get("runs", []) if "samples_per_second" in r]
    if runs:
        best = max(runs, key=lambda r: r["samples_per_second"])
        sps = best["samples_per_second"]
        t.update(measured=f"{sps:,.0f} samples/s ({best['blocks']} blocks)", met=sps >= 1e5, ratio_to_target=sps / 1e5)

    t = target("mlp-256, batch 128", "≥ 1,000,000 samples/s and ≥ 2× PyTorch eager")
    r = _suite_row(report, "mlp-256", 128)
    if r is not None:
        sps, vs = r["samples_per_second"], r.get("ours_over_torch")
        t["measured"] = f"{sps:,.0f} samples/s" + (f", {vs:.2f}× PyTorch" if vs else ", no PyTorch")
        if vs is not None:  # without the peer half of the target cannot be judged
            t.update(met=sps >= 1e6 and vs >= 2, ratio_to_target=min(sps / 1e6, vs / 2))

    for run, share, label in (("mlp-1024-fp32", 0.7, "FP32"), ("mlp-1024-tf32", 0.5, "TF32")):
        t = target(f"mlp-1024, full batch, {label}", f"≥ {share:.0%} of the {label} GEMM rate")
        r = _suite_row(report, run, "full")
        if r is not None:
            share_of = r["fraction_of_limit"]
            t.update(measured=f"{share_of:.0%} ({r['samples_per_second']:,.0f} samples/s)", met=share_of >= share,
                     ratio_to_target=share_of / share)

    t = target("Fashion-MNIST (preset fashion, or better)", "≥ 89% test accuracy in < 1 s of training")
    fits = report.get("fit") or []  # one per configuration
    if fits:
        t.update(measured="; ".join(f"{'-'.join(map(str, f['sizes']))}, batch {f['batch_size']}: "
                                    f"{f['test_accuracy']:.2%} after {f['epochs']} epochs, {f['train_seconds']:.2f} s "
                                    f"of training ({_first_epoch(f)}{f['wall_seconds']:.1f} s wall)" for f in fits),
                 met=any(f["test_accuracy"] >= 0.89 and f["train_seconds"] < 1.0 for f in fits),
                 ratio_to_target=max(min(f["test_accuracy"] / 0.89, 1.0 / max(f["train_seconds"], 1e-9))
                                     for f in fits))
    elif report.get("fit_error"):
        t.update(measured=f"--fit-json could not be read: {report['fit_error']}")

    t = target("NumPy and CuPy agree (one epoch, batch 128)",
               "CuPy's float32 as close to float64 as NumPy's, within 2×")
    a = s.get("agreement", {})
    if "cupy_vs_numpy" in a:
        apart, cupy, numpy = a["cupy_vs_numpy"], a["cupy_float32_vs_float64"], a["numpy_float32_vs_float64"]
        t.update(measured=(f"from float64: CuPy {cupy['loss']:.1e} (losses), {cupy['weights']:.1e} (weights); "
                           f"NumPy {numpy['loss']:.1e}, {numpy['weights']:.1e}; CuPy from NumPy {apart['loss']:.1e}, "
                           f"{apart['weights']:.1e}"), met=a["met"])

    for batch, b in s.get("launches", {}).get("batches", {}).items():
        t = target(f"launches per step, batch {batch}", f"the model's count: {b['budget']:g}")
        counted = b.get("counted_per_step")
        if counted:
            t["measured"] = (f"{counted['kernels']:g} kernels, {counted['memsets']:g} memsets, "
                             f"{counted['memcpys']:g} copies")

    for variant, how in (("batches", ""), ("direct_cublas", ", cuBLAS called directly")):
        for batch, g in s.get("graphs", {}).get(variant, {}).items():
            t = target(f"CUDA graph of a step, batch {batch}{how}", "captures on CuPy 14.2? if so, replay time")
            t["measured"] = (f"replay {g['speedup']:.2f}× faster than eager ({g['replay_seconds_per_step'] * 1e6:.0f} "
                             f"µs a step; weights apart by {g['max_abs_difference_after']:.1e})" if g.get("captured")
                             else f"not captured: {g.get('error')}")
    return out


def to_markdown(report: dict[str, Any]) -> str:
    f = report["facts"]
    lines = ["# GPU targets", "",
             f"{f.get('gpu', 'no GPU')}; NVIDIA driver {f.get('nvidia_driver')}, CUDA runtime {f.get('cuda_runtime')}, "
             f"CuPy {f.get('cupy')}, PyTorch {f.get('torch')} (CUDA {f.get('torch_cuda')}), NumPy {f.get('numpy')}; "
             f"{f.get('date')}." + ("" if report["complete"] else " **Incomplete**: the run stopped early."), "",
             "| case | target | measured | met |", "| --- | --- | --- | --- |"]
    for t in report["targets"]:
        met = {True: "yes", False: "**no**", None: "—"}[t["met"]]
        lines.append(f"| {t['case']} | {t['target']} | {t['measured']} | {met} |")
    calls = report["sections"].get("costs", {}).get("calls", {})
    if calls:
        lines += ["", "## Where a step's time goes (mlp-256; calls at batch 128's shapes)", "",
                  "| call | host µs | device µs | |", "| --- | ---: | ---: | --- |"]
        for name, t in calls.items():
            lines.append(f"| {name} | {t['host_seconds'] * 1e6:.1f} | {t['device_seconds'] * 1e6:.1f} | "
                         + ("" if t["covered"] else "device time includes the host's gaps") + " |")
    lines += ["", "## Sections", ""]
    for name, sec in report["sections"].items():
        state = (f"failed: {sec['error']}" if "error" in sec else f"skipped: {sec['skipped']}" if "skipped" in sec
                 else f"{sec.get('seconds', '?')} s")
        lines.append(f"- `{name}`: {state}")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> bool:
    """Each measured target as measured/target (1 = met), as bars; False without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    rows = [t for t in report["targets"] if t["ratio_to_target"] is not None]
    fig = Figure(figsize=(8, 1.5 + 0.45 * len(rows)))
    ax = fig.subplots()
    ax.barh([t["case"] for t in rows], [t["ratio_to_target"] for t in rows],
            color=["tab:green" if t["met"] else "tab:red" for t in rows])
    ax.axvline(1.0, color="black", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("measured / target (≥ 1: met)")
    ax.set_title(report["facts"].get("gpu", "GPU targets"))
    ax.invert_yaxis()
    fig.tight_layout()
    save_png(fig, path)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/gpu_targets.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("."), help="folder for targets.json, .md and .png (default: .)")
    p.add_argument("--data-dir", help="Fashion-MNIST's IDX files, for the agreement run (else random bytes)")
    p.add_argument("--fit-json", type=Path,
                   help="the JSON lines of `gpu_backprop train --preset fashion --json` runs, one a run")
    p.add_argument("--only", nargs="+", choices=SECTIONS, help="run these sections only (default: all, in order)")
    p.add_argument("--small", action="store_true", help="a rehearsal: small networks, few samples, short blocks")
    p.add_argument("--no-peers", action="store_true", help="no PyTorch beside ours")
    p.add_argument("--no-plot", action="store_true", help="no targets.png (draw it later with --render)")
    p.add_argument("--render", type=Path, metavar="TARGETS.json",
                   help="write the Markdown and the plot of a saved run again")
    args = p.parse_args(argv)
    if args.render:
        try:
            report = json.loads(args.render.read_text())
            report["targets"] = verdicts(report)
            markdown = to_markdown(report)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            p.error(f"--render {args.render}: not a report of this script ({one_line(exc)})")
        atomic_write_bytes(args.render.with_suffix(".md"), markdown.encode())
        drawn = plot(report, args.render.with_suffix(".png"))
        print(f"wrote {args.render.with_suffix('.md')}" + (", .png" if drawn else " (no plot: matplotlib is missing)"))
        return 0
    if not cupy_available():
        p.error("no CUDA device answers here (CuPy is needed); see `python -m gpu_backprop doctor`")
    if not args.out.is_dir() or not os.access(args.out, os.W_OK):
        p.error(f"--out {args.out}: not a folder this user can write to")
    run = Run(args.out, SMALL if args.small else FULL, get_backend("cupy"), not args.no_peers, args.data_dir)
    set_tf32(False)  # every section in FP32 (CUPY_TF32 aside); the suite's TF32 run switches it on for itself
    command = " ".join(["python benchmarks/gpu_targets.py", *(sys.argv[1:] if argv is None else argv)])
    run.report["facts"] = {**machine_facts([run.be]), "command": command}
    if args.fit_json:  # one JSON line a run
        try:
            run.report["fit"] = [json.loads(line) for line in args.fit_json.read_text().splitlines() if line.strip()]
        except (OSError, ValueError) as exc:
            run.report["fit_error"] = one_line(exc)
    run.save()
    try:
        for name in args.only or SECTIONS:
            run.section(name, BODIES[name])
    except KeyboardInterrupt:  # a time box ran out (SIGINT): what was finished is saved
        print(f"interrupted: the finished sections are in {args.out / 'targets.json'} and .md", file=sys.stderr)
        return 130
    run.report["complete"] = True
    run.save(plot_too=not args.no_plot)
    failed = [n for n, s in run.report["sections"].items() if "error" in s]
    print(f"wrote {args.out / 'targets.json'}, .md" + (f"; failed sections: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
