"""The suite: every (backend, model, batch), the breakdown of a step, time to accuracy, the machine's facts.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import itertools
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ... import __version__, kernels
from ...backend import Backend
from ...devices import set_tf32, tf32_enabled
from ...layers import Dense
from ...network import MLP
from ...optim import SGD
from .peers import LR, MOMENTUM, N_TRAIN, OurStep, ours, sklearn_peer, torch_peer
from .timing import LoadMeter, Quiet, Runner, gemm_rate, interleaved

MODELS = {"mlp-256": [784, 256, 256, 10], "mlp-1024": [784, 1024, 1024, 10]}


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


def least_memory_bytes(sizes: list[int], batch: int) -> int:
    """A lower bound of the bytes one timed step of ``sizes`` at ``batch`` rows holds (one framework).

    Weights, gradients and the momentum velocity in float32 (``3 · 4 · P`` bytes for P parameters),
    one float32 activation per layer and row (``4 · batch · Σ sᵢ``), and the timed data set, 60,000
    rows of ``s₀`` bytes. The real step holds more (the backward pass, the peers' copies), so a
    model over this bound surely does not fit.
    """
    params = sum(a * b + b for a, b in itertools.pairwise(sizes))
    return 12 * params + 4 * batch * sum(sizes) + N_TRAIN * sizes[0]


def gemm_memory_bytes(n: int) -> int:
    """The bytes of the limit's GEMM at ``n``: three float32 ``n × n`` matrices."""
    return 3 * 4 * n**2


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
    ``other_load_cores``: what other processes ran meanwhile (see :class:`LoadMeter`).
    ``update_bytes`` is the least a momentum update moves: the gradient read, the weights and
    the velocity read and written.
    """
    s = OurStep(be, sizes, batch)
    xp, sync = be.xp, be.synchronize
    net, opt = s.net, s.opt
    dense = [layer for layer in net.layers if isinstance(layer, Dense)]
    n = min(s.X.shape[0], batch)
    fused = kernels.defers_weight_grads(be.name, n, opt.nesterov)
    rng = np.random.default_rng(1)
    acts = [xp.asarray(rng.random((n, d), dtype=np.float32)) for d in sizes]
    outs = [xp.empty((n, d), dtype=xp.float32) for d in sizes]
    reps = max(3, repeats if n < N_TRAIN else 3)

    def gemms() -> None:
        for i, layer in enumerate(dense):
            W = layer.params["W"]
            kernels.matmul(acts[i], W, outs[i + 1])
            if not (fused and n == 1):  # one sample, fused: x ⊗ dz is BLAS ger, inside the update
                kernels.weight_grad(acts[i], acts[i + 1], layer.grads["W"])
            if i:
                kernels.matmul(acts[i + 1], W.T, outs[i])

    phases: dict[str, list[float]] = {"gather": [], "fwd_bwd": [], "update": []}
    meter = LoadMeter()
    meter.start()
    with kernels.blas_threads(be, batch):
        for r in range(reps + 2):
            sync()
            t0 = time.perf_counter()
            xb, yb = s.next_batch()
            sync()
            t1 = time.perf_counter()
            net.train_step_grads(xb, yb, weight_grads=not fused)
            sync()
            t2 = time.perf_counter()
            opt.step(net.deferred_weight_grads() if fused else ())
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
    batch 128 (the command line's ``fashion`` preset). As in MLPerf's time-to-quality rule, the
    test set is evaluated after every epoch only to stop the clock: nothing is tuned on it.
    """
    from ...data import DataError, load_dataset
    from ...trainer import evaluate, fit

    try:
        ds = load_dataset("fashion-mnist", download=False)
    except DataError as exc:
        return {"skipped": f"Fashion-MNIST not available ({str(exc).split(';')[0]})"}
    net = MLP([784, 256, 256, 10], backend=be, seed=0)
    opt = SGD(net, lr=0.05, momentum=0.9)  # the `fashion` preset of the command line
    accs: list[float] = []

    def reached(record: dict[str, float]) -> bool:
        accs.append(evaluate(net, ds.x_test, ds.y_test)[1])
        return accs[-1] >= target

    t0 = time.perf_counter()
    fit(net, opt, ds.x_train, ds.y_train, epochs=max_epochs, batch_size=128, schedule="cosine", progress=False,
        callbacks=[reached])
    seconds = time.perf_counter() - t0
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
        "cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
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
            facts["nvidia_driver"] = nvidia_driver()
            facts["cuda_runtime"] = cp.cuda.runtime.runtimeGetVersion()
            facts["cupy"] = cp.__version__
            facts["tf32"] = tf32_enabled()
    return facts


def nvidia_driver() -> str | None:
    """The NVIDIA driver's version as ``nvidia-smi`` gives it (CUDA's ``driverGetVersion`` is the CUDA API's)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what :mod:`platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gemm_limit(be: Backend, n: int, repeats: int, quiet: Quiet) -> dict[str, Any]:
    """The float32 GEMM rate at ``n``³ on ``be``: on a GPU in FP32 and in TF32, each run using its own."""
    lim: dict[str, Any] = {"gemm_n": n, "device": be.device, "rate": "fastest block"}
    if be.name == "cupy":
        tf32 = tf32_enabled()
        try:
            for precision in ("fp32", "tf32"):
                set_tf32(precision == "tf32")
                lim[f"gemm_{precision}_flops"] = gemm_rate(be, n, max(3, repeats), quiet)["flops"]
        finally:  # the caller's setting, on an error too
            set_tf32(tf32)
        return lim
    g = gemm_rate(be, n, max(3, repeats), quiet)
    return {**lim, "gemm_flops": g["flops"], "median_gemm_flops": g["median_flops"], "precision": "fp32",
            "load": g["load"], "block_loads": g["block_loads"]}


# --------------------------------------------------------------------------
# The suite
# --------------------------------------------------------------------------
#: the least GEMM size for a GPU's limit: its rate needs a large product
GPU_GEMM_N = 8192


def gemm_size(backend_name: str, gemm_n: int, gpu_gemm_n: int | None = None) -> int:
    """The size of the limit's GEMM on a backend: ``gemm_n`` on NumPy; on a GPU ``gpu_gemm_n``, by default
    ``gemm_n`` but at least :data:`GPU_GEMM_N`."""
    return gemm_n if backend_name == "numpy" else gpu_gemm_n or max(gemm_n, GPU_GEMM_N)


def run_suite(models: dict[str, list[int]], batches: list[int | str], backends: list[Backend], *,
              budget: float, repeats: int, gemm_n: int, gpu_gemm_n: int | None = None, peers: bool,
              sklearn: bool = True, tta: bool, breakdown_batches: Sequence[int | str] = (), quiet: Quiet | None = None,
              log: Callable[[str], None] = print, facts: dict[str, Any] | None = None,
              progress: Callable[[dict[str, Any]], None] | None = None,
              limits: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run every (backend, model, batch) and return the report as a dict.

    The limit is the float32 GEMM rate at ``gemm_n``³ on a CPU and ``gpu_gemm_n``³ on a GPU (default:
    ``gemm_n``, at least 8192: a GPU's rate needs a large product), measured
    here unless ``limits`` (an earlier report's ``limits``) has it for the backend; on a GPU, the FP32
    or the TF32 rate, whichever the run uses.
    ``facts``: the machine's (default: :func:`machine_facts` now). ``progress(report)`` is called
    with the report as it stands after the limits, after every row, and after every breakdown
    and time-to-accuracy run (``report["complete"]`` stays False until the end), so that a
    caller can save what is measured before a crash or a time-out can lose it.
    """
    quiet = quiet or Quiet()
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {"facts": facts or machine_facts(backends), "limits": {}, "results": rows,
                              "flops_per_sample": {m: step_flops(s) for m, s in models.items()},
                              "settings": {"budget_s": budget, "repeats": repeats, "max_load_cores": quiet.max_load,
                                           "patience_s": quiet.patience,
                                           "lr": LR, "momentum": MOMENTUM, "data": "random uint8 bytes, "
                                           f"{N_TRAIN} rows, resident on the device"},
                              "planned_rows": len(models) * len(batches) * len(backends), "complete": False}

    def saved() -> None:
        report["settings"]["waited_for_quiet_s"] = quiet.waited
        if progress is not None:
            progress(report)

    for be in backends:
        if limits and be.name in limits:  # measured by an earlier run on this device
            lim: dict[str, Any] = dict(limits[be.name])
        else:
            lim = _gemm_limit(be, gemm_size(be.name, gemm_n, gpu_gemm_n), repeats, quiet)
        if be.name == "cupy":  # the limit is the rate of the precision the run uses
            lim["precision"] = "tf32" if tf32_enabled() else "fp32"
            lim["gemm_flops"] = lim[f"gemm_{lim['precision']}_flops"]
        report["limits"][be.name] = lim
        log(f"{be.name}: {lim['precision']} GEMM {lim['gemm_n']}³ at {lim['gemm_flops'] / 1e9:,.1f} GFLOP/s "
            f"on {be.device}")
    saved()
    for name, sizes in models.items():
        for batch in batches:
            b = N_TRAIN if batch == "full" else int(batch)
            for be in backends:
                runners: dict[str, Runner | None] = {"ours": ours(be, sizes, b)}
                if peers:
                    runners["torch"] = torch_peer("cuda" if be.name == "cupy" else "cpu", sizes, b,
                                                  tf32=be.name == "cupy" and tf32_enabled())
                    if sklearn and be.name == "numpy" and batch != "full":
                        runners["sklearn"] = sklearn_peer(sizes, b, budget)
                present = {k: r for k, r in runners.items() if r is not None}
                secs = interleaved(present, budget, repeats, quiet)
                secs = {k: t / present[k].samples_per_call for k, t in secs.items()}  # per step
                limit = report["limits"][be.name]["gemm_flops"]
                flops = step_flops(sizes) * b
                mine = present["ours"]
                row: dict[str, Any] = {"model": name, "sizes": sizes, "batch": batch, "backend": be.name,
                                       "device": be.device, "seconds_per_step": secs["ours"],
                                       "samples_per_second": b / secs["ours"],
                                       "fraction_of_limit": flops / secs["ours"] / limit,
                                       "steps_per_block": mine.calls, "blocks": len(mine.times),
                                       "blocks_rerun": mine.rerun, "other_load_cores": mine.load,
                                       "precision": mine.precision}
                if "torch" in secs:
                    row.update(torch_samples_per_second=b / secs["torch"],
                               torch_fraction_of_limit=flops / secs["torch"] / limit,
                               ours_over_torch=secs["torch"] / secs["ours"],
                               torch_other_load_cores=present["torch"].load,
                               torch_precision=present["torch"].precision)
                if "sklearn" in secs:
                    row.update(sklearn_samples_per_second=b / secs["sklearn"],
                               ours_over_sklearn=secs["sklearn"] / secs["ours"],
                               sklearn_other_load_cores=present["sklearn"].load)
                rows.append(row)
                log(_row_text(row))
                saved()
                del runners, present  # free the full-batch buffers before the next row
    for be in backends:
        for name, sizes in models.items():
            for batch in breakdown_batches:
                b = N_TRAIN if batch == "full" else int(batch)
                tries = []
                for attempt in range(3):  # like a timed block: again after a wait if the machine was busy
                    quiet.wait()
                    t0 = time.perf_counter()
                    tries.append(breakdown(be, sizes, b))
                    if attempt:  # a breakdown made again is time spent on the load
                        quiet.spend(time.perf_counter() - t0)
                    if (tries[-1]["other_load_cores"] or 0.0) <= quiet.max_load or quiet.exhausted:
                        break
                res = min(tries, key=lambda t: t["other_load_cores"] or 0.0)
                report.setdefault("breakdown", []).append(res)
                log(f"{be.name} {name} batch {batch}: " + ", ".join(
                    f"{k} {res[k] * 1e3:.3f} ms" for k in ("step", "gather", "fwd_bwd", "update", "gemm")))
                saved()
    if tta:
        for be in backends:
            report.setdefault("time_to_accuracy", {})[be.name] = res = time_to_accuracy(be)
            log(f"{be.name}: time to 89% on Fashion-MNIST: {res}")
            saved()
    report["settings"]["waited_for_quiet_s"] = quiet.waited
    report["targets"] = check_targets(report)
    report["complete"] = True
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
