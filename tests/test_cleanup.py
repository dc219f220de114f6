"""The scheduled removal of expired sessions (SPEC §5 "Cleanup"; issue 2).

The schedule is driven by moving a :class:`ManualClock` and calling the job's
``_tick()`` (or by a 10 ms tick), never by waiting for real cron times.
Expiry, though, is judged by the database's clock: "expired" sessions are made
by an instance whose clock is set years in the past.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timezone
from typing import Any, AsyncIterator

import aiopg
import pytest

from tornado_supertokens.cleanup import CleanupJob, next_run_ms
from tornado_supertokens.clock import ManualClock, SystemClock
from tornado_supertokens.config import LoggingConfig
from tornado_supertokens.log import Logger
from tornado_supertokens.storage import Storage

import pg
from helpers import make_pool

DEFAULT_SCHEDULE = "0 0 0 1-31/7 * *"
YEAR_MS = 365 * 24 * 3_600_000
HANG_GUARD_S = 20


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp() * 1000)


def utc(value_ms: int) -> datetime:
    return datetime.fromtimestamp(value_ms / 1000, tz=timezone.utc)


class Collect:
    """``logging.info`` / ``logging.error`` callables that keep the messages."""

    def __init__(self) -> None:
        self.info: list[Any] = []
        self.error: list[Any] = []

    def config(self) -> dict:
        return {"logging": {"info": self.info.append, "error": self.error.append}}


# -- next_run_ms -----------------------------------------------------------------


def test_next_run_default_schedule_is_seconds_first_every_seventh_day():
    assert next_run_ms(DEFAULT_SCHEDULE, ms(2024, 1, 1)) == ms(2024, 1, 8)
    assert next_run_ms(DEFAULT_SCHEDULE, ms(2024, 1, 1) - 1) == ms(2024, 1, 1)
    assert next_run_ms(DEFAULT_SCHEDULE, ms(2024, 1, 8) + 500) == ms(2024, 1, 15)
    assert next_run_ms(DEFAULT_SCHEDULE, ms(2024, 1, 29, 0, 0, 1)) == ms(2024, 2, 1)
    assert next_run_ms(DEFAULT_SCHEDULE, ms(2024, 2, 29, 12)) == ms(2024, 3, 1)
    # Over a year: midnight UTC on days 1, 8, 15, 22, 29 only, each run strictly later.
    t, seen_days = ms(2024, 1, 1, 12), set()
    for _ in range(60):
        nxt = next_run_ms(DEFAULT_SCHEDULE, t)
        assert nxt > t
        when = utc(nxt)
        assert (when.hour, when.minute, when.second, when.microsecond) == (0, 0, 0, 0)
        seen_days.add(when.day)
        t = nxt
    assert seen_days == {1, 8, 15, 22, 29}


def test_next_run_six_fields_read_seconds_first():
    # "30 * * * * *": second 30 of every minute (not minute 30 of every hour).
    assert next_run_ms("30 * * * * *", ms(2024, 5, 5, 12, 0, 0)) == ms(2024, 5, 5, 12, 0, 30)
    assert next_run_ms("30 * * * * *", ms(2024, 5, 5, 12, 0, 30)) == ms(2024, 5, 5, 12, 1, 30)
    assert next_run_ms("*/10 * * * * *", ms(2024, 5, 5, 12, 0, 5)) == ms(2024, 5, 5, 12, 0, 10)
    assert next_run_ms("0 15 3 * * *", ms(2024, 5, 5, 12)) == ms(2024, 5, 6, 3, 15)


def test_next_run_five_fields_are_standard_cron():
    assert next_run_ms("*/15 * * * *", ms(2024, 5, 5, 12, 7)) == ms(2024, 5, 5, 12, 15)
    assert next_run_ms("0 3 * * *", ms(2024, 3, 10, 2)) == ms(2024, 3, 10, 3)  # UTC: no DST
    assert next_run_ms("0 3 * * *", ms(2024, 3, 10, 3)) == ms(2024, 3, 11, 3)
    assert next_run_ms("30 * * * *", ms(2024, 5, 5, 12, 0)) == ms(2024, 5, 5, 12, 30)
    assert next_run_ms("0 0 1 * *", ms(2024, 12, 31, 23, 59, 59)) == ms(2025, 1, 1)


# -- runs ----------------------------------------------------------------------


async def make_expired_and_live(make_st: Any, pool: Any, n_expired: int, n_live: int,
                                overrides: Any = None) -> tuple[Any, list[str], list[str]]:
    """``n_expired`` sessions past their expiry by the database clock, ``n_live`` live ones."""
    past = await make_st(overrides, clock=ManualClock(SystemClock().now_ms() - 3 * YEAR_MS))
    live = await make_st(overrides, pool=pool)
    expired = [(await past.engine.create_new_session("old")).session.handle
               for _ in range(n_expired)]
    alive = [(await live.engine.create_new_session(f"live{i}")).session.handle
             for i in range(n_live)]
    return live, expired, alive




@pytest.mark.gen_test
async def test_run_deletes_only_expired_sessions_in_batches(make_st, counting_pool):
    pool = await counting_pool()
    collect = Collect()
    st, expired, alive = await make_expired_and_live(make_st, pool, 10, 3, collect.config())
    job = CleanupJob(st.storage, DEFAULT_SCHEDULE, SystemClock(), st.logger, batch_size=4)
    pool.reset()
    assert await job.run() == 10
    assert pool.count == 3  # batches of 4, 4 and 2
    assert all("DELETE" in s.upper() for s in pool.statements)
    for handle in expired:
        assert await st.storage.get_session(handle) is None
    for handle in alive:
        assert await st.storage.get_session(handle) is not None
    assert any("10" in str(m) for m in collect.info)  # the count is logged
    pool.reset()
    assert await job.run() == 0  # nothing left: one statement finds nothing
    assert pool.count == 1


@pytest.mark.gen_test
async def test_batch_boundary(make_st, counting_pool):
    pool = await counting_pool()
    st, expired, alive = await make_expired_and_live(make_st, pool, 8, 1)
    job = CleanupJob(st.storage, DEFAULT_SCHEDULE, SystemClock(), st.logger, batch_size=4)
    pool.reset()
    assert await job.run() == 8
    assert pool.count == 3  # 4, 4, then an empty batch ends the run
    assert await st.storage.get_session(alive[0]) is not None


@contextlib.asynccontextmanager
async def open_transaction(pg_params: dict) -> AsyncIterator[Any]:
    """A raw connection inside BEGIN ... ROLLBACK, shaped like a one-connection pool."""
    kw = dict(pg_params)
    kw["dbname"] = kw.pop("database")
    conn = await aiopg.connect(**kw)

    class OneConnection:
        closed = False

        @contextlib.asynccontextmanager
        async def acquire(self) -> AsyncIterator[Any]:
            yield conn

    try:
        async with conn.cursor() as cur:
            await cur.execute("BEGIN")
        yield OneConnection()
    finally:
        async with conn.cursor() as cur:
            await cur.execute("ROLLBACK")
        await conn.close()


@pytest.mark.gen_test
async def test_cleaning_one_table_does_not_block_cleaning_another(
    make_st, counting_pool, pg_params, table_suffix
):
    """Instances on different tables clean independently, even at the same moment."""
    pool_a, pool_b = await counting_pool(), await counting_pool()
    a, expired_a, _ = await make_expired_and_live(make_st, pool_a, 3, 1)
    tables_b = {"signingKey": f"sk_b_{table_suffix}", "refreshTokens": f"rt_b_{table_suffix}"}
    b, expired_b, _ = await make_expired_and_live(
        make_st, pool_b, 3, 1, {"postgres": {"tables": tables_b}}
    )
    job_a = CleanupJob(a.storage, DEFAULT_SCHEDULE, SystemClock(), a.logger, batch_size=2)
    job_b = CleanupJob(b.storage, DEFAULT_SCHEDULE, SystemClock(), b.logger, batch_size=2)
    async with open_transaction(pg_params) as one:
        # Another process is in the middle of a batch on b's table (and holds it).
        busy_b = Storage(one, tables_b["signingKey"], tables_b["refreshTokens"], owns_pool=False)
        got, deleted = await busy_b.delete_expired_batch(2)
        assert got and deleted == 2
        # a's table is not b's: it is cleaned all the same.
        assert await asyncio.wait_for(job_a.run(), HANG_GUARD_S) == 3
        # b's own cleaners step aside for the one at work (no double work, no waiting).
        assert await asyncio.wait_for(job_b.run(), HANG_GUARD_S) == 0
    # That other process rolled back: b's next run does the whole job.
    assert await job_b.run() == 3
    for st, handles in ((a, expired_a), (b, expired_b)):
        for handle in handles:
            assert await st.storage.get_session(handle) is None


# -- the schedule -------------------------------------------------------------------


@pytest.mark.gen_test
async def test_tick_runs_only_when_due_and_reschedules(make_st):
    clock = ManualClock(ms(2024, 1, 1, 12))
    st = await make_st(clock=clock)
    job = CleanupJob(st.storage, DEFAULT_SCHEDULE, clock, st.logger)
    assert job.next_due_ms == ms(2024, 1, 8)
    clock.set(ms(2024, 1, 7, 23, 59, 59))
    job._tick()
    assert job._task is None and job.runs == 0  # not due yet
    clock.set(ms(2024, 1, 8, 0, 0, 0, 400))
    job._tick()
    first = job._task
    assert first is not None
    job._tick()  # a run in progress is not started twice
    assert job._task is first
    await asyncio.wait_for(first, HANG_GUARD_S)
    assert job.runs == 1
    assert job.next_due_ms == ms(2024, 1, 15)
    # A clock that jumped far ahead runs once, then aims at the next future slot.
    clock.set(ms(2024, 3, 2, 10))
    job._tick()
    await asyncio.wait_for(job._task, HANG_GUARD_S)
    assert job.runs == 2 and job.next_due_ms == ms(2024, 3, 8)


@pytest.mark.gen_test
async def test_failing_run_is_logged_and_schedule_continues(make_st, pg_params, base_config):
    clock = ManualClock(ms(2024, 1, 1, 12))
    collect = Collect()
    st = await make_st(collect.config(), clock=clock)
    past = await make_st(clock=ManualClock(SystemClock().now_ms() - 3 * YEAR_MS))
    expired = [(await past.engine.create_new_session("old")).session.handle for _ in range(3)]
    table = base_config["postgres"]["tables"]["refreshTokens"]
    job = st.cleanup  # the instance's own job, driven by hand
    assert job.next_due_ms == ms(2024, 1, 8)

    conn = pg.connect(pg_params)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'ALTER TABLE "{table}" RENAME TO "{table}_away"')
        try:
            clock.set(ms(2024, 1, 8, 0, 0, 1))
            job._tick()
            assert await asyncio.wait_for(job._task, HANG_GUARD_S) == 0
        finally:
            with conn.cursor() as cur:
                cur.execute(f'ALTER TABLE "{table}_away" RENAME TO "{table}"')
    finally:
        conn.close()
    assert job.runs == 1
    assert job.next_due_ms == ms(2024, 1, 15)  # the schedule goes on
    assert len(collect.error) == 1
    assert "removal of expired sessions failed" in str(collect.error[0])

    clock.set(ms(2024, 1, 15, 0, 0, 1))
    job._tick()
    assert await asyncio.wait_for(job._task, HANG_GUARD_S) == 3
    assert job.runs == 2 and job.next_due_ms == ms(2024, 1, 22)
    assert len(collect.error) == 1
    for handle in expired:
        assert await st.storage.get_session(handle) is None


@pytest.mark.gen_test
async def test_failing_run_on_a_closed_pool_and_a_broken_logger(make_st, pg_params):
    clock = ManualClock(ms(2024, 1, 1, 12))
    messages: list[Any] = []

    def broken_error(message: Any) -> None:
        messages.append(message)
        raise RuntimeError("the log sink is down")

    pool = await make_pool(pg_params)
    try:
        st = await make_st({"logging": {"error": broken_error}}, clock=clock, pool=pool)
    finally:
        pool.close()
        await pool.wait_closed()
    job = st.cleanup
    for week in (8, 15):
        clock.set(ms(2024, 1, week, 0, 0, 1))
        job._tick()
        assert await asyncio.wait_for(job._task, HANG_GUARD_S) == 0
    assert job.runs == 2 and job.next_due_ms == ms(2024, 1, 22)
    assert len(messages) == 2
    # A fresh pool on the same tables: the same schedule works again.
    fresh = await make_pool(pg_params)
    try:
        storage = Storage(fresh, st.config.postgres.signing_key_table,
                          st.config.postgres.refresh_token_table, owns_pool=False)
        again = CleanupJob(storage, DEFAULT_SCHEDULE, clock, st.logger)
        clock.set(ms(2024, 1, 29, 0, 0, 1))
        again._tick()
        assert await asyncio.wait_for(again._task, HANG_GUARD_S) == 0
        assert again.runs == 1 and len(messages) == 2
    finally:
        fresh.close()
        await fresh.wait_closed()


async def wait_until(predicate: Any) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), HANG_GUARD_S)


@pytest.mark.gen_test
async def test_periodic_callback_drives_the_job_and_stop_ends_it(make_st):
    clock = ManualClock(ms(2024, 1, 1, 12))
    st = await make_st(clock=clock)
    logger = Logger(LoggingConfig())
    job = CleanupJob(st.storage, "*/5 * * * * *", clock, logger, tick_ms=10)
    job.start()
    try:
        assert job.runs == 0
        clock.advance(seconds=5)
        await wait_until(lambda: job.runs == 1)
        clock.advance(seconds=5)
        await wait_until(lambda: job.runs == 2)
    finally:
        await job.stop()
    assert job._timer is None
    clock.advance(hours=1)
    await asyncio.sleep(0.1)  # ten tick periods: nothing may run now
    assert job.runs == 2
    # start() after stop() resumes; stop() twice is harmless.
    job.start()
    await wait_until(lambda: job.runs == 3)
    await job.stop()
    await job.stop()


@pytest.mark.gen_test
async def test_instance_close_stops_its_cleanup_job(make_st):
    st = await make_st()
    timer = st.cleanup._timer
    assert timer is not None and timer.is_running()
    await st.close()
    assert not timer.is_running()
    assert st.cleanup._timer is None
    # No cleanup on a cleanup-less instance either.
    quiet = await make_st(start_cleanup=False)
    assert quiet.cleanup._timer is None
