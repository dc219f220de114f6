"""Coalescing: concurrent creates, refreshes and blacklist checks share statements."""

from __future__ import annotations

import asyncio

import pytest

from tornado_supertokens import StorageUnavailableError, TokenTheftDetectedError
from tornado_supertokens.coalesce import Coalescer

# -- the generic mechanism -------------------------------------------------------


@pytest.mark.gen_test
async def test_lone_request_runs_at_once_and_busy_ones_join_the_next_batch():
    batches: list[list[str]] = []
    release = asyncio.Event()

    async def run(items):
        batches.append([k for k, _ in items])
        if len(batches) == 1:
            await release.wait()
        return {k: v * 2 for k, v in items}

    c: Coalescer[str, int, int] = Coalescer(run, max_in_flight=1)
    first = asyncio.ensure_future(c.submit("a", 1))
    for _ in range(3):
        await asyncio.sleep(0)
    assert batches == [["a"]]  # nothing was waiting: sent alone, at once
    rest = [asyncio.ensure_future(c.submit(k, i)) for i, k in enumerate("bcd")]
    await asyncio.sleep(0)
    release.set()
    assert await first == 2
    assert await asyncio.gather(*rest) == [0, 2, 4]
    assert batches == [["a"], ["b", "c", "d"]]


@pytest.mark.gen_test
async def test_a_statement_carries_at_most_max_batch_and_at_most_max_in_flight_run():
    batches: list[list[str]] = []
    running = 0
    most_running = 0
    release = asyncio.Event()

    async def run(items):
        nonlocal running, most_running
        batches.append([k for k, _ in items])
        running += 1
        most_running = max(most_running, running)
        await release.wait()
        running -= 1
        return {k: v for k, v in items}

    c: Coalescer[str, int, int] = Coalescer(run, max_batch=4, max_in_flight=2)
    calls = [asyncio.ensure_future(c.submit(f"k{i}", i)) for i in range(11)]
    for _ in range(3):
        await asyncio.sleep(0)
    # The first two found a free slot and went alone; nine wait for a slot.
    assert batches == [["k0"], ["k1"]]
    release.set()
    assert await asyncio.gather(*calls) == list(range(11))
    # Each freed slot took at most four of the waiting requests.
    assert [len(b) for b in batches] == [1, 1, 4, 4, 1]
    assert sorted(k for b in batches for k in b) == sorted(f"k{i}" for i in range(11))
    assert most_running == 2


@pytest.mark.gen_test
async def test_by_default_statements_carry_16_and_three_overlap():
    # Why these numbers: see the module docstring of coalesce.py.
    sizes: list[int] = []
    running = 0
    most_running = 0
    release = asyncio.Event()

    async def run(items):
        nonlocal running, most_running
        sizes.append(len(items))
        running += 1
        most_running = max(most_running, running)
        await release.wait()
        running -= 1
        return {k: v for k, v in items}

    c: Coalescer[int, int, int] = Coalescer(run)
    calls = [asyncio.ensure_future(c.submit(i, i)) for i in range(64)]
    for _ in range(3):
        await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*calls) == list(range(64))
    assert sizes == [1, 1, 1, 16, 16, 16, 13]
    assert most_running == 3


@pytest.mark.gen_test
async def test_same_key_never_shares_a_batch_and_keeps_its_order():
    batches: list[list[tuple[str, int]]] = []

    async def run(items):
        batches.append(list(items))
        await asyncio.sleep(0)
        return {k: v for k, v in items}

    c: Coalescer[str, int, int] = Coalescer(run, max_in_flight=1)
    results = await asyncio.gather(*(c.submit("same", i) for i in range(3)), c.submit("other", 9))
    assert results == [0, 1, 2, 9]
    assert [len(b) for b in batches] == [1, 2, 1]  # ("same",0); ("same",1)+("other",9); ("same",2)
    for batch in batches:
        keys = [k for k, _ in batch]
        assert len(keys) == len(set(keys))


