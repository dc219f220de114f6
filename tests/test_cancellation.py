"""Cancellation safety (issue 5, item 4), against a real PostgreSQL.

A request cancelled at any await inside create, refresh, promotion or revoke
must leave the pool whole (no leaked connection, no connection the pool
forgot while its backend still runs) and the session row in its before or its
after state, never half-rotated; no row lock may outlive the lock timeout.

The sweeps cancel the calling task in two ways:

- at every await point the library reaches in the pool (acquire, cursor,
  execute, fetch, release; a wrapper around the pool calls
  ``task.cancel()`` there, and the cancellation lands where a real one
  would: at the first suspension from that point on);
- after ``k`` turns of the event loop, for every ``k`` until the operation
  completes (this reaches every suspension, the library's own included).

After each run the loop settles; then ``pool.size == pool.freesize``, the
server has exactly ``pool.size`` connections of this pool and none of them is
busy, the row is the before or the after state, and the next call with the
tokens the client holds (the old ones if the call was cancelled) works
without a theft verdict. The rotation grace period is 0, so a token the
database no longer accepts would show up as theft.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional

import aiopg
import pytest

from tornado_supertokens import (
    StorageUnavailableError,
    TokenTheftDetectedError,
    UnauthorisedError,
)
from tornado_supertokens import storage as storage_module
from tornado_supertokens.clock import ManualClock
from tornado_supertokens.config import parse_config
from tornado_supertokens.tokens import sha256_hex

import pg
from conftest import deep_merge
from helpers import Acquisition, WrappedPool

#: Hang guard for one operation or one settle (not a timing assertion).
HANG_GUARD_S = 15
#: Upper bound of the loop-turn sweep (it stops when the operation completes).
MAX_TURNS = 3000


# -- a pool that cancels the caller at its N-th await point ---------------------------


class InjectingPool(WrappedPool):
    """Wraps an aiopg pool; at await point number ``at`` it cancels ``target``.

    Await points, in order: acquire, cursor, execute, fetch, release. The
    cancel is requested just before the real await runs, so it is delivered
    where a real ``task.cancel()`` at that moment would be.
    """

    def __init__(self, pool: aiopg.Pool) -> None:
        super().__init__(pool)
        self.target: Optional[asyncio.Task] = None
        self.at: Optional[int] = None
        self.seen = 0
        self.fired: Optional[str] = None

    def arm(self, target: asyncio.Task, at: int) -> None:
        self.target, self.at, self.seen, self.fired = target, at, 0, None

    def disarm(self) -> None:
        self.target, self.at = None, None

    def point(self, kind: str) -> None:
        index, self.seen = self.seen, self.seen + 1
        if self.target is not None and index == self.at and not self.target.done():
            self.fired = kind
            self.target.cancel()

    def before_acquire(self) -> None:
        self.point("acquire")

    def before_cursor(self) -> None:
        self.point("cursor")

    async def execute(self, acq: Acquisition, cur: Any, operation: Any, parameters: Any) -> Any:
        self.point("execute")
        return await cur.execute(operation, parameters)

    def before_fetch(self) -> None:
        self.point("fetch")

    async def before_release(self, acq: Acquisition, exc: Any) -> None:
        self.point("release")


# -- the harness ---------------------------------------------------------------------


class Harness:
    """One instance on an injecting pool, and raw access to its table and backends."""

    def __init__(self, st: Any, pool: InjectingPool, raw: Any, table: str, app_name: str,
                 clock: ManualClock) -> None:
        self.st = st
        self.engine = st.engine
        self.pool = pool
        self.raw = raw
        self.table = table
        self.app_name = app_name
        self.clock = clock

    @property
    def validity_ms(self) -> int:
        return int(self.st.config.refresh_token_validity_ms)

    def row(self, handle: str) -> Optional[tuple]:
        with self.raw.cursor() as cur:
            cur.execute(
                f'SELECT refresh_token_hash_2, recent_hashes::text, expires_at FROM "{self.table}"'
                " WHERE session_handle = %s",
                (handle,),
            )
            found = cur.fetchone()
        return None if found is None else (found[0], json.loads(found[1]), int(found[2]))

    def rows_of(self, user: str) -> list[tuple]:
        with self.raw.cursor() as cur:
            cur.execute(
                f'SELECT session_handle, refresh_token_hash_2, expires_at FROM "{self.table}"'
                " WHERE user_id = %s",
                (json.dumps(user),),
            )
            return list(cur.fetchall())

    def backends(self) -> tuple[int, int]:
        """(connections of this pool on the server, how many of them are not idle)."""
        with self.raw.cursor() as cur:
            cur.execute(
                "SELECT count(*), count(*) FILTER (WHERE state <> 'idle') FROM pg_stat_activity"
                " WHERE application_name = %s",
                (self.app_name,),
            )
            total, busy = cur.fetchone()
        return int(total), int(busy)

    def settled(self) -> bool:
        if self.pool.size != self.pool.freesize:
            return False
        total, busy = self.backends()
        return busy == 0 and total == self.pool.size

    async def settle(self) -> None:
        """Wait until every statement has finished and every connection is back."""
        deadline = time.monotonic() + HANG_GUARD_S
        while not self.settled():
            assert time.monotonic() < deadline, (
                f"never settled: pool size {self.pool.size}, free {self.pool.freesize}, "
                f"server connections (total, busy) {self.backends()}"
            )
            await asyncio.sleep(0.005)

    def assert_whole(self) -> None:
        assert self.pool.size == self.pool.freesize, (self.pool.size, self.pool.freesize)
        total, busy = self.backends()
        assert busy == 0
        assert total == self.pool.size, "a connection lives on the server that the pool forgot"

    def row_lock_is_free(self, handle: str) -> bool:
        import psycopg2.errors

        with self.raw.cursor() as cur:
            try:
                cur.execute("BEGIN")
                cur.execute(
                    f'SELECT 1 FROM "{self.table}" WHERE session_handle = %s FOR UPDATE NOWAIT',
                    (handle,),
                )
                return True
            except psycopg2.errors.LockNotAvailable:
                return False
            finally:
                cur.execute("ROLLBACK")


@dataclass
class Outcome:
    cancelled: bool
    result: Any = None
    error: Optional[BaseException] = None


async def run_once(h: Harness, op: Callable[[], Awaitable[Any]],
                   cancel_at_point: Optional[int] = None,
                   cancel_after_turns: Optional[int] = None) -> Outcome:
    task = asyncio.ensure_future(op())
    if cancel_at_point is not None:
        h.pool.arm(task, cancel_at_point)
    if cancel_after_turns is not None:
        for _ in range(cancel_after_turns):
            if task.done():
                break
            await asyncio.sleep(0)
        task.cancel()
    try:
        result = await asyncio.wait_for(asyncio.shield(task), HANG_GUARD_S)
        outcome = Outcome(False, result=result)
    except asyncio.CancelledError:
        outcome = Outcome(True)
    except (TokenTheftDetectedError, UnauthorisedError, StorageUnavailableError) as exc:
        outcome = Outcome(False, error=exc)
    finally:
        h.pool.disarm()
    await h.settle()
    h.assert_whole()
    return outcome


# -- the operations --------------------------------------------------------------------


class Op:
    """An operation under test: ``setup`` a fresh session, ``run`` it, ``check`` the aftermath."""

    name = ""

    def __init__(self, h: Harness) -> None:
        self.h = h

    async def setup(self) -> None:
        raise NotImplementedError

    async def run(self) -> Any:
        raise NotImplementedError

    async def check(self, outcome: Outcome) -> None:
        raise NotImplementedError

    # helpers
    async def new_session(self) -> Any:
        self.user = f"u-{uuid.uuid4().hex[:10]}"
        created = await self.h.engine.create_new_session(self.user, {"p": 1})
        self.handle = created.session.handle
        return created

    def tick(self) -> None:
        """Move the clock so that an 'after' state differs from the 'before' one."""
        self.h.clock.advance(seconds=1)

    def h2(self, token: str) -> str:
        return sha256_hex(sha256_hex(token))


class Create(Op):
    name = "create"

    async def setup(self) -> None:
        self.user = f"u-{uuid.uuid4().hex[:10]}"

    async def run(self) -> Any:
        return await self.h.engine.create_new_session(self.user, {"p": 1}, {"i": 1})

    async def check(self, outcome: Outcome) -> None:
        rows = self.h.rows_of(self.user)
        assert len(rows) in (0, 1), rows  # before: none; after: one whole row
        if rows:
            handle, hash2, expires = rows[0]
            assert len(hash2) == 64
            assert expires == self.h.clock.now_ms() + self.h.validity_ms
        if not outcome.cancelled:
            assert outcome.error is None
            assert len(rows) == 1 and rows[0][0] == outcome.result.session.handle
            token = outcome.result.tokens.refresh_token.value
            await self.h.engine.refresh_session(token)


class RefreshHot(Op):
    """Refresh with the current token: the hot path (one UPDATE)."""

    name = "refresh-hot"

    async def setup(self) -> None:
        created = await self.new_session()
        self.token = created.tokens.refresh_token.value
        self.tick()
        self.before = self.h.row(self.handle)

    async def run(self) -> Any:
        return await self.h.engine.refresh_session(self.token)

    def after(self) -> tuple:
        hash2, recent, _ = self.before
        return hash2, recent, self.h.clock.now_ms() + self.h.validity_ms

    async def check(self, outcome: Outcome) -> None:
        assert self.h.row(self.handle) in (self.before, self.after())
        if outcome.cancelled:
            held = self.token  # the client never saw the new tokens
        else:
            assert outcome.error is None
            assert self.h.row(self.handle) == self.after()
            held = outcome.result.tokens.refresh_token.value
        again = await self.h.engine.refresh_session(held)  # no theft, no unauthorised
        assert again.session.handle == self.handle


class RefreshChild(Op):
    """Refresh with a child token: promotes it in the same UPDATE (the rotation proper)."""

    name = "refresh-child"

    async def setup(self) -> None:
        created = await self.new_session()
        root = created.tokens.refresh_token.value
        self.token = (await self.h.engine.refresh_session(root)).tokens.refresh_token.value
        self.tick()
        self.before = self.h.row(self.handle)
        assert self.before[0] == self.h2(root)

    async def run(self) -> Any:
        return await self.h.engine.refresh_session(self.token)

    def after(self) -> tuple:
        root_hash2, _, _ = self.before
        now = self.h.clock.now_ms()
        return self.h2(self.token), {root_hash2: now}, now + self.h.validity_ms

    async def check(self, outcome: Outcome) -> None:
        assert self.h.row(self.handle) in (self.before, self.after())
        if outcome.cancelled:
            held = self.token
        else:
            assert outcome.error is None
            assert self.h.row(self.handle) == self.after()
            held = outcome.result.tokens.refresh_token.value
        again = await self.h.engine.refresh_session(held)
        assert again.session.handle == self.handle


class RefreshTheft(Op):
    """A rotated-out token (past the grace period): UPDATE finds nothing, then DELETE."""

    name = "refresh-theft"

    async def setup(self) -> None:
        created = await self.new_session()
        self.stolen = created.tokens.refresh_token.value
        child = await self.h.engine.refresh_session(self.stolen)
        current = await self.h.engine.refresh_session(child.tokens.refresh_token.value)
        self.current = current.tokens.refresh_token.value
        self.tick()
        self.before = self.h.row(self.handle)
        assert self.before is not None

    async def run(self) -> Any:
        return await self.h.engine.refresh_session(self.stolen)

    async def check(self, outcome: Outcome) -> None:
        row = self.h.row(self.handle)
        assert row in (self.before, None)
        if not outcome.cancelled:
            assert isinstance(outcome.error, TokenTheftDetectedError)
            assert row is None
        if row is None:
            with pytest.raises(UnauthorisedError) as info:
                await self.h.engine.refresh_session(self.current)
            assert not isinstance(info.value, TokenTheftDetectedError)
        else:
            # Untouched: the legitimate token still works, the stolen one is still theft.
            await self.h.engine.refresh_session(self.current)
            with pytest.raises(TokenTheftDetectedError):
                await self.h.engine.refresh_session(self.stolen)


class Promotion(Op):
    """First use of a child's access token: the promoting UPDATE."""

    name = "promotion"

    async def setup(self) -> None:
        created = await self.new_session()
        root = created.tokens.refresh_token.value
        child = await self.h.engine.refresh_session(root)
        self.child = child
        self.tick()
        self.before = self.h.row(self.handle)
        assert self.before[0] == self.h2(root)

    async def run(self) -> Any:
        t = self.child.tokens
        return await self.h.engine.get_session(t.access_token.value, t.anti_csrf_token, True)

    def after(self) -> tuple:
        root_hash2, _, expires = self.before
        now = self.h.clock.now_ms()
        return self.h2(self.child.tokens.refresh_token.value), {root_hash2: now}, expires

    async def check(self, outcome: Outcome) -> None:
        assert self.h.row(self.handle) in (self.before, self.after())
        t = self.child.tokens
        if outcome.cancelled:
            again = await self.h.engine.get_session(t.access_token.value, t.anti_csrf_token, True)
            assert again.session.handle == self.handle
        else:
            assert outcome.error is None
            assert self.h.row(self.handle) == self.after()
            fresh = outcome.result.tokens.access_token.value
            await self.h.engine.get_session(fresh, t.anti_csrf_token, True)
        refreshed = await self.h.engine.refresh_session(t.refresh_token.value)
        assert refreshed.session.handle == self.handle


