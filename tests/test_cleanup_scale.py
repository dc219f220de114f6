"""Cleanup at scale (issue 5, item 5).

Several instances ("processes", each with its own pool) clean the same table
at once: one cleans at a time (the table's advisory lock), in bounded
batches, judging expiry by the database's clock; no live session is
deleted, including one whose expiry a refresh extends while a cleanup runs.

Rows are bulk-inserted with one ``INSERT ... SELECT generate_series`` on
private tables, expired and live rows interleaved. The full scale of the
issue (one million expired, one hundred thousand live, three OS processes)
is the ``slow`` test at the end: it runs with ``RUN_SLOW=1`` or ``-m slow``
(``make cleanup-bench``), records its figures and asserts no duration.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from tornado_supertokens import TokenTheftDetectedError, UnauthorisedError
from tornado_supertokens.cleanup import BATCH_SIZE, CleanupJob
from tornado_supertokens.clock import ManualClock, SystemClock

import pg
from helpers import Acquisition, WrappedPool, query, run_at_a_barrier

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "cleanup_worker.py"
ARTIFACTS = REPO / "test-artifacts"
#: Hang guards (turn a deadlock into a failure); never timing assertions.
HANG_GUARD_S = 30
TEN_YEARS_MS = 10 * 365 * 24 * 3_600_000
DB_NOW_MS = "(extract(epoch from clock_timestamp()) * 1000)::bigint"
LIVE_USER = '"live"'
OLD_USER = '"old"'


def bulk_insert(pg_params: dict, table: str, expired: int, live: int) -> None:
    """``expired`` rows past their expiry by the database clock, ``live`` rows a
    day from expiry, interleaved in the heap (every r-th row is live)."""
    total = expired + live
    r = total // live
    query(
        pg_params,
        f'INSERT INTO "{table}" (session_handle, user_id, refresh_token_hash_2, expires_at)'
        " SELECT 'bulk-' || i,"
        "  CASE WHEN i %% %(r)s = 0 AND i / %(r)s <= %(live)s THEN %(live_user)s"
        "       ELSE %(old_user)s END,"
        "  md5(i::text) || md5((i + 1)::text),"
        "  CASE WHEN i %% %(r)s = 0 AND i / %(r)s <= %(live)s"
        f"      THEN {DB_NOW_MS} + 86400000 + i"
        f"      ELSE {DB_NOW_MS} - 60000 - i END"
        " FROM generate_series(1, %(total)s) AS i",
        {"r": r, "live": live, "total": total, "live_user": LIVE_USER, "old_user": OLD_USER},
    )
    query(pg_params, f'ANALYZE "{table}"')


def counts(pg_params: dict, table: str) -> dict[str, int]:
    rows = query(pg_params, f'SELECT user_id, count(*) FROM "{table}" GROUP BY user_id')
    return {str(u): int(c) for u, c in rows}


BatchLog = list[tuple[str, bool, int]]


def instrument(name: str, st: Any, log: BatchLog) -> None:
    """Record every cleanup batch of ``st``: (instance, got the lock, rows deleted)."""
    original = st.storage.delete_expired_batch

    async def recorded(limit: int) -> tuple[bool, int]:
        got, deleted = await original(limit)
        log.append((name, got, deleted))
        return got, deleted

    st.storage.delete_expired_batch = recorded


def future_clock() -> ManualClock:
    """An application clock ten years ahead: by it, every session has expired."""
    return ManualClock(SystemClock().now_ms() + TEN_YEARS_MS)


async def three_cleaners(make_st: Any, log: BatchLog, **kwargs: Any) -> list[Any]:
    instances = []
    for name in ("a", "b", "c"):
        st = await make_st(clock=future_clock(), start_cleanup=False, **kwargs)
        instrument(name, st, log)
        instances.append(st)
    return instances


class HoldingPool(WrappedPool):
    """Wraps an aiopg pool. Once armed, the next statement that ``matches`` runs
    inside BEGIN, and its transaction (with every lock it took) stays open
    until :meth:`release`; then it commits. ``held`` is set meanwhile."""

    def __init__(self, pool: Any) -> None:
        super().__init__(pool)
        self._match: Optional[Callable[[str], bool]] = None
        self.held = asyncio.Event()
        self._release = asyncio.Event()

    def arm(self, match: Callable[[str], bool]) -> None:
        self._match = match
        self.held.clear()
        self._release.clear()

    def release(self) -> None:
        self._release.set()

    async def execute(self, acq: Acquisition, cur: Any, operation: Any, parameters: Any) -> Any:
        if self._match is not None and self._match(str(operation)):
            self._match = None  # once
            acq.holding = True
            await cur.execute("BEGIN")
        return await cur.execute(operation, parameters)

    async def before_release(self, acq: Acquisition, exc: Any) -> None:
        if acq.holding:
            self.held.set()
            await self._release.wait()
            async with acq.raw.cursor() as cur:
                await cur.execute("ROLLBACK" if exc[0] is not None else "COMMIT")


def is_cleanup_batch(statement: str) -> bool:
    return "pg_try_advisory_xact_lock" in statement


def is_update(statement: str) -> bool:
    return statement.lstrip().upper().startswith("UPDATE")


@pytest.fixture
def holding_pool(raw_pools: Any) -> Any:
    async def make() -> HoldingPool:
        return HoldingPool(await raw_pools())

    return make


# -- several cleaners at once ----------------------------------------------------------

EXPIRED, LIVE = 20_000, 2_000


@pytest.mark.gen_test(timeout=60)
async def test_three_concurrent_cleaners_delete_each_expired_row_once_and_no_live_row(
    make_st, base_config, pg_params
):
    log: BatchLog = []
    instances = await three_cleaners(make_st, log)
    table = base_config["postgres"]["tables"]["refreshTokens"]
    bulk_insert(pg_params, table, EXPIRED, LIVE)
    assert counts(pg_params, table) == {LIVE_USER: LIVE, OLD_USER: EXPIRED}

    results = await asyncio.wait_for(
        asyncio.gather(*(st.cleanup.run() for st in instances)), HANG_GUARD_S
    )

    # Every expired row deleted once, none of the live ones, although by each
    # instance's own clock (ten years ahead) every row has expired.
    assert sum(results) == EXPIRED
    assert counts(pg_params, table) == {LIVE_USER: LIVE}
    assert sum(deleted for _, _, deleted in log) == EXPIRED
    # Who deleted what: batches bounded; an instance that found the table
    # being cleaned by another stopped there (no double work, no waiting).
    for name, result in zip("abc", results):
        mine = [(got, deleted) for n, got, deleted in log if n == name]
        assert result == sum(deleted for _, deleted in mine)
        assert all(deleted <= BATCH_SIZE for _, deleted in mine)
        refused = [i for i, (got, _) in enumerate(mine) if not got]
        assert refused in ([], [len(mine) - 1])  # only ever its last batch
        assert all(deleted == 0 for got, deleted in mine if not got)
        print(f"instance {name}: {result} rows in {len(mine) - len(refused)} batches"
              f"{', then found the lock taken' if refused else ''}")
    assert sum(got for _, got, _ in log) >= EXPIRED // BATCH_SIZE + 1  # the last one is short

    # Nothing left: a second round deletes nothing.
    log.clear()
    assert await asyncio.gather(*(st.cleanup.run() for st in instances)) == [0, 0, 0]


@pytest.mark.gen_test(timeout=60)
async def test_one_cleaner_at_a_time_the_others_step_aside_without_waiting(
    make_st, base_config, pg_params, holding_pool
):
    log: BatchLog = []
    pool = await holding_pool()
    holder = await make_st(clock=future_clock(), start_cleanup=False, pool=pool)
    instrument("holder", holder, log)
    others = await three_cleaners(make_st, log)
    table = base_config["postgres"]["tables"]["refreshTokens"]
    bulk_insert(pg_params, table, EXPIRED, LIVE)

    # The holder's first batch stays open: it holds the table's cleanup lock.
    pool.arm(is_cleanup_batch)
    running = asyncio.ensure_future(holder.cleanup.run())
    await asyncio.wait_for(pool.held.wait(), HANG_GUARD_S)
    # Meanwhile the others try: each finds the lock taken, deletes nothing
    # and returns at once (the hang guard would catch a wait).
    assert await asyncio.wait_for(
        asyncio.gather(*(st.cleanup.run() for st in others)), HANG_GUARD_S
    ) == [0, 0, 0]
    assert sorted(log) == [("a", False, 0), ("b", False, 0), ("c", False, 0)]
    assert counts(pg_params, table)[OLD_USER] == EXPIRED  # (its batch is not committed yet)

    pool.release()
    assert await asyncio.wait_for(running, HANG_GUARD_S) == EXPIRED
    holder_batches = [(got, deleted) for n, got, deleted in log if n == "holder"]
    assert all(got for got, _ in holder_batches)
    assert sum(deleted for _, deleted in holder_batches) == EXPIRED
    assert counts(pg_params, table) == {LIVE_USER: LIVE}


# -- a refresh extending a session's expiry while a cleanup runs --------------------------


async def session_expiring_soon(make_st: Any, ms_from_now: int) -> Any:
    """A session whose expiry is ``ms_from_now`` ahead of the (shared) real clock."""
    clock = ManualClock()
    creator = await make_st(clock=clock, start_cleanup=False)
    clock.set(SystemClock().now_ms() - creator.config.refresh_token_validity_ms + ms_from_now)
    return await creator.engine.create_new_session("soon")


async def wait_for_database_clock_past(pg_params: dict, when_ms: int) -> None:
    while True:
        (now,), = query(pg_params, f"SELECT {DB_NOW_MS}")
        if now > when_ms:
            return
        await asyncio.sleep(max(0.005, (when_ms - now) / 1000))


@pytest.mark.gen_test(timeout=60)
async def test_session_extended_by_a_refresh_in_flight_survives_the_cleanup(
    make_st, base_config, pg_params, holding_pool
):
    table = base_config["postgres"]["tables"]["refreshTokens"]
    soon = await session_expiring_soon(make_st, 400)
    handle = soon.session.handle
    (old_expiry,), = query(pg_params, f'SELECT expires_at FROM "{table}" WHERE session_handle = %s',
                           (handle,))
    pool = await holding_pool()
    refresher = await make_st(pool=pool, start_cleanup=False)  # the real clock
    log: BatchLog = []
    cleaners = await three_cleaners(make_st, log)
    bulk_insert(pg_params, table, 5_000, 500)

    # The refresh's UPDATE has run (the session is extended, the row locked)
    # but has not committed yet ...
    pool.arm(is_update)
    refresh = asyncio.ensure_future(refresher.engine.refresh_session(soon.tokens.refresh_token.value))
    await asyncio.wait_for(pool.held.wait(), HANG_GUARD_S)
    # ... when the session's old expiry passes by the database's clock, and
    # the cleaners run: they skip the row being refreshed (no waiting on it).
    await wait_for_database_clock_past(pg_params, old_expiry)
    results = await asyncio.wait_for(
        asyncio.gather(*(st.cleanup.run() for st in cleaners)), HANG_GUARD_S
    )
    assert sum(results) == 5_000
    assert counts(pg_params, table) == {LIVE_USER: 500, '"soon"': 1}

    pool.release()
    refreshed = await asyncio.wait_for(refresh, HANG_GUARD_S)
    assert refreshed.session.handle == handle
    (new_expiry,), = query(pg_params, f'SELECT expires_at FROM "{table}" WHERE session_handle = %s',
                           (handle,))
    assert new_expiry == refreshed.tokens.refresh_token.expires_at > old_expiry
    # Later cleanups leave it alone too, and its new tokens work.
    assert await asyncio.gather(*(st.cleanup.run() for st in cleaners)) == [0, 0, 0]
    await refresher.engine.get_session(
        refreshed.tokens.access_token.value, refreshed.tokens.anti_csrf_token, True
    )
    again = await refresher.engine.refresh_session(refreshed.tokens.refresh_token.value)
    assert again.session.handle == handle


@pytest.mark.gen_test(timeout=60)
async def test_refreshes_racing_cleanup_batches_never_lose_a_refreshed_session(
    make_st, base_config, pg_params
):
    """Sessions expiring over the next second, each refreshed at a random moment
    while three cleaners run small batches back to back. Whatever the
    interleaving: a refresh that succeeded left a session that survives; one
    that failed was refused as over (never theft, never a database error)."""
    table = base_config["postgres"]["tables"]["refreshTokens"]
    rng = random.Random(5)
    n = 150
    refresher = await make_st(start_cleanup=False)  # the real clock
    log: BatchLog = []
    cleaners = []
    for st in await three_cleaners(make_st, log):
        # Many short batches, so that they interleave with the refreshes.
        cleaners.append(CleanupJob(st.storage, st.config.tokens.refresh_token
                                   .removal_cronjob_interval, st.clock, st.logger, batch_size=7))
    bulk_insert(pg_params, table, 2_000, 200)
    # The sessions, their expiries spread over 0.2-1.2 s from now (real clock).
    clock = ManualClock()
    creator = await make_st(clock=clock, start_cleanup=False)
    base = SystemClock().now_ms() - creator.config.refresh_token_validity_ms

    async def create(i: int, at: int) -> Any:
        clock.set(at)  # read by the create before its first await: no other task between
        return await creator.engine.create_new_session(f"racer{i}")

    sessions = await asyncio.gather(
        *(create(i, base + 200 + rng.randrange(1_000)) for i in range(n))
    )
    expiries = {s.tokens.refresh_token.expires_at for s in sessions}
    assert len(expiries) > n // 2  # spread out, not one instant

    outcomes: dict[str, str] = {}
    stop = asyncio.Event()

    async def refresh_later(result: Any) -> None:
        await asyncio.sleep(rng.uniform(0, 1.3))
        try:
            await refresher.engine.refresh_session(result.tokens.refresh_token.value)
            outcomes[result.session.handle] = "refreshed"
        except TokenTheftDetectedError:
            outcomes[result.session.handle] = "theft"
        except UnauthorisedError:
            outcomes[result.session.handle] = "over"
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcomes[result.session.handle] = f"{type(exc).__name__}: {exc}"

    async def keep_cleaning(job: CleanupJob) -> None:
        while not stop.is_set():
            await job.run()
            await asyncio.sleep(0.002)

    cleaning = [asyncio.ensure_future(keep_cleaning(job)) for job in cleaners]
    await asyncio.wait_for(asyncio.gather(*(refresh_later(s) for s in sessions)), HANG_GUARD_S)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*cleaning), HANG_GUARD_S)
    await cleaners[0].run()  # a last pass once every expiry has passed

    assert set(outcomes.values()) <= {"refreshed", "over"}, outcomes
    refreshed = {h for h, o in outcomes.items() if o == "refreshed"}
    assert 0 < len(refreshed) < n  # both fates occurred (else the race was not run)
    remaining = {str(h) for (h,) in query(
        pg_params, f'SELECT session_handle FROM "{table}" WHERE user_id LIKE %s', ('"racer%',)
    )}
    assert remaining == refreshed  # refreshed ones all survive; the others were cleaned
    assert counts(pg_params, table).get(LIVE_USER) == 200
    assert sum(d for _, _, d in log) == 2_000 + (n - len(refreshed))
    print(f"{len(refreshed)} of {n} refreshed in time, {n - len(refreshed)} expired first;"
          f" {sum(1 for _, got, _ in log if got)} batches")


# -- the full scale (slow) -------------------------------------------------------------------

FULL_EXPIRED, FULL_LIVE, PROCESSES = 1_000_000, 100_000, 3


@pytest.mark.slow
def test_cleanup_at_full_scale_in_three_processes(pg_params, table_suffix):
    """One million expired and one hundred thousand live sessions, three OS
    processes starting ``CleanupJob.run()`` at the same moment. Asserts the
    outcome; records the figures (batches, duration, longest IOLoop stall with
    a 5 ms timer) in test-artifacts/cleanup_scale.json and on stdout."""
    tables = {"signingKey": f"sk_cs_{table_suffix}", "refreshTokens": f"rt_cs_{table_suffix}"}
    config = {
        "postgres": {**pg_params, "tables": tables},
        "tokens": {"refreshToken": {"renewTokenPath": "/api/refresh"}},
        "cookie": {"domain": "localhost", "secure": False},
    }
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    ))
    try:
        # Tables first (one short-lived instance), then the rows.
        first = subprocess.run(
            [sys.executable, "-c",
             "import asyncio, json, sys\n"
             "from tornado_supertokens.supertokens import SuperTokens\n"
             "async def main():\n"
             "    st = await SuperTokens.create(json.loads(sys.argv[1]), start_cleanup=False)\n"
             "    await st.close()\n"
             "asyncio.run(main())\n",
             json.dumps(config)],
            capture_output=True, text=True, cwd=str(REPO), env=env, timeout=120,
        )
        assert first.returncode == 0, first.stderr
        t0 = time.perf_counter()
        bulk_insert(pg_params, tables["refreshTokens"], FULL_EXPIRED, FULL_LIVE)
        insert_s = time.perf_counter() - t0

        outputs = run_at_a_barrier([str(WORKER), json.dumps(config)], PROCESSES, cwd=REPO,
                                   env=env, timeout=1200)

        assert sum(o["deleted"] for o in outputs) == FULL_EXPIRED
        assert counts(pg_params, tables["refreshTokens"]) == {LIVE_USER: FULL_LIVE}
        for o in outputs:
            assert sum(b["deleted"] for b in o["batches"]) == o["deleted"]
            assert all(b["deleted"] <= BATCH_SIZE for b in o["batches"])
            assert [b["got"] for b in o["batches"]].count(False) <= 1
        figures = {
            "expired": FULL_EXPIRED,
            "live": FULL_LIVE,
            "processes": PROCESSES,
            "batch_size": BATCH_SIZE,
            "insert_s": round(insert_s, 2),
            "batches_with_lock": sum(o["batches_with_lock"] for o in outputs),
            "wall_s": round(max(o["duration_s"] for o in outputs), 2),
            "per_process": [
                {k: (round(v, 3) if isinstance(v, float) else v)
                 for k, v in o.items() if k != "batches"}
                for o in outputs
            ],
            "max_stall_ms": round(max(o["max_stall_ms"] for o in outputs), 2),
            "longest_batch_ms": round(max(o["longest_batch_s"] for o in outputs) * 1e3, 1),
        }
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "cleanup_scale.json").write_text(json.dumps(figures, indent=2))
        print()
        print(f"cleanup of {FULL_EXPIRED:,} expired + {FULL_LIVE:,} live rows by {PROCESSES}"
              f" processes: {figures['batches_with_lock']} batches of <= {BATCH_SIZE},"
              f" {figures['wall_s']} s; longest IOLoop stall {figures['max_stall_ms']} ms"
              f" (5 ms timer); longest batch round trip {figures['longest_batch_ms']} ms;"
              f" bulk insert {figures['insert_s']} s")
        for p in figures["per_process"]:
            print(f"  pid {p['pid']}: deleted {p['deleted']:,} in {p['batches_with_lock']}"
                  f" batches, refused {p['refused']}, {p['duration_s']} s,"
                  f" stall {p['max_stall_ms']} ms ({p['max_stall_on_cpu_ms']} ms of it on CPU)")
    finally:
        conn = pg.connect(pg_params)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                for name in tables.values():
                    cur.execute(f'DROP TABLE IF EXISTS "{name}"')
        finally:
            conn.close()
