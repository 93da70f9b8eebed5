"""Reports: the Markdown and the plot of a run's JSON, the notes derived from its measurements, file names.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from ..._io import atomic_write_bytes, save_png
from ...backend import Backend
from .peers import N_TRAIN
from .suite import MODELS, step_flops


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


# --------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------
def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def blas_text(blas: Any) -> str:
    """The BLAS libraries of a report's facts as one readable phrase (whichever form the run could learn)."""
    if isinstance(blas, list):  # threadpoolctl: every BLAS loaded, with its threads
        return "; ".join(f"{b.get('library') or b.get('internal_api')} {b.get('version')} "
                         f"({b.get('num_threads')} threads, {b.get('architecture')} kernels)" for b in blas) or "none loaded"
    if isinstance(blas, dict) and blas:  # NumPy's build configuration (no threadpoolctl)
        config = " ".join(str(blas.get("openblas configuration", "")).split())
        return (f"{blas.get('name', '?')} {blas.get('version', '')}".rstrip() + " (NumPy's build configuration"
                + (f": {config}" if config else "") + "; threads unknown, install threadpoolctl to see them)")
    return "unknown (install threadpoolctl to see it)"


def _version(value: Any) -> str:
    return "not installed" if value is None else str(value)


def _load_text(report: dict[str, Any]) -> str:
    settings = report.get("settings", {})
    if "max_load_cores" not in settings:
        return " (This run predates the load meter: no load was recorded.)"
    return (" *Load* = cores kept busy by other processes during our blocks (blocks over "
            f"{settings['max_load_cores']} cores were dropped and, after a wait for quiet, timed again, three times "
            f"at most, while the run's patience of {settings.get('patience_s', 0):.0f} s lasted; this run spent "
            f"{settings.get('waited_for_quiet_s', 0):.0f} s on the load).")


