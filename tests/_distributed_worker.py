"""Run by tests/test_distributed.py under ``mpiexec -n K``: data-parallel training of a toy network.

    mpiexec -n 2 python tests/_distributed_worker.py OUT.npz [--dtype float64] [--batch 16] [...]

Every rank starts from different weights on purpose (``fit`` must broadcast
rank 0's) and trains with ``gb.fit(..., comm=...)``; rank 0 writes the final
weights to OUT.npz, and with ``--manual`` also the weights of the same training
written as the plain loop the trainer promises (rank r takes the contiguous
part of ``b//P + (r < b % P)`` rows of each global batch of b rows of the shared
permutation, the last batch too, ``train_step_grads`` where it has rows, one
``allreduce_weighted_mean_`` weighted by its rows, ``opt.step``). Every rank
writes ``OUT.npz.rankR.txt``: ``stopped: <why fit stopped>``.

``--sweep N:B,N:B,...`` trains instead on the first N samples with global batch
B, for each pair, and writes ``params{i}``, ``loss{i}``, ``accuracy{i}`` (per
epoch, as fit reports them) and ``steps{i}`` (optimiser steps) to OUT.npz.

Faults to inject: ``--fail-rank R --fail-step K --fail-how raise|exit|kill``
(rank R raises, calls ``sys.exit(3)`` or is killed at optimiser step K) and
``--perturb-rank R`` (rank R nudges its own weights at step 2, which the
communicator's ``check_every=5`` must catch). ``--collectives`` runs checks of each collective
first.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gpu_backprop as gb
from gpu_backprop import kernels
from gpu_backprop.distributed import Communicator, init_distributed


def toy(n: int = 96, d: int = 10, c: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Three overlapping blobs: X (n, d) float64, y (n,) int."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, c, n)
    X = rng.normal(0, 1, (n, d)) + np.eye(c, d)[y] * 2
    return X, y


def train(comm: Communicator | None, dtype: str, n: int, batch: int, epochs: int) -> tuple[Any, gb.History, int]:
    """What the sweep trains: ``(weights, history, optimiser steps)`` on the first n toy samples, global batch."""
    X, y = toy(n)
    net = gb.MLP([10, 8, 3], activation="tanh", backend="numpy", dtype=dtype, seed=comm.rank if comm else 0)
    opt = gb.SGD(net, lr=0.1, momentum=0.9)
    history = gb.fit(net, opt, X.astype(dtype), y, epochs=epochs, batch_size=batch, seed=4, progress=False, comm=comm)
    return gb.to_numpy(net.flat_params), history, opt.steps


def manual_loop(comm: Communicator, backend: str, dtype: str, batch: int, epochs: int, seed: int,
                lr: float) -> np.ndarray:
    """The data-parallel contract written out: the weights after ``epochs`` epochs."""
    X, y = toy()
    net = gb.MLP([10, 8, 3], activation="tanh", backend=backend, dtype=dtype, seed=comm.rank)
    opt = gb.SGD(net, lr=lr, momentum=0.9)
    comm.broadcast_(net.flat_params)
    xp = net.xp
    Xd, yd = xp.asarray(X.astype(dtype)), xp.asarray(y)
    P, r = comm.size, comm.rank
    for epoch in range(epochs):
        order = kernels.random_permutation(xp, len(y), seed, epoch)  # the same on every rank
        for s in range(-(-len(y) // batch)):
            rows = order[s * batch:(s + 1) * batch]  # the global batch: b rows, fewer at the end
            b = len(rows)
            lo = r * (b // P) + min(r, b % P)
            mine = rows[lo:lo + b // P + (r < b % P)]
            if len(mine):
                net.train_step_grads(Xd[mine], yd[mine])
            comm.allreduce_weighted_mean_(net.flat_grads, len(mine), b)  # the one all-reduce of the step
            opt.step()
    return gb.to_numpy(net.flat_params)


def collectives(comm: Communicator, backend: str) -> None:
    """Each collective against what it must give, on every rank (an AssertionError aborts the job)."""
    xp = gb.get_backend(backend).xp
    P, r = comm.size, comm.rank
    for dtype in ("float32", "float64"):
        a = xp.arange(5, dtype=dtype) + r * 10  # rank r holds [10r, 10r+1, ...]
        comm.allreduce_mean_(a)
        expect = np.arange(5) + 10 * (P - 1) / 2
        np.testing.assert_allclose(gb.to_numpy(a), expect, rtol=1e-6)
        # rank r weighs r + 1 rows, but the last of several ranks none (its buffer, NaN, must not count)
        w = [k + 1 for k in range(P - 1)] + [0 if P > 1 else 1]
        a = xp.arange(5, dtype=dtype) + r * 10 if w[r] else xp.full(5, np.nan, dtype=dtype)
        comm.allreduce_weighted_mean_(a, w[r], sum(w))
        expect = sum(w[k] * (np.arange(5) + 10 * k) for k in range(P)) / sum(w)
        np.testing.assert_allclose(gb.to_numpy(a), expect, rtol=1e-6)
        b = xp.full(3, float(r), dtype=dtype)
        comm.broadcast_(b, root=P - 1)
        np.testing.assert_array_equal(gb.to_numpy(b), np.full(3, P - 1.0))
    assert comm.allreduce_sum_scalar(r + 0.5) == sum(k + 0.5 for k in range(P))
    assert np.isnan(comm.allreduce_sum_scalar(float("nan") if r == P - 1 else 1.0))
    comm.check_same("the same array", xp.ones(7))
    try:
        if P == 1:
            raise RuntimeError("differ from rank 0's on rank 1 by up to 1 (one rank: nothing can differ)")
        comm.check_same("the rank's own array", xp.ones(7) * (r == 0))
    except RuntimeError as exc:
        assert "differ from rank 0's on rank 1 by up to 1" in str(exc), exc
    else:
        raise AssertionError("check_same did not see that the ranks differ")
    for bad, what in ((xp.ones((4, 4))[:, 0], "contiguous"), (xp.ones(4, dtype="int32"), "float32 or float64")):
        for collective in (comm.allreduce_mean_, lambda a: comm.allreduce_weighted_mean_(a, 1, P)):
            try:
                collective(bad)
            except (TypeError, ValueError) as exc:
                assert what in str(exc), exc
            else:
                raise AssertionError(f"an all-reduce took a bad buffer ({what})")
    for weight, total, what in ((2, 1, "a weight from 0 to the total 1"), (1, 0, "needs a positive total"),
                                (-1, 4, "a weight from 0 to the total 4"), ("1", 4, "number as its weight")):
        try:
            comm.allreduce_weighted_mean_(xp.ones(3), weight, total)  # refused on every rank alike: no rank waits
        except (TypeError, ValueError) as exc:
            assert what in str(exc), exc
        else:
            raise AssertionError(f"allreduce_weighted_mean_ took weight {weight!r} of {total!r}")
    comm.barrier()
    if r == 0:
        print("collectives ok", flush=True)


def sweep(comm: Communicator, args: argparse.Namespace) -> None:
    """Train each ``N:B`` of ``--sweep``; rank 0 saves what fit gave."""
    out: dict[str, Any] = {}
    for i, pair in enumerate(args.sweep.split(",")):
        n, batch = (int(v) for v in pair.split(":"))
        params, history, steps = train(comm, args.dtype, n, batch, args.epochs)
        out.update({f"params{i}": params, f"loss{i}": history.metric("loss"),
                    f"accuracy{i}": history.metric("accuracy"), f"steps{i}": steps})
    if comm.rank == 0:
        np.savez(args.out, **out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--engine", default="mpi")
    p.add_argument("--backend", default="numpy")
    p.add_argument("--dtype", default="float64")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--activation", default="tanh")
    p.add_argument("--fail-rank", type=int, default=-1)
    p.add_argument("--fail-step", type=int, default=3)
    p.add_argument("--fail-how", choices=["raise", "exit", "kill"], default="raise")
    p.add_argument("--perturb-rank", type=int, default=-1)
    p.add_argument("--guard", action="store_true", help="train inside comm.guard()")
    p.add_argument("--rank-refresh", action="store_true", help="rank 0 refreshes at every step, the others never")
    p.add_argument("--checkpoint")
    p.add_argument("--resume")
    p.add_argument("--manual", action="store_true")
    p.add_argument("--collectives", action="store_true")
    p.add_argument("--sweep", help="N:B,N:B,...: train on N samples with global batch B for each pair")
    args = p.parse_args()

    comm = init_distributed(args.engine, check_every=5)
    if comm.rank == 0:
        print(comm.describe(), flush=True)
    if args.collectives:
        collectives(comm, args.backend)
    if args.sweep:
        sweep(comm, args)
        return
    X, y = toy()
    net = gb.MLP([10, 8, 3], activation=args.activation, backend=args.backend, dtype=args.dtype, seed=comm.rank)
    opt = gb.SGD(net, lr=args.lr, momentum=0.9)
    real_step = opt.step

    def step() -> None:  # the injected faults
        if comm.rank == args.fail_rank and opt.steps == args.fail_step:
            if args.fail_how == "kill":
                time.sleep(0.5)  # let the launcher forward what rank 0 printed at the start
                os.kill(os.getpid(), signal.SIGKILL)
            if args.fail_how == "exit":
                sys.exit(3)
            raise RuntimeError(f"injected failure at step {args.fail_step}")
        if comm.rank == args.perturb_rank and opt.steps == 2:
            net.flat_params[0] += 0.25
        real_step()

    opt.step = step  # type: ignore[method-assign]
    guard = comm.guard("training") if args.guard else contextlib.nullcontext()
    if args.rank_refresh:  # rank 0's progress bar reads its loss at every step, the others' never
        gb.history.REFRESH_SECONDS = 0.0 if comm.rank == 0 else 1e9
    with guard:
        try:
            history = gb.fit(net, opt, X.astype(args.dtype), y, epochs=args.epochs, batch_size=args.batch, seed=4,
                             progress=args.rank_refresh and comm.rank == 0, comm=comm,
                             checkpoint=args.checkpoint, resume=args.resume)
            stopped = history.stopped_reason.value
        except gb.TrainingDiverged as exc:
            stopped = str(exc)
    Path(f"{args.out}.rank{comm.rank}.txt").write_text(f"stopped: {stopped}")
    manual = manual_loop(comm, args.backend, args.dtype, args.batch, args.epochs, 4, args.lr) if args.manual else None
    if comm.rank == 0:
        np.savez(args.out, params=gb.to_numpy(net.flat_params), manual=manual if manual is not None else np.empty(0))


if __name__ == "__main__":
    main()
