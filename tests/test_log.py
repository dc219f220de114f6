"""Logging (SPEC §3 ``logging.info`` / ``logging.error``; issue 2 "Logging").

Events go to the configured callables, else to the standard ``logging``
module; and across a whole lifecycle no token, key or hash ever appears in
a logged message.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Iterable

import jwt
import pytest

from tornado_supertokens import StorageUnavailableError, TokenTheftDetectedError
from tornado_supertokens.clock import ManualClock, SystemClock
from tornado_supertokens.log import LOGGER_NAME, Logger

import pg
from helpers import make_pool

HOUR_MS = 3_600_000
YEAR_MS = 365 * 24 * HOUR_MS
ROTATING = {
    "tokens": {
        "accessToken": {"validity": 7200, "blacklisting": True,
                        "signingKey": {"updateInterval": 1}},
    }
}


def hour_start() -> int:
    now = SystemClock().now_ms()
    return now - now % HOUR_MS


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class Secrets:
    """Every secret value seen in a test, and its derived hashes."""

    def __init__(self) -> None:
        self.values: set[str] = set()

    def add(self, value: Any) -> None:
        if isinstance(value, str) and value:
            self.values.add(value)

    def add_result(self, result: Any) -> None:
        t = result.tokens
        if t.access_token is not None:
            token = t.access_token.value
            self.add(token)
            _, payload, signature = token.split(".")
            self.add(payload)
            self.add(signature)
            claims = jwt.decode(token, options={"verify_signature": False})
            self.add(claims.get("refreshTokenHash1"))
            self.add(claims.get("parentRefreshTokenHash2"))
            self.add(claims.get("antiCsrfToken"))
        if t.refresh_token is not None:
            refresh = t.refresh_token.value
            self.add(refresh)
            self.add(sha(refresh))  # hash1
            self.add(sha(sha(refresh)))  # hash2, the stored one
        if t.id_refresh_token is not None:
            self.add(t.id_refresh_token.value)
        self.add(t.anti_csrf_token)

    def fragments(self) -> Iterable[str]:
        """Each secret, and every 16-character window of it (step 4)."""
        for value in self.values:
            yield value
            for i in range(0, max(len(value) - 16, 0) + 1, 4):
                yield value[i:i + 16]


def stored_secrets(pg_params: dict, tables: dict) -> list[str]:
    conn = pg.connect(pg_params)
    try:
        with conn.cursor() as cur:
            cur.execute(f'SELECT value FROM "{tables["signingKey"]}"')
            keys = [str(r[0]) for r in cur.fetchall()]
            cur.execute(f'SELECT refresh_token_hash_2 FROM "{tables["refreshTokens"]}"')
            hashes = [str(r[0]) for r in cur.fetchall()]
    finally:
        conn.close()
    return keys + hashes


async def lifecycle(make_st: Any, st: Any, overrides: dict, clock: ManualClock,
                    secrets: Secrets, user: str) -> str:
    """Create, verify, refresh, promote, theft, rotation and cleanup; the theft's handle."""
    engine = st.engine
    created = await engine.create_new_session(user, {"role": "r"}, {"info": 1})
    secrets.add_result(created)
    t = created.tokens
    await engine.get_session(t.access_token.value, t.anti_csrf_token, True)
    child = await engine.refresh_session(t.refresh_token.value)
    secrets.add_result(child)
    promoted = await engine.get_session(child.tokens.access_token.value,
                                        child.tokens.anti_csrf_token, True)
    secrets.add_result(promoted)
    grandchild = await engine.refresh_session(child.tokens.refresh_token.value)
    secrets.add_result(grandchild)
    clock.advance(seconds=st.config.tokens.refresh_token.rotation_grace_seconds + 1)
    with pytest.raises(TokenTheftDetectedError):
        await engine.refresh_session(t.refresh_token.value)  # theft: session revoked

    clock.advance(hours=1)  # rotation on the next signing
    rotated = await engine.create_new_session(user)
    secrets.add_result(rotated)
    secrets.add_result(await engine.refresh_session(rotated.tokens.refresh_token.value))

    # Expired sessions for the cleanup to remove (expiry judged by the database).
    past = await make_st(overrides, clock=ManualClock(SystemClock().now_ms() - 3 * YEAR_MS))
    for _ in range(2):
        secrets.add_result(await past.engine.create_new_session(user))
    assert await st.cleanup.run() == 2
    return created.session.handle


