"""Storage (SPEC §5, §8; issue 2 "Storage" and "Round trips").

Round trips are counted by a :class:`CountingPool` wrapped around a real
aiopg pool: every statement the library sends goes through it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tornado_supertokens import (
    TokenTheftDetectedError,
    UnauthorisedError,
)
from tornado_supertokens.clock import ManualClock
from tornado_supertokens.keys import ACCESS_KEY_PREFIX, REFRESH_KEY_NAME

from helpers import drop_tables, query, run_at_a_barrier

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
REPO = Path(__file__).resolve().parent.parent
#: A hang guard (turns a deadlock into a failure); not a timing assertion.
HANG_GUARD_S = 30


def mid_day_clock() -> ManualClock:
    """Half-way through a 24-hour key interval: no key rotation during a test."""
    now = ManualClock().now_ms()
    return ManualClock(now - now % DAY_MS + DAY_MS // 2)





def indexes_of(pg_params: dict, table: str) -> dict[str, str]:
    """index name -> definition, for ``table`` (exact, case-sensitive name)."""
    rows = query(
        pg_params,
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = %s",
        (table,),
    )
    return {str(n): str(d) for n, d in rows}


async def verify(st: Any, result: Any) -> Any:
    t = result.tokens
    return await st.engine.get_session(t.access_token.value, t.anti_csrf_token, True)


# -- round trips -----------------------------------------------------------------


@pytest.mark.gen_test
async def test_round_trips_of_each_operation(make_st, counting_pool):
    pool = await counting_pool()
    st = await make_st(pool=pool, clock=mid_day_clock())
    pool.reset()

    created = await st.engine.create_new_session("rt-user", {"a": 1}, {"b": 2})
    assert pool.count == 1  # create: one INSERT
    assert pool.statements[0].lstrip().upper().startswith("INSERT")

    pool.reset()
    for _ in range(5):
        await verify(st, created)
    assert pool.count == 0  # verify: none (no blacklisting, nothing to promote)

    pool.reset()
    child = await st.engine.refresh_session(created.tokens.refresh_token.value)
    assert pool.count == 1  # refresh of the current token: one UPDATE

    pool.reset()
    promoted = await verify(st, child)
    assert promoted.tokens.access_token is not None
    assert pool.count == 1  # promotion: one UPDATE
    pool.reset()
    await st.engine.get_session(
        promoted.tokens.access_token.value, child.tokens.anti_csrf_token, True
    )
    assert pool.count == 0  # the promoted token needs nothing more

    pool.reset()
    grandchild = await st.engine.refresh_session(child.tokens.refresh_token.value)
    assert pool.count == 1
    pool.reset()
    # Refreshing a child that was never promoted promotes it in the same statement.
    await st.engine.refresh_session(grandchild.tokens.refresh_token.value)
    assert pool.count == 1

    for operation, expected in (
        (st.engine.get_all_session_handles_for_user("rt-user"), 1),
        (st.engine.get_session_info(created.session.handle), 1),
        (st.engine.update_session_info(created.session.handle, {"c": 3}), 1),
        (st.engine.revoke_session(created.session.handle), 1),
    ):
        pool.reset()
        await operation
        assert pool.count == expected


@pytest.mark.gen_test
async def test_verify_with_blacklisting_costs_one_statement(make_st, counting_pool):
    pool = await counting_pool()
    st = await make_st({"tokens": {"accessToken": {"blacklisting": True}}}, pool=pool,
                       clock=mid_day_clock())
    created = await st.engine.create_new_session("bl-user")
    for _ in range(3):
        pool.reset()
        await verify(st, created)
        assert pool.count == 1
    # Promotion with blacklisting is still one statement (the UPDATE proves liveness).
    child = await st.engine.refresh_session(created.tokens.refresh_token.value)
    pool.reset()
    await verify(st, child)
    assert pool.count == 1


@pytest.mark.gen_test
async def test_revoke_all_is_one_statement_whatever_the_number_of_sessions(
    make_st, counting_pool
):
    pool = await counting_pool()
    st = await make_st(pool=pool, clock=mid_day_clock())
    handles = {(await st.engine.create_new_session("many")).session.handle for _ in range(25)}
    other = await st.engine.create_new_session("someone-else")
    pool.reset()
    revoked = await st.engine.revoke_all_sessions_for_user("many")
    assert pool.count == 1
    assert set(revoked) == handles and len(revoked) == 25
    assert await st.engine.get_all_session_handles_for_user("many") == []
    assert await st.engine.get_all_session_handles_for_user("someone-else") == [
        other.session.handle
    ]


@pytest.mark.gen_test
async def test_theft_path_costs_two_statements(make_st, counting_pool):
    pool = await counting_pool()
    st = await make_st(pool=pool, clock=mid_day_clock())
    created = await st.engine.create_new_session("victim")
    child = await st.engine.refresh_session(created.tokens.refresh_token.value)
    await st.engine.refresh_session(child.tokens.refresh_token.value)  # child is current
    st.clock.advance(seconds=st.config.tokens.refresh_token.rotation_grace_seconds + 1)
    pool.reset()
    with pytest.raises(TokenTheftDetectedError):
        await st.engine.refresh_session(created.tokens.refresh_token.value)
    assert pool.count == 2  # the failed UPDATE, then the DELETE that revokes
    # An over session is also two (nothing to revoke), and never theft.
    pool.reset()
    with pytest.raises(UnauthorisedError) as info:
        await st.engine.refresh_session(child.tokens.refresh_token.value)
    assert not isinstance(info.value, TokenTheftDetectedError)
    assert pool.count == 2


# -- one connection ---------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_pool_of_one_connection_does_not_deadlock(make_st):
    start = mid_day_clock().now_ms() - DAY_MS // 2
    clock = ManualClock(start + HOUR_MS // 2)
    st = await make_st(
        {
            "postgres": {"connectionLimit": 1},
            "tokens": {"accessToken": {"blacklisting": True,
                                       "signingKey": {"updateInterval": 1}}},
        },
        clock=clock,
    )
    assert st.storage.pool.maxsize == 1
    sessions = await asyncio.wait_for(
        asyncio.gather(*(st.engine.create_new_session(f"p{i}") for i in range(32))),
        HANG_GUARD_S,
    )
    # Cross the key interval, so the refreshes below also rotate the signing
    # key (two more statements) while 32 others wait for the one connection.
    clock.set(start + HOUR_MS + 60_000)

    async def refresh_and_promote(result: Any) -> Any:
        child = await st.engine.refresh_session(result.tokens.refresh_token.value)
        await verify(st, child)  # promotion (one statement)
        return child

    work = [refresh_and_promote(s) for s in sessions]
    work += [st.engine.create_new_session(f"new{i}") for i in range(8)]
    work += [verify(st, s) for s in sessions[:8]]  # blacklisting: one statement each
    work += [st.engine.get_all_session_handles_for_user("p0"), st.cleanup.run()]
    results = await asyncio.wait_for(asyncio.gather(*work), HANG_GUARD_S)
    refreshed = results[:32]
    assert {r.session.handle for r in refreshed} == {s.session.handle for s in sessions}
    assert {r.tokens.refresh_token.value for r in refreshed}.isdisjoint(
        {s.tokens.refresh_token.value for s in sessions}
    )
    # The pool is still usable afterwards: nothing leaked.
    await asyncio.wait_for(st.engine.create_new_session("after"), HANG_GUARD_S)
    assert st.storage.pool.size == 1 and st.storage.pool.freesize == 1


# -- isolation and identifiers ----------------------------------------------------


@pytest.mark.gen_test
async def test_instances_with_different_tables_do_not_see_each_other(make_st, table_suffix):
    a = await make_st()
    b = await make_st({"postgres": {"tables": {"signingKey": f"sk_b_{table_suffix}",
                                               "refreshTokens": f"rt_b_{table_suffix}"}}})
    # Same signing-key table as `a` (so the same refresh key), its own sessions table.
    c = await make_st({"postgres": {"tables": {"refreshTokens": f"rt_c_{table_suffix}"}}})
    assert c.keys.refresh_key == a.keys.refresh_key

    in_a = [await a.engine.create_new_session("shared") for _ in range(3)]
    in_b = [await b.engine.create_new_session("shared") for _ in range(2)]
    handles_a = set(await a.engine.get_all_session_handles_for_user("shared"))
    handles_b = set(await b.engine.get_all_session_handles_for_user("shared"))
    assert handles_a == {r.session.handle for r in in_a}
    assert handles_b == {r.session.handle for r in in_b}
    assert handles_a.isdisjoint(handles_b)
    assert await c.engine.get_all_session_handles_for_user("shared") == []

    for other in (b, c):
        for result in in_a:
            with pytest.raises(UnauthorisedError) as info:
                await other.engine.refresh_session(result.tokens.refresh_token.value)
            assert not isinstance(info.value, TokenTheftDetectedError)
            with pytest.raises(UnauthorisedError):
                await other.engine.get_session_info(result.session.handle)
            assert await other.engine.revoke_session(result.session.handle) is False
        await other.engine.revoke_all_sessions_for_user("shared")
    # Nothing of `a` was touched by the others.
    assert set(await a.engine.get_all_session_handles_for_user("shared")) == handles_a
    for result in in_a:
        await a.engine.refresh_session(result.tokens.refresh_token.value)


async def lifecycle(st: Any, user: str) -> None:
    """Every statement of the library, once, on ``st``'s tables."""
    created = await st.engine.create_new_session(user, {"p": 1}, {"i": 1})
    await verify(st, created)
    child = await st.engine.refresh_session(created.tokens.refresh_token.value)
    await verify(st, child)
    assert await st.engine.get_session_info(created.session.handle) == {"i": 1}
    await st.engine.update_session_info(created.session.handle, {"i": 2})
    assert await st.engine.get_all_session_handles_for_user(user) == [created.session.handle]
    st.clock.advance(seconds=st.config.tokens.refresh_token.rotation_grace_seconds + 1)
    with pytest.raises(TokenTheftDetectedError):
        await st.engine.refresh_session(created.tokens.refresh_token.value)
    again = await st.engine.create_new_session(user)
    assert await st.engine.revoke_session(again.session.handle) is True
    await st.engine.create_new_session(user)
    assert len(await st.engine.revoke_all_sessions_for_user(user)) == 1
    assert await st.cleanup.run() >= 0


