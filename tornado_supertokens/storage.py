"""Every SQL statement of the library, and the aiopg pool they run on.

Each public coroutine is one statement on one pooled connection, acquired and
released around it: no connection is ever held across two acquisitions, so a
pool of size 1 cannot deadlock. Table names come from the configuration, are
validated there, and are composed here as quoted identifiers.

Database failures never leak as driver errors: an unreachable, timed-out or
read-only database raises :class:`StorageUnavailableError`, anything else
:class:`GeneralError`. Neither is ever an "unauthorised" verdict. A statement
whose connection turns out to be dead (a server restart) runs again, once, on
a fresh connection; a caller cancelled mid-statement never leaves a connection
or a half-done statement behind (see "plumbing" in :class:`Storage`).
"""

from __future__ import annotations

import asyncio
import hashlib
import zlib
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import aiopg
import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from .coalesce import Coalescer
from .config import PostgresConfig
from .exceptions import GeneralError, StorageUnavailableError

#: Server-side limits set on every pooled connection (milliseconds).
STATEMENT_TIMEOUT_MS = 5_000
LOCK_TIMEOUT_MS = 2_000
IDLE_IN_TRANSACTION_TIMEOUT_MS = 10_000
#: Client-side limits (seconds): connecting, and one statement's round trip.
CONNECT_TIMEOUT_S = 5
QUERY_TIMEOUT_S = 10.0

#: Rotated-away hashes remembered for the grace period, at most (newest first).
RECENT_HASHES_KEPT = 16

#: PostgreSQL truncates longer identifiers (NAMEDATALEN - 1).
MAX_IDENTIFIER_LENGTH = 63

#: Advisory lock keys (pg_advisory_*), arbitrary but fixed.
SCHEMA_LOCK_KEY = 0x5EED_0001
CLEANUP_LOCK_KEY = 0x5EED_0002

_UNAVAILABLE = (
    psycopg2.OperationalError,  # includes query_canceled, lock_not_available, admin_shutdown
    psycopg2.InterfaceError,  # connection already closed
    psycopg2.errors.ReadOnlySqlTransaction,
    asyncio.TimeoutError,
    ConnectionError,
    OSError,
)

#: Statements whose retry after a broken connection may meet a unique
#: violation that only means the first attempt committed: the session handle
#: is a random UUID4, so nobody else inserted that row.
_RETRY_UNIQUE_VIOLATION_IS_SUCCESS = frozenset({"insert_sessions"})


class _Job:
    """One statement to run, and what its caller knows about it."""

    __slots__ = ("name", "params", "abandoned")

    def __init__(self, name: str, params: Any) -> None:
        self.name = name
        self.params = params
        #: The caller was cancelled: send nothing more for it (no first try, no retry).
        self.abandoned = False


