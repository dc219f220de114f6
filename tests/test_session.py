"""The session engine's semantics (SPEC §4-§5) against a real PostgreSQL."""

from __future__ import annotations

import pytest

from tornado_supertokens import (
    TokenTheftDetectedError,
    TryRefreshTokenError,
    UnauthorisedError,
)
from tornado_supertokens.clock import ManualClock


async def verify(st, result, csrf=True):
    tokens = result.tokens
    return await st.engine.get_session(tokens.access_token.value, tokens.anti_csrf_token, csrf)


@pytest.mark.gen_test
async def test_lifecycle_create_verify_refresh_promote_rotate_revoke(make_st):
    st = await make_st()
    engine = st.engine
    created = await engine.create_new_session("alice", {"role": "admin"}, {"cart": [1]})
    t = created.tokens
    assert created.session.user_id == "alice"
    assert created.session.jwt_payload == {"role": "admin"}
    for token in (t.access_token, t.refresh_token, t.id_refresh_token):
        assert token.value and token.expires_at > st.clock.now_ms()

    verified = await engine.get_session(t.access_token.value, t.anti_csrf_token, True)
    assert verified.session.handle == created.session.handle
    assert verified.session.user_id == "alice"
    assert verified.session.jwt_payload == {"role": "admin"}
    assert verified.tokens.access_token is None  # nothing to re-issue

    seen_refresh = [t.refresh_token.value]
    current = created
    for _ in range(6):
        refreshed = await engine.refresh_session(current.tokens.refresh_token.value)
        rt = refreshed.tokens
        assert refreshed.session.handle == created.session.handle
        assert refreshed.session.jwt_payload == {"role": "admin"}
        assert rt.refresh_token.value not in seen_refresh
        assert rt.id_refresh_token.value != current.tokens.id_refresh_token.value
        assert rt.anti_csrf_token != current.tokens.anti_csrf_token
        seen_refresh.append(rt.refresh_token.value)
        # The child's access token promotes the child and gets a parent-free token.
        promoted = await engine.get_session(rt.access_token.value, rt.anti_csrf_token, True)
        assert promoted.tokens.access_token is not None
        again = await engine.get_session(
            promoted.tokens.access_token.value, rt.anti_csrf_token, True
        )
        assert again.tokens.access_token is None
        current = refreshed

    assert await created.session.revoke_session() is True
    with pytest.raises(UnauthorisedError):
        await engine.refresh_session(current.tokens.refresh_token.value)
    for old in seen_refresh:
        with pytest.raises(UnauthorisedError):
            await engine.refresh_session(old)
    assert await engine.get_all_session_handles_for_user("alice") == []


@pytest.mark.gen_test
async def test_promoted_token_has_no_parent_reference(make_st):
    import jwt

    st = await make_st()
    created = await st.engine.create_new_session("u1")
    refreshed = await st.engine.refresh_session(created.tokens.refresh_token.value)
    child_claims = jwt.decode(refreshed.tokens.access_token.value, options={"verify_signature": False})
    assert "parentRefreshTokenHash2" in child_claims
    promoted = await verify(st, refreshed)
    claims = jwt.decode(promoted.tokens.access_token.value, options={"verify_signature": False})
    assert "parentRefreshTokenHash2" not in claims
    assert claims["refreshTokenHash1"] == child_claims["refreshTokenHash1"]


GRACE_S = 20  # the default rotationGracePeriod


async def past_grace(st):
    st.clock.advance(seconds=GRACE_S + 1)


@pytest.mark.gen_test
async def test_refresh_with_child_promotes_it_and_issues_grandchild(make_st):
    st = await make_st(clock=ManualClock())
    created = await st.engine.create_new_session("u1")
    child = await st.engine.refresh_session(created.tokens.refresh_token.value)
    grandchild = await st.engine.refresh_session(child.tokens.refresh_token.value)
    await past_grace(st)
    # The child is now current: the original token is a rotated-out one.
    with pytest.raises(TokenTheftDetectedError):
        await st.engine.refresh_session(created.tokens.refresh_token.value)
    with pytest.raises(UnauthorisedError):
        await st.engine.refresh_session(grandchild.tokens.refresh_token.value)


