"""Key rotation without effect (issue 5, item 2).

- Across three OS processes on one database, each with its own clock driven by
  this test (tests/rotation_worker.py): a rotation, with one process crossing
  the interval boundary before the others, creates exactly one new key row,
  sends no token to refresh, and costs no database statement on the verify
  path. (Each process makes the next interval's key ahead of time when it
  signs in the last minutes of an interval: see keys.py.)
- A rotation due while the database is down keeps signing with the cached key
  and completes on a later signing once the database is back.

Time is a :class:`ManualClock` in every process: nothing here sleeps.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Optional

import psycopg2
import psycopg2.errors
import pytest

from tornado_supertokens import StorageUnavailableError
from tornado_supertokens.clock import ManualClock
from tornado_supertokens.keys import ACCESS_KEY_PREFIX, NEXT_KEY_LEAD_MS, ROTATION_RETRY_MS
from tornado_supertokens.tokens import access_token_kid

import pg
from helpers import Acquisition, WrappedPool, drop_tables

HOUR_MS = 3_600_000
REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "rotation_worker.py"
#: A hang guard per answer of a child process (turns a deadlock into a failure).
HANG_GUARD_S = 60
#: One-hour rotation, two-hour access tokens: a token outlives its key's interval.
ROTATING = {
    "tokens": {"accessToken": {"validity": 7200, "signingKey": {"updateInterval": 1}}}
}


def hour_start() -> int:
    now = ManualClock().now_ms()
    return now - now % HOUR_MS


def access_key_names(pg_params: dict, table: str) -> list[str]:
    conn = pg.connect(pg_params)
    try:
        with conn.cursor() as cur:
            cur.execute(f'SELECT name FROM "{table}" WHERE name LIKE %s ORDER BY name',
                        (ACCESS_KEY_PREFIX + "%",))
            return [str(r[0]) for r in cur.fetchall()]
    finally:
        conn.close()


def names_for(*kids: int) -> list[str]:
    return sorted(ACCESS_KEY_PREFIX + str(k) for k in kids)


def key_statements(answer: dict, keys_table: str) -> int:
    """How many of a child's statements were on the signing-key table."""
    return sum(f'"{keys_table}"' in text for text in answer["statements_text"])



# -- three OS processes --------------------------------------------------------------


class Proc:
    """A child process running tests/rotation_worker.py; one JSON line per command."""

    def __init__(self, name: str, config: dict, now_ms: int, env: dict) -> None:
        self.name = name
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(config), str(now_ms)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
            text=True, cwd=str(REPO), env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")

    def send(self, cmd: dict) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def recv(self) -> dict:
        try:
            line = self.lines.get(timeout=HANG_GUARD_S)
        except queue.Empty:
            raise AssertionError(f"{self.name}: no answer within {HANG_GUARD_S} s") from None
        if not line:
            self.stderr.seek(0)
            raise AssertionError(f"{self.name} exited:\n{self.stderr.read()}")
        answer = json.loads(line)
        if "error" in answer:
            raise AssertionError(f"{self.name}:\n{answer['error']}")
        return answer

    def call(self, cmd: dict) -> dict:
        self.send(cmd)
        return self.recv()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call({"op": "quit"})
                self.proc.wait(timeout=HANG_GUARD_S)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def in_parallel(procs: list[Proc], cmds: list[Optional[dict]]) -> list[Optional[dict]]:
    """Send each process its command (None: nothing), then collect the answers."""
    for proc, cmd in zip(procs, cmds):
        if cmd is not None:
            proc.send(cmd)
    return [proc.recv() if cmd is not None else None for proc, cmd in zip(procs, cmds)]


def set_clocks(procs: list[Proc], times: list[int]) -> None:
    in_parallel(procs, [{"op": "clock", "now": t} for t in times])


