"""``cupy.cuda.stream``: streams and events (work runs at once, so they only keep time and count waits)."""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING

from .. import _fake
from . import _runtime as runtime

if TYPE_CHECKING:
    from typing_extensions import Self

_handles = itertools.count(0x5000)


class Stream:
    """``Stream(null=False, non_blocking=False, ptds=False, priority=None)``; the null stream has ``ptr == 0``."""

    def __init__(self, null: bool = False, non_blocking: bool = False, ptds: bool = False,
                 priority: int | None = None) -> None:
        self.ptr = 0 if null else next(_handles)
        self.device_id = runtime.getDevice()
        self._before: list[Stream] = []

    def synchronize(self) -> None:
        _fake.sync()

    def use(self) -> Stream:
        _current[runtime.getDevice()] = self
        return self

    @property
    def done(self) -> bool:
        return True

    def record(self, event: Event | None = None) -> Event:
        event = event or Event()
        event.record(self)
        return event

    def __enter__(self) -> Self:
        self._before.append(get_current_stream())
        self.use()
        return self

    def __exit__(self, *exc: object) -> None:
        self._before.pop().use()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Stream) and other.ptr == self.ptr

    def __hash__(self) -> int:
        return hash(("Stream", self.ptr))


_current: dict[int, Stream] = {}


def get_current_stream(device_id: int = -1) -> Stream:
    device = runtime.getDevice() if device_id < 0 else device_id
    if device not in _current:
        _current[device] = Stream(null=True)
    return _current[device]


class Event:
    """``Event(block=False, disable_timing=False, interprocess=False)``: ``record``, ``synchronize``, ``done``."""

    def __init__(self, block: bool = False, disable_timing: bool = False, interprocess: bool = False) -> None:
        if interprocess and not disable_timing:
            raise ValueError("Timing must be disabled for interprocess events")
        self.disable_timing = disable_timing
        self.ptr = next(_handles)
        self._t: float | None = None

    def record(self, stream: Stream | None = None) -> None:
        self._t = time.perf_counter()

    def synchronize(self) -> None:
        _fake.sync()

    @property
    def done(self) -> bool:
        return True


def get_elapsed_time(start_event: Event, end_event: Event) -> float:
    """Milliseconds between two recorded events, as CuPy's."""
    if start_event.disable_timing or end_event.disable_timing or start_event._t is None or end_event._t is None:
        raise runtime.CUDARuntimeError(400, "invalid resource handle")
    return (end_event._t - start_event._t) * 1e3
