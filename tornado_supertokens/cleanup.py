"""The scheduled removal of expired sessions, on the IOLoop.

A Tornado ``PeriodicCallback`` ticks every second; croniter decides when a
run is due. A run deletes expired rows in bounded batches, yielding to the
IOLoop between them, and only one process cleans a table at a time (each
batch takes a transaction-scoped advisory lock named after the table). A
failing run is logged and the schedule goes on.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Awaitable, Callable, Optional

from croniter import croniter
from tornado.ioloop import PeriodicCallback

from .clock import Clock
from .log import Logger
from .storage import Storage

TICK_MS = 1_000
BATCH_SIZE = 1_000


def next_run_ms(expression: str, after_ms: int) -> int:
    """When a cron ``expression`` (6 fields seconds-first, or 5) next fires after ``after_ms``."""
    start = datetime.fromtimestamp(after_ms / 1000, tz=timezone.utc)
    seconds_first = len(expression.split()) == 6
    it = croniter(expression, start, second_at_beginning=seconds_first)
    return int(it.get_next(float) * 1000)


class CleanupJob:
    """Runs :meth:`run` on the cron schedule while started."""

    def __init__(
        self,
        storage: Storage,
        schedule: str,
        clock: Clock,
        logger: Logger,
        *,
        batch_size: int = BATCH_SIZE,
        tick_ms: int = TICK_MS,
        retire_keys: Optional[Callable[[], Awaitable[int]]] = None,
    ) -> None:
        self._storage = storage
        self._retire_keys = retire_keys
        self._schedule = schedule
        self._clock = clock
        self._log = logger
        self._batch_size = batch_size
        self._tick_ms = tick_ms
        self._timer: Optional[PeriodicCallback] = None
        self._task: Optional[asyncio.Task[int]] = None
        #: When the next run is due (ms since epoch).
        self.next_due_ms = next_run_ms(schedule, clock.now_ms())
        #: How many runs finished, failed runs included.
        self.runs = 0

    def start(self) -> None:
        if self._timer is None:
            self._timer = PeriodicCallback(self._tick, self._tick_ms)
            self._timer.start()

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    def _tick(self) -> None:
        now = self._clock.now_ms()
        if now < self.next_due_ms or (self._task is not None and not self._task.done()):
            return
        self.next_due_ms = next_run_ms(self._schedule, now)
        self._task = asyncio.ensure_future(self._guarded_run())

    async def _guarded_run(self) -> int:
        try:
            return await self.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._log.error("removal of expired sessions failed; will retry at the next run", exc)
            return 0
        finally:
            self.runs += 1

    async def run(self) -> int:
        """Delete every expired session now, batch by batch, then the signing keys
        no token can need any more; how many sessions were deleted."""
        total = 0
        while True:
            got_lock, deleted = await self._storage.delete_expired_batch(self._batch_size)
            total += deleted
            if not got_lock or deleted < self._batch_size:
                break
            await asyncio.sleep(0)
        if total:
            self._log.info(f"removed {total} expired sessions")
        if self._retire_keys is not None:
            retired = await self._retire_keys()
            if retired:
                self._log.info(f"removed {retired} retired signing keys")
        return total