@pytest.mark.gen_test
async def test_mixed_case_table_names_work_end_to_end(make_st, pg_params, table_suffix):
    mixed = {"signingKey": f"Keys_Mixed_{table_suffix}",
             "refreshTokens": f"Sessions_Mixed_{table_suffix}"}
    lower = {k: v.lower() for k, v in mixed.items()}
    st = await make_st({"postgres": {"tables": mixed}}, clock=mid_day_clock())
    await lifecycle(st, "mixed")
    # The exact names exist (quoted identifiers), not case-folded ones.
    names = {str(r[0]) for r in query(
        pg_params,
        "SELECT table_name FROM information_schema.tables WHERE lower(table_name) = ANY(%s)",
        ([v.lower() for v in mixed.values()],),
    )}
    assert names == set(mixed.values())
    idx = indexes_of(pg_params, mixed["refreshTokens"])
    assert any("(user_id)" in d for d in idx.values())
    assert any("(expires_at)" in d for d in idx.values())
    # Lower-case names are other tables: a second instance there is separate.
    other = await make_st({"postgres": {"tables": lower}})
    created = await st.engine.create_new_session("mixed")
    assert await other.engine.get_all_session_handles_for_user("mixed") == []
    with pytest.raises(UnauthorisedError):
        await other.engine.get_session_info(created.session.handle)


