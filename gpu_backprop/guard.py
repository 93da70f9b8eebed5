"""The checks of a training run: when they come, what they look at, and the good state they keep.

A check comes at steps that the settings fix (:func:`check_steps`), never on a
timer, so the same seed gives the same bits however busy the machine is. At a
check the trainer reads its loss sum back from the device (the one wait); the
:class:`Guard` sums it over the ranks, tests it and the weights, and then either
keeps a copy of the good state (the weights, the layers' running statistics
and dropout counters, and the optimiser state) and adds a
point to the loss curve, or puts the last good state back and raises
:class:`~gpu_backprop.history.TrainingDiverged`, naming the first non-finite
gradient or weight. Copies change no number: a run with the guard gives the
bits of one without.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .distributed import sum_over_ranks
from .history import History, TrainingDiverged

if TYPE_CHECKING:
    from .network import Sequential
    from .optim import Optimizer

__all__ = ["Guard", "check_steps"]

RANK_CHECK_STEPS = 50  #: with several ranks, a check every this many steps (all ranks at the same steps)
CHECK_SAMPLES = 4096  #: one rank: a check about every this many samples ...
CHECK_MIN_STEPS = 8  #: ... but no more often than every this many steps (a GPU would wait at each one)


def check_steps(batch: int, ranks: int) -> int:
    """How many steps from one check to the next: a function of the settings alone, never of time."""
    if ranks > 1:
        return RANK_CHECK_STEPS
    return max(CHECK_MIN_STEPS, -(-CHECK_SAMPLES // batch))


class Guard:
    """A run's checks, and its good state: the weights, layer and optimiser states at the last check found finite.

    ``every`` is :func:`check_steps`; ``comm`` a communicator of
    :mod:`gpu_backprop.distributed` or None. Each epoch starts with
    :meth:`start_epoch`; after each unit of work, :meth:`due` says whether a
    check comes now, and :meth:`check` does it.
    """

    def __init__(self, net: Sequential, opt: Optimizer, history: History, every: int, comm: Any = None) -> None:
        self.net, self.opt, self.history, self.every, self.comm = net, opt, history, every, comm
        self.keep(0)
        self.start_epoch(0)

    def start_epoch(self, step: int) -> None:
        """A new epoch from global ``step`` (the last epoch's last check kept the good state of that step)."""
        self.step = step
        self.loss, self.seen = 0.0, 0  #: every rank's loss sum and samples this epoch, at the last check

    def due(self, first: int, done: int, total: int) -> bool:
        """Whether a check follows the unit of the epoch's steps ``first`` to ``done`` of ``total``."""
        return done == total or done // self.every > first // self.every

    def check(self, loss_sum: float, mine: int, seen: int, step: int, epoch: int) -> None:
        """Check after global ``step``: this rank's ``loss_sum`` over its ``mine`` samples, ``seen`` by all ranks.

        Keeps the good state and a loss-curve point, or restores it and raises. The
        loss is summed over the ranks (one host all-reduce, the same on every rank, so that they all
        stop and restore the same weights together: a rank left alone would wait forever).
        """
        # the loss comes before the update, so look at the weights too: a snapshot must be finite
        weights_ok = bool(self.net.xp.isfinite(self.net.flat_params).all())
        loss_all = sum_over_ranks(self.comm, loss_sum if weights_ok else math.nan)
        if not math.isfinite(loss_all):
            what = ("the weights became NaN or infinite" if math.isfinite(loss_sum) and not weights_ok
                    else f"the loss became {loss_sum / max(mine, 1)}")
            raise self.diverged(f"{what} between steps {self.step + 1} and {step} (epoch {epoch + 1}); "
                                f"the first non-finite value is in {self._first_bad()}")
        self.keep(step)
        if seen > self.seen:
            self.history.steps.append((step, (loss_all - self.loss) / (seen - self.seen)))
        self.loss, self.seen = loss_all, seen

    def keep(self, step: int) -> None:
        """Copy the weights, the layers' states and the optimiser's (buffers, step count): the good state of ``step``."""
        self.params = self.net.flat_params.copy()
        self.layers = self.net.layer_states()  # running statistics, dropout counters
        self.state = {k: v.copy() for k, v in self.opt.state_buffers().items()}
        self.opt_steps = self.opt.steps  # Adam's bias correction counts the steps
        self.step = step

    def restore(self) -> None:
        """Put back the weights, the layers' states and the optimiser state of the last good step."""
        self.net.flat_params[...] = self.params
        self.net.restore_layer_states(self.layers)
        for k, v in self.opt.state_buffers().items():
            v[...] = self.state[k]
        self.opt.steps = self.opt_steps

    def diverged(self, what: str, remedy: str = "clip gradients (max_grad_norm)") -> TrainingDiverged:
        """Restore the good state; the error that says ``what`` went wrong, and to lower the rate or ``remedy``."""
        self.restore()
        return TrainingDiverged(f"training diverged: {what}; restored the weights of step {self.step}; "
                                f"lower the learning rate or {remedy}", self.history, self.step)

    def _first_bad(self) -> str:
        xp = self.net.xp
        for name, g in self.net.grads.items():
            if not bool(xp.isfinite(g).all()):
                return f"the gradient of {name}"
        for name, p in self.net.params.items():
            if not bool(xp.isfinite(p).all()):
                return f"the weights {name}"
        return "the loss itself"