def to_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: machine facts, the table, targets, breakdown, time to accuracy, notes."""
    f = report["facts"]
    env = ", ".join(f"{k}={v}" for k, v in f.get("env", {}).items() if v is not None) or "none set"
    torch = _version(f.get("torch")) + (f" ({f['torch_threads']} threads)" if f.get("torch_threads") else "")
    lines = [f"# gpu_backprop benchmark, {f['date']}", ""]
    if not report.get("complete", True):
        done, planned = len(report["results"]), report.get("planned_rows", "?")
        lines += [(f"**Incomplete: {done} of {planned} rows.** The run stopped (or is still running) before its "
                  "end; every row below was finished and is as measured."), ""]
    lines += [(f"- CPU: {f['cpu']}, {f['cores']} cores; Python {f['python']}; NumPy {f['numpy']}; "
              f"SciPy {_version(f.get('scipy'))}"),
              f"- BLAS: {blas_text(f.get('blas'))}",
              (f"- BLAS/OpenMP environment: {env}; load average at the start: "
               f"{' '.join(f.get('loadavg_at_start', ['?']))}"),
              f"- PyTorch: {torch}; scikit-learn: {_version(f.get('sklearn'))}"]
    if "gpu" in f:
        lines.append(f"- GPU: {f['gpu']}, {f['gpu_memory_gib']} GiB; driver {f['cuda_driver']}, CUDA runtime "
                     f"{f['cuda_runtime']}, CuPy {f['cupy']}, TF32 {'on' if f['tf32'] else 'off'}")
    precisions: dict[str, dict[str, str | None]] = {}
    for r in report["results"]:
        precisions.setdefault(r["backend"], {})["gpu_backprop"] = r.get("precision")
        if r.get("torch_precision"):
            precisions[r["backend"]]["PyTorch"] = r["torch_precision"]
    for be, seen in precisions.items():
        if any(seen.values()):
            lines.append(f"- Float32 matrix products on {be}: " + ", ".join(
                f"{who} {(p or '?').upper()}" for who, p in seen.items()))
    for name, lim in report["limits"].items():
        extra = ""
        if "gemm_tf32_flops" in lim:
            extra = (f" (FP32 {lim['gemm_fp32_flops'] / 1e12:,.1f} TFLOP/s, TF32 {lim['gemm_tf32_flops'] / 1e12:,.1f}"
                     " TFLOP/s)")
        how = ""
        if lim.get("rate") == "fastest block":
            how = " (the fastest of its blocks"
            if lim.get("median_gemm_flops"):
                how += f"; median {lim['median_gemm_flops'] / 1e9:,.1f}"
            if lim.get("block_loads"):
                how += "; other processes: " + ", ".join(_fmt(x, ".2f") for x in lim["block_loads"]) + " cores"
            how += ")"
        lines.append(f"- {name}: measured {lim.get('precision', 'float32')} GEMM ({lim['gemm_n']}³) "
                     f"{lim['gemm_flops'] / 1e9:,.1f} GFLOP/s{how}{extra} — the limit below")
    lines += ["", ("Whole training steps (gather a batch from the device-resident uint8 set and scale it, forward, "
              "backward, SGD with momentum 0.9; float32, ReLU, softmax cross-entropy) on random bytes of the "
              "training set's shape (60,000 × 784), so no data set is needed; full batch = all 60,000 rows, "
              "gathered and scaled once. Ours runs `opt.train_step(Xb, yb)` (= `net.train_step_grads` + "
              "`opt.step()`, as `fit` does). The frameworks are timed interleaved block by block, median of the "
              "blocks after a warm-up. *Limit* = the step's FLOPs at the measured GEMM rate." + _load_text(report)),
              "",
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
            + (f" within {res['max_epochs']} epochs" if "max_epochs" in res else "")
            + "; 784-256-256-10, SGD momentum 0.9, lr 0.05 cosine, batch 128; "
            f"{res['includes']})")]
    over = [r for r in report["results"] if r["fraction_of_limit"] > 1.0]
    if over:
        lines += ["", ("**Above 100% of the limit:** " + ", ".join(
            f"{r['backend']} {r['model']} batch {r['batch']} ({r['fraction_of_limit']:.0%})" for r in over)
            + ". A step cannot beat the device's GEMM rate; the limit was measured at a slower moment than these "
              "rows (another process's load, or the machine's slow state), so it understates the device here. "
              "Compare these rows with each other and with the peers, not with the limit.")]
    notes = [*analysis(report), *report.get("notes", [])]
    if notes:
        lines += ["", "## Notes (from this run's measurements)", "", *notes]
    lines += ["", f"Command: `{report.get('command', '')}`"]
    return "\n".join(lines) + "\n"


def figure(report: dict[str, Any]) -> Any:
    """The report's chart, one panel per model (None without matplotlib or rows).

    Several batch sizes: samples/s against batch size, log-log, one line per backend and peer,
    the limit dotted. A single batch size: a bar per framework with its figure written on it
    (one point on a log axis says little), the limit in the title.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    models = list(dict.fromkeys(r["model"] for r in report["results"]))
    if not models:
        return None
    fig = Figure(figsize=(5.5 * len(models), 4.2))
    axes = fig.subplots(1, len(models), squeeze=False)
    for ax, model in zip(axes[0], models):
        rows = [r for r in report["results"] if r["model"] == model]
        title = f"{model} ({report['facts']['date'][:10]})"
        if len({str(r["batch"]) for r in rows}) == 1:
            labels, values, limits = [], [], []
            for r in rows:
                device = "cuda" if r["backend"] == "cupy" else "cpu"
                for who, key in (("gpu_backprop\n(" + r["backend"] + ")", "samples_per_second"),
                                 (f"PyTorch\n({device})", "torch_samples_per_second"),
                                 (f"scikit-learn\n({device})", "sklearn_samples_per_second")):
                    if key in r:
                        labels.append(who)
                        values.append(r[key])
                lim = report["limits"][r["backend"]]
                limits.append(f"{r['backend']} limit {lim['gemm_flops'] / report['flops_per_sample'][model]:,.0f}/s")
            bars = ax.bar(range(len(values)), values, color=[f"C{i}" for i in range(len(values))])
            ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=8)
            ax.set_xticks(range(len(values)), labels, fontsize=8)
            ax.set_ylabel("training samples/s")
            ax.set_title(f"{title}, batch {rows[0]['batch']}\n" + "; ".join(limits), fontsize=9)
            continue
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
                       label=f"limit: {lim.get('precision', 'float32')} GEMM rate ({be})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size (60,000 = full batch)")
        ax.set_ylabel("training samples/s")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot(report: dict[str, Any], path: Path) -> bool:
    """Write :func:`figure` as a PNG (atomically); False when there is nothing to draw it with or from."""
    fig = figure(report)
    if fig is None:
        return False
    save_png(fig, path)
    return True