class _ConnectionBroken(Exception):
    """A statement failed because its connection is gone (server restart, network)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


async def _execute_on(cur: Any, operation: str, params: Any) -> None:
    try:
        await cur.execute(operation, params)
    except asyncio.CancelledError as exc:
        # aiopg turns the server's "canceling statement due to statement
        # timeout" into CancelledError (statements here are never cancelled
        # from outside: see Storage._execute). Report it as the timeout it is.
        if isinstance(exc.__context__, psycopg2.extensions.QueryCanceledError):
            raise exc.__context__ from None
        raise


@dataclass(frozen=True)
class SessionRow:
    session_handle: str
    user_id: str
    session_info: Optional[str]
    expires_at: int
    jwt_payload: Optional[str]


def _dsn_kwargs(pg: PostgresConfig) -> dict[str, Any]:
    options = (
        f"-c statement_timeout={STATEMENT_TIMEOUT_MS} "
        f"-c lock_timeout={LOCK_TIMEOUT_MS} "
        f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS}"
    )
    kwargs: dict[str, Any] = {
        "host": pg.host,
        "port": pg.port,
        "user": pg.user,
        "dbname": pg.database,
        "connect_timeout": CONNECT_TIMEOUT_S,
        "options": options,
        "application_name": "tornado_supertokens",
    }
    if pg.password is not None:
        kwargs["password"] = pg.password
    return kwargs


def _table_lock_id(table: str) -> int:
    """A stable int4 naming ``table``: the second key of its two-key advisory lock."""
    value = zlib.crc32(table.encode("utf-8"))
    return value - (1 << 32) if value >= (1 << 31) else value


def _index_name(table: str, suffix: str) -> str:
    """``<table>_<suffix>``, shortened to PostgreSQL's 63-byte identifier limit.

    PostgreSQL would truncate a longer name silently: for a table name of 62
    or 63 characters both index names would collapse into one (or into the
    table's own name), and ``CREATE INDEX IF NOT EXISTS`` would skip them.
    """
    name = f"{table}_{suffix}"
    if len(name) <= MAX_IDENTIFIER_LENGTH:  # validated identifiers are ASCII
        return name
    digest = hashlib.sha256(table.encode("utf-8")).hexdigest()[:8]
    keep = MAX_IDENTIFIER_LENGTH - len(suffix) - len(digest) - 2
    return f"{table[:keep]}_{digest}_{suffix}"


class _Statements:
    """The statements, composed once with quoted table identifiers."""

    def __init__(self, keys_table: str, sessions_table: str) -> None:
        k = sql.Identifier(keys_table)
        s = sql.Identifier(sessions_table)
        idx_user = sql.Identifier(_index_name(sessions_table, "user_id_idx"))
        idx_exp = sql.Identifier(_index_name(sessions_table, "expires_at_idx"))
        q = sql.SQL
        self.schema = q(
            "BEGIN;"
            " SELECT pg_advisory_xact_lock(%(lock)s);"
            " CREATE TABLE IF NOT EXISTS {k} ("
            "  name VARCHAR(128) PRIMARY KEY,"
            "  value TEXT NOT NULL,"
            "  created_at_time BIGINT NOT NULL);"
            " CREATE TABLE IF NOT EXISTS {s} ("
            "  session_handle VARCHAR(64) PRIMARY KEY,"
            "  user_id VARCHAR(256) NOT NULL,"
            "  refresh_token_hash_2 CHAR(64) NOT NULL,"
            "  recent_hashes JSONB NOT NULL DEFAULT '{{}}'::jsonb,"
            "  session_info TEXT,"
            "  expires_at BIGINT NOT NULL,"
            "  jwt_user_payload TEXT);"
            " CREATE INDEX IF NOT EXISTS {idx_user} ON {s} (user_id);"
            " CREATE INDEX IF NOT EXISTS {idx_exp} ON {s} (expires_at);"
            " COMMIT;"
        ).format(k=k, s=s, idx_user=idx_user, idx_exp=idx_exp)
        self.insert_key_if_absent = q(
            "WITH ins AS ("
            " INSERT INTO {k} (name, value, created_at_time) VALUES (%(name)s, %(value)s, %(now)s)"
            " ON CONFLICT (name) DO NOTHING RETURNING value)"
            " SELECT value FROM ins UNION ALL SELECT value FROM {k} WHERE name = %(name)s"
            " LIMIT 1"
        ).format(k=k)
        self.keys_since = q(
            "SELECT name, value, created_at_time FROM {k}"
            " WHERE name LIKE %(prefix)s AND created_at_time >= %(since)s"
        ).format(k=k)
        self.delete_keys_before = q(
            "DELETE FROM {k} WHERE name LIKE %(prefix)s AND created_at_time < %(before)s"
            " AND name <> %(keep)s RETURNING name"
        ).format(k=k)
        # Each of the next three statements serves a batch of concurrent
        # requests (see coalesce.py): parallel arrays, one element each.
        self.insert_sessions = q(
            "INSERT INTO {s} (session_handle, user_id, refresh_token_hash_2, session_info,"
            " expires_at, jwt_user_payload)"
            " SELECT * FROM unnest(%(handles)s::varchar[], %(users)s::varchar[],"
            " %(h2s)s::char(64)[], %(infos)s::text[], %(exps)s::bigint[], %(payloads)s::text[])"
        ).format(s=s)
        # Refresh and promotion in one statement. The presented token (own
        # hash t2, parent's hash p2) passes if it is the stored one, its child
        # (which is then promoted: the stored hash moves to recent_hashes with
        # the time of the rotation), or, within the grace period, a token that
        # was rotated away (parallel refreshes, lost or reordered responses).
        # Whatever passed, this returns the current hash, from which the
        # caller picks the child to issue (SessionEngine.refresh_session).
        # (A token has one child, so a token whose parent was
        # superseded is current or was rotated away itself: no sibling case.)
        # A session past its expiry matches nothing.
        # (``remember`` is a fragment, never .format()ed itself: its braces are literal.)
        def recent_kept(recent: str, since: str, empty: str) -> str:
            """``recent`` without the entries older than ``since``, at most %(keep)s
            of the newest (``empty``: the literal '{}', escaped as its template needs)."""
            return (
                "COALESCE((SELECT jsonb_object_agg(r.key, r.value) FROM"
                f" (SELECT key, value FROM jsonb_each({recent})"
                f"  WHERE value::bigint > {since} ORDER BY value::bigint DESC"
                f"  LIMIT %(keep)s) r), '{empty}'::jsonb)"
            )

        remember = q(
            "CASE WHEN refresh_token_hash_2 = %(p2)s THEN "
            + recent_kept("recent_hashes", "%(since)s", "{}")
            + " || jsonb_build_object(refresh_token_hash_2, %(now)s)"
            " ELSE recent_hashes END"
        )
        self.rotate = q(
            "UPDATE {s} AS t SET recent_hashes = CASE WHEN t.refresh_token_hash_2 = v.p2 THEN "
            + recent_kept("t.recent_hashes", "v.since", "{{}}")
            + "  || jsonb_build_object(t.refresh_token_hash_2, v.now)"
            "  ELSE t.recent_hashes END,"
            " refresh_token_hash_2 = CASE WHEN t.refresh_token_hash_2 = v.p2"
            "  THEN v.t2 ELSE t.refresh_token_hash_2 END,"
            " expires_at = v.expires_at"
            " FROM unnest(%(handles)s::varchar[], %(users)s::varchar[], %(t2s)s::text[],"
            "  %(p2s)s::text[], %(exps)s::bigint[], %(nows)s::bigint[], %(sinces)s::bigint[])"
            "  AS v(handle, user_id, t2, p2, expires_at, now, since)"
            " WHERE t.session_handle = v.handle AND t.user_id = v.user_id"
            " AND t.expires_at > v.now"
            " AND (t.refresh_token_hash_2 IN (v.t2, v.p2)"
            "  OR (t.recent_hashes ->> v.t2)::bigint > v.since)"
            " RETURNING v.handle, t.refresh_token_hash_2, t.jwt_user_payload"
        ).format(s=s)
        # Promotion by the first request with a child's access token.
        self.promote = q(
            "UPDATE {s} SET recent_hashes = {remember}, refresh_token_hash_2 = %(t2)s"
            " WHERE session_handle = %(handle)s"
            " AND refresh_token_hash_2 IN (%(t2)s, %(p2)s)"
            " AND expires_at > %(now)s"
            " RETURNING session_handle"
        ).format(s=s, remember=remember)
        self.sessions_alive = q(
            "SELECT v.handle FROM unnest(%(handles)s::varchar[], %(nows)s::bigint[])"
            " AS v(handle, now) JOIN {s} AS t ON t.session_handle = v.handle"
            " AND t.expires_at > v.now"
        ).format(s=s)
        self.delete_live_session = q(
            "DELETE FROM {s} WHERE session_handle = %(handle)s AND user_id = %(user_id)s"
            " AND expires_at > %(now)s RETURNING session_handle"
        ).format(s=s)
        self.delete_session = q(
            "DELETE FROM {s} WHERE session_handle = %(handle)s RETURNING session_handle"
        ).format(s=s)
        self.delete_user_sessions = q(
            "DELETE FROM {s} WHERE user_id = %(user_id)s RETURNING session_handle"
        ).format(s=s)
        self.user_handles = q(
            "SELECT session_handle FROM {s} WHERE user_id = %(user_id)s AND expires_at > %(now)s"
            " ORDER BY session_handle"
        ).format(s=s)
        self.get_session_info = q(
            "SELECT session_info FROM {s} WHERE session_handle = %(handle)s AND expires_at > %(now)s"
        ).format(s=s)
        self.update_session_info = q(
            "UPDATE {s} SET session_info = %(info)s"
            " WHERE session_handle = %(handle)s AND expires_at > %(now)s RETURNING session_handle"
        ).format(s=s)
        self.get_session = q(
            "SELECT session_handle, user_id, session_info, expires_at, jwt_user_payload"
            " FROM {s} WHERE session_handle = %(handle)s"
        ).format(s=s)
        # One bounded batch of cleanup, only by the process holding this
        # table's cleanup lock for this transaction (instances on other tables
        # clean at the same time); expiry judged by the database clock
        # (statement_timestamp(), stable within the statement, so the expiry
        # index serves the range scan: clock_timestamp() would force a full scan).
        self.delete_expired_batch = q(
            "WITH lock AS (SELECT pg_try_advisory_xact_lock(%(lock)s, %(table_lock)s) AS got),"
            " doomed AS (SELECT session_handle FROM {s}"
            "  WHERE expires_at < (extract(epoch from statement_timestamp()) * 1000)::bigint"
            "  AND (SELECT got FROM lock)"
            "  ORDER BY expires_at"
            "  LIMIT %(limit)s FOR UPDATE SKIP LOCKED),"
            " gone AS (DELETE FROM {s} WHERE session_handle IN (SELECT session_handle FROM doomed)"
            "  RETURNING 1)"
            " SELECT (SELECT got FROM lock), (SELECT count(*) FROM gone)"
        ).format(s=s)


class Storage:
    """The aiopg pool and the two tables, one statement per call."""

    def __init__(self, pool: Any, keys_table: str, sessions_table: str, *, owns_pool: bool) -> None:
        self._pool = pool
        self._owns_pool = owns_pool
        self._composed = _Statements(keys_table, sessions_table)
        self._cleanup_table_lock = _table_lock_id(sessions_table)
        self._rendered: dict[str, str] = {}
        #: Statements running (shielded from their callers' cancellation).
        self._in_flight: set[asyncio.Task[list[tuple]]] = set()
        # Concurrent creates, refreshes and blacklist checks share statements.
        self._inserts: Coalescer[str, tuple, None] = Coalescer(self._insert_batch)
        self._rotations: Coalescer[str, tuple, tuple[str, Optional[str]]] = Coalescer(
            self._rotate_batch
        )
        self._alive_checks: Coalescer[str, int, bool] = Coalescer(
            self._alive_batch, unique_keys=False
        )

    @property
    def pool(self) -> Any:
        return self._pool

    @classmethod
    async def open(cls, pg: PostgresConfig, pool: Any = None) -> Storage:
        """Open a pool (unless one is given) and create the tables if missing.

        Fails fast with :class:`StorageUnavailableError` when the server is
        unreachable or rejects the credentials.
        """
        owns = pool is None
        if pool is None:
            try:
                pool = await aiopg.create_pool(
                    minsize=1,
                    maxsize=pg.connection_limit,
                    timeout=QUERY_TIMEOUT_S,
                    **_dsn_kwargs(pg),
                )
            except _UNAVAILABLE as exc:
                raise StorageUnavailableError(
                    f"cannot connect to PostgreSQL at {pg.host}:{pg.port}, database "
                    f"{pg.database!r}, user {pg.user!r}: {_first_line(exc)}"
                ) from None
        storage = cls(pool, pg.signing_key_table, pg.refresh_token_table, owns_pool=owns)
        try:
            await storage.create_schema()
        except BaseException:
            await storage.close()
            raise
        return storage

    async def close(self) -> None:
        """Close the pool if this storage opened it; wait for statements still running.

        (Statements whose callers were cancelled finish on their own, within
        the server-side timeouts.)
        """
        for coalescer in (self._inserts, self._rotations, self._alive_checks):
            await coalescer.wait_idle()
        if self._owns_pool:
            self._pool.close()
            await self._pool.wait_closed()
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    # -- plumbing ---------------------------------------------------------
    #
    # Cancellation. aiopg reacts to a task cancelled inside ``cursor.execute``
    # by closing the connection under the statement: the server goes on
    # running it (and may commit it) on a backend the pool no longer counts,
    # and the next caller pays for a new connection. A task cancelled while
    # waiting in ``pool.acquire()`` just after the pool woke it, or while
    # awaiting the release's wake-up task, swallows the pool's notification
    # (seen on Python 3.11), and another waiter starves until the pool
    # timeout with a connection free.
    # So the library never lets a caller's cancellation reach aiopg: each
    # statement runs in a task of its own, shielded from its caller. A caller
    # cancelled before its statement was sent gets CancelledError at once,
    # and its connection, when it arrives, goes straight back to the pool
    # unused; one cancelled after that gets CancelledError at once too, while
    # the statement finishes (bounded by the server-side timeouts) and
    # returns its connection. Every statement is a single autocommit
    # statement, so the database ends up in its before or its after state,
    # and no lock outlives the statement that took it.
    #
    # Broken connections. After a server restart every idle pooled connection
    # is dead, and aiopg only finds out when it is used. A statement that
    # fails because its connection broke (the connection is closed after the
    # error) discards the pool's idle connections and runs again, once, on a
    # fresh one. Every statement here is safe to run twice (see
    # ``_RETRY_UNIQUE_VIOLATION_IS_SUCCESS`` for the one insert). Timeouts
    # and query errors leave the connection open and are never retried.

    async def _execute(self, name: str, params: Any = None) -> Sequence[tuple]:
        if getattr(self._pool, "closed", False):
            raise StorageUnavailableError("database unavailable: the pool is closed")
        job = _Job(name, params)
        task = asyncio.ensure_future(self._run(job))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            job.abandoned = True  # if not sent yet, it never will be
            raise

    async def _run(self, job: _Job) -> list[tuple]:
        """Run ``job`` (retried once on a broken connection); library errors only."""
        try:
            try:
                return await self._attempt(job)
            except _ConnectionBroken as broken:
                if job.abandoned:
                    raise broken.error from None
            await self._discard_idle_connections()
            try:
                return await self._attempt(job)
            except psycopg2.errors.UniqueViolation:
                if job.name in _RETRY_UNIQUE_VIOLATION_IS_SUCCESS:
                    return []  # the first attempt committed before its connection broke
                raise
            except _ConnectionBroken as broken:
                raise broken.error from None
        except _UNAVAILABLE as exc:
            raise StorageUnavailableError(f"database unavailable: {_first_line(exc)}") from None
        except psycopg2.Error as exc:
            raise GeneralError(f"database error: {type(exc).__name__}") from exc
        except RuntimeError:
            if getattr(self._pool, "_closing", False):  # aiopg: acquire after close()
                raise StorageUnavailableError("database unavailable: the pool is closed") from None
            raise

    async def _attempt(self, job: _Job) -> list[tuple]:
        """One try on one pooled connection."""
        async with self._pool.acquire() as conn:
            if job.abandoned:
                return []  # the caller was cancelled while waiting: send nothing
            if not self._rendered:
                self._render(conn)
            try:
                async with conn.cursor() as cur:
                    await _execute_on(cur, self._rendered[job.name], job.params)
                    if cur.description is None:
                        return []
                    return list(await cur.fetchall())
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                if not conn.closed:
                    raise  # a timeout or a query error: the connection is fine
                conn.close()  # release it from the IOLoop now, not at garbage collection
                raise _ConnectionBroken(exc) from exc

    async def _discard_idle_connections(self) -> None:
        """Close the pool's idle connections: after a broken one, they likely are too."""
        clear = getattr(self._pool, "clear", None)
        if clear is not None:
            await clear()

    def _render(self, conn: Any) -> None:
        raw = conn.raw if hasattr(conn, "raw") else conn
        for name, value in vars(self._composed).items():
            self._rendered[name] = value.as_string(raw)

    # -- schema and keys ----------------------------------------------------

    async def create_schema(self) -> None:
        """Create both tables and their indexes if missing (safe to race)."""
        await self._execute("schema", {"lock": SCHEMA_LOCK_KEY})

    async def insert_key_if_absent(self, name: str, value: str, now_ms: int) -> str:
        """Store ``value`` under ``name`` unless a key is there; return the stored key."""
        for _ in range(3):
            rows = await self._execute(
                "insert_key_if_absent", {"name": name, "value": value, "now": now_ms}
            )
            if rows:
                return str(rows[0][0])
            # A concurrent insert committed after this statement's snapshot: read again.
        raise GeneralError(f"could not read key {name!r} after inserting it")

    async def keys_since(self, prefix: str, since_ms: int) -> list[tuple[str, str, int]]:
        rows = await self._execute("keys_since", {"prefix": prefix + "%", "since": since_ms})
        return [(str(n), str(v), int(c)) for n, v, c in rows]

    async def delete_keys_before(self, prefix: str, before_ms: int, keep: str) -> int:
        """Delete the keys named ``prefix...`` created before ``before_ms``, except
        ``keep``; how many."""
        rows = await self._execute(
            "delete_keys_before", {"prefix": prefix + "%", "before": before_ms, "keep": keep}
        )
        return len(rows)

    # -- sessions -------------------------------------------------------------

    async def insert_session(
        self,
        handle: str,
        user_id: str,
        refresh_hash2: str,
        session_info: Optional[str],
        expires_at: int,
        jwt_payload: Optional[str],
    ) -> None:
        await self._inserts.submit(
            handle, (handle, user_id, refresh_hash2, session_info, expires_at, jwt_payload)
        )

    async def _insert_batch(self, batch: list[tuple[str, tuple]]) -> dict[str, None]:
        columns = list(zip(*(row for _, row in batch)))
        await self._execute(
            "insert_sessions",
            dict(zip(("handles", "users", "h2s", "infos", "exps", "payloads"), map(list, columns))),
        )
        return {}

    async def rotate(
        self,
        handle: str,
        user_id: str,
        own_h2: str,
        parent_h2: Optional[str],
        expires_at: int,
        now_ms: int,
        grace_ms: int,
    ) -> Optional[tuple[str, Optional[str]]]:
        """Accept a presented refresh token and extend the session (see ``_Statements``).

        Returns ``(current_hash2, jwt_payload)`` after the update, or ``None``
        when the token is not acceptable (or the session is gone or expired).
        """
        return await self._rotations.submit(
            handle, (handle, user_id, own_h2, parent_h2, expires_at, now_ms, now_ms - grace_ms)
        )

    async def _rotate_batch(
        self, batch: list[tuple[str, tuple]]
    ) -> dict[str, tuple[str, Optional[str]]]:
        columns = list(zip(*(row for _, row in batch)))
        params: dict[str, Any] = dict(
            zip(("handles", "users", "t2s", "p2s", "exps", "nows", "sinces"), map(list, columns))
        )
        params["keep"] = RECENT_HASHES_KEPT
        rows = await self._execute("rotate", params)
        return {str(h): (str(current), payload) for h, current, payload in rows}

    async def promote(
        self, handle: str, own_h2: str, parent_h2: str, now_ms: int, grace_ms: int
    ) -> bool:
        """Make a child current on first use of its access token (idempotent).

        False when that is not possible: the child, or the session, is gone.
        """
        rows = await self._execute(
            "promote",
            {
                "handle": handle,
                "t2": own_h2,
                "p2": parent_h2,
                "now": now_ms,
                "since": now_ms - grace_ms,
                "keep": RECENT_HASHES_KEPT,
            },
        )
        return bool(rows)

    async def session_alive(self, handle: str, now_ms: int) -> bool:
        return bool(await self._alive_checks.submit(handle, now_ms))

    async def _alive_batch(self, batch: list[tuple[str, int]]) -> dict[str, bool]:
        rows = await self._execute(
            "sessions_alive",
            {"handles": [h for h, _ in batch], "nows": [now for _, now in batch]},
        )
        return {str(r[0]): True for r in rows}

    async def delete_live_session(self, handle: str, user_id: str, now_ms: int) -> bool:
        rows = await self._execute(
            "delete_live_session", {"handle": handle, "user_id": user_id, "now": now_ms}
        )
        return bool(rows)

    async def delete_session(self, handle: str) -> bool:
        return bool(await self._execute("delete_session", {"handle": handle}))

    async def delete_user_sessions(self, user_id: str) -> list[str]:
        rows = await self._execute("delete_user_sessions", {"user_id": user_id})
        return [str(r[0]) for r in rows]

    async def user_handles(self, user_id: str, now_ms: int) -> list[str]:
        rows = await self._execute("user_handles", {"user_id": user_id, "now": now_ms})
        return [str(r[0]) for r in rows]

    async def get_session_info(self, handle: str, now_ms: int) -> Optional[tuple[Optional[str]]]:
        """``(session_info,)`` of a live session, or ``None`` when there is none."""
        rows = await self._execute("get_session_info", {"handle": handle, "now": now_ms})
        return (rows[0][0],) if rows else None

    async def update_session_info(self, handle: str, info: Optional[str], now_ms: int) -> bool:
        rows = await self._execute(
            "update_session_info", {"handle": handle, "info": info, "now": now_ms}
        )
        return bool(rows)

    async def get_session(self, handle: str) -> Optional[SessionRow]:
        """The raw row, live or not (for tests and administration)."""
        rows = await self._execute("get_session", {"handle": handle})
        if not rows:
            return None
        h, u, info, exp, payload = rows[0]
        return SessionRow(str(h), str(u), info, int(exp), payload)

    async def delete_expired_batch(self, limit: int) -> tuple[bool, int]:
        """Delete up to ``limit`` expired sessions.

        Returns ``(got_lock, deleted)``; ``got_lock`` is false when another
        process is cleaning this table at this moment.
        """
        rows = await self._execute(
            "delete_expired_batch",
            {"lock": CLEANUP_LOCK_KEY, "table_lock": self._cleanup_table_lock, "limit": limit},
        )
        got, count = rows[0]
        return bool(got), int(count)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
