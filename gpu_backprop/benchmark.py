"""The benchmark suite: training throughput per regime, against the hardware limit and a peer.

    python -m gpu_backprop bench                 # the full suite (a few minutes on a 2-core CPU)
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
of a noisy machine; the median block counts.

Reports are JSON (every number), Markdown, and a PNG plot when matplotlib is
installed, written to ``--out`` (default ``benchmarks/results``) under a name
made of the date and the device.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, kernels
from .backend import Backend, cupy_available, get_backend, per_sample_blas
from .network import MLP
from .optim import SGD

__all__ = ["MODELS", "main", "run_suite", "step_flops"]

MODELS = {"mlp-256": [784, 256, 256, 10], "mlp-1024": [784, 1024, 1024, 10]}
N_TRAIN = 60_000


def step_flops(sizes: list[int]) -> int:
    """FLOPs of one training step per sample: forward 2·Σ sᵢsᵢ₊₁, dW the same, dX for all but the first layer."""
    pairs = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return 2 * sum(pairs) + 2 * sum(pairs) + 2 * sum(pairs[1:])


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------
class _Runner:
    """One framework's training step, ready to be timed in blocks of ``calls`` steps.

    ``block()`` returns seconds per step for one block: CUDA events around the
    block for CuPy, otherwise ``perf_counter`` after a synchronisation.
    """

    def __init__(self, step: Callable[[], Any], sync: Callable[[], None], events: Any = None,
                 samples_per_call: int = 1, context: Callable[[], Any] = contextlib.nullcontext) -> None:
        self.step, self.sync, self.events, self.samples_per_call = step, sync, events, samples_per_call
        self.context = context  # entered around every timed block (e.g. one BLAS thread for batch 1)
        self.calls = 1
        self.times: list[float] = []

    def calibrate(self, budget: float) -> None:
        with self.context():
            self.step()  # warm-up (buffers, kernels compiled, caches)
            self.sync()
            t0 = time.perf_counter()
            self.step()
            self.sync()
        self.calls = max(1, min(2000, int(budget / max(time.perf_counter() - t0, 1e-7))))

    def block(self) -> None:
        with self.context():
            self._block()

    def _block(self) -> None:
        if self.events is not None:
            start, stop = self.events.Event(), self.events.Event()
            start.record()
            for _ in range(self.calls):
                self.step()
            stop.record()
            stop.synchronize()
            self.times.append(self.events.get_elapsed_time(start, stop) / 1e3 / self.calls)
            return
        self.sync()
        t0 = time.perf_counter()
        for _ in range(self.calls):
            self.step()
        self.sync()
        self.times.append((time.perf_counter() - t0) / self.calls)

    @property
    def seconds(self) -> float:
        return statistics.median(self.times)


def _interleaved(runners: dict[str, _Runner], budget: float, repeats: int) -> dict[str, float]:
    """Median seconds per step of each runner, their repeats interleaved (A B C A B C ...).

    Interleaving puts every framework under the same drift of a noisy machine; the short
    pause between them lets the previous one's worker threads (PyTorch's OpenMP pool spins
    after each op) go to sleep before the next one is timed.
    """
    for r in runners.values():
        r.calibrate(budget)
    for _ in range(repeats):
        for r in runners.values():
            time.sleep(0.05)
            r.block()
    return {name: r.seconds for name, r in runners.items()}


def gemm_rate(be: Backend, n: int, repeats: int) -> float:
    """Measured float32 GEMM rate (FLOP/s) for an n×n×n product on ``be``'s device."""
    xp = be.xp
    rng = np.random.default_rng(0)
    a = xp.asarray(rng.standard_normal((n, n), dtype=np.float32))
    b = xp.asarray(rng.standard_normal((n, n), dtype=np.float32))
    c = xp.empty((n, n), dtype=xp.float32)
    runner = _Runner(lambda: xp.matmul(a, b, out=c), be.synchronize, xp.cuda if be.name == "cupy" else None)
    seconds = _interleaved({"gemm": runner}, budget=0.3, repeats=repeats)["gemm"]
    return 2.0 * n**3 / seconds


# --------------------------------------------------------------------------
# Our training step and the peers'
# --------------------------------------------------------------------------
def _data(n: int, d: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, d), dtype=np.uint8), rng.integers(0, classes, n)


