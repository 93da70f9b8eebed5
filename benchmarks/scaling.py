"""Data-parallel scaling: samples/s and the time spent communicating per step, for 1..N ranks.

    python benchmarks/scaling.py                               # CPU: 1 and 2 MPI ranks, report in results/
    python benchmarks/scaling.py --engine nccl --ranks 1 2 4 8  # one process per GPU (NCCL)
    mpiexec -n 2 python benchmarks/scaling.py --worker         # one configuration, JSON lines on stdout

The driver (the first form) starts ``mpiexec -n R`` for each configuration,
collects what rank 0 measured, and writes
``results/<date>-scaling-<machine>.json`` and ``.md``.

Each rank trains the same network on its shard of every global batch, with
the step ``gb.fit(..., comm=...)`` takes: ``train_step_grads`` on the shard,
**one** ``allreduce_mean_`` of the flat gradient buffer, ``opt.step()``.
Two things are measured for each global batch:

* throughput: ``--steps`` steps back to back, nothing added, the wall time
  (after warm-up steps), as ``samples/s = global batch · steps / seconds``;
* where a step goes: the same steps with a barrier before the all-reduce, so
  that the time each rank waits for the slowest one (``wait``) is apart from
  the all-reduce itself (``allreduce``); medians over the steps.

The all-reduce moves the whole flat gradient buffer (``bytes`` below) once per
step. ``algbw = bytes / allreduce time`` and ``busbw = algbw · 2 (R − 1) / R``
(what each rank sends and receives in a ring all-reduce, the convention of
nccl-tests). One rank makes no all-reduce (``fit`` skips it), so its
communication is zero.

On a CPU, ranks that share the cores should not oversubscribe them: each
configuration ``RxT`` runs R ranks with T BLAS threads each (the default
compares 1 rank on all the cores, 1 rank on one core, and R ranks sharing
the cores).

On a shared machine: the configurations are run ``--repeats`` times,
interleaved; the driver first waits (``--wait-quiet``) for other work to
leave the CPUs idle, and makes a run again when other processes took more
than ``--max-others`` of the CPU time during it (from /proc/stat, less what
this benchmark's own processes used). The report says how busy it was.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import gpu_backprop as gb
from gpu_backprop.distributed import OPEN_MPI_ENV, Communicator, init_distributed, mpiexec_path
from gpu_backprop.tools.bench.report import machine_slug
from gpu_backprop.tools.bench.suite import cpu_model

THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


# --------------------------------------------------------------------------
# One configuration, under mpiexec
# --------------------------------------------------------------------------
def measure(comm: Communicator, be: gb.Backend, sizes: list[int], batch: int, steps: int,
            warmup: int) -> dict[str, Any]:
    """Throughput and the split of a step for one global batch (the numbers of rank 0)."""
    shard = batch // comm.size
    rng = np.random.default_rng(comm.rank)
    X = be.xp.asarray(rng.random((shard, sizes[0]), dtype=np.float32))
    y = be.xp.asarray(rng.integers(0, sizes[-1], shard))
    net = gb.MLP(sizes, backend=be, seed=0)
    opt = gb.SGD(net, lr=0.01, momentum=0.9)
    comm.broadcast_(net.flat_params)
    several = comm.size > 1

    def step() -> None:
        net.train_step_grads(X, y)
        if several:
            comm.allreduce_mean_(net.flat_grads)
        opt.step()

    for _ in range(warmup):
        step()
    be.synchronize()
    comm.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    be.synchronize()
    comm.barrier()
    wall = time.perf_counter() - t0

    parts: dict[str, list[float]] = {"compute": [], "wait": [], "allreduce": [], "update": []}
    for _ in range(steps):
        comm.barrier()
        t0 = time.perf_counter()
        net.train_step_grads(X, y)
        be.synchronize()
        t1 = time.perf_counter()
        if several:
            comm.barrier()
        t2 = time.perf_counter()
        if several:
            comm.allreduce_mean_(net.flat_grads)
            be.synchronize()
        t3 = time.perf_counter()
        opt.step()
        be.synchronize()
        t4 = time.perf_counter()
        for name, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[name].append(dt)
    med = {name: statistics.median(v) for name, v in parts.items()}
    nbytes = int(net.flat_grads.nbytes)
    algbw = nbytes / med["allreduce"] / 1e9 if several else None
    return {
        "ranks": comm.size, "global_batch": batch, "shard": shard, "steps": steps,
        "samples_per_second": batch * steps / wall, "seconds_per_step": wall / steps,
        "compute_seconds": med["compute"], "wait_seconds": med["wait"], "allreduce_seconds": med["allreduce"],
        "update_seconds": med["update"],
        "allreduce_share": med["allreduce"] / (wall / steps) if several else 0.0,
        "parameters": net.num_params, "buffer_bytes": nbytes, "allreduce_bytes": nbytes if several else 0, "algbw_gb_per_s": algbw,
        "busbw_gb_per_s": algbw * 2 * (comm.size - 1) / comm.size if algbw is not None else None,
    }


def worker(args: argparse.Namespace) -> None:
    """Measure every batch size in one MPI job; rank 0 prints one JSON line per batch size."""
    comm = init_distributed(args.engine)
    be = gb.get_backend("cupy" if args.engine == "nccl" else args.backend)
    sizes = [int(s) for s in args.sizes.split("-")]
    for batch in args.batch:
        if batch % comm.size:
            raise SystemExit(f"the global batch {batch} does not divide across {comm.size} ranks")
        row = measure(comm, be, sizes, batch, args.steps, args.warmup)
        row.update(engine=comm.engine, sizes=sizes, device=be.device, backend=be.name,
                   threads_per_rank=_threads(), library=getattr(comm, "library", "none"))
        if comm.rank == 0:
            print(json.dumps(row), flush=True)


def _threads() -> int | None:
    """The BLAS threads of this process, as threadpoolctl sees them (None if it is not installed)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    blas = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    return blas[0] if blas else None