class Revoke(Op):
    name = "revoke"

    async def setup(self) -> None:
        created = await self.new_session()
        self.token = created.tokens.refresh_token.value
        self.before = self.h.row(self.handle)

    async def run(self) -> Any:
        return await self.h.engine.revoke_session(self.handle)

    async def check(self, outcome: Outcome) -> None:
        row = self.h.row(self.handle)
        assert row in (self.before, None)
        if not outcome.cancelled:
            assert outcome.result is True and row is None
        if row is None:
            with pytest.raises(UnauthorisedError) as info:
                await self.h.engine.refresh_session(self.token)
            assert not isinstance(info.value, TokenTheftDetectedError)
        else:
            await self.h.engine.refresh_session(self.token)


OPS = [Create, RefreshHot, RefreshChild, RefreshTheft, Promotion, Revoke]


def server_params(config: dict) -> dict:
    return {k: v for k, v in config["postgres"].items() if k != "tables"}


# -- fixtures ----------------------------------------------------------------------------


async def open_harness(make_st: Any, base_config: dict, overrides: Optional[dict] = None,
                       maxsize: int = 4, pool_timeout: Optional[float] = None) -> Harness:
    """An instance (grace period 0, manual clock) on an injecting pool of the library's settings."""
    config = deep_merge(base_config, {
        "tokens": {"refreshToken": {"rotationGracePeriod": 0}},
        **(overrides or {}),
    })
    app_name = f"ts_cancel_{uuid.uuid4().hex[:10]}"
    kwargs = storage_module._dsn_kwargs(parse_config(config).postgres)
    kwargs["application_name"] = app_name
    raw_pool = await aiopg.create_pool(
        minsize=1, maxsize=maxsize,
        timeout=storage_module.QUERY_TIMEOUT_S if pool_timeout is None else pool_timeout,
        **kwargs,
    )
    pool = InjectingPool(raw_pool)
    clock = ManualClock()
    st = await make_st(config, clock=clock, pool=pool)
    raw = pg.connect(server_params(base_config))
    raw.autocommit = True
    table = config["postgres"]["tables"]["refreshTokens"]
    return Harness(st, pool, raw, table, app_name, clock)