def assert_no_secret(messages: list[str], secrets: Secrets) -> None:
    assert messages
    for fragment in secrets.fragments():
        for message in messages:
            assert fragment not in message, f"a secret was logged: {message!r}"


@pytest.mark.gen_test
async def test_configured_callables_get_theft_and_rotation_and_no_secret(
    make_st, base_config, pg_params, caplog
):
    caplog.set_level(logging.DEBUG)
    infos: list[Any] = []
    errors: list[Any] = []
    clock = ManualClock(hour_start() + 30 * 60_000)
    pool = await make_pool(pg_params)
    try:
        overrides = {**ROTATING, "logging": {"info": infos.append, "error": errors.append}}
        st = await make_st(overrides, clock=clock, pool=pool)
        secrets = Secrets()
        handle = await lifecycle(make_st, st, overrides, clock, secrets, "log-user")
        # An error path too: the database goes away just as a rotation is due.
        clock.advance(hours=1)
        pool.close()
        await pool.wait_closed()
        with pytest.raises(StorageUnavailableError):
            await st.engine.create_new_session("log-user")
    finally:
        if not pool.closed:
            pool.close()
            await pool.wait_closed()
    for value in stored_secrets(pg_params, base_config["postgres"]["tables"]):
        secrets.add(value)
    secrets.add(st.keys.refresh_key)

    info_text = [str(m) for m in infos]
    assert any("theft" in m and handle in m for m in info_text)
    assert any("signing key" in m for m in info_text)  # the rotation
    assert any("removed 2 expired sessions" in m for m in info_text)  # the cleanup
    assert any("rotation" in str(m) for m in errors)
    # With callables configured, the library's own logger stays quiet.
    ours = [r for r in caplog.records if r.name.startswith(LOGGER_NAME)]
    assert ours == []
    assert_no_secret(info_text + [str(m) for m in errors] + [caplog.text], secrets)
    # The check itself bites: a fragment of any stored key or hash would be caught.
    assert len(secrets.values) > 40
    for value in stored_secrets(pg_params, base_config["postgres"]["tables"]):
        with pytest.raises(AssertionError):
            assert_no_secret([f"oops {value[3:23]} oops"], secrets)


@pytest.mark.gen_test
async def test_standard_logging_gets_theft_and_rotation_and_no_secret(
    make_st, base_config, pg_params, caplog
):
    caplog.set_level(logging.DEBUG)
    clock = ManualClock(hour_start() + 30 * 60_000)
    pool = await make_pool(pg_params)
    try:
        st = await make_st(ROTATING, clock=clock, pool=pool)
        secrets = Secrets()
        handle = await lifecycle(make_st, st, ROTATING, clock, secrets, "std-user")
        clock.advance(hours=1)
        pool.close()
        await pool.wait_closed()
        with pytest.raises(StorageUnavailableError):
            await st.engine.create_new_session("std-user")
    finally:
        if not pool.closed:
            pool.close()
            await pool.wait_closed()
    for value in stored_secrets(pg_params, base_config["postgres"]["tables"]):
        secrets.add(value)
    secrets.add(st.keys.refresh_key)

    ours = [r for r in caplog.records if r.name == LOGGER_NAME]
    text = [r.getMessage() for r in ours]
    assert any("theft" in m and handle in m for m in text)
    assert any("signing key" in m for m in text)
    assert any("removed 2 expired sessions" in m for m in text)
    assert any(r.levelno == logging.ERROR and "rotation" in r.getMessage() for r in ours)
    everything = [r.getMessage() for r in caplog.records] + [caplog.text]
    assert_no_secret(everything, secrets)


def test_logger_routes_and_survives_a_broken_callable(caplog):
    caplog.set_level(logging.DEBUG)
    from tornado_supertokens.config import LoggingConfig

    got: list[Any] = []

    def broken(message: Any) -> None:
        raise RuntimeError("sink down")

    Logger(LoggingConfig(info=got.append, error=got.append)).info("hello")
    Logger(LoggingConfig(info=got.append, error=got.append)).error("bad", ValueError("why"))
    assert got == ["hello", "bad: ValueError('why')"]
    Logger(LoggingConfig(info=broken, error=broken)).error("still fine")  # must not raise
    assert any("logging callable raised" in r.getMessage() for r in caplog.records)
    Logger().info("to std")
    assert any(r.name == LOGGER_NAME and r.getMessage() == "to std" for r in caplog.records)