def ours(be: Backend, sizes: list[int], batch: int) -> _Runner:
    """gpu_backprop's step as :func:`gpu_backprop.fit` runs it: batch from the device-resident data, update."""
    from .trainer import _Batches

    xp = be.xp
    Xh, yh = _data(max(N_TRAIN, batch), sizes[0], sizes[-1])
    X, y = xp.asarray(Xh), xp.asarray(yh)
    net = MLP(sizes, activation="relu", backend=be, seed=0)
    opt = SGD(net, lr=0.01, momentum=0.9)
    batches = _Batches(net, X, 1.0 / 255)
    order = kernels.random_permutation(xp, X.shape[0], 0, 0)
    state = {"i": 0}

    def step() -> None:
        if batch == X.shape[0]:  # full batch: the whole set, scaled once (as fit does)
            opt.train_step(batches.full(), y)
            return
        i = state["i"] if state["i"] + batch <= X.shape[0] else 0
        rows = order[i:i + batch]
        state["i"] = i + batch
        opt.train_step(batches.get(rows), y[rows])

    return _Runner(step, be.synchronize, xp.cuda if be.name == "cupy" else None,
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
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
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

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    return _Runner(step, sync)


def sklearn_peer(sizes: list[int], batch: int, budget: float) -> _Runner | None:
    """scikit-learn's MLPClassifier (SGD with momentum); one call is a ``partial_fit`` pass over k batches."""
    try:
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier
    except ImportError:
        return None
    Xh, yh = _data(max(N_TRAIN, batch), sizes[0], sizes[-1])
    X = Xh.astype(np.float32) / 255
    clf = MLPClassifier(hidden_layer_sizes=tuple(sizes[1:-1]), activation="relu", solver="sgd",
                        learning_rate_init=0.01, momentum=0.9, nesterovs_momentum=False, batch_size=batch,
                        random_state=0)
    warnings.simplefilter("ignore", ConvergenceWarning)
    clf.partial_fit(X[:batch], yh[:batch], classes=np.arange(sizes[-1]))
    t0 = time.perf_counter()
    clf.partial_fit(X[:batch], yh[:batch])
    k = max(1, min(N_TRAIN // batch, int(budget / max(time.perf_counter() - t0, 1e-6))))
    chunk = X[: k * batch], yh[: k * batch]
    runner = _Runner(lambda: clf.partial_fit(*chunk), lambda: None)
    runner.samples_per_call = k  # steps per call
    return runner


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
            "accuracies": accs, "includes": "data upload, training, and a test evaluation after each epoch"}


# --------------------------------------------------------------------------
# Machine facts
# --------------------------------------------------------------------------
def machine_facts(backends: list[Backend]) -> dict[str, Any]:
    """CPU, BLAS and threads, GPU, driver and library versions."""
    facts: dict[str, Any] = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "cpu": _cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "numpy": np.__version__, "gpu_backprop": __version__,
    }
    try:
        from threadpoolctl import threadpool_info

        facts["blas"] = [{k: i.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                         for i in threadpool_info() if i.get("user_api") == "blas"]
    except ImportError:
        try:
            cfg = np.show_config(mode="dicts")
            facts["blas"] = cfg.get("Build Dependencies", {}).get("blas", {})
        except Exception:  # older NumPy
            facts["blas"] = "unknown"
    try:
        import torch

        facts["torch"] = torch.__version__
        facts["torch_threads"] = torch.get_num_threads()
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
            facts["tf32"] = os.environ.get("CUPY_TF32", "0")
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
              budget: float, repeats: int, gemm_n: int, peers: bool, tta: bool,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every (backend, model, batch) and return the report as a dict."""
    report: dict[str, Any] = {"facts": machine_facts(backends), "limits": {}, "results": [],
                              "flops_per_sample": {m: step_flops(s) for m, s in models.items()}}
    for be in backends:
        n = gemm_n if be.name == "numpy" else max(gemm_n, 8192)
        rate = gemm_rate(be, n, repeats=max(3, repeats))
        report["limits"][be.name] = {"gemm_flops": rate, "gemm_n": n, "device": be.device}
        log(f"{be.name}: float32 GEMM {n}³ at {rate / 1e9:,.1f} GFLOP/s on {be.device}")
    rows = []
    for name, sizes in models.items():
        for batch in batches:
            b = N_TRAIN if batch == "full" else int(batch)
            for be in backends:
                runners: dict[str, _Runner | None] = {"ours": ours(be, sizes, b)}
                if peers:
                    runners["torch"] = torch_peer("cuda" if be.name == "cupy" else "cpu", sizes, b)
                    if be.name == "numpy" and batch != "full":
                        runners["sklearn"] = sklearn_peer(sizes, b, budget)
                present = {k: r for k, r in runners.items() if r is not None}
                secs = _interleaved(present, budget, repeats)
                secs = {k: t / present[k].samples_per_call for k, t in secs.items()}  # per step
                limit = report["limits"][be.name]["gemm_flops"]
                flops = step_flops(sizes) * b
                row: dict[str, Any] = {"model": name, "sizes": sizes, "batch": batch, "backend": be.name,
                                       "device": be.device, "seconds_per_step": secs["ours"],
                                       "samples_per_second": b / secs["ours"],
                                       "fraction_of_limit": flops / secs["ours"] / limit}
                if "torch" in secs:
                    row.update(torch_samples_per_second=b / secs["torch"],
                               torch_fraction_of_limit=flops / secs["torch"] / limit,
                               ours_over_torch=secs["torch"] / secs["ours"])
                if "sklearn" in secs:
                    row.update(sklearn_samples_per_second=b / secs["sklearn"],
                               ours_over_sklearn=secs["sklearn"] / secs["ours"])
                rows.append(row)
                log(_row_text(row))
    report["results"] = rows
    if tta:
        for be in backends:
            report.setdefault("time_to_accuracy", {})[be.name] = res = time_to_accuracy(be)
            log(f"{be.name}: time to 89% on Fashion-MNIST: {res}")
    return report


def _row_text(r: dict[str, Any]) -> str:
    text = (f"{r['backend']:5} {r['model']:9} batch {str(r['batch']):>5}: {r['samples_per_second']:>12,.0f} samples/s "
            f"({r['fraction_of_limit']:.0%} of the GEMM limit)")
    if "torch_samples_per_second" in r:
        text += f"; torch {r['torch_samples_per_second']:,.0f} ({r['ours_over_torch']:.2f}x)"
    if "sklearn_samples_per_second" in r:
        text += f"; sklearn {r['sklearn_samples_per_second']:,.0f}"
    return text


def to_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table with the machine facts above it."""
    f = report["facts"]
    lines = [f"# gpu_backprop benchmark, {f['date']}", "",
             f"- CPU: {f['cpu']}, {f['cores']} cores; NumPy {f['numpy']}; BLAS: {json.dumps(f.get('blas'))}",
             f"- PyTorch: {f.get('torch')}; scikit-learn: {f.get('sklearn')}"]
    if "gpu" in f:
        lines.append(f"- GPU: {f['gpu']}, {f['gpu_memory_gib']} GiB; driver {f['cuda_driver']}, CUDA runtime "
                     f"{f['cuda_runtime']}, CuPy {f['cupy']}, CUPY_TF32={f['tf32']}")
    for name, lim in report["limits"].items():
        lines.append(f"- {name}: measured float32 GEMM ({lim['gemm_n']}³) {lim['gemm_flops'] / 1e9:,.1f} GFLOP/s")
    lines += ["", "Training steps (gather + scale + forward + backward + SGD momentum 0.9, float32, ReLU, softmax "
              "cross-entropy) on data resident on the device (random bytes of MNIST's shape); the frameworks timed "
              "interleaved, median of repeats after a warm-up. The limit is the step's FLOPs at the measured GEMM "
              "rate.", "",
              "| backend | model | batch | samples/s | ms/step | of limit | PyTorch samples/s | ours/PyTorch | "
              "sklearn samples/s | ours/sklearn |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["results"]:
        def fmt(key: str, spec: str = ",.0f") -> str:
            return format(r[key], spec) if key in r else "—"
        lines.append(f"| {r['backend']} | {r['model']} | {r['batch']} | {fmt('samples_per_second')} | "
                     f"{r['seconds_per_step'] * 1e3:.3f} | {r['fraction_of_limit']:.1%} | "
                     f"{fmt('torch_samples_per_second')} | {fmt('ours_over_torch', '.2f')} | "
                     f"{fmt('sklearn_samples_per_second')} | {fmt('ours_over_sklearn', '.2f')} |")
    for be, res in report.get("time_to_accuracy", {}).items():
        lines += ["", f"Time to accuracy ({be}): " + (
            res["skipped"] if "skipped" in res else
            f"{res['seconds']:.1f} s to {max(res['accuracies']):.2%} test accuracy on Fashion-MNIST in "
            f"{res['epochs']} epochs (target {res['target']:.0%}, {'reached' if res['reached'] else 'NOT reached'}; "
            f"{res['includes']})")]
    if report.get("notes"):
        lines += ["", "## Notes", "", *report["notes"]]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> bool:
    """Samples/s against batch size, log-log, one line per backend and peer, the limit dashed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    models = sorted({r["model"] for r in report["results"]})
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
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
            limit = report["limits"][be]["gemm_flops"] / report["flops_per_sample"][model]
            ax.axhline(limit, linestyle=":", color="gray", label=f"GEMM limit ({be})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size (60,000 = full batch)")
        ax.set_ylabel("training samples/s")
        ax.set_title(model)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48]


def _parse_batches(items: list[str]) -> list[int | str]:
    out: list[int | str] = []
    for item in items:
        if item == "full":
            out.append("full")
        elif item.isdigit() and int(item) > 0:
            out.append(int(item))
        else:
            raise SystemExit(f"error: --batch takes positive integers or 'full', got {item!r}")
    return out


def _parse_models(items: list[str]) -> dict[str, list[int]]:
    models = {}
    for item in items:
        if item in MODELS:
            models[item] = MODELS[item]
        elif re.fullmatch(r"\d+(-\d+)+", item):
            models[f"mlp-{item}"] = [int(s) for s in item.split("-")]
        else:
            raise SystemExit(f"error: --model takes {', '.join(MODELS)} or sizes like 784-512-10, got {item!r}")
    return models


def main(argv: list[str] | None = None) -> int:
    """``python -m gpu_backprop bench [flags]``."""
    from .cli import _Parser  # one-line errors, like the rest of the command line

    p = _Parser(prog="python -m gpu_backprop bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a short run (under a minute on a 2-core CPU)")
    p.add_argument("--model", nargs="+", help="mlp-256, mlp-1024, or sizes like 784-512-10 (default: both)")
    p.add_argument("--batch", nargs="+", help="batch sizes and/or 'full' (default: 1 32 128 1024 full)")
    p.add_argument("--backend", choices=["all", "numpy", "cupy"], default="all")
    p.add_argument("--no-peers", action="store_true", help="skip PyTorch and scikit-learn")
    p.add_argument("--tf32", action="store_true", help="TF32 matrix products (CuPy); the limit is then the TF32 rate")
    p.add_argument("--no-tta", action="store_true", help="skip the time-to-accuracy run")
    p.add_argument("--repeats", type=int, help="timed repeats per measurement (median taken)")
    p.add_argument("--seconds", type=float, help="time budget of one repeat")
    p.add_argument("--out", default=None, help="report directory (default: benchmarks/results)")
    p.add_argument("--name", help="report file stem (default: DATE-DEVICE)")
    args = p.parse_args(argv)

    if args.tf32:
        from .backend import set_tf32

        set_tf32(True)
    models = _parse_models(args.model or (["mlp-256"] if args.quick else list(MODELS)))
    batches = _parse_batches(args.batch or (["1", "128", "full"] if args.quick else ["1", "32", "128", "1024", "full"]))
    repeats = args.repeats or (3 if args.quick else 5)
    budget = args.seconds or (0.3 if args.quick else 1.0)
    backends = [get_backend("numpy")] if args.backend in ("all", "numpy") else []
    if args.backend in ("all", "cupy"):
        if cupy_available():
            backends.append(get_backend("cupy"))
        elif args.backend == "cupy":
            print(f"error: {get_backend.__module__}: no CUDA device answers; run with --backend numpy",
                  file=sys.stderr)
            return 2
    report = run_suite(models, batches, backends, budget=budget, repeats=repeats,
                       gemm_n=1024 if args.quick else 2048, peers=not args.no_peers,
                       tta=not (args.quick or args.no_tta))
    report["command"] = "python -m gpu_backprop bench " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out) if args.out else Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    device = backends[-1].device.split(":", 1)[-1] if backends else "none"
    stem = args.name or f"{_dt.date.today().isoformat()}-{_slug(device)}"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (out / f"{stem}.md").write_text(to_markdown(report))
    made_png = plot(report, out / f"{stem}.png")
    print(f"wrote {out / stem}.json, .md" + (", .png" if made_png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