def verify_everywhere(procs: list[Proc], tokens: list[dict]) -> None:
    """Every process verifies every token: all valid, and not one statement."""
    answers = in_parallel(procs, [{"op": "verify", "tokens": tokens}] * len(procs))
    for proc, answer in zip(procs, answers):
        assert answer is not None
        assert answer["try_refresh"] == [], (proc.name, answer["try_refresh"])
        assert answer["other"] == [], (proc.name, answer["other"])
        assert answer["ok"] == len(tokens)
        assert answer["statements"] == 0, (proc.name, answer["statements_text"])


def test_rotation_across_three_processes_with_clock_skew(pg_params, table_suffix):
    tables = {"signingKey": f"sk_rot_{table_suffix}", "refreshTokens": f"rt_rot_{table_suffix}"}
    config = {
        "postgres": {**pg_params, "tables": tables},
        "tokens": {
            "refreshToken": {"renewTokenPath": "/api/refresh"},
            "accessToken": ROTATING["tokens"]["accessToken"],
        },
        "cookie": {"domain": "localhost", "secure": False},
    }
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    ))
    start = hour_start()
    k0, k1, k2 = start, start + HOUR_MS, start + 2 * HOUR_MS
    boundary = k1
    mid = start + 30 * 60_000
    procs: list[Proc] = []
    try:
        # The first process creates the tables, then two more start beside it.
        procs.append(Proc("p0", config, mid, env))
        assert procs[0].recv()["ready"]
        procs += [Proc(f"p{i}", config, mid, env) for i in (1, 2)]
        for proc in procs[1:]:
            assert proc.recv()["ready"]
        p0, p1, p2 = procs
        tokens: list[dict] = []

        def created(answers: list[Optional[dict]]) -> list[list[dict]]:
            out = [a["tokens"] if a is not None else [] for a in answers]
            for batch in out:
                tokens.extend(batch)
            return out

        # 1. Mid-interval, clocks a few hundred ms apart: sessions everywhere,
        #    every process reads every other's tokens.
        set_clocks(procs, [mid, mid + 150, mid - 200])
        phase1 = created(in_parallel(procs, [{"op": "create", "n": 2}] * 3))
        assert {t["kid"] for t in tokens} == {str(k0)}
        verify_everywhere(procs, tokens)

        # 2. The last minute before the boundary (still skewed). Signing there
        #    also makes the next interval's key, once for all processes.
        lead = [boundary - 60_000, boundary - 61_500, boundary - 62_000]
        assert all(t >= boundary - NEXT_KEY_LEAD_MS for t in lead)
        set_clocks(procs, lead)
        answers = in_parallel(procs, [{"op": "create", "n": 3}] * 3)
        phase2 = created(answers)
        for answer in answers:
            # Three INSERTs, and the insert-if-absent of the next key (which
            # reads again when a concurrent insert of the same key won: <= 3).
            assert answer is not None
            on_keys = key_statements(answer, tables["signingKey"])
            assert answer["statements"] - on_keys == 3
            assert 1 <= on_keys <= 3
        assert {t["kid"] for batch in phase2 for t in batch} == {str(k0)}
        assert access_key_names(pg_params, tables["signingKey"]) == names_for(k0, k1)
        for state in in_parallel(procs, [{"op": "state"}] * 3):
            assert state is not None
            assert state["current_kid"] == str(k0)
            assert {str(k0), str(k1)} <= set(state["known_kids"])
        verify_everywhere(procs, tokens)

        # 3. p0's clock crosses first: it signs with the new key while the
        #    others still sign with the old one; everybody reads everything.
        set_clocks(procs, [boundary + 2_000, boundary - 1_000, boundary - 3_000])
        answers = in_parallel(procs, [
            {"op": "create", "n": 3},
            {"op": "create", "n": 2},
            {"op": "create", "n": 2},
        ])
        phase3 = created(answers)
        assert {t["kid"] for t in phase3[0]} == {str(k1)}
        assert {t["kid"] for t in phase3[1] + phase3[2]} == {str(k0)}
        assert [a["statements"] for a in answers if a] == [3, 2, 2]  # the rotation: none
        refreshed = p0.call({"op": "refresh", "tokens": [t["refresh"] for t in phase1[1]]})
        assert {t["kid"] for t in refreshed["tokens"]} == {str(k1)}
        assert refreshed["statements"] == 2 + 2  # two refreshes, two promotions
        tokens.extend(refreshed["tokens"])
        verify_everywhere(procs, tokens)

        # 4. All clocks past the boundary: everyone signs concurrently (creates
        #    and refreshes of tokens issued by the others under the old key).
        set_clocks(procs, [boundary + 3_000, boundary + 1_500, boundary + 500])
        answers = in_parallel(procs, [
            {"op": "create", "n": 4},
            {"op": "refresh", "tokens": [t["refresh"] for t in phase2[2]]},
            {"op": "refresh", "tokens": [t["refresh"] for t in phase2[0]]},
        ])
        # Concurrent creates (and refreshes) of one process may share statements
        # (storage coalesces them): at most one each, none on the key table.
        assert answers[0] is not None and 1 <= answers[0]["statements"] <= 4
        assert key_statements(answers[0], tables["signingKey"]) == 0
        for answer in answers[1:]:
            assert answer is not None and 2 <= answer["statements"] <= 3 + 3
            assert key_statements(answer, tables["signingKey"]) == 0
        answers += in_parallel(procs, [{"op": "create", "n": 4}] * 3)
        phase4 = created(answers)
        assert {t["kid"] for batch in phase4 for t in batch} == {str(k1)}
        for answer in answers[3:]:
            assert answer is not None and 1 <= answer["statements"] <= 4
            assert key_statements(answer, tables["signingKey"]) == 0
        verify_everywhere(procs, tokens)
        # Exactly one new key row for the new interval.
        assert access_key_names(pg_params, tables["signingKey"]) == names_for(k0, k1)
        for state in in_parallel(procs, [{"op": "state"}] * 3):
            assert state is not None and state["current_kid"] == str(k1)

        # 5. The limit of "no statement on the verify path": a process that
        #    signed nothing in the last minutes of the interval (p1) learns the
        #    next key, which a process whose clock is ahead (p0) made at its own
        #    boundary, by one rate-limited look-up; one that signed there (p2)
        #    had made it ahead of time (insert-if-absent: still one row).
        boundary2 = k2
        set_clocks(procs, [boundary2 + 1_000, boundary2 - 2_000, boundary2 - 2_000])
        answer = p2.call({"op": "create", "n": 1})
        assert answer["statements"] == 1 + 1  # the INSERT, and the next key made ahead
        assert answer["tokens"][0]["kid"] == str(k1)
        early = p0.call({"op": "create", "n": 2})
        assert {t["kid"] for t in early["tokens"]} == {str(k2)}
        seen = in_parallel(procs, [None, {"op": "verify", "tokens": early["tokens"]},
                                   {"op": "verify", "tokens": early["tokens"]}])
        assert seen[1] is not None and seen[2] is not None
        assert (seen[1]["ok"], seen[1]["statements"]) == (2, 1)  # the fallback look-up
        assert (seen[2]["ok"], seen[2]["statements"]) == (2, 0)
        tokens.extend(early["tokens"])
        tokens.extend(answer["tokens"])
        verify_everywhere(procs, tokens)
        assert access_key_names(pg_params, tables["signingKey"]) == names_for(k0, k1, k2)
    finally:
        for proc in procs:
            proc.stop()
        drop_tables(pg_params, *tables.values())