@pytest.mark.gen_test
async def test_theft_parent_reused_after_promotion(make_st):
    st = await make_st(clock=ManualClock())
    created = await st.engine.create_new_session(42)
    handle = created.session.handle
    child = await st.engine.refresh_session(created.tokens.refresh_token.value)
    await verify(st, child)  # promotes the child
    await past_grace(st)
    with pytest.raises(TokenTheftDetectedError) as info:
        await st.engine.refresh_session(created.tokens.refresh_token.value)
    assert info.value.session_handle == handle
    assert info.value.user_id == 42
    assert isinstance(info.value, UnauthorisedError)
    assert info.value.err_type == 4000
    assert await st.storage.get_session(handle) is None
    # The session is gone for the legitimate holder too.
    with pytest.raises(UnauthorisedError):
        await st.engine.refresh_session(child.tokens.refresh_token.value)


@pytest.mark.gen_test
async def test_a_token_refreshed_twice_has_one_child_so_no_sibling_exists(make_st):
    """Two refreshes from one parent (two tabs, or a retried request) get the same
    child: no response can leave the browser holding a sibling of the session's
    token, the state the original mistook for theft."""
    st = await make_st(clock=ManualClock())
    created = await st.engine.create_new_session("bob")
    first = await st.engine.refresh_session(created.tokens.refresh_token.value)
    second = await st.engine.refresh_session(created.tokens.refresh_token.value)
    assert first.tokens.refresh_token.value == second.tokens.refresh_token.value
    # ... and the same anti-CSRF token, so a browser that mixes the two responses
    # (the access token of one, the anti-csrf header of the other) stays consistent.
    assert first.tokens.anti_csrf_token == second.tokens.anti_csrf_token
    assert first.tokens.id_refresh_token.value != second.tokens.id_refresh_token.value
    await verify(st, first)  # promotes the child
    await past_grace(st)
    # Either response's tokens work, long after the window.
    promoted = await verify(st, second)
    assert promoted.session.handle == created.session.handle
    await st.engine.refresh_session(second.tokens.refresh_token.value)


@pytest.mark.gen_test
async def test_no_grace_period_means_immediate_theft(make_st):
    st = await make_st({"tokens": {"refreshToken": {"rotationGracePeriod": 0}}})
    created = await st.engine.create_new_session("strict")
    child = await st.engine.refresh_session(created.tokens.refresh_token.value)
    await verify(st, child)
    with pytest.raises(TokenTheftDetectedError):
        await st.engine.refresh_session(created.tokens.refresh_token.value)


@pytest.mark.gen_test
async def test_stale_access_token_of_an_older_child_is_try_refresh_never_unauthorised(make_st):
    st = await make_st(clock=ManualClock())
    created = await st.engine.create_new_session("bob")
    first = await st.engine.refresh_session(created.tokens.refresh_token.value)
    await verify(st, first)  # the child is current
    second = await st.engine.refresh_session(first.tokens.refresh_token.value)
    await verify(st, second)  # the grandchild is current
    with pytest.raises(TryRefreshTokenError):
        await verify(st, first)  # names a parent that is long gone: refresh, do not log out
    await past_grace(st)
    with pytest.raises(TryRefreshTokenError):
        await verify(st, first)


@pytest.mark.gen_test
async def test_the_interleaving_that_broke_the_original_keeps_the_user_logged_in(make_st):
    """Two refreshes from one parent; the jar keeps the second; the first
    child's access token promotes; then the second child is used."""
    st = await make_st(clock=ManualClock())
    created = await st.engine.create_new_session("tabs")
    first = await st.engine.refresh_session(created.tokens.refresh_token.value)
    second = await st.engine.refresh_session(created.tokens.refresh_token.value)
    await verify(st, first)  # an in-flight request with the first child's token
    jar = second  # the browser kept the second response's cookies
    promoted = await verify(st, jar)  # the same child: nothing to refresh
    assert promoted.tokens.access_token is not None
    # From here on the jar's lineage is the session's, long after the grace period.
    for _ in range(3):
        st.clock.advance(seconds=GRACE_S * 3)
        jar = await st.engine.refresh_session(jar.tokens.refresh_token.value)
        await verify(st, jar)
    # The session's first token was rotated away long ago: its reuse is theft.
    with pytest.raises(TokenTheftDetectedError):
        await st.engine.refresh_session(created.tokens.refresh_token.value)