@pytest.mark.gen_test
async def test_a_failing_batch_fails_each_caller_and_the_next_batch_runs():
    calls = 0

    async def run(items):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StorageUnavailableError("down")
        return {k: True for k, _ in items}

    c: Coalescer[str, None, bool] = Coalescer(run, max_in_flight=1)
    outcomes = await asyncio.gather(c.submit("a", None), c.submit("b", None),
                                    return_exceptions=True)
    assert isinstance(outcomes[0], StorageUnavailableError)
    assert outcomes[1] is True or isinstance(outcomes[1], StorageUnavailableError)
    assert await c.submit("c", None) is True


@pytest.mark.gen_test
async def test_a_cancelled_caller_leaves_the_others_alone():
    gate = asyncio.Event()

    async def run(items):
        await gate.wait()
        return {k: k for k, _ in items}

    c: Coalescer[str, None, str] = Coalescer(run, max_in_flight=1)
    first = asyncio.ensure_future(c.submit("a", None))
    second = asyncio.ensure_future(c.submit("b", None))
    third = asyncio.ensure_future(c.submit("c", None))
    await asyncio.sleep(0)
    second.cancel()
    gate.set()
    assert await first == "a"
    assert await third == "c"
    with pytest.raises(asyncio.CancelledError):
        await second


# -- on the real database ------------------------------------------------------------


@pytest.mark.gen_test
async def test_concurrent_refreshes_share_statements(make_st, counting_pool):
    pool = await counting_pool()
    st = await make_st(pool=pool)
    sessions = [await st.engine.create_new_session(f"user{i}") for i in range(32)]
    pool.reset()
    refreshed = await asyncio.gather(
        *(st.engine.refresh_session(s.tokens.refresh_token.value) for s in sessions)
    )
    assert [r.session.handle for r in refreshed] == [s.session.handle for s in sessions]
    assert 1 <= pool.count < 32
    # Each new token works: the shared statement did every session's rotation.
    again = await asyncio.gather(
        *(st.engine.refresh_session(r.tokens.refresh_token.value) for r in refreshed)
    )
    assert len(again) == 32


@pytest.mark.gen_test
async def test_concurrent_creates_and_blacklist_checks_share_statements(make_st, counting_pool):
    pool = await counting_pool()
    st = await make_st({"tokens": {"accessToken": {"blacklisting": True}}}, pool=pool)
    created = await asyncio.gather(*(st.engine.create_new_session(f"u{i}") for i in range(24)))
    assert pool.count < 24 + 1  # + the key statements of the first signing at most
    pool.reset()
    await st.engine.revoke_session(created[0].session.handle)
    pool.reset()
    outcomes = await asyncio.gather(
        *(st.engine.get_session(c.tokens.access_token.value, c.tokens.anti_csrf_token, True)
          for c in created),
        return_exceptions=True,
    )
    assert pool.count < 24
    assert type(outcomes[0]).__name__ == "UnauthorisedError"
    assert all(o.session.handle == c.session.handle for o, c in zip(outcomes[1:], created[1:]))


@pytest.mark.gen_test
async def test_parallel_refreshes_of_one_session_are_never_merged(make_st, counting_pool):
    pool = await counting_pool()
    st = await make_st(pool=pool)
    created = await st.engine.create_new_session("tabs")
    token = created.tokens.refresh_token.value
    results = await asyncio.gather(*(st.engine.refresh_session(token) for _ in range(4)))
    assert pool.count >= 1 + 4  # the insert, then one statement per refresh of this session
    # One parent has one child (deterministic): the four responses agree, and it promotes.
    assert len({r.tokens.refresh_token.value for r in results}) == 1
    await st.engine.refresh_session(results[2].tokens.refresh_token.value)


@pytest.mark.gen_test
async def test_theft_inside_a_shared_batch_revokes_only_that_session(make_st):
    st = await make_st({"tokens": {"refreshToken": {"rotationGracePeriod": 0}}})
    victim = await st.engine.create_new_session("victim")
    child = await st.engine.refresh_session(victim.tokens.refresh_token.value)
    await st.engine.refresh_session(child.tokens.refresh_token.value)  # child is current
    others = [await st.engine.create_new_session(f"o{i}") for i in range(8)]
    outcomes = await asyncio.gather(
        st.engine.refresh_session(victim.tokens.refresh_token.value),
        *(st.engine.refresh_session(o.tokens.refresh_token.value) for o in others),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], TokenTheftDetectedError)
    assert all(o.session.handle == s.session.handle for o, s in zip(outcomes[1:], others))