# -- a rotation due while the database is unavailable ----------------------------------


class FlakyPool(WrappedPool):
    """Wraps an aiopg pool. ``mode``: "up"; "down" (no connection at all);
    "keys_down" (statements on the signing-key table time out on a lock).
    Counts the statements that reach the database."""

    def __init__(self, pool: Any, keys_table: str) -> None:
        super().__init__(pool)
        self._keys_table = f'"{keys_table}"'
        self.mode = "up"
        self.statements: list[str] = []
        self.refused = 0

    def before_acquire(self) -> None:
        if self.mode == "down":
            self.refused += 1
            raise psycopg2.OperationalError("could not connect to server: Connection refused")

    async def execute(self, acq: Acquisition, cur: Any, operation: Any, parameters: Any) -> Any:
        if self.mode == "keys_down" and self._keys_table in str(operation):
            self.refused += 1
            raise psycopg2.errors.LockNotAvailable("canceling statement due to lock timeout")
        self.statements.append(str(operation))
        return await cur.execute(operation, parameters)


class Collect:
    def __init__(self) -> None:
        self.info: list[Any] = []
        self.error: list[Any] = []

    def config(self) -> dict:
        return {"logging": {"info": self.info.append, "error": self.error.append}}

    def errors_with(self, text: str) -> int:
        return sum(text in str(m) for m in self.error)