@pytest.mark.parametrize("length", [61, 62, 63])
@pytest.mark.gen_test
async def test_longest_table_names_get_both_indexes(make_st, pg_params, table_suffix, length):
    tables = {
        "signingKey": f"K{table_suffix}".ljust(length, "k"),
        "refreshTokens": f"S{table_suffix}".ljust(length, "s"),
    }
    assert all(len(name) == length for name in tables.values())
    st = await make_st({"postgres": {"tables": tables}}, clock=mid_day_clock())
    await lifecycle(st, "long")
    idx = indexes_of(pg_params, tables["refreshTokens"])
    defs = list(idx.values())
    assert len(idx) == 3, idx  # primary key, user id, expiry
    assert any("(user_id)" in d for d in defs)
    assert any("(expires_at)" in d for d in defs)
    # A second start finds them and creates nothing more.
    await make_st({"postgres": {"tables": tables}})
    assert indexes_of(pg_params, tables["refreshTokens"]) == idx


# -- concurrent first start of several processes ------------------------------------

CHILD = r"""
import asyncio, hashlib, json, os, sys, time

from tornado_supertokens.supertokens import SuperTokens

config, barrier, n = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
open(os.path.join(barrier, str(os.getpid())), "w").close()
deadline = time.monotonic() + 30
while len(os.listdir(barrier)) < n and time.monotonic() < deadline:
    time.sleep(0.002)


async def main():
    st = await SuperTokens.create(config)
    created = await st.engine.create_new_session("proc")
    await st.engine.refresh_session(created.tokens.refresh_token.value)
    print(json.dumps({
        "refresh_key": hashlib.sha256(st.keys.refresh_key.encode()).hexdigest(),
        "kids": sorted(st.keys.known_kids),
    }))
    await st.close()


asyncio.run(main())
"""