def write(report: dict[str, Any], out: Path, stem: str, final: bool = False) -> list[Path]:
    """Write ``out/stem.json`` and ``.md`` (and, when ``final``, the ``.png``), each atomically.

    Called after every row of a run, so that a crash or a time-out keeps every finished row: a
    reader sees the previous version of each file or the new one, never a part.
    """
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    atomic_write_bytes(json_path, (json.dumps(report, indent=1) + "\n").encode())
    atomic_write_bytes(md_path, to_markdown(report).encode())
    written = [json_path, md_path]
    if final and plot(report, out / f"{stem}.png"):
        written.append(out / f"{stem}.png")
    return written


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48]


def machine_slug(kind: str, model: str, cores: int | None = None, tf32: bool = False) -> str:
    """The device part of a report's name: ``cpu-<model>-<N>core`` or ``gpu-<model>[-tf32]``.

    ``model`` is the CPU's model name (``AMD EPYC 7B13 64-Core Processor`` → ``amd-epyc-7b13``) or
    the GPU's (``NVIDIA H100 80GB HBM3``, a ``GPU 0:`` prefix dropped). Shared by this suite and
    ``benchmarks/scaling.py``, so that reports of one machine sort together.
    """
    if kind == "gpu":
        return f"gpu-{_slug(model.split(':', 1)[-1])}" + ("-tf32" if tf32 else "")
    if kind != "cpu":
        raise ValueError(f"kind must be 'cpu' or 'gpu', got {kind!r}")
    return f"cpu-{_slug(re.sub(r'[0-9]+-Core Processor|Processor|[(]R[)]|[(]TM[)]|CPU', '', model))}-{cores}core"


def default_stem(backends: list[Backend], facts: dict[str, Any]) -> str:
    """``DATE-cpu-<cpu>-<N>core`` or ``DATE-gpu-<gpu>[-tf32]`` (the GPU when one was benchmarked)."""
    date = facts["date"][:10]
    if any(be.name == "cupy" for be in backends):
        return f"{date}-{machine_slug('gpu', facts['gpu'], tf32=bool(facts.get('tf32')))}"
    return f"{date}-{machine_slug('cpu', facts['cpu'], facts['cores'])}"


def render(path: Path) -> int:
    """Write ``path``'s Markdown and plot again from its JSON (the numbers are the run's, untouched)."""
    try:
        report = json.loads(path.read_text())
        if not all(k in report for k in ("results", "facts", "limits")):
            raise KeyError("results, facts or limits")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"error: --render {path}: not a benchmark report ({exc}); pass a .json this suite wrote",
              file=sys.stderr)
        return 2
    try:
        markdown = to_markdown(report)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:  # (a field of another type: None.get)
        print(f"error: --render {path}: the report lacks a field this suite needs ({exc!r}); it was written by "
              "another version of the suite", file=sys.stderr)
        return 2
    atomic_write_bytes(path.with_suffix(".md"), markdown.encode())
    made_png = plot(report, path.with_suffix(".png"))
    print(f"wrote {path.with_suffix('.md')}" + (", .png" if made_png else ""))
    return 0