def kid_of(result: Any) -> Optional[str]:
    return access_token_kid(result.tokens.access_token.value)


async def verify(st: Any, result: Any) -> Any:
    t = result.tokens
    return await st.engine.get_session(t.access_token.value, t.anti_csrf_token, True)


@pytest.fixture
def flaky_pool(raw_pools: Any, base_config: dict) -> Any:
    async def make() -> FlakyPool:
        return FlakyPool(await raw_pools(), base_config["postgres"]["tables"]["signingKey"])

    return make


@pytest.mark.gen_test
async def test_rotation_due_while_the_database_is_down_completes_when_it_returns(
    make_st, flaky_pool, base_config, pg_params
):
    start = hour_start()
    boundary = start + HOUR_MS
    clock = ManualClock(start + 30 * 60_000)
    collect = Collect()
    pool = await flaky_pool()
    st = await make_st({**ROTATING, **collect.config()}, clock=clock, pool=pool)
    peer = await make_st(ROTATING, clock=clock)  # another process, with a healthy database
    table = base_config["postgres"]["tables"]["signingKey"]
    a = await st.engine.create_new_session("u")
    assert kid_of(a) == str(start)

    # The database goes down before the last minutes of the interval and
    # stays down across the boundary.
    pool.mode = "down"
    clock.set(boundary - 60_000)
    await verify(st, a)
    with pytest.raises(StorageUnavailableError):  # the INSERT needs the database
        await st.engine.create_new_session("u")
    assert collect.errors_with("ahead of time failed") == 1
    clock.set(boundary + 1_000)
    for _ in range(3):
        await verify(st, a)  # no database on the verify path
        with pytest.raises(StorageUnavailableError):
            await st.engine.create_new_session("u")
        with pytest.raises(StorageUnavailableError):
            await st.engine.refresh_session(a.tokens.refresh_token.value)
    # The rotation was tried once and postponed (not once per request).
    assert collect.errors_with("rotation postponed") == 1
    assert st.keys._current_kid == str(start)

    # Back before the retry time: signing goes on with the cached key; its
    # tokens are valid here and in the other process, which has rotated.
    pool.mode = "up"
    clock.advance(ms=1_000)
    b = await st.engine.create_new_session("u")
    assert kid_of(b) == str(start)
    c = await peer.engine.create_new_session("u")
    assert kid_of(c) == str(boundary)
    for instance in (st, peer):
        for token in (a, b):
            await verify(instance, token)
    await verify(peer, c)  # (st learns the peer's new key by its one look-up)
    assert access_key_names(pg_params, table) == names_for(start, boundary)

    # After the retry time, the next signing completes the rotation.
    clock.advance(ms=ROTATION_RETRY_MS)
    d = await st.engine.create_new_session("u")
    assert kid_of(d) == str(boundary)
    for instance in (st, peer):
        for token in (a, b, c, d):
            await verify(instance, token)
    assert access_key_names(pg_params, table) == names_for(start, boundary)  # one new row
    assert collect.errors_with("rotation postponed") == 1


