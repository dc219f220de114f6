"""Time, read through one injectable object so tests can move it."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Anything with ``now_ms()``: milliseconds since the Unix epoch."""

    def now_ms(self) -> int: ...


class SystemClock:
    """The real wall clock."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that only moves when told to; for tests and simulations.

    >>> clock = ManualClock(1_000)
    >>> clock.advance(seconds=2); clock.now_ms()
    3000
    """

    def __init__(self, now_ms: int | None = None) -> None:
        self._now = SystemClock().now_ms() if now_ms is None else int(now_ms)

    def now_ms(self) -> int:
        return self._now

    def advance(self, *, ms: int = 0, seconds: float = 0, hours: float = 0) -> None:
        self._now += int(ms + seconds * 1000 + hours * 3_600_000)

    def set(self, now_ms: int) -> None:
        self._now = int(now_ms)
