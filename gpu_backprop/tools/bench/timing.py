"""Timing whole steps on a shared machine: interleaved blocks, the load others put on it, the GEMM limit.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ...backend import Backend

PAUSE = 0.2  # seconds between two timed blocks: the previous framework's BLAS threads stop spinning


def event_seconds(events: Any, fn: Callable[[], Any], calls: int) -> float:
    """Device seconds per call of ``fn``, by two events on the current stream around ``calls`` calls in a row.

    ``events`` has CuPy's interface: ``Event()`` and ``get_elapsed_time(start, stop)`` in milliseconds
    (``cupy.cuda``, or :class:`~gpu_backprop.tools.bench.peers.TorchCudaEvents`).
    """
    start, stop = events.Event(), events.Event()
    start.record()
    for _ in range(calls):
        fn()
    stop.record()
    stop.synchronize()
    return float(events.get_elapsed_time(start, stop)) / 1e3 / calls


def machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine has been busy, all cores, hypervisor steal included (Linux)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def own_seconds() -> float:
    t = os.times()
    return t.user + t.system


class LoadMeter:
    """Cores' worth of CPU time used by other processes between ``start()`` and ``stop()`` (None off Linux)."""

    def start(self) -> None:
        self.busy, self.own, self.t0 = machine_busy_seconds(), own_seconds(), time.perf_counter()

    def stop(self) -> float | None:
        busy = machine_busy_seconds()
        if busy is None or self.busy is None:
            return None
        wall = max(time.perf_counter() - self.t0, 1e-9)
        foreign = (busy - self.busy) - (own_seconds() - self.own)
        # both clocks tick every 10 ms, and a VM may book stolen time in bursts: keep it within [0, cores]
        return min(max(0.0, foreign / wall), float(os.cpu_count() or 1))


