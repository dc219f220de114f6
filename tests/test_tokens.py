"""Forged, tampered and malformed tokens (SPEC §5, issue 2 "Forgery").

Every forged access token must give try-refresh, every forged refresh token
unauthorised (never theft: the session must survive), and none of them may
cost a database statement: the instances here run on a :class:`CountingPool`.

Forgeries that need the real signing key are made with it (read from the
instance's key manager), so each test's only defect is the one it names; a
positive control shows the same forging code makes tokens that do verify.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import warnings
from typing import Any, Iterator, Optional

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tornado_supertokens import (
    TokenTheftDetectedError,
    TryRefreshTokenError,
    UnauthorisedError,
)
from tornado_supertokens import tokens as tokens_module
from tornado_supertokens.clock import ManualClock
from tornado_supertokens.tokens import (
    MAX_ACCESS_TOKEN_LENGTH,
    MAX_REFRESH_TOKEN_LENGTH,
    AccessTokenPayload,
    InvalidTokenError,
    RefreshTokenPayload,
    access_token_kid,
    anti_csrf_token_for,
    decode_access_token,
    encode_access_token,
    encrypt_refresh_token,
    key_bytes,
    new_key,
)

from helpers import CountingPool

B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
#: Mid-interval, so no key rotation can happen during a test.
HOUR_MS = 3_600_000


# -- helpers ------------------------------------------------------------------


def b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(header: dict, claims: Any, key: Optional[bytes], digest: Any = hashlib.sha256,
         claims_text: Optional[str] = None) -> str:
    """A JWT assembled by hand: ``key`` None means an empty signature."""
    body = claims_text if claims_text is not None else json.dumps(claims, separators=(",", ":"))
    signing_input = b64e(json.dumps(header, separators=(",", ":")).encode()) + "." + b64e(
        body.encode()
    )
    sig = b"" if key is None else hmac.new(key, signing_input.encode(), digest).digest()
    return signing_input + "." + b64e(sig)


def flip_bit_variants(token: str, bits: tuple[int, ...] = tuple(range(8))) -> Iterator[str]:
    """Every token made by flipping one bit of one decoded byte of one segment."""
    segments = token.split(".")
    for index, segment in enumerate(segments):
        raw = b64d(segment)
        for pos in range(len(raw)):
            for bit in bits:
                changed = bytearray(raw)
                changed[pos] ^= 1 << bit
                out = list(segments)
                out[index] = b64e(bytes(changed))
                yield ".".join(out)


def char_variants(token: str) -> Iterator[str]:
    """Every token made by replacing one base64 character by another one."""
    for i, c in enumerate(token):
        if c not in B64_ALPHABET:
            continue
        # Flip the lowest bit of the character's 6-bit value: the smallest change.
        replacement = B64_ALPHABET[B64_ALPHABET.index(c) ^ 1]
        yield token[:i] + replacement + token[i + 1:]
        # And a far-away character too (changes the high bits of the value).
        yield token[:i] + B64_ALPHABET[B64_ALPHABET.index(c) ^ 0b100000] + token[i + 1:]




def mid_interval_clock() -> ManualClock:
    """A frozen clock half-way through a 24-hour key interval: no rotation in a test."""
    now = ManualClock().now_ms()
    day = 24 * HOUR_MS
    return ManualClock(now - now % day + day // 2)


class Setup:
    """One instance on a counting pool, a live session, and its signing key."""

    def __init__(self, st: Any, pool: CountingPool, created: Any, kid: str, key: bytes) -> None:
        self.st = st
        self.pool = pool
        self.created = created
        self.kid = kid
        self.key = key
        token = created.tokens.access_token.value
        self.token = token
        self.claims = jwt.decode(token, options={"verify_signature": False})
        self.header = jwt.get_unverified_header(token)
        self.anti_csrf = created.tokens.anti_csrf_token

    async def verify(self, token: Optional[str]) -> Any:
        return await self.st.engine.get_session(token, self.anti_csrf, True)

    async def assert_try_refresh(self, token: Optional[str]) -> None:
        with pytest.raises(TryRefreshTokenError):
            await self.verify(token)


async def setup(make_st: Any, counting_pool: Any, overrides: Optional[dict] = None) -> Setup:
    pool = await counting_pool()
    st = await make_st(overrides, pool=pool, clock=mid_interval_clock())
    created = await st.engine.create_new_session("mallory-target", {"role": "user"})
    kid = access_token_kid(created.tokens.access_token.value)
    assert kid is not None
    key = key_bytes(await st.keys.verification_key(kid))
    pool.reset()
    return Setup(st, pool, created, kid, key)


# -- access tokens -----------------------------------------------------------


@pytest.mark.gen_test
async def test_hand_signed_token_verifies_positive_control(make_st, counting_pool):
    """The forging helper, given the real key and HS256, makes a token that verifies."""
    s = await setup(make_st, counting_pool)
    forged = sign({"alg": "HS256", "typ": "JWT", "kid": s.kid}, s.claims, s.key)
    result = await s.verify(forged)
    assert result.session.handle == s.created.session.handle
    assert s.pool.count == 0


@pytest.mark.parametrize("blacklisting", [False, True])
@pytest.mark.gen_test
async def test_alg_none_in_any_case_is_try_refresh(make_st, counting_pool, blacklisting):
    s = await setup(
        make_st, counting_pool, {"tokens": {"accessToken": {"blacklisting": blacklisting}}}
    )
    real_sig = s.token.split(".")[2]
    for alg in ("none", "None", "NONE", "nOnE", "NoNe"):
        header = {"alg": alg, "typ": "JWT", "kid": s.kid}
        unsigned = sign(header, s.claims, None)
        assert unsigned.endswith(".")
        await s.assert_try_refresh(unsigned)
        # With the original signature, and with a correct HS256 MAC under the
        # real key: the header's algorithm alone must be enough to refuse.
        await s.assert_try_refresh(unsigned + real_sig)
        await s.assert_try_refresh(sign(header, s.claims, s.key))
        # Without a kid, too.
        await s.assert_try_refresh(sign({"alg": alg}, s.claims, None))
    assert s.pool.count == 0


@pytest.mark.gen_test
async def test_other_algorithms_are_try_refresh(make_st, counting_pool):
    s = await setup(make_st, counting_pool)
    # Correctly keyed MACs, under the wrong (though "stronger") algorithms.
    for alg, digest in (("HS384", hashlib.sha384), ("HS512", hashlib.sha512)):
        forged = sign({"alg": alg, "typ": "JWT", "kid": s.kid}, s.claims, s.key, digest)
        await s.assert_try_refresh(forged)
        # PyJWT itself would accept it if the algorithm were not pinned.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PyJWT's key-length advice for SHA-384/512
            claims = jwt.decode(forged, s.key, algorithms=[alg], options={"verify_exp": False})
        assert claims["sessionHandle"] == s.claims["sessionHandle"]
    # Key confusion: an RS256/ES256/PS256 header over an HMAC made with the secret.
    for alg in ("RS256", "ES256", "PS256", "EdDSA", "hs256", "HS256 ", ""):
        await s.assert_try_refresh(sign({"alg": alg, "typ": "JWT", "kid": s.kid}, s.claims, s.key))
    # An RS256-looking token with an RSA-sized signature.
    header = {"alg": "RS256", "typ": "JWT", "kid": s.kid}
    rs = sign(header, s.claims, None) + b64e(secrets.token_bytes(256))
    await s.assert_try_refresh(rs)
    # No alg at all.
    await s.assert_try_refresh(sign({"typ": "JWT", "kid": s.kid}, s.claims, s.key))
    assert s.pool.count == 0


@pytest.mark.gen_test
async def test_flipped_bit_anywhere_is_try_refresh(make_st, counting_pool):
    s = await setup(make_st, counting_pool)
    header_len, payload_len, sig_len = (len(b64d(seg)) for seg in s.token.split("."))
    assert sig_len == 32 and header_len > 20 and payload_len > 100
    tried = 0
    for forged in flip_bit_variants(s.token):
        assert forged != s.token
        await s.assert_try_refresh(forged)
        tried += 1
    # Every bit of every byte of the header, payload and signature.
    assert tried == 8 * (header_len + payload_len + sig_len)
    for forged in char_variants(s.token):
        await s.assert_try_refresh(forged)
        tried += 1
    assert s.pool.count == 0
    # The untouched token still verifies.
    await s.verify(s.token)


@pytest.mark.gen_test
async def test_flipped_bits_with_blacklisting_issue_no_sql(make_st, counting_pool):
    """With blacklisting on, verification still comes before the database."""
    s = await setup(make_st, counting_pool, {"tokens": {"accessToken": {"blacklisting": True}}})
    for forged in flip_bit_variants(s.token, bits=(0, 7)):
        await s.assert_try_refresh(forged)
    assert s.pool.count == 0
    await s.verify(s.token)
    assert s.pool.count == 1  # the genuine token is checked against the database


@pytest.mark.gen_test
async def test_token_from_another_key_is_try_refresh(make_st, counting_pool, table_suffix):
    s = await setup(make_st, counting_pool)
    other_tables = {
        "signingKey": f"sk_other_{table_suffix}",
        "refreshTokens": f"rt_other_{table_suffix}",
    }
    other = await make_st({"postgres": {"tables": other_tables}}, clock=mid_interval_clock())
    foreign = await other.engine.create_new_session("mallory-target", {"role": "user"})
    foreign_token = foreign.tokens.access_token.value
    # Same interval, so the same kid: only the key differs.
    assert access_token_kid(foreign_token) == s.kid
    with pytest.raises(TryRefreshTokenError):
        await s.st.engine.get_session(foreign_token, foreign.tokens.anti_csrf_token, True)
    # A random key under the real kid.
    await s.assert_try_refresh(
        sign({"alg": "HS256", "typ": "JWT", "kid": s.kid}, s.claims, secrets.token_bytes(32))
    )
    # The real key under a kid that does not exist (no database look-up either).
    # (Adjacent intervals may cost one rate-limited look-up: see test_keys.py.)
    day = 86_400_000
    for kid in ("static", "0", "1", str(int(s.kid) - 2 * day), str(int(s.kid) + 2 * day),
                "../../etc", "x" * 200):
        forged = sign({"alg": "HS256", "typ": "JWT", "kid": kid}, s.claims, s.key)
        await s.assert_try_refresh(forged)
    # A non-string kid.
    for kid in (1, None, ["a"], {"k": 1}):
        forged = sign({"alg": "HS256", "typ": "JWT", "kid": kid}, s.claims, s.key)
        await s.assert_try_refresh(forged)
    assert s.pool.count == 0
    # And the other way round.
    with pytest.raises(TryRefreshTokenError):
        await other.engine.get_session(s.token, s.anti_csrf, True)


@pytest.mark.gen_test
async def test_missing_or_ill_typed_exp_is_try_refresh(make_st, counting_pool):
    s = await setup(make_st, counting_pool)
    header = {"alg": "HS256", "typ": "JWT", "kid": s.kid}
    good_exp = s.claims["exp"]
    assert isinstance(good_exp, int)
    # Positive control: the same claims with an integer exp verify.
    await s.verify(sign(header, dict(s.claims), s.key))

    missing = {k: v for k, v in s.claims.items() if k != "exp"}
    await s.assert_try_refresh(sign(header, missing, s.key))
    for bad in (str(good_exp), float(good_exp), good_exp + 0.5, True, None, [good_exp],
                {"v": good_exp}, "never", 1e300):
        await s.assert_try_refresh(sign(header, {**s.claims, "exp": bad}, s.key))
    # Duplicate keys: PyJWT keeps the last, so a trailing bad exp wins.
    text = json.dumps(s.claims, separators=(",", ":"))[:-1] + ',"exp":"x"}'
    await s.assert_try_refresh(sign(header, None, s.key, claims_text=text))
    # An expired exp, correctly signed.
    await s.assert_try_refresh(sign(header, {**s.claims, "exp": good_exp - 7200}, s.key))
    # Not a JSON object at all.
    for body in ("[]", '"str"', "1", "null"):
        await s.assert_try_refresh(sign(header, None, s.key, claims_text=body))
    assert s.pool.count == 0


@pytest.mark.gen_test
async def test_ill_typed_claims_are_try_refresh(make_st, counting_pool):
    s = await setup(make_st, counting_pool)
    header = {"alg": "HS256", "typ": "JWT", "kid": s.kid}
    for name, bad in (("sessionHandle", 1), ("sessionHandle", None), ("userId", True),
                      ("userId", 1.5), ("userId", None), ("refreshTokenHash1", 5),
                      ("antiCsrfToken", 7), ("parentRefreshTokenHash2", ["x"])):
        await s.assert_try_refresh(sign(header, {**s.claims, name: bad}, s.key))
    for name in ("sessionHandle", "userId", "refreshTokenHash1", "userData"):
        await s.assert_try_refresh(
            sign(header, {k: v for k, v in s.claims.items() if k != name}, s.key)
        )
    assert s.pool.count == 0


@pytest.mark.gen_test
async def test_malformed_and_non_canonical_access_tokens_are_try_refresh(make_st, counting_pool):
    s = await setup(make_st, counting_pool)
    h, p, sig = s.token.split(".")
    variants = [
        None, "", ".", "..", "...", "a", "a.b", "a.b.c", "a.b.c.d", s.token + ".", "." + s.token,
        h + "." + p, h + "." + p + ".", "é" * 20, "\x00" * 10, s.token.replace(".", ".."),
        # The same token, spelled differently: PyJWT accepts a trailing "=".
        s.token + "=", s.token + "==", f"{h}.{p}.{sig}=", f"{h}=.{p}.{sig}", f"{h}.{p}=.{sig}",
        " " + s.token, s.token + " ", s.token + "\n", f"{h}.{p}.{sig[:10]}\n{sig[10:]}",
        s.token.replace("-", "+").replace("_", "/"),
    ]
    for forged in variants:
        if forged == s.token:
            continue
        await s.assert_try_refresh(forged)
    assert s.pool.count == 0


@pytest.mark.gen_test
async def test_malformed_headers_are_try_refresh(make_st, counting_pool):
    # The kid is read from the header segment before any verification: whatever
    # that segment holds, a correctly signed token with a bad header is refused.
    s = await setup(make_st, counting_pool)
    body = b64e(json.dumps(s.claims, separators=(",", ":")).encode())
    headers = [
        b"", b"not json", b"[]", b"42", b'"HS256"', b"null", b"\xff\xfe{}", b'{"kid": 1}',
        b'{"alg":"HS256","typ":"JWT","kid":["' + s.kid.encode() + b'"]}',
        b'{"alg":"HS256","typ":"JWT"}', b'{"alg":"HS256","typ":"JWT","kid":"nope"}',
        b"[" * 100_000,  # deeper than the JSON parser goes, and longer than a token may be
        b"[" * 1_000,
    ]
    for raw in headers:
        signing_input = b64e(raw) + "." + body
        sig = hmac.new(s.key, signing_input.encode(), hashlib.sha256).digest()
        await s.assert_try_refresh(signing_input + "." + b64e(sig))
    # Positive control: the same assembly with the real header verifies.
    raw = json.dumps(s.header, separators=(",", ":")).encode()
    signing_input = b64e(raw) + "." + body
    good = signing_input + "." + b64e(hmac.new(s.key, signing_input.encode(), hashlib.sha256).digest())
    assert (await s.verify(good)).session.handle == s.created.session.handle
    assert s.pool.count == 0


@pytest.mark.gen_test
async def test_over_long_access_token_is_rejected_before_decoding(
    make_st, counting_pool, monkeypatch
):
    s = await setup(make_st, counting_pool)
    header = {"alg": "HS256", "typ": "JWT", "kid": s.kid}
    calls: list[str] = []
    real_decode = tokens_module._JWS.decode_complete
    real_header = tokens_module._unverified_header

    def recording_decode(*args: Any, **kwargs: Any) -> Any:
        calls.append("decode")
        return real_decode(*args, **kwargs)

    def recording_header(*args: Any, **kwargs: Any) -> Any:
        calls.append("header")
        return real_header(*args, **kwargs)

    monkeypatch.setattr(tokens_module._JWS, "decode_complete", recording_decode)
    monkeypatch.setattr(tokens_module, "_unverified_header", recording_header)

    def authentic(pad: int) -> str:
        # Correctly signed with the real key: only its length is wrong.
        return sign(header, {**s.claims, "userData": {"pad": "x" * pad}}, s.key)

    # The longest authentic token within the limit verifies (the limit is real, not a typo).
    pad = MAX_ACCESS_TOKEN_LENGTH - len(authentic(0))
    while len(authentic(pad)) > MAX_ACCESS_TOKEN_LENGTH:
        pad -= 1
    fits = authentic(pad)
    assert MAX_ACCESS_TOKEN_LENGTH - 4 <= len(fits) <= MAX_ACCESS_TOKEN_LENGTH
    result = await s.verify(fits)
    assert result.session.jwt_payload == {"pad": "x" * pad}
    assert "decode" in calls
    calls.clear()

    too_long = [authentic(pad + 3), authentic(pad + 4), authentic(10 * MAX_ACCESS_TOKEN_LENGTH),
                s.token + "a" * MAX_ACCESS_TOKEN_LENGTH, "a" * 1_000_000]
    for forged in too_long:
        assert len(forged) > MAX_ACCESS_TOKEN_LENGTH
        await s.assert_try_refresh(forged)
    assert calls == []  # neither the header nor the token was ever parsed
    assert s.pool.count == 0


# -- refresh tokens ------------------------------------------------------------


async def assert_refresh_unauthorised(st: Any, token: Any) -> None:
    with pytest.raises(UnauthorisedError) as info:
        await st.engine.refresh_session(token)
    assert not isinstance(info.value, TokenTheftDetectedError), repr(token)


async def assert_session_alive(s: Setup) -> None:
    """The genuine refresh token still works, and the session row is there."""
    refreshed = await s.st.engine.refresh_session(s.created.tokens.refresh_token.value)
    assert refreshed.session.handle == s.created.session.handle
    assert await s.st.storage.get_session(s.created.session.handle) is not None


def non_canonical_variants(token: str) -> list[str]:
    """Spellings of ``token`` that decode to the same bytes, or nearly so."""
    raw = b64d(token)
    out = [
        token + "=",
        token + "==",
        token + "===",
        "=" + token,
        token[:10] + "\n" + token[10:],
        token[:10] + " " + token[10:],
        " " + token,
        token + "\n",
        token.replace("-", "+").replace("_", "/"),
        token + "A",
        token + "AA",
        token + "AAA",
        token + "AAAA",
        "A" + token,
    ]
    # Unused low bits of the last character: a different string, the same bytes.
    unused = (6 * len(token)) - 8 * len(raw)
    if unused:
        last = B64_ALPHABET.index(token[-1])
        for low in range(1, 1 << unused):
            out.append(token[:-1] + B64_ALPHABET[last ^ low])
    return [v for v in out if v != token]


async def refresh_setup(make_st: Any, counting_pool: Any) -> Setup:
    s = await setup(make_st, counting_pool)
    # A user id that makes the token's byte length not a multiple of 3, so its
    # last base64 character carries unused bits (see non_canonical_variants).
    for user_id in ("u", "uu", "uuu"):
        created = await s.st.engine.create_new_session(user_id)
        if len(b64d(created.tokens.refresh_token.value)) % 3:
            break
    else:  # pragma: no cover - one of three consecutive lengths qualifies
        raise AssertionError("no token length with padding bits")
    s.created = created
    s.pool.reset()
    return s


@pytest.mark.gen_test
async def test_refresh_token_flipped_bits_are_unauthorised_not_theft(make_st, counting_pool):
    s = await refresh_setup(make_st, counting_pool)
    token = s.created.tokens.refresh_token.value
    raw_len = len(b64d(token))
    tried = 0
    for forged in flip_bit_variants(token):
        await assert_refresh_unauthorised(s.st, forged)
        tried += 1
    assert tried == 8 * raw_len
    for forged in char_variants(token):
        if forged != token:
            await assert_refresh_unauthorised(s.st, forged)
    assert s.pool.count == 0
    await assert_session_alive(s)


@pytest.mark.gen_test
async def test_refresh_token_truncations_are_unauthorised_not_theft(make_st, counting_pool):
    s = await refresh_setup(make_st, counting_pool)
    token = s.created.tokens.refresh_token.value
    for n in range(len(token)):
        await assert_refresh_unauthorised(s.st, token[:n])
        await assert_refresh_unauthorised(s.st, token[n + 1:])
    assert s.pool.count == 0
    await assert_session_alive(s)


@pytest.mark.gen_test
async def test_refresh_token_non_canonical_spellings_are_unauthorised_not_theft(
    make_st, counting_pool
):
    s = await refresh_setup(make_st, counting_pool)
    token = s.created.tokens.refresh_token.value
    variants = non_canonical_variants(token)
    same_bytes = [v for v in variants if _decodes_to(v, b64d(token))]
    # Some variants are the very same ciphertext: authentic, so only the
    # canonical-spelling rule stops them from reaching the database as a
    # "different token" of a live session, i.e. as theft.
    assert any(v[:-1] == token[:-1] for v in same_bytes)
    for forged in variants:
        await assert_refresh_unauthorised(s.st, forged)
    assert s.pool.count == 0
    await assert_session_alive(s)


def _decodes_to(text: str, raw: bytes) -> bool:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)) == raw
    except ValueError:
        return False


@pytest.mark.gen_test
async def test_refresh_token_of_another_instance_is_unauthorised(
    make_st, counting_pool, table_suffix
):
    s = await refresh_setup(make_st, counting_pool)
    tables = {"signingKey": f"sk_other_{table_suffix}", "refreshTokens": f"rt_other_{table_suffix}"}
    other = await make_st({"postgres": {"tables": tables}})
    assert other.keys.refresh_key != s.st.keys.refresh_key
    foreign = await other.engine.create_new_session(s.created.session.user_id)
    await assert_refresh_unauthorised(s.st, foreign.tokens.refresh_token.value)
    # Same handle and user as the live session, sealed under another key.
    for key in (other.keys.refresh_key, secrets.token_urlsafe(32)):
        forged = encrypt_refresh_token(
            RefreshTokenPayload(s.created.session.handle, s.created.session.user_id, None), key
        )
        await assert_refresh_unauthorised(s.st, forged)
    assert s.pool.count == 0
    await assert_session_alive(s)


@pytest.mark.gen_test
async def test_garbage_refresh_tokens_are_unauthorised(make_st, counting_pool):
    s = await refresh_setup(make_st, counting_pool)
    garbage: list[Any] = [
        None, "", "=", "garbage", "!!!!", "é" * 40, "\x00" * 40, "a.b.c",
        s.created.tokens.access_token.value,  # the wrong kind of token
        s.created.tokens.id_refresh_token.value,
        s.created.tokens.anti_csrf_token,
        hashlib.sha256(s.created.tokens.refresh_token.value.encode()).hexdigest(),
    ]
    garbage += [b64e(secrets.token_bytes(n)) for n in (0, 1, 11, 12, 27, 28, 29, 64, 200, 700)]
    for forged in garbage:
        await assert_refresh_unauthorised(s.st, forged)
    assert s.pool.count == 0
    await assert_session_alive(s)


@pytest.mark.gen_test
async def test_over_long_refresh_token_is_unauthorised_without_sql(make_st, counting_pool):
    s = await refresh_setup(make_st, counting_pool)
    handle, user_id = s.created.session.handle, s.created.session.user_id
    key = s.st.keys.refresh_key

    def authentic(parent_len: int) -> str:
        # Sealed with the real key for the live session: only its length is wrong.
        return encrypt_refresh_token(RefreshTokenPayload(handle, user_id, "p" * parent_len), key)

    parent_len = 0
    while len(authentic(parent_len + 1)) <= MAX_REFRESH_TOKEN_LENGTH:
        parent_len += 1
    assert len(authentic(parent_len + 3)) > MAX_REFRESH_TOKEN_LENGTH
    for forged in (authentic(parent_len + 3), authentic(5 * MAX_REFRESH_TOKEN_LENGTH),
                   "A" * (MAX_REFRESH_TOKEN_LENGTH + 1), "A" * 1_000_000):
        assert len(forged) > MAX_REFRESH_TOKEN_LENGTH
        await assert_refresh_unauthorised(s.st, forged)
    assert s.pool.count == 0
    await assert_session_alive(s)


# -- PyJWT's key checks, once per key --------------------------------------------------------


def _payload() -> AccessTokenPayload:
    return AccessTokenPayload(session_handle="h", user_id="u", refresh_token_hash1="r",
                              parent_refresh_token_hash2=None, anti_csrf_token=None,
                              user_data={}, expiry_ms=4_000_000_000_000)


def test_key_checks_run_once_per_key_and_tokens_still_verify(monkeypatch):
    """PyJWT's refusal of asymmetric / JWK-shaped HMAC keys costs half a signature;
    its verdict depends on the key alone, so each key is checked once."""
    from jwt.algorithms import HMACAlgorithm

    monkeypatch.setattr(tokens_module, "_JWS", tokens_module._hs256_only())
    checked: list[bytes] = []
    real = HMACAlgorithm.prepare_key

    def spy(self: Any, key: Any) -> Any:
        checked.append(key)
        return real(self, key)

    monkeypatch.setattr(HMACAlgorithm, "prepare_key", spy)
    k1, k2 = new_key(), new_key()
    for _ in range(5):
        token = encode_access_token(_payload(), k1, "1")
        assert decode_access_token(token, k1, 0).user_id == "u"
    assert checked == [k1.encode()]
    token = encode_access_token(_payload(), k2, "2")
    with pytest.raises(InvalidTokenError):
        decode_access_token(token, k1, 0)  # the memo never confuses keys
    assert decode_access_token(token, k2, 0).session_handle == "h"
    assert checked == [k1.encode(), k2.encode()]


@pytest.mark.parametrize("bad_key", [
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ",
    json.dumps({"kty": "oct", "k": "c2VjcmV0"}),
])
def test_a_refused_key_is_refused_every_time(monkeypatch, bad_key):
    monkeypatch.setattr(tokens_module, "_JWS", tokens_module._hs256_only())
    for _ in range(3):
        with pytest.raises(jwt.InvalidKeyError):
            encode_access_token(_payload(), bad_key, "1")
    assert tokens_module._JWS.get_algorithm_by_name("HS256")._checked == {}


def test_checked_keys_are_bounded(monkeypatch):
    monkeypatch.setattr(tokens_module, "_JWS", tokens_module._hs256_only())
    alg = tokens_module._JWS.get_algorithm_by_name("HS256")
    for _ in range(3 * alg.MAX_KEYS):
        encode_access_token(_payload(), new_key(), "1")
        assert len(alg._checked) <= alg.MAX_KEYS


def test_the_codec_knows_hs256_only():
    assert tokens_module._JWS.get_algorithms() == ["HS256"]


def test_a_parent_has_exactly_one_child_token_and_every_first_token_is_new():
    """A child is a function of its parent (AES-SIV, deterministic): responses that
    race can never hand a browser two different children of one token. A
    session's first token has no parent and a random nonce: each is unique."""
    key = new_key()
    child = RefreshTokenPayload("h", "u", "p" * 64)
    assert len({encrypt_refresh_token(child, key) for _ in range(100)}) == 1
    others = [RefreshTokenPayload("h", "u", "q" * 64), RefreshTokenPayload("h2", "u", "p" * 64),
              RefreshTokenPayload("h", "u2", "p" * 64), RefreshTokenPayload("h", 7, "p" * 64)]
    tokens = {encrypt_refresh_token(p, key) for p in [child, *others]}
    assert len(tokens) == 5  # any difference in the payload is a different token
    assert encrypt_refresh_token(child, new_key()) != encrypt_refresh_token(child, key)
    root = RefreshTokenPayload("h", "u", None)
    roots = {encrypt_refresh_token(root, key) for _ in range(1000)}
    assert len(roots) == 1000
    assert {tokens_module.decrypt_refresh_token(t, key) for t in roots} == {root}


