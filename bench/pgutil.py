"""Where the benchmark's PostgreSQL is: the configured server, else an embedded one
(the same ``TS_PG_*`` environment as the tests; see :mod:`tornado_supertokens.testing`),
and the facts about it that a report needs."""

from __future__ import annotations

from typing import Any, Iterable, Optional

from psycopg2 import sql

from tornado_supertokens.testing import (
    EmbeddedPostgresUnavailable,
    answers,
    connect,
    start_embedded_postgres,
)
from tornado_supertokens.testing import configured_postgres as configured_params

__all__ = ["answers", "configured_params", "connect", "drop_tables", "server_facts",
           "start_embedded"]


def start_embedded(data_dir: Optional[str] = None) -> tuple[Any, dict[str, Any]]:
    """Start a private embedded server; returns (server, params)."""
    try:
        return start_embedded_postgres(data_dir)
    except EmbeddedPostgresUnavailable as exc:
        raise SystemExit(f"bench: {exc}") from None


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
