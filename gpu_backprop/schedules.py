"""Learning-rate schedules: a factor on the optimiser's base learning rate, per step.

    schedule = make_schedule("cosine")
    lr = base_lr * schedule(epoch, step, total_steps)

A schedule is any callable ``(epoch, step, total_steps) -> factor``; the names
below build the common ones. ``step`` counts from 0 over the whole run, so a
resumed run continues on the same curve.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["SCHEDULES", "Schedule", "make_schedule"]

Schedule = Callable[[int, int, int], float]  #: (epoch, step, total_steps) -> lr factor

SCHEDULES = ("constant", "step", "cosine", "onecycle")


def make_schedule(spec: str | Schedule | None) -> Schedule:
    """A schedule from its name, or a callable ``(epoch, step, total_steps) -> factor``.

    ``"constant"``; ``"step"`` or ``"step:K:G"`` (multiply by G, default 0.1,
    every K epochs, default 10); ``"cosine"`` (per step, from 1 to 0);
    ``"onecycle"`` (per step: linear warm-up from 1/25 to 1 over the first 30%,
    then cosine down to 1/10⁴).
    """
    if spec is None or callable(spec):
        return spec or (lambda e, s, t: 1.0)
    name, *args = str(spec).split(":")
    if name == "constant" and not args:
        return lambda e, s, t: 1.0
    if name == "step" and len(args) <= 2:
        try:
            every, gamma = int(args[0]) if args else 10, float(args[1]) if len(args) > 1 else 0.1
        except ValueError:
            every, gamma = 0, math.nan
        if every >= 1 and 0 < gamma < math.inf:
            return lambda e, s, t: gamma ** (e // every)
        raise ValueError(f"schedule {spec!r}: a step schedule multiplies the rate by GAMMA (finite, above 0) every "
                         "EVERY epochs (1 or more), e.g. 'step:10:0.1'")
    if name == "cosine" and not args:
        return lambda e, s, t: 0.5 * (1 + math.cos(math.pi * s / max(t, 1)))
    if name == "onecycle" and not args:
        return _one_cycle
    raise ValueError(f"unknown schedule {spec!r}; choose constant, step[:EVERY[:GAMMA]], cosine or onecycle")


def _one_cycle(epoch: int, step: int, total: int) -> float:
    warm = max(1, int(0.3 * total))
    if step < warm:
        return 1 / 25 + (1 - 1 / 25) * step / warm
    frac = (step - warm) / max(1, total - warm)
    return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * frac))