# --------------------------------------------------------------------------
# The driver: one mpiexec per configuration, then the report
# --------------------------------------------------------------------------
def _mpiexec() -> str:
    found = mpiexec_path()
    if found is None:
        raise SystemExit("mpiexec not found; install MPI with `pip install -e '.[mpi]'`")
    return found


def _cpu_ticks() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine so far, summed over CPUs (/proc/stat; None elsewhere)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - ticks[3] - ticks[4]) / hz, sum(ticks) / hz


def _children_cpu() -> float:
    """CPU seconds used so far by this process's finished children (mpiexec and its ranks)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _others_busy(before: tuple[tuple[float, float] | None, float]) -> float | None:
    """The share of the machine's CPU time since ``before`` that went to other work than this benchmark."""
    (ticks0, ours0), ticks1 = before, _cpu_ticks()
    if ticks0 is None or ticks1 is None or ticks1[1] <= ticks0[1]:
        return None
    others = (ticks1[0] - ticks0[0]) - (_children_cpu() - ours0)
    return max(0.0, others / (ticks1[1] - ticks0[1]))


def _wait_quiet(limit: float, threshold: float = 0.05) -> float | None:
    """Wait (up to ``limit`` seconds) until other work leaves the CPUs idle; the share busy last seen."""
    t0 = time.perf_counter()
    while True:
        mark = (_cpu_ticks(), _children_cpu())
        time.sleep(2.0)
        busy = _others_busy(mark)
        if busy is None or busy <= threshold or time.perf_counter() - t0 > limit:
            return busy