@pytest.mark.gen_test
async def test_a_token_whose_child_is_current_gets_that_child_again(make_st):
    """Within the grace period a rotated-away token whose child is the current
    token gets that same child: two refreshes with one token, one served
    before and one after another tab promoted the child, hand out one token,
    so their responses may land in either order (found by the real-concurrency
    test: the later-served one used to get a grandchild, and the jar could end
    on the earlier one, rotated away)."""
    st = await make_st(clock=ManualClock())
    for lands_last in ("late", "early"):
        created = await st.engine.create_new_session("racing-refreshes")
        early = await st.engine.refresh_session(created.tokens.refresh_token.value)
        await verify(st, early)  # another tab's call promotes the child
        st.clock.advance(seconds=GRACE_S - 1)
        late = await st.engine.refresh_session(created.tokens.refresh_token.value)
        assert late.tokens.refresh_token.value == early.tokens.refresh_token.value
        jar = late if lands_last == "late" else early
        await verify(st, jar)  # its access token: the child stays current
        st.clock.advance(seconds=GRACE_S + 3600)  # the user comes back much later
        again = await st.engine.refresh_session(jar.tokens.refresh_token.value)  # no theft
        await verify(st, again)


@pytest.mark.gen_test
async def test_rotated_away_token_within_grace_gets_a_successor_in_the_lineage(make_st):
    st = await make_st(clock=ManualClock())
    created = await st.engine.create_new_session("lost-response")
    child = await st.engine.refresh_session(created.tokens.refresh_token.value)
    await verify(st, child)  # promoted: the original is rotated away
    grandchild = await st.engine.refresh_session(child.tokens.refresh_token.value)
    await verify(st, grandchild)  # promoted: the child is rotated away too
    st.clock.advance(seconds=GRACE_S - 1)
    # Two steps behind, within the grace period: a child of the current token.
    successor = await st.engine.refresh_session(created.tokens.refresh_token.value)
    assert successor.session.handle == created.session.handle
    assert successor.tokens.refresh_token.value not in (
        child.tokens.refresh_token.value, grandchild.tokens.refresh_token.value)
    # It promotes normally ...
    await verify(st, successor)
    # ... and the grandchild it replaced is now rotated away as well.
    st.clock.advance(seconds=GRACE_S + 1)
    with pytest.raises(TokenTheftDetectedError):
        await st.engine.refresh_session(grandchild.tokens.refresh_token.value)


@pytest.mark.gen_test
async def test_only_one_lineage_survives_the_grace_period(make_st):
    """Two holders of one token (a thief copied it): whoever falls more than the
    grace period behind presents a rotated-away token, and the session ends
    for both."""
    st = await make_st(clock=ManualClock())
    created = await st.engine.create_new_session("two-chains")
    a = await st.engine.refresh_session(created.tokens.refresh_token.value)
    b = a  # the copy
    await verify(st, a)
    st.clock.advance(seconds=GRACE_S + 1)
    a = await st.engine.refresh_session(a.tokens.refresh_token.value)
    await verify(st, a)
    st.clock.advance(seconds=GRACE_S + 1)
    # b replays only after the window: detected, and the session is gone for both.
    with pytest.raises(TokenTheftDetectedError):
        await st.engine.refresh_session(b.tokens.refresh_token.value)
    with pytest.raises(UnauthorisedError):
        await st.engine.refresh_session(a.tokens.refresh_token.value)