@given(
    user=st.one_of(st.text(max_size=20), st.integers(min_value=-(2**53), max_value=2**53)),
    data=st.recursive(st.none() | st.booleans() | st.text(max_size=8) | st.integers(-1000, 1000),
                      lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8),
    kid=st.one_of(st.none(), st.integers(0, 2**45).map(str)),
    parent=st.one_of(st.none(), st.text("0123456789abcdef", min_size=64, max_size=64)),
)
def test_access_tokens_are_what_pyjwt_itself_writes(user, data, kid, parent):
    """Signing encodes the constant header once per kid: the token stays byte for
    byte PyJWT's own, and PyJWT's plain decode accepts it."""
    key = "k" * 43
    payload = AccessTokenPayload(session_handle="h", user_id=user, refresh_token_hash1="r" * 64,
                                 parent_refresh_token_hash2=parent, anti_csrf_token="c",
                                 user_data=data, expiry_ms=4_000_000_000_123)
    ours = encode_access_token(payload, key, kid)
    claims = {"sessionHandle": "h", "userId": user, "refreshTokenHash1": "r" * 64,
              "userData": data, "exp": 4_000_000_000}
    if parent is not None:
        claims["parentRefreshTokenHash2"] = parent
    claims["antiCsrfToken"] = "c"
    assert ours == jwt.encode(claims, key.encode(), algorithm="HS256",
                              headers={"kid": kid} if kid is not None else None)
    assert jwt.decode(ours, key.encode(), algorithms=["HS256"]) == claims
    # The kid is read from the header segment alone, and agrees with PyJWT's reading.
    assert access_token_kid(ours) == jwt.get_unverified_header(ours).get("kid") == kid


def test_anti_csrf_token_is_a_mac_of_its_refresh_token():
    key, other_key = new_key(), new_key()
    a = encrypt_refresh_token(RefreshTokenPayload("h", "u", None), key)
    b = encrypt_refresh_token(RefreshTokenPayload("h", "u", None), key)  # a new first token
    token = anti_csrf_token_for(a, key)
    assert token == anti_csrf_token_for(a, key)  # one refresh token, one anti-CSRF token
    assert token != anti_csrf_token_for(b, key)  # a new refresh token, a new one
    assert token != anti_csrf_token_for(a, other_key)  # unpredictable without the key
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)  # as long as token_urlsafe(32)
    # Its own derived key: not the HMAC of the refresh token under the key itself.
    plain = base64.urlsafe_b64encode(
        hmac.new(key.encode(), a.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    assert token != plain