class Runner:
    """One framework's training step, ready to be timed in blocks of ``calls`` steps.

    ``block()`` records seconds per step for one block — CUDA events around the
    block for CuPy, otherwise ``perf_counter`` after a synchronisation — and the
    cores other processes kept busy meanwhile.
    """

    def __init__(self, step: Callable[[], Any], sync: Callable[[], None], events: Any = None,
                 samples_per_call: int = 1, context: Callable[[], Any] = contextlib.nullcontext,
                 precision: str = "fp32") -> None:
        self.step, self.sync, self.events, self.samples_per_call = step, sync, events, samples_per_call
        self.context = context  # entered around every timed block (e.g. one BLAS thread for batch 1)
        self.precision = precision  # of the float32 matrix products: "fp32" or "tf32" (for the report)
        self.calls = 1
        self.times: list[float] = []
        self.loads: list[float | None] = []
        self.rerun = 0  # blocks timed again because the machine was busy
        self._meter = LoadMeter()

    def calibrate(self, budget: float) -> None:
        """Warm up (buffers, kernels, caches) and pick how many steps make a block of about ``budget`` s.

        A warm-up step that alone takes ``budget`` or more (a full batch on a CPU) settles it: one
        step per block, and no more steps spent on calibrating.
        """
        with self.context():
            t0 = time.perf_counter()
            self.step()
            self.sync()
            if time.perf_counter() - t0 >= budget:
                self.calls = 1
                return
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
            return event_seconds(self.events, self.step, self.calls)
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
    ``patience``: seconds the whole run may spend on the load, in all — waiting for quiet and
    timing loaded blocks again — before it keeps what it measured (0: neither); ``say``: where a
    wait is announced as it begins (one line; default stderr).
    """

    WINDOW = 0.25  # seconds: the load is judged over windows this long

    def __init__(self, max_load: float = 0.25, patience: float = 120.0,
                 say: Callable[[str], None] | None = None) -> None:
        self.max_load, self.patience, self.waited = max_load, patience, 0.0
        self.say = say if say is not None else (lambda line: print(line, file=sys.stderr, flush=True))

    @property
    def exhausted(self) -> bool:
        """True once the run has spent its ``patience``: no more waiting, and no block is timed again."""
        return self.waited >= self.patience

    def spend(self, seconds: float) -> None:
        """Count ``seconds`` spent because of the load (a block timed again) against ``patience``."""
        self.waited += seconds

    def wait(self, timeout: float = 30.0) -> None:
        """Sleep in ``WINDOW``-long windows until one passes with at most ``max_load`` foreign cores.

        Waits ``timeout`` seconds at most, and never beyond what is left of ``patience``; a wait
        that goes past its first window says so on one line (the load seen, the most it may take).
        """
        limit = min(timeout, self.patience - self.waited)
        if limit <= 0:
            return
        meter, t0, announced = LoadMeter(), time.perf_counter(), False
        while time.perf_counter() - t0 < limit:
            meter.start()
            time.sleep(min(self.WINDOW, limit))
            load = meter.stop()
            if load is None or load <= self.max_load:
                break
            if not announced:
                self.say(f"waiting for other processes to go quiet: {load:.1f} cores busy, up to "
                         f"{max(limit - (time.perf_counter() - t0), 0.0):.0f} s more "
                         f"(--patience SECONDS or --no-wait to change)")
                announced = True
        self.waited += time.perf_counter() - t0


def interleaved(runners: dict[str, Runner], budget: float, repeats: int, quiet: Quiet | None = None,
                 reruns: int = 3) -> dict[str, float]:
    """Median seconds per call of each runner, their blocks interleaved (A B C A B C ...).

    Interleaving puts every framework under the same drift of a noisy machine; the pause of
    ``PAUSE`` seconds between them lets the previous one's worker threads go to sleep before
    the next one is timed (an idle OpenBLAS worker spins about 0.1 s after each call,
    measured; PyTorch's OpenMP pool spins briefly too). A block during which other
    processes kept more than ``quiet.max_load`` cores busy is dropped, and after a wait for
    the machine to go quiet it is timed again, ``reruns`` times at most; if every try was
    loaded, the least loaded one counts (and the report shows its load). Once the run has
    spent its patience (``quiet.exhausted``), a loaded block is kept as it is: timing it again
    without a wait would only sample the same load.
    """
    quiet = quiet or Quiet()
    for r in runners.values():
        r.calibrate(budget)
    for _ in range(repeats):
        for r in runners.values():
            tries: list[tuple[float, float]] = []
            for attempt in range(reruns + 1):
                t0 = time.perf_counter()
                time.sleep(PAUSE)
                r.block()
                if attempt:  # a block timed again is time spent on the load, like a wait
                    quiet.spend(time.perf_counter() - t0)
                load = r.loads[-1]
                if load is None or load <= quiet.max_load:
                    break  # a quiet block: kept
                tries.append((load, r.times[-1]))
                r.drop_last()
                if attempt == reruns or quiet.exhausted:  # no try left: keep the least loaded one
                    r.rerun -= 1
                    load, seconds = min(tries)
                    r.times.append(seconds)
                    r.loads.append(load)
                    break
                quiet.wait()
    return {name: r.seconds for name, r in runners.items()}


def gemm_rate(be: Backend, n: int, repeats: int, quiet: Quiet | None = None) -> dict[str, Any]:
    """Measured float32 GEMM rate for an n×n×n product on ``be``'s device.

    Returns ``{"flops": ..., "median_flops": ..., "load": ..., "block_loads": [...]}``: ``flops`` is the
    rate of the *fastest* of the ``repeats`` blocks — what the device reached in this run, the
    limit the report divides by — and ``median_flops`` that of the median block; ``load`` is the
    median of the cores other processes kept busy during the blocks, ``block_loads`` each block's.
    A median taken while the machine was loaded would understate the limit and put figures
    timed at a quieter moment above 100 % of it.
    """
    xp = be.xp
    rng = np.random.default_rng(0)
    a = xp.asarray(rng.standard_normal((n, n), dtype=np.float32))
    b = xp.asarray(rng.standard_normal((n, n), dtype=np.float32))
    c = xp.empty((n, n), dtype=xp.float32)
    runner = Runner(lambda: xp.matmul(a, b, out=c), be.synchronize, xp.cuda if be.name == "cupy" else None)
    median = interleaved({"gemm": runner}, budget=0.3, repeats=repeats, quiet=quiet)["gemm"]
    flops = 2.0 * n**3
    return {"flops": flops / min(runner.times), "median_flops": flops / median, "load": runner.load,
            "block_loads": runner.loads}
