"""Signing keys and the refresh-token key (SPEC §5, issue 2 "Keys").

Time is a :class:`ManualClock`: rotation is driven by moving it across the
``updateInterval`` boundary, never by sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from typing import Any, Optional

import jwt
import pytest

from tornado_supertokens import GeneralError, TryRefreshTokenError
from tornado_supertokens.clock import ManualClock
from tornado_supertokens.keys import ACCESS_KEY_PREFIX, REFRESH_KEY_NAME, STATIC_KID
from tornado_supertokens.tokens import access_token_kid

import pg
from helpers import CountingPool, make_pool

HOUR_MS = 3_600_000
#: One-hour rotation, two-hour access tokens: a token outlives its key's interval.
ROTATING = {
    "tokens": {"accessToken": {"validity": 7200, "signingKey": {"updateInterval": 1}}}
}


def hour_start() -> int:
    now = ManualClock().now_ms()
    return now - now % HOUR_MS


def key_rows(pg_params: dict, table: str) -> list[tuple[str, str, int]]:
    conn = pg.connect(pg_params)
    try:
        with conn.cursor() as cur:
            cur.execute(f'SELECT name, value, created_at_time FROM "{table}" ORDER BY name')
            return [(str(n), str(v), int(c)) for n, v, c in cur.fetchall()]
    finally:
        conn.close()


def access_rows(pg_params: dict, table: str) -> list[tuple[str, str, int]]:
    return [r for r in key_rows(pg_params, table) if r[0].startswith(ACCESS_KEY_PREFIX)]


def kid_of(result: Any) -> Optional[str]:
    return access_token_kid(result.tokens.access_token.value)


async def verify(st: Any, result: Any) -> Any:
    t = result.tokens
    return await st.engine.get_session(t.access_token.value, t.anti_csrf_token, True)


@pytest.mark.gen_test
async def test_old_tokens_verify_across_rotation_until_they_expire(make_st, base_config, pg_params):
    start = hour_start()
    clock = ManualClock(start + 30 * 60_000)
    st = await make_st(ROTATING, clock=clock)
    a = await st.engine.create_new_session("u")
    assert kid_of(a) == str(start)

    clock.set(start + HOUR_MS + 10 * 60_000)  # the next interval
    await verify(st, a)
    b = await st.engine.create_new_session("u")
    assert kid_of(b) == str(start + HOUR_MS)  # new tokens carry the new kid
    await verify(st, a)  # the old key is still known after the rotation
    await verify(st, b)

    clock.set(start + 2 * HOUR_MS + 10 * 60_000)  # two rotations after a's key
    c = await st.engine.create_new_session("u")
    assert kid_of(c) == str(start + 2 * HOUR_MS)
    for token in (a, b, c):
        await verify(st, token)

    # An instance started now (a restarted process) knows the older keys too.
    fresh = await make_st(ROTATING, clock=clock)
    for token in (a, b, c):
        await verify(fresh, token)

    clock.set(start + 30 * 60_000 + 7200 * 1000)  # a's own expiry
    for instance in (st, fresh):
        with pytest.raises(TryRefreshTokenError):
            await verify(instance, a)
        await verify(instance, b)
        await verify(instance, c)

    table = base_config["postgres"]["tables"]["signingKey"]
    names = [name for name, _, _ in access_rows(pg_params, table)]
    assert sorted(names) == sorted(
        ACCESS_KEY_PREFIX + str(start + i * HOUR_MS) for i in range(3)
    )


@pytest.mark.gen_test
async def test_refresh_after_rotation_signs_with_the_new_key(make_st):
    start = hour_start()
    clock = ManualClock(start + 59 * 60_000)
    st = await make_st(ROTATING, clock=clock)
    a = await st.engine.create_new_session("u")
    clock.advance(ms=2 * 60_000)
    refreshed = await st.engine.refresh_session(a.tokens.refresh_token.value)
    assert kid_of(refreshed) == str(start + HOUR_MS)
    promoted = await verify(st, refreshed)
    assert access_token_kid(promoted.tokens.access_token.value) == str(start + HOUR_MS)


@pytest.mark.gen_test
async def test_concurrent_rotation_by_two_instances_creates_one_key_per_interval(
    make_st, base_config, pg_params
):
    start = hour_start()
    clock = ManualClock(start + 5 * 60_000)
    # Two instances, each with its own pool, on the same tables.
    one = await make_st(ROTATING, clock=clock)
    two = await make_st(ROTATING, clock=clock)
    assert one.storage.pool is not two.storage.pool
    table = base_config["postgres"]["tables"]["signingKey"]
    tokens = [await one.engine.create_new_session("x"), await two.engine.create_new_session("y")]
    assert kid_of(tokens[0]) == kid_of(tokens[1])

    for interval in range(1, 4):
        clock.set(start + interval * HOUR_MS + 5 * 60_000)
        results = await asyncio.gather(
            *(st.engine.create_new_session(f"user{i}") for i in range(4) for st in (one, two))
        )
        kids = {kid_of(r) for r in results}
        assert kids == {str(start + interval * HOUR_MS)}
        rows = access_rows(pg_params, table)
        assert len(rows) == interval + 1  # exactly one new key row per interval
        tokens.extend(results)
        # Both instances read every unexpired token either of them issued.
        live = [t for t in tokens if t.tokens.access_token.expires_at > clock.now_ms()]
        assert len(live) == (10 if interval == 1 else 16)  # this interval and the previous one
        for st in (one, two):
            for token in live:
                await verify(st, token)


@pytest.mark.gen_test
async def test_instance_reads_a_token_signed_after_the_other_one_rotated(make_st):
    start = hour_start()
    ahead = ManualClock(start + HOUR_MS + 1_000)  # just past the boundary
    behind = ManualClock(start + HOUR_MS - 1_000)  # not there yet
    # `early` starts first and loads the keys: the old interval's key does not
    # exist yet. `late` creates it afterwards (its clock lags by two seconds).
    early = await make_st(ROTATING, clock=ahead)
    late = await make_st(ROTATING, clock=behind)
    old = await late.engine.create_new_session("a")
    new = await early.engine.create_new_session("b")
    assert kid_of(old) == str(start) and kid_of(new) == str(start + HOUR_MS)
    # Each accepts the other's token, signed under a key it did not load at start.
    await verify(early, old)
    await verify(late, new)
    behind.set(start + HOUR_MS + 2_000)
    later = await late.engine.create_new_session("c")
    assert kid_of(later) == kid_of(new)
    await verify(early, later)


@pytest.mark.parametrize("offset", [1, -1])
@pytest.mark.gen_test
async def test_adjacent_interval_kid_lookup_is_rate_limited(make_st, pg_params, offset):
    """A forged kid from the next or previous interval costs at most one look-up per second."""
    start = hour_start()
    clock = ManualClock(start + 30 * 60_000)
    pool = CountingPool(await make_pool(pg_params))
    try:
        st = await make_st(ROTATING, clock=clock, pool=pool)
        created = await st.engine.create_new_session("u")
        claims = jwt.decode(created.tokens.access_token.value, options={"verify_signature": False})
        adjacent_kid = str(start + offset * HOUR_MS)
        forged = jwt.encode(claims, secrets.token_bytes(32), algorithm="HS256",
                            headers={"kid": adjacent_kid})
        pool.reset()
        for _ in range(50):
            with pytest.raises(TryRefreshTokenError):
                await st.engine.get_session(forged, created.tokens.anti_csrf_token, True)
        assert pool.count == 1
        clock.advance(seconds=1)
        for _ in range(50):
            with pytest.raises(TryRefreshTokenError):
                await st.engine.get_session(forged, created.tokens.anti_csrf_token, True)
        assert pool.count == 2
    finally:
        pool.close()
        await pool.wait_closed()


@pytest.mark.gen_test
async def test_keys_are_at_least_256_random_bits(make_st, base_config, pg_params):
    start = hour_start()
    clock = ManualClock(start + 60_000)
    st = await make_st(ROTATING, clock=clock)
    for i in range(1, 6):
        clock.set(start + i * HOUR_MS + 60_000)
        await st.engine.create_new_session("u")
    rows = key_rows(pg_params, base_config["postgres"]["tables"]["signingKey"])
    names = [name for name, _, _ in rows]
    assert names.count(REFRESH_KEY_NAME) == 1
    assert len([n for n in names if n.startswith(ACCESS_KEY_PREFIX)]) == 6
    decoded = []
    for _, value, _ in rows:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        assert len(raw) * 8 >= 256
        assert len(set(raw)) > 8  # not a constant or a short repeated pattern
        decoded.append(raw)
    assert len(set(decoded)) == len(decoded)  # every key is different
    # The in-memory keys are the stored ones.
    assert st.keys.refresh_key in {v for n, v, _ in rows if n == REFRESH_KEY_NAME}


@pytest.mark.gen_test
async def test_static_key_never_rotates(make_st, base_config, pg_params):
    start = hour_start()
    clock = ManualClock(start + 60_000)
    st = await make_st(
        {"tokens": {"accessToken": {"validity": 86400 * 10,
                                    "signingKey": {"dynamic": False, "updateInterval": 1}}}},
        clock=clock,
    )
    first = await st.engine.create_new_session("u")
    issued = [first]
    for hours in (1, 2, 25, 24 * 8):
        clock.set(start + hours * HOUR_MS + 60_000)
        issued.append(await st.engine.create_new_session("u"))
        for token in issued:
            await verify(st, token)
    assert {kid_of(t) for t in issued} == {STATIC_KID}
    rows = access_rows(pg_params, base_config["postgres"]["tables"]["signingKey"])
    assert [name for name, _, _ in rows] == [ACCESS_KEY_PREFIX + STATIC_KID]


@pytest.mark.parametrize("kind", ["sync", "async", "bytes"])
@pytest.mark.gen_test
async def test_user_get_replaces_key_storage(make_st, base_config, pg_params, kind):
    current = {"key": secrets.token_urlsafe(32)}

    def value() -> Any:
        return current["key"].encode() if kind == "bytes" else current["key"]

    def get_sync() -> Any:
        return value()

    async def get_async() -> Any:
        await asyncio.sleep(0)
        return value()

    getter = get_async if kind == "async" else get_sync
    clock = ManualClock(hour_start() + 60_000)
    st = await make_st(
        {"tokens": {"accessToken": {"validity": 86400,
                                    "signingKey": {"get": getter, "updateInterval": 1}}}},
        clock=clock,
    )
    a = await st.engine.create_new_session("u", {"p": 1})
    # Signed with the getter's key: anyone holding that key can check it.
    claims = jwt.decode(a.tokens.access_token.value, current["key"].encode(),
                        algorithms=["HS256"], options={"verify_exp": False})
    assert claims["userData"] == {"p": 1}
    await verify(st, a)
    # Moving the clock across intervals stores nothing: rotation is the caller's.
    clock.advance(hours=3)
    b = await st.engine.create_new_session("u")
    await verify(st, a)
    table = base_config["postgres"]["tables"]["signingKey"]
    assert access_rows(pg_params, table) == []

    current["key"] = secrets.token_urlsafe(32)  # the caller rotates
    for old in (a, b):
        with pytest.raises(TryRefreshTokenError):
            await verify(st, old)
    c = await st.engine.create_new_session("u")
    await verify(st, c)
    jwt.decode(c.tokens.access_token.value, current["key"].encode(), algorithms=["HS256"],
               options={"verify_exp": False})
    # A refresh gets tokens under the new key.
    refreshed = await st.engine.refresh_session(a.tokens.refresh_token.value)
    await verify(st, refreshed)


@pytest.mark.gen_test
async def test_failing_or_empty_user_get_is_a_general_error(make_st):
    state: dict[str, Any] = {"mode": "ok", "key": secrets.token_urlsafe(32)}

    def getter() -> Any:
        if state["mode"] == "raise":
            raise RuntimeError("vault down")
        if state["mode"] == "empty":
            return ""
        if state["mode"] == "wrong":
            return 42
        return state["key"]

    st = await make_st({"tokens": {"accessToken": {"signingKey": {"get": getter}}}})
    a = await st.engine.create_new_session("u")
    for mode in ("raise", "empty", "wrong"):
        state["mode"] = mode
        with pytest.raises(GeneralError):
            await verify(st, a)
        with pytest.raises(GeneralError):
            await st.engine.create_new_session("u")
    state["mode"] = "ok"
    await verify(st, a)


@pytest.mark.gen_test
async def test_refresh_key_is_created_once_and_shared(make_st, base_config, pg_params):
    one = await make_st()
    two = await make_st()
    assert one.keys.refresh_key == two.keys.refresh_key
    created = await one.engine.create_new_session("shared-user")
    # A refresh token from one instance refreshes on the other, and back.
    on_two = await two.engine.refresh_session(created.tokens.refresh_token.value)
    on_one = await one.engine.refresh_session(on_two.tokens.refresh_token.value)
    assert on_one.session.handle == created.session.handle
    await one.close()
    # A restarted process loads the same key: the user's tokens survive restarts.
    three = await make_st()
    assert three.keys.refresh_key == two.keys.refresh_key
    await three.engine.refresh_session(on_one.tokens.refresh_token.value)
    rows = key_rows(pg_params, base_config["postgres"]["tables"]["signingKey"])
    assert [n for n, _, _ in rows].count(REFRESH_KEY_NAME) == 1


@pytest.mark.gen_test
async def test_concurrent_first_start_agrees_on_one_refresh_key(make_st, base_config, pg_params):
    clock = ManualClock(hour_start() + 30 * 60_000)
    instances = await asyncio.gather(*(make_st(clock=clock) for _ in range(6)))
    assert len({st.keys.refresh_key for st in instances}) == 1
    rows = key_rows(pg_params, base_config["postgres"]["tables"]["signingKey"])
    assert [n for n, _, _ in rows].count(REFRESH_KEY_NAME) == 1
    kids = {kid_of(await st.engine.create_new_session("u")) for st in instances}
    assert len(kids) == 1


@pytest.mark.gen_test
async def test_cancelling_the_request_that_rotates_fails_no_other_signer(make_st):
    clock = ManualClock(hour_start() + HOUR_MS // 2)
    st = await make_st(ROTATING, clock=clock)
    gate = asyncio.Event()
    real_insert = st.storage.insert_key_if_absent

    async def gated_insert(*args: Any, **kwargs: Any) -> str:
        await gate.wait()  # hold the rotation open (the real insert still runs)
        return await real_insert(*args, **kwargs)

    st.storage.insert_key_if_absent = gated_insert  # type: ignore[method-assign]
    clock.advance(ms=HOUR_MS)  # the next signing rotates
    first = asyncio.ensure_future(st.engine.create_new_session("first"))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(st.engine.create_new_session("second"))
    await asyncio.sleep(0.01)
    first.cancel()
    gate.set()
    created = await asyncio.wait_for(second, 10)
    assert kid_of(created) == str(hour_start() + HOUR_MS)
    with pytest.raises(asyncio.CancelledError):
        await first


@pytest.mark.gen_test
async def test_cleanup_deletes_signing_keys_no_token_can_need(make_st, base_config, pg_params):
    """One key row per interval would pile up for ever: the cleanup run deletes
    the keys created more than twice a token's longest reach ago (interval,
    lead, validity: 3 h 5 min here), never the refresh key or a static key."""
    start = hour_start()
    clock = ManualClock(start + 30 * 60_000)
    st = await make_st(ROTATING, clock=clock)
    table = base_config["postgres"]["tables"]["signingKey"]
    conn = pg.connect(pg_params)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:  # a static key left by an earlier configuration
            cur.execute(f'INSERT INTO "{table}" (name, value, created_at_time) VALUES (%s, %s, 0)',
                        (ACCESS_KEY_PREFIX + "static", "k" * 43))
    finally:
        conn.close()
    made = []
    for hour in range(8):
        clock.set(start + hour * HOUR_MS + 30 * 60_000)
        made.append(await st.engine.create_new_session("u"))
    assert len(access_rows(pg_params, table)) == 8 + 1

    await st.cleanup.run()  # at start + 7 h 30: keys made before start + 1 h 20 go
    names = {name for name, _, _ in key_rows(pg_params, table)}
    assert ACCESS_KEY_PREFIX + str(start) not in names
    assert names >= {ACCESS_KEY_PREFIX + str(start + h * HOUR_MS) for h in range(1, 8)}
    assert {REFRESH_KEY_NAME, ACCESS_KEY_PREFIX + "static"} <= names
    for result in made[-2:]:  # the tokens that can still be alive verify, also in a new process
        await verify(st, result)
        await verify(await make_st(ROTATING, clock=clock), result)
    assert await st.keys.delete_retired_keys() == 0  # nothing more to retire


@pytest.mark.gen_test
async def test_static_and_user_keys_are_never_retired(make_st, base_config, pg_params):
    clock = ManualClock()
    st = await make_st({"tokens": {"accessToken": {"signingKey": {"dynamic": False}}}}, clock=clock)
    await st.engine.create_new_session("u")
    clock.advance(hours=10_000)
    assert await st.keys.delete_retired_keys() == 0
    await st.cleanup.run()
    table = base_config["postgres"]["tables"]["signingKey"]
    assert len(access_rows(pg_params, table)) == 1