@pytest.mark.gen_test
async def test_expired_session_is_not_revived(make_st):
    clock = ManualClock()
    st = await make_st(
        {"tokens": {"refreshToken": {"validity": 1}, "accessToken": {"validity": 7200}}},
        clock=clock,
    )
    created = await st.engine.create_new_session("carol")
    child = await st.engine.refresh_session(created.tokens.refresh_token.value)
    row_before = await st.storage.get_session(created.session.handle)
    clock.advance(hours=1, seconds=1)
    with pytest.raises(UnauthorisedError) as info:
        await st.engine.refresh_session(child.tokens.refresh_token.value)
    assert not isinstance(info.value, TokenTheftDetectedError)
    # Promotion through the (still unexpired) child access token is refused too.
    with pytest.raises(UnauthorisedError):
        await verify(st, child)
    row_after = await st.storage.get_session(created.session.handle)
    assert row_after is not None and row_after.expires_at == row_before.expires_at


@pytest.mark.gen_test
async def test_refresh_extends_session_expiry(make_st):
    clock = ManualClock()
    st = await make_st({"tokens": {"refreshToken": {"validity": 2}}}, clock=clock)
    created = await st.engine.create_new_session("dave")
    clock.advance(hours=1.5)
    child = await st.engine.refresh_session(created.tokens.refresh_token.value)
    row = await st.storage.get_session(created.session.handle)
    assert row.expires_at == child.tokens.refresh_token.expires_at == clock.now_ms() + 2 * 3600_000
    clock.advance(hours=1)  # past the first expiry, within the extended one
    await st.engine.refresh_session(child.tokens.refresh_token.value)


@pytest.mark.gen_test
async def test_access_token_expiry_means_try_refresh(make_st):
    clock = ManualClock()
    st = await make_st({"tokens": {"accessToken": {"validity": 10}}}, clock=clock)
    created = await st.engine.create_new_session("erin")
    await verify(st, created)
    clock.advance(seconds=11)
    with pytest.raises(TryRefreshTokenError):
        await verify(st, created)
    refreshed = await st.engine.refresh_session(created.tokens.refresh_token.value)
    await verify(st, refreshed)


@pytest.mark.gen_test
async def test_anti_csrf_missing_or_wrong_is_try_refresh(make_st):
    st = await make_st()
    created = await st.engine.create_new_session("frank")
    token = created.tokens.access_token.value
    assert created.tokens.anti_csrf_token
    for bad in (None, "", "wrong", created.tokens.anti_csrf_token + "x"):
        with pytest.raises(TryRefreshTokenError):
            await st.engine.get_session(token, bad, True)
    # Not checked when the caller says the request needs no check.
    await st.engine.get_session(token, None, False)
    # A refreshed session carries a new token; the old one no longer matches.
    refreshed = await st.engine.refresh_session(created.tokens.refresh_token.value)
    with pytest.raises(TryRefreshTokenError):
        await st.engine.get_session(
            refreshed.tokens.access_token.value, created.tokens.anti_csrf_token, True
        )


@pytest.mark.gen_test
async def test_anti_csrf_disabled_is_not_checked(make_st):
    st = await make_st({"tokens": {"enableAntiCsrf": False}})
    created = await st.engine.create_new_session("gina")
    assert created.tokens.anti_csrf_token is None
    await st.engine.get_session(created.tokens.access_token.value, None, True)
    await st.engine.get_session(created.tokens.access_token.value, "anything", True)
    refreshed = await st.engine.refresh_session(created.tokens.refresh_token.value)
    assert refreshed.tokens.anti_csrf_token is None


@pytest.mark.gen_test
async def test_blacklisting_revoked_session_is_unauthorised_at_once(make_st):
    st = await make_st({"tokens": {"accessToken": {"blacklisting": True}}})
    created = await st.engine.create_new_session("hank")
    await verify(st, created)
    await st.engine.revoke_session(created.session.handle)
    with pytest.raises(UnauthorisedError):
        await verify(st, created)