async def close_harness(h: Harness) -> None:
    await h.st.close()
    h.pool._pool.close()
    await h.pool._pool.wait_closed()
    h.raw.close()


@pytest.fixture
def harness(io_loop: Any, make_st: Any, base_config: dict) -> Any:
    made: list[Harness] = []

    async def make(**kwargs: Any) -> Harness:
        h = await open_harness(make_st, base_config, **kwargs)
        made.append(h)
        return h

    yield make
    for h in made:
        io_loop.run_sync(lambda h=h: close_harness(h))


def assert_no_row_lock(h: Harness, op: Op) -> None:
    handle = getattr(op, "handle", None)
    if handle is not None:
        assert h.row_lock_is_free(handle), "a lock on the session row outlived the call"


# -- the sweeps ------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("op_class", OPS, ids=[o.name for o in OPS])
async def test_cancel_at_every_await_point(harness, op_class):
    h = await harness()
    fired: list[str] = []
    for n in itertools.count():
        op = op_class(h)
        await op.setup()
        outcome = await run_once(h, op.run, cancel_at_point=n)
        assert_no_row_lock(h, op)
        await op.check(outcome)
        if h.pool.fired is None:  # point n was never reached: the sweep is complete
            assert not outcome.cancelled
            break
        fired.append(h.pool.fired)
        await h.settle()
    # Every statement passed acquire, cursor, execute and release, and each was cancelled there.
    for kind in ("acquire", "cursor", "execute", "release"):
        assert kind in fired, fired