@pytest.mark.gen_test(timeout=90)
async def test_concurrent_first_start_of_eight_processes(pg_params, table_suffix):
    tables = {"signingKey": f"sk_mp_{table_suffix}", "refreshTokens": f"rt_mp_{table_suffix}"}
    config = {
        "postgres": {**pg_params, "tables": tables},
        "tokens": {
            "refreshToken": {"renewTokenPath": "/api/refresh"},
            "accessToken": {"signingKey": {"dynamic": False}},
        },
        "cookie": {"domain": "localhost"},
    }
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    ))
    n = 8
    try:
        outputs = run_at_a_barrier(["-c", CHILD, json.dumps(config)], n, cwd=REPO, env=env)
        assert len({o["refresh_key"] for o in outputs}) == 1
        assert all(o["kids"] == ["static"] for o in outputs)

        found = query(
            pg_params,
            "SELECT table_name FROM information_schema.tables WHERE table_name = ANY(%s)",
            (list(tables.values()),),
        )
        assert sorted(str(r[0]) for r in found) == sorted(tables.values())
        assert len(indexes_of(pg_params, tables["refreshTokens"])) == 3
        assert len(indexes_of(pg_params, tables["signingKey"])) == 1
        keys = query(pg_params, f'SELECT name, value FROM "{tables["signingKey"]}"')
        names = sorted(str(name) for name, _ in keys)
        assert names == sorted([REFRESH_KEY_NAME, ACCESS_KEY_PREFIX + "static"])
        refresh_value = next(str(v) for name, v in keys if name == REFRESH_KEY_NAME)
        assert hashlib.sha256(refresh_value.encode()).hexdigest() == outputs[0]["refresh_key"]
        sessions = query(pg_params, f'SELECT count(*) FROM "{tables["refreshTokens"]}"')
        assert sessions[0][0] == n
    finally:
        drop_tables(pg_params, *tables.values())
