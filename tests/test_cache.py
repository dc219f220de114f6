"""The verified-access-token cache: hits, misses, bound and expiry (not speed)."""

from __future__ import annotations

import pytest

import tornado_supertokens.tokens as tokens_module
from tornado_supertokens import TryRefreshTokenError, UnauthorisedError
from tornado_supertokens.cache import VerifiedTokenCache
from tornado_supertokens.clock import ManualClock


@pytest.fixture
def decode_calls(monkeypatch):
    """Records every full JWT verification (a spy: the real decode still runs)."""
    calls = []
    real = tokens_module._JWS.decode_complete

    def spy(token, *args, **kwargs):
        calls.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(tokens_module._JWS, "decode_complete", spy)
    return calls


async def login(st, user="u"):
    result = await st.engine.create_new_session(user)
    return result.tokens.access_token.value, result.tokens.anti_csrf_token, result


@pytest.mark.gen_test
async def test_repeat_verify_is_a_cache_hit(make_st, decode_calls):
    st = await make_st()
    token, csrf, _ = await login(st)
    for _ in range(5):
        result = await st.engine.get_session(token, csrf, True)
        assert result.session.user_id == "u"
    assert decode_calls == [token]


@pytest.mark.gen_test
async def test_malleated_variant_misses_and_is_verified_in_full(make_st, decode_calls):
    st = await make_st()
    token, csrf, _ = await login(st)
    await st.engine.get_session(token, csrf, True)
    header, payload, signature = token.split(".")
    variant = f"{token}="  # same bytes to a lenient base64 decoder
    with pytest.raises(TryRefreshTokenError):
        await st.engine.get_session(variant, csrf, True)
    assert variant not in st.engine._cache._entries
    tampered = f"{header}.{payload}.{signature[:-2]}AA"
    with pytest.raises(TryRefreshTokenError):
        await st.engine.get_session(tampered, csrf, True)
    assert decode_calls[-1] == tampered


@pytest.mark.gen_test
async def test_anti_csrf_is_checked_on_a_hit(make_st, decode_calls):
    st = await make_st()
    token, csrf, _ = await login(st)
    await st.engine.get_session(token, csrf, True)
    with pytest.raises(TryRefreshTokenError):
        await st.engine.get_session(token, "wrong", True)
    with pytest.raises(TryRefreshTokenError):
        await st.engine.get_session(token, None, True)
    assert len(decode_calls) == 1


@pytest.mark.gen_test
async def test_blacklisting_applies_on_a_hit(make_st):
    st = await make_st({"tokens": {"accessToken": {"blacklisting": True}}})
    token, csrf, created = await login(st)
    await st.engine.get_session(token, csrf, True)
    await st.engine.revoke_session(created.session.handle)
    with pytest.raises(UnauthorisedError):
        await st.engine.get_session(token, csrf, True)


@pytest.mark.gen_test
async def test_entry_never_outlives_token_expiry(make_st, decode_calls):
    clock = ManualClock()
    st = await make_st({"tokens": {"accessToken": {"validity": 10}}}, clock=clock)
    token, csrf, _ = await login(st)
    await st.engine.get_session(token, csrf, True)
    clock.advance(seconds=10)
    with pytest.raises(TryRefreshTokenError):
        await st.engine.get_session(token, csrf, True)
    assert len(st.engine._cache) == 0


@pytest.mark.gen_test
async def test_cache_is_bounded_oldest_first(make_st, decode_calls):
    st = await make_st(cache_size=3)
    logins = [await login(st, f"user{i}") for i in range(5)]
    for token, csrf, _ in logins:
        await st.engine.get_session(token, csrf, True)
    assert len(st.engine._cache) == 3
    decode_calls.clear()
    first_token, first_csrf, _ = logins[0]
    await st.engine.get_session(first_token, first_csrf, True)  # evicted: verified again
    last_token, last_csrf, _ = logins[-1]
    await st.engine.get_session(last_token, last_csrf, True)  # still cached
    assert decode_calls == [first_token]
    assert len(st.engine._cache) == 3


@pytest.mark.gen_test
async def test_cache_disabled(make_st, decode_calls):
    st = await make_st(cache_size=0)
    token, csrf, _ = await login(st)
    for _ in range(3):
        await st.engine.get_session(token, csrf, True)
    assert len(decode_calls) == 3


@pytest.mark.gen_test
async def test_tokens_naming_a_parent_are_not_cached(make_st, decode_calls):
    st = await make_st()
    _, _, created = await login(st)
    child = await st.engine.refresh_session(created.tokens.refresh_token.value)
    promoted = await st.engine.get_session(
        child.tokens.access_token.value, child.tokens.anti_csrf_token, True
    )
    assert child.tokens.access_token.value not in st.engine._cache._entries
    assert promoted.tokens.access_token.value not in st.engine._cache._entries


@pytest.mark.gen_test
async def test_user_key_change_invalidates_cached_tokens(make_st):
    keys = {"current": "first-secret-key-with-enough-entropy-0123456789"}
    st = await make_st(
        {"tokens": {"accessToken": {"signingKey": {"get": lambda: keys["current"]}}}}
    )
    token, csrf, _ = await login(st)
    await st.engine.get_session(token, csrf, True)
    keys["current"] = "second-secret-key-with-enough-entropy-987654321"
    with pytest.raises(TryRefreshTokenError):
        await st.engine.get_session(token, csrf, True)


def test_cache_unit_bound_and_long_tokens():
    from tornado_supertokens.tokens import AccessTokenPayload

    cache = VerifiedTokenCache(2)
    payload = AccessTokenPayload("h", "u", "r", None, None, None, expiry_ms=10_000)
    cache.put("a", payload, "k")
    cache.put("b", payload, "k")
    cache.put("a", payload, "k")  # refreshing an entry does not evict another
    assert len(cache) == 2
    cache.put("c", payload, "k")
    assert cache.get("a", 0) is None and cache.get("c", 0) is not None
    cache.put("x" * 5000, payload, "k")
    assert cache.get("x" * 5000, 0) is None
    assert cache.get("c", 10_000) is None  # at exp: gone
    with pytest.raises(ValueError):
        VerifiedTokenCache(-1)