@pytest.mark.gen_test(timeout=120)
@pytest.mark.parametrize("op_class", OPS, ids=[o.name for o in OPS])
async def test_cancel_after_every_number_of_loop_turns(harness, op_class):
    h = await harness()
    cancelled = 0
    for turns in range(MAX_TURNS):
        op = op_class(h)
        await op.setup()
        outcome = await run_once(h, op.run, cancel_after_turns=turns)
        assert_no_row_lock(h, op)
        await op.check(outcome)
        if not outcome.cancelled:
            break
        cancelled += 1
    else:
        pytest.fail(f"{op_class.name} never completed within {MAX_TURNS} loop turns")
    assert cancelled >= 1


# -- locks -------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("lock_released", [True, False], ids=["lock-released", "lock-kept"])
async def test_cancelled_refresh_waiting_on_a_row_lock(harness, base_config, monkeypatch,
                                                       lock_released):
    """A refresh cancelled while its UPDATE waits on a row lock.

    The caller gets CancelledError at once. Released lock: the statement
    completes (the after state). Lock kept past the lock timeout: the
    statement gives up (the before state). Either way the pool is whole, no
    lock of ours remains, and the client's token works.
    """
    monkeypatch.setattr(storage_module, "LOCK_TIMEOUT_MS", 500)
    h = await harness()
    op = RefreshChild(h)
    await op.setup()
    locker = pg.connect(server_params(base_config))
    try:
        with locker.cursor() as cur:
            cur.execute(f'SELECT 1 FROM "{h.table}" WHERE session_handle = %s FOR UPDATE',
                        (op.handle,))
        task = asyncio.ensure_future(op.run())
        deadline = time.monotonic() + HANG_GUARD_S
        while h.backends()[1] == 0:  # until our UPDATE is on the server, waiting
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, HANG_GUARD_S)
        if lock_released:
            locker.rollback()
        else:
            # The lock is still held: the waiting statement gives up at the lock timeout.
            while h.backends()[1] != 0:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            locker.rollback()
        await h.settle()
        h.assert_whole()
        assert h.row_lock_is_free(op.handle)
        expected = op.after() if lock_released else op.before
        assert h.row(op.handle) == expected
        await op.check(Outcome(True))
    finally:
        locker.close()


# -- a full pool ---------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_cancelled_waiters_do_not_starve_the_others(harness):
    """With the pool exhausted, cancelling a caller that waits for a connection
    (at any moment, including right after the pool woke it) leaves the
    connection to the next waiter, long before the pool timeout."""
    h = await harness(maxsize=1, pool_timeout=3)
    for turns in range(8):
        b_op, c_op = RefreshHot(h), RefreshHot(h)
        await b_op.setup()
        await c_op.setup()
        conn = await h.pool._pool.acquire()  # the only connection
        b = asyncio.ensure_future(b_op.run())
        c = asyncio.ensure_future(c_op.run())
        for _ in range(10):
            await asyncio.sleep(0)  # both are waiting for the connection now
        await h.pool._pool.release(conn)  # the pool wakes the first waiter
        for _ in range(turns):
            await asyncio.sleep(0)
        b.cancel()
        try:
            await b
        except asyncio.CancelledError:
            pass  # usually; a b that had already finished is no starvation case either
        result = await asyncio.wait_for(c, HANG_GUARD_S)  # not StorageUnavailableError
        assert result.session.handle == c_op.handle
        await h.settle()
        h.assert_whole()