@pytest.mark.gen_test
async def test_rotation_with_the_key_table_unavailable_signs_with_cached_keys(
    make_st, flaky_pool, base_config, pg_params
):
    """Only the signing-key table is unavailable (say, locked by a migration):
    sessions are created all along, never with a key other processes lack."""
    start = hour_start()
    boundary = start + HOUR_MS
    clock = ManualClock(start + 30 * 60_000)
    collect = Collect()
    pool = await flaky_pool()
    st = await make_st({**ROTATING, **collect.config()}, clock=clock, pool=pool)
    peer = await make_st(ROTATING, clock=clock)
    table = base_config["postgres"]["tables"]["signingKey"]
    a = await st.engine.create_new_session("u")

    # No key made ahead of time (no signing in the last minutes): the rotation
    # is postponed; sessions are still created, under the old key.
    pool.mode = "keys_down"
    clock.set(boundary + 1_000)
    issued = [await st.engine.create_new_session("u") for _ in range(3)]
    assert {kid_of(r) for r in issued} == {str(start)}
    assert pool.refused == 1  # one attempt, then the retry delay
    for token in [a, *issued]:
        await verify(st, token)
        await verify(peer, token)
    pool.mode = "up"
    clock.advance(ms=ROTATION_RETRY_MS)
    rotated = await st.engine.create_new_session("u")
    assert kid_of(rotated) == str(boundary)
    assert access_key_names(pg_params, table) == names_for(start, boundary)

    # Next boundary, with the next key made ahead of time: the switch at the
    # boundary needs no database at all.
    boundary2 = boundary + HOUR_MS
    clock.set(boundary2 - 30_000)
    await st.engine.create_new_session("u")
    assert access_key_names(pg_params, table) == names_for(start, boundary, boundary2)
    pool.mode = "keys_down"
    pool.refused = 0
    clock.set(boundary2 + 1_000)
    after = [await st.engine.create_new_session("u") for _ in range(3)]
    assert {kid_of(r) for r in after} == {str(boundary2)}
    assert pool.refused == 0
    for token in [rotated, *after]:
        await verify(st, token)
        await verify(peer, token)
    assert collect.errors_with("rotation postponed") == 1


@pytest.mark.gen_test
async def test_next_key_made_ahead_once_and_only_in_the_last_minutes(
    make_st, flaky_pool, base_config, pg_params
):
    start = hour_start()
    boundary = start + HOUR_MS
    clock = ManualClock(start + 30 * 60_000)
    pool = await flaky_pool()
    st = await make_st(ROTATING, clock=clock, pool=pool)
    table = base_config["postgres"]["tables"]["signingKey"]

    async def statements_of_creates(n: int) -> int:
        pool.statements.clear()
        for _ in range(n):
            await st.engine.create_new_session("u")
        return len(pool.statements)

    assert await statements_of_creates(3) == 3
    clock.set(boundary - NEXT_KEY_LEAD_MS - 1)
    assert await statements_of_creates(3) == 3  # not yet
    assert access_key_names(pg_params, table) == names_for(start)
    clock.set(boundary - NEXT_KEY_LEAD_MS)
    assert await statements_of_creates(3) == 3 + 1  # once
    assert access_key_names(pg_params, table) == names_for(start, boundary)
    clock.set(boundary - 1)
    assert await statements_of_creates(3) == 3
    clock.set(boundary)
    assert await statements_of_creates(3) == 3  # the rotation itself: nothing
    assert st.keys._current_kid == str(boundary)
    # Tokens of both keys verify, still without a statement.
    clock.set(boundary - 10_000)
    before = await st.engine.create_new_session("u")
    clock.set(boundary + 10_000)
    after = await st.engine.create_new_session("u")
    assert (kid_of(before), kid_of(after)) == (str(start), str(boundary))
    pool.statements.clear()
    for token in (before, after):
        await verify(st, token)
    assert pool.statements == []