@pytest.mark.gen_test
async def test_without_blacklisting_access_token_lives_until_expiry(make_st):
    st = await make_st()
    created = await st.engine.create_new_session("ivy")
    await st.engine.revoke_session(created.session.handle)
    again = await verify(st, created)  # still accepted: no database hit
    assert again.session.handle == created.session.handle
    with pytest.raises(UnauthorisedError):
        await st.engine.refresh_session(created.tokens.refresh_token.value)


@pytest.mark.gen_test
async def test_user_ids_keep_their_type(make_st):
    st = await make_st()
    a = await st.engine.create_new_session(1)
    b = await st.engine.create_new_session("1")
    assert await st.engine.get_all_session_handles_for_user(1) == [a.session.handle]
    assert await st.engine.get_all_session_handles_for_user("1") == [b.session.handle]
    refreshed = await st.engine.refresh_session(a.tokens.refresh_token.value)
    assert refreshed.session.user_id == 1
    verified = await verify(st, b)
    assert verified.session.user_id == "1"


@pytest.mark.gen_test
async def test_bad_user_ids_and_payloads_are_general_errors(make_st):
    from tornado_supertokens import GeneralError

    st = await make_st()
    for bad in (True, None, 1.5, ["x"], "x" * 300):
        with pytest.raises(GeneralError):
            await st.engine.create_new_session(bad)
    with pytest.raises(GeneralError):
        await st.engine.create_new_session("u", jwt_payload={"x": object()})
    with pytest.raises(GeneralError):
        await st.engine.create_new_session("u", session_info=float("nan"))


@pytest.mark.gen_test
async def test_session_info_get_update_and_missing(make_st):
    st = await make_st()
    created = await st.engine.create_new_session("jill", session_info={"theme": "dark"})
    handle = created.session.handle
    assert await st.engine.get_session_info(handle) == {"theme": "dark"}
    await created.session.update_session_info(["any", "json", 1])
    assert await created.session.get_session_info() == ["any", "json", 1]
    await st.engine.update_session_info(handle, None)
    assert await st.engine.get_session_info(handle) is None
    await st.engine.revoke_session(handle)
    with pytest.raises(UnauthorisedError):
        await st.engine.get_session_info(handle)
    with pytest.raises(UnauthorisedError):
        await st.engine.update_session_info(handle, {"x": 1})


@pytest.mark.gen_test
async def test_revoke_all_and_list_handles(make_st):
    st = await make_st()
    handles = {(await st.engine.create_new_session("kim")).session.handle for _ in range(3)}
    other = await st.engine.create_new_session("lee")
    assert set(await st.engine.get_all_session_handles_for_user("kim")) == handles
    revoked = await st.engine.revoke_all_sessions_for_user("kim")
    assert set(revoked) == handles
    assert await st.engine.get_all_session_handles_for_user("kim") == []
    assert await st.engine.get_all_session_handles_for_user("lee") == [other.session.handle]
    assert await st.engine.revoke_session(other.session.handle) is True
    assert await st.engine.revoke_session(other.session.handle) is False


@pytest.mark.gen_test
async def test_handles_are_uuid4(make_st):
    import uuid

    st = await make_st()
    created = await st.engine.create_new_session("m")
    assert uuid.UUID(created.session.handle).version == 4


@pytest.mark.gen_test
async def test_database_stores_double_hash_only(make_st, pg_params, base_config):
    import hashlib

    import pg

    st = await make_st()
    created = await st.engine.create_new_session("n")
    token = created.tokens.refresh_token.value
    h1 = hashlib.sha256(token.encode()).hexdigest()
    h2 = hashlib.sha256(h1.encode()).hexdigest()
    table = base_config["postgres"]["tables"]["refreshTokens"]
    conn = pg.connect(pg_params)
    try:
        with conn.cursor() as cur:
            cur.execute(f'SELECT * FROM "{table}"')
            row = cur.fetchone()
    finally:
        conn.close()
    flat = " ".join(str(v) for v in row)
    assert h2 in flat
    assert token not in flat and h1 not in flat
