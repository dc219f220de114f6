"""Coalescing: concurrent requests of one kind share one database statement.

Under load, many requests want the same kind of statement at once (32
clients refreshing, 32 blacklisted verifies). Each statement costs a round
trip and, above all, client CPU in the driver; one statement over N rows
costs little more than one over a single row. A :class:`Coalescer` runs a
request at once when fewer than ``max_in_flight`` statements of its kind
are running, so a lone request waits for nothing; otherwise it joins the
next statement, which starts as soon as one finishes. With ``unique_keys``,
two requests with the same key (one session) never share a statement: the
second waits for the next one, so their effects stay ordered.

Why statements stay small (``max_batch``): a statement's rows come back
together, and the process then writes their responses one after another.
With one large statement, the database idles while the process writes
and the process idles while the database works, taking turns (measured:
32 refresh clients kept the process 84% busy). Statements of at most 16
requests, three in flight, overlap the two: while one statement runs, the
responses of another are written (98% busy, 1.25 times the refreshes per
second; BENCHMARKS.md, session 3).
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, Hashable, Optional, TypeVar

K = TypeVar("K", bound=Hashable)
I = TypeVar("I")  # noqa: E741 (item)
R = TypeVar("R")

RunBatch = Callable[[list[tuple[K, I]]], Awaitable[dict[K, R]]]


class Coalescer(Generic[K, I, R]):
    """Runs ``run_batch(items) -> {key: result}`` over requests made concurrently."""

    def __init__(
        self,
        run_batch: RunBatch[K, I, R],
        *,
        max_batch: int = 16,
        max_in_flight: int = 3,
        unique_keys: bool = True,
    ) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._unique = unique_keys
        self._pending: list[tuple[K, I, asyncio.Future[Optional[R]]]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._busy_keys: set[K] = set()

    async def submit(self, key: K, item: I) -> Optional[R]:
        """The result for ``key`` from the statement that ran ``item`` (None if none)."""
        future: asyncio.Future[Optional[R]] = asyncio.get_running_loop().create_future()
        self._pending.append((key, item, future))
        self._flush()
        return await future

    async def wait_idle(self) -> None:
        """Wait until no statement of this kind is running."""
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    def _flush(self) -> None:
        while self._pending and len(self._in_flight) < self._max_in_flight:
            batch: list[tuple[K, I, asyncio.Future[Optional[R]]]] = []
            rest: list[tuple[K, I, asyncio.Future[Optional[R]]]] = []
            keys: set[K] = set()
            for entry in self._pending:
                key, _, future = entry
                if future.done():  # its caller was cancelled before it was sent
                    continue
                clash = self._unique and (key in keys or key in self._busy_keys)
                if clash or len(batch) >= self._max_batch:
                    rest.append(entry)
                else:
                    batch.append(entry)
                    keys.add(key)
            self._pending = rest
            if not batch:
                return
            if self._unique:
                self._busy_keys |= keys
            task = asyncio.ensure_future(self._run(batch, keys))
            self._in_flight.add(task)

    async def _run(
        self, batch: list[tuple[K, I, asyncio.Future[Optional[R]]]], keys: set[K]
    ) -> None:
        try:
            results = await self._run_batch([(key, item) for key, item, _ in batch])
        except BaseException as exc:  # every caller of the batch gets the error
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for key, _, future in batch:
                if not future.done():
                    future.set_result(results.get(key))
        finally:
            if self._unique:
                self._busy_keys -= keys
            task = asyncio.current_task()
            if task is not None:
                self._in_flight.discard(task)
            self._flush()