def _configs(args: argparse.Namespace) -> list[tuple[int, int]]:
    """``(ranks, BLAS threads per rank)`` pairs: given, or 1 x all cores, 1 x 1, and R x cores/R."""
    if args.configs:
        return [(int(r), int(t)) for r, t in (c.lower().split("x") for c in args.configs)]
    if args.engine == "nccl":
        return [(r, 1) for r in args.ranks]
    cores = os.cpu_count() or 1
    out = [(1, cores)] + ([(1, 1)] if cores > 1 else [])
    return out + [(r, max(1, cores // r)) for r in args.ranks if r > 1]


def _run(ranks: int, threads: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    env = {**os.environ, **OPEN_MPI_ENV, **{v: str(threads) for v in THREAD_VARS}, "PYTHONPATH": str(ROOT)}
    cmd = [_mpiexec(), "-n", str(ranks), sys.executable, str(Path(__file__).resolve()), "--worker",
           "--engine", args.engine, "--backend", args.backend, "--sizes", args.sizes, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--batch", *map(str, args.batch)]
    for attempt in range(1, args.retries + 2):  # a run that other work disturbed is made again
        print(f"{ranks} rank(s) x {threads} thread(s): {' '.join(cmd[1:3])} ...", file=sys.stderr, flush=True)
        mark = (_cpu_ticks(), _children_cpu())
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=600)
        others = _others_busy(mark)
        if proc.returncode != 0:
            raise SystemExit(f"{ranks} ranks failed (status {proc.returncode}):\n{proc.stderr[-3000:]}")
        if others is None or others <= args.max_others or attempt > args.retries:
            break
        print(f"  other work took {others:.0%} of the CPUs: again", file=sys.stderr, flush=True)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    for row in rows:
        row["threads_per_rank"] = row.get("threads_per_rank") or threads
        row["others_busy"] = others
        row["attempts"] = attempt
        print(f"  batch {row['global_batch']}: {row['samples_per_second']:,.0f} samples/s, all-reduce "
              f"{row['allreduce_seconds'] * 1e3:.3f} ms", file=sys.stderr, flush=True)
    return rows


def _machine(engine: str) -> dict[str, Any]:
    be = gb.get_backend("cupy" if engine == "nccl" else "numpy")
    info: dict[str, Any] = {"device": be.device, "cores": os.cpu_count(), "python": platform.python_version(),
                            "numpy": np.__version__, "platform": platform.platform()}
    try:
        info["mpi4py"] = importlib.metadata.version("mpi4py")
    except importlib.metadata.PackageNotFoundError:
        pass
    if engine == "nccl":
        cp = gb.backend.cupy_module()
        info["cupy"] = cp.__version__
        info["gpus"] = cp.cuda.runtime.getDeviceCount()
        info["nccl"] = cp.cuda.nccl.get_version()
    return info


def _slug(machine: dict[str, Any], engine: str, ranks: list[int]) -> str:
    """The machine's part of the report's name, as the benchmark suite names its reports (``machine_slug``):
    ``cpu-<model>-<N>core``, or ``gpu-<model>-x<ranks>`` for NCCL."""
    if engine == "nccl":
        return f"{machine_slug('gpu', machine['device'])}-x{max(ranks)}"
    return machine_slug("cpu", cpu_model(), machine["cores"])


def _markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the setting, one table row per configuration and batch, the speed-ups."""
    m, rows = report["machine"], report["rows"]
    first = rows[0]
    software = f"Python {m['python']}, NumPy {m['numpy']}"
    if m.get("mpi"):
        software += f", {m['mpi']}, mpi4py {m.get('mpi4py')}"
    if m.get("cupy"):
        software += f", CuPy {m['cupy']}, NCCL {m['nccl']}, {m['gpus']} GPU(s)"
    busy = m.get("cpu_busy_before")
    others = [r["others_busy"] for r in rows if r.get("others_busy") is not None]
    busy_text = "" if busy is None else f"Other work took {busy:.0%} of the CPUs in the 2 s before the runs"
    if others:
        busy_text += (f" and at most {max(others):.0%} during each kept run (a run where it took more than "
                      f"{report['max_others']:.0%} was made again, up to {report['retries']} times). ")
    setting = (
        f"Machine: {m['device']}, {m['cores']} cores; {software}. "
        f"Command: `{report['command']}`. {busy_text}"
        f"Network {'-'.join(map(str, first['sizes']))} (ReLU, softmax cross-entropy), float32, SGD with momentum, "
        f"{first['backend']} backend, engine {first['engine']}; each rank takes global batch / ranks rows per step; "
        f"{first['steps']} timed steps after {report['warmup']} warm-up steps; every configuration run "
        f"{report['repeats']} times, interleaved: samples/s and ms/step are the run with the median samples/s, the "
        "split of a step the median over the runs."
    )
    volume = (
        f"All-reduce volume: {first['buffer_bytes']:,} bytes per step (the flat float32 gradient buffer: "
        f"{first['parameters']:,} parameters and their alignment padding), in one all-reduce; one rank makes none."
    )
    header = (
        "| ranks x BLAS threads | global batch | samples/s (range over runs) | ms/step | compute ms | wait ms "
        "| all-reduce ms | update ms | all-reduce share | bytes per all-reduce | algbw GB/s | busbw GB/s |"
    )
    lines = [f"# Data-parallel scaling, {report['date']}, {m['device']}", "", setting, "", volume, "", header,
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        runs = r["samples_per_second_runs"]
        bw = "— | —"
        if r["algbw_gb_per_s"] is not None:
            bw = f"{r['algbw_gb_per_s']:.2f} | {r['busbw_gb_per_s']:.2f}"
        cells = [f"{r['ranks']} x {r['threads_per_rank']}", str(r["global_batch"]),
                 f"{r['samples_per_second']:,.0f} ({min(runs):,.0f}–{max(runs):,.0f})",
                 f"{r['seconds_per_step'] * 1e3:.2f}", f"{r['compute_seconds'] * 1e3:.2f}",
                 f"{r['wait_seconds'] * 1e3:.3f}", f"{r['allreduce_seconds'] * 1e3:.3f}",
                 f"{r['update_seconds'] * 1e3:.2f}", f"{r['allreduce_share']:.1%}", f"{r['allreduce_bytes']:,}", bw]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Speed-up in samples/s, against 1 rank on all the cores and against 1 rank on one core:", ""]
    for batch in sorted({r["global_batch"] for r in rows}):
        same = [r for r in rows if r["global_batch"] == batch]
        base_all = next((r for r in same if r["ranks"] == 1), None)
        base_one = next((r for r in same if r["ranks"] == 1 and r["threads_per_rank"] == 1), None)
        for r in same:
            if r["ranks"] == 1 or base_all is None:
                continue
            text = (f"* batch {batch}, {r['ranks']} ranks x {r['threads_per_rank']} thread(s): "
                    f"{r['samples_per_second'] / base_all['samples_per_second']:.2f}x 1 rank x "
                    f"{base_all['threads_per_rank']}")
            if base_one is not None and base_one is not base_all:
                text += f", {r['samples_per_second'] / base_one['samples_per_second']:.2f}x 1 rank x 1 thread"
            lines.append(text)
    notes = (
        "ms/step and samples/s come from steps run back to back; the split (compute, wait for the slowest rank, "
        "all-reduce, update) from the same steps with a barrier before the all-reduce (medians). "
        "busbw = algbw x 2(R-1)/R."
    )
    lines += ["", notes, ""]
    return "\n".join(lines)


def driver(args: argparse.Namespace) -> None:
    configs = _configs(args)
    busy_before = _wait_quiet(args.wait_quiet)
    runs: dict[tuple[int, int, int], list[dict[str, Any]]] = {}
    for _ in range(args.repeats):  # the configurations interleaved, so that they share the machine's drift
        for ranks, threads in configs:
            for row in _run(ranks, threads, args):
                runs.setdefault((ranks, threads, row["global_batch"]), []).append(row)
    rows = []
    for same in runs.values():  # the run with the median throughput, the range over the runs, the split's medians
        same.sort(key=lambda r: r["samples_per_second"])
        row = dict(same[(len(same) - 1) // 2])
        row["samples_per_second_runs"] = [r["samples_per_second"] for r in same]
        for part in ("compute_seconds", "wait_seconds", "allreduce_seconds", "update_seconds"):
            row[part] = statistics.median(r[part] for r in same)
        if row["ranks"] > 1:
            row["allreduce_share"] = row["allreduce_seconds"] / row["seconds_per_step"]
            row["algbw_gb_per_s"] = row["allreduce_bytes"] / row["allreduce_seconds"] / 1e9
            row["busbw_gb_per_s"] = row["algbw_gb_per_s"] * 2 * (row["ranks"] - 1) / row["ranks"]
        rows.append(row)
    machine = _machine(args.engine)
    machine["mpi"] = rows[0]["library"] if rows else None  # as the ranks saw it
    machine["cpu_busy_before"] = None if busy_before is None else round(busy_before, 3)  # other work, 2 s before
    date = _dt.date.today().isoformat()
    report = {"date": date, "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
              "warmup": args.warmup, "repeats": args.repeats, "max_others": args.max_others, "retries": args.retries, "configs": [f"{r}x{t}" for r, t in configs], "machine": machine, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{date}-scaling-{args.name or _slug(machine, args.engine, [r for r, _ in configs])}"
    for suffix, text in ((".json", json.dumps(report, indent=1) + "\n"), (".md", _markdown(report))):
        with tempfile.NamedTemporaryFile("w", dir=out, delete=False, suffix=".tmp") as f:
            f.write(text)
        os.replace(f.name, stem.with_suffix(suffix))
    print(_markdown(report))
    print(f"wrote {stem}.json and {stem}.md", file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", choices=["mpi", "nccl"], default="mpi")
    p.add_argument("--backend", choices=["numpy", "cupy"], default="numpy", help="arrays for --engine mpi")
    p.add_argument("--sizes", default="784-256-256-10", help="the network (default: mlp-256)")
    p.add_argument("--batch", type=int, nargs="+", default=[128, 1024], help="global batch sizes")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="driver: the rank counts to run")
    p.add_argument("--configs", nargs="+", help="driver: RANKSxTHREADS pairs instead, e.g. 1x2 1x1 2x1")
    p.add_argument("--repeats", type=int, default=3, help="driver: runs of every configuration (the median is kept)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="driver: report folder")
    p.add_argument("--name", help="driver: the machine's part of the report's name (default: from the device)")
    p.add_argument("--wait-quiet", type=float, default=60, metavar="SECONDS",
                   help="driver: first wait up to this long for other work to leave the CPUs idle")
    p.add_argument("--max-others", type=float, default=0.05, metavar="SHARE",
                   help="driver: make a run again when other work took more than this share of the CPUs")
    p.add_argument("--retries", type=int, default=3, help="driver: at most this many runs again per configuration")
    p.add_argument("--worker", action="store_true", help="measure under mpiexec and print JSON lines")
    args = p.parse_args()
    worker(args) if args.worker else driver(args)


if __name__ == "__main__":
    main()
