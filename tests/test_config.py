"""Tests of :func:`tornado_supertokens.config.parse_config` (no database needed)."""

from __future__ import annotations

import copy
from types import MappingProxyType
from typing import Any, Dict

import pytest

from tornado_supertokens.config import (
    AccessTokenConfig,
    Config,
    CookieConfig,
    LoggingConfig,
    PostgresConfig,
    RefreshTokenConfig,
    SigningKeyConfig,
    TokensConfig,
    parse_config,
)
from tornado_supertokens.exceptions import ConfigError, GeneralError

MINIMAL: Dict[str, Any] = {
    "postgres": {"user": "postgres", "database": "auth_session"},
    "tokens": {"refreshToken": {"renewTokenPath": "/api/refresh"}},
    "cookie": {"domain": "supertokens.io"},
}


def with_value(path: str, value: Any) -> Dict[str, Any]:
    """A copy of MINIMAL with ``value`` set at the dotted ``path``."""
    raw = copy.deepcopy(MINIMAL)
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return raw


def without(path: str) -> Dict[str, Any]:
    """A copy of MINIMAL with the key at the dotted ``path`` removed."""
    raw = copy.deepcopy(MINIMAL)
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    del node[last]
    return raw


def config_error(raw: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return info.value


def log(_: Any) -> None:
    """A logging callable."""


async def async_key() -> str:
    return "k" * 32


# --- accepted configurations -------------------------------------------------


def test_minimal_config_gets_seed_defaults() -> None:
    cfg = parse_config(MINIMAL)
    assert cfg == Config(
        postgres=PostgresConfig(user="postgres", database="auth_session"),
        tokens=TokensConfig(refresh_token=RefreshTokenConfig(renew_token_path="/api/refresh")),
        cookie=CookieConfig(domain="supertokens.io"),
    )
    # Literal seed values, independent of the dataclass defaults.
    pg, tok = cfg.postgres, cfg.tokens
    assert (pg.host, pg.port, pg.password, pg.connection_limit) == ("localhost", 5432, None, 50)
    assert (pg.signing_key_table, pg.refresh_token_table) == ("signing_key", "refresh_token")
    key = tok.access_token.signing_key
    assert (key.dynamic, key.update_interval_hours, key.get) == (True, 24, None)
    at = tok.access_token
    assert (at.validity_seconds, at.blacklisting, at.path) == (3600, False, "/")
    rt = tok.refresh_token
    assert (rt.validity_hours, rt.removal_cronjob_interval) == (2400, "0 0 0 1-31/7 * *")
    assert tok.enable_anti_csrf is True
    assert cfg.logging == LoggingConfig(None, None)
    assert (cfg.cookie.secure, cfg.cookie.same_site) == (True, "lax")
    assert cfg.session_expired_status_code == 440
    assert cfg.access_token_validity_ms == 3_600_000


def test_full_config_maps_every_key() -> None:
    raw = {
        "postgres": {
            "host": "db.internal",
            "port": 6543,
            "user": "app",
            "password": "secret",
            "connectionLimit": 7,
            "database": "sessions",
            "tables": {"signingKey": "keys_v2", "refreshTokens": "Sessions"},
        },
        "tokens": {
            "accessToken": {
                "signingKey": {"dynamic": False, "updateInterval": 1.5, "get": async_key},
                "validity": 10,
                "blacklisting": True,
                "accessTokenPath": "/api",
            },
            "refreshToken": {
                "validity": 8760,
                "removalCronjobInterval": "*/5 * * * *",
                "renewTokenPath": "/api/refresh",
            },
            "enableAntiCsrf": False,
        },
        "logging": {"info": log, "error": print},
        "cookie": {"domain": ".example.com", "secure": True, "sameSite": "None"},
        "sessionExpiredStatusCode": 401,
    }
    cfg = parse_config(raw)
    assert cfg == Config(
        postgres=PostgresConfig("app", "sessions", "db.internal", 6543, "secret", 7, "keys_v2", "Sessions"),
        tokens=TokensConfig(
            refresh_token=RefreshTokenConfig("/api/refresh", 8760, "*/5 * * * *"),
            access_token=AccessTokenConfig(SigningKeyConfig(False, 1.5, async_key), 10, True, "/api"),
            enable_anti_csrf=False,
        ),
        cookie=CookieConfig(".example.com", True, "none"),
        logging=LoggingConfig(log, print),
        session_expired_status_code=401,
    )
    assert cfg.key_update_interval_ms == 5_400_000
    assert cfg.refresh_token_validity_ms == 8760 * 3_600_000


@pytest.mark.parametrize(
    "path, value",
    [
        ("postgres.host", "/var/run/postgresql"),
        ("postgres.host", "127.0.0.1"),
        ("postgres.host", "::1"),
        ("postgres.host", "my_db"),
        ("postgres.port", 1),
        ("postgres.port", 65535),
        ("postgres.password", ""),
        ("postgres.password", None),
        ("postgres.connectionLimit", 1000),
        ("postgres.tables", {"signingKey": "_k1"}),
        ("tokens.accessToken.signingKey.get", async_key),
        ("tokens.accessToken.signingKey.get", lambda: b"sync-key"),
        ("tokens.accessToken.signingKey.updateInterval", 720),
        ("tokens.accessToken.signingKey.updateInterval", 0.5 + 0.5),
        ("tokens.accessToken.validity", 86400000),
        ("tokens.accessToken.validity", 10.5),
        ("tokens.refreshToken.validity", 1),
        ("tokens.refreshToken.validity", 0.25 * 8),
        ("tokens.refreshToken.removalCronjobInterval", "0 */5 * * *"),
        ("tokens.refreshToken.removalCronjobInterval", "30 0 3 * * 1-5"),
        ("tokens.accessToken.accessTokenPath", "/api/v1/~user_%20"),
        ("logging", {"info": None, "error": log}),
        ("cookie.domain", "localhost"),
        ("cookie.domain", "127.0.0.1"),
        ("cookie.domain", "sub-1.example.co.uk"),
        ("cookie.sameSite", "STRICT"),
        ("sessionExpiredStatusCode", 400),
        ("sessionExpiredStatusCode", 599),
    ],
)
def test_accepted_variants(path: str, value: Any) -> None:
    parse_config(with_value(path, value))


def test_same_site_none_with_secure_is_accepted_and_lower_cased() -> None:
    cfg = parse_config(with_value("cookie.sameSite", "NoNe"))
    assert cfg.cookie.same_site == "none"


def test_config_instance_is_returned_as_is() -> None:
    cfg = parse_config(MINIMAL)
    assert parse_config(cfg) is cfg


def test_any_mapping_is_accepted() -> None:
    raw = {**MINIMAL, "cookie": MappingProxyType({"domain": "example.com"})}
    assert parse_config(MappingProxyType(raw)).cookie.domain == "example.com"


def test_input_is_not_mutated() -> None:
    raw = copy.deepcopy(MINIMAL)
    parse_config(raw)
    assert raw == MINIMAL


def test_config_is_frozen() -> None:
    cfg = parse_config(MINIMAL)
    with pytest.raises(AttributeError):
        cfg.cookie.secure = False  # type: ignore[misc]


def test_password_is_not_in_repr() -> None:
    assert "hunter2" not in repr(parse_config(with_value("postgres.password", "hunter2")))


# --- rejected configurations -------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "postgres",
        "postgres.user",
        "postgres.database",
        "tokens",
        "tokens.refreshToken",
        "tokens.refreshToken.renewTokenPath",
        "cookie",
        "cookie.domain",
    ],
)
def test_missing_required_key(path: str) -> None:
    err = config_error(without(path))
    assert err.path == path
    assert str(err) == f"{path}: required"


@pytest.mark.parametrize(
    "path",
    [
        "colour",
        "postgres.hostname",
        "postgres.tables.sessions",
        "tokens.accessToken.signingKey.accessTokenPath",
        "tokens.accessToken.lifetime",
        "tokens.refreshToken.path",
        "tokens.antiCsrf",
        "logging.debug",
        "cookie.httpOnly",
        "cookie.same_site",
    ],
)
def test_unknown_key(path: str) -> None:
    err = config_error(with_value(path, "x"))
    assert err.path == path
    assert str(err) == f"{path}: unknown key"


BAD = [
    # (dotted path, value, expected part of the rule)
    ("postgres", "localhost", "must be a mapping"),
    ("postgres.host", "", "host name"),
    ("postgres.host", "db host", "host name"),
    ("postgres.host", "-db", "host name"),
    ("postgres.host", "relative/dir", "socket directory"),
    ("postgres.host", 5, "host name"),
    ("postgres.port", 0, "between 1 and 65535"),
    ("postgres.port", 65536, "between 1 and 65535"),
    ("postgres.port", "5432", "must be an integer"),
    ("postgres.port", 5432.0, "must be an integer"),
    ("postgres.port", True, "must be an integer"),
    ("postgres.user", "", "non-empty string"),
    ("postgres.user", None, "non-empty string"),
    ("postgres.password", 1234, "must be a string"),
    ("postgres.connectionLimit", 0, "between 1 and 1000"),
    ("postgres.connectionLimit", 1001, "between 1 and 1000"),
    ("postgres.connectionLimit", True, "must be an integer"),
    ("postgres.database", "", "non-empty string"),
    ("postgres.database", ["db"], "non-empty string"),
    ("postgres.tables", [], "must be a mapping"),
    ("postgres.tables.signingKey", "1keys", "valid SQL identifier"),
    ("postgres.tables.signingKey", "", "valid SQL identifier"),
    ("postgres.tables.signingKey", "a" * 64, "valid SQL identifier"),
    ("postgres.tables.refreshTokens", "refresh_token; DROP TABLE x", "valid SQL identifier"),
    ("postgres.tables.refreshTokens", 'x"y', "valid SQL identifier"),
    ("postgres.tables.refreshTokens", "public.refresh", "valid SQL identifier"),
    ("postgres.tables.refreshTokens", "signing_key", "must differ from postgres.tables.signingKey"),
    ("postgres.tables.refreshTokens", "SIGNING_KEY", "must differ"),
    ("tokens.accessToken.signingKey.dynamic", 1, "must be a boolean"),
    ("tokens.accessToken.signingKey.dynamic", "true", "must be a boolean"),
    ("tokens.accessToken.signingKey.updateInterval", 0.99, "between 1 and 720 hours"),
    ("tokens.accessToken.signingKey.updateInterval", 721, "between 1 and 720 hours"),
    ("tokens.accessToken.signingKey.updateInterval", True, "must be a number"),
    ("tokens.accessToken.signingKey.updateInterval", "24", "must be a number"),
    ("tokens.accessToken.signingKey.updateInterval", float("nan"), "between 1 and 720 hours"),
    ("tokens.accessToken.signingKey.get", "secret", "must be a callable"),
    ("tokens.accessToken.validity", 9, "must be between 10 and 86400000 seconds"),
    ("tokens.accessToken.validity", 86400001, "must be between 10 and 86400000 seconds"),
    ("tokens.accessToken.validity", float("inf"), "between 10 and 86400000 seconds"),
    ("tokens.accessToken.validity", True, "must be a number"),
    ("tokens.accessToken.blacklisting", 0, "must be a boolean"),
    ("tokens.accessToken.blacklisting", None, "must be a boolean"),
    ("tokens.accessToken.accessTokenPath", "api", "must start with '/'"),
    ("tokens.accessToken.accessTokenPath", "", "must start with '/'"),
    ("tokens.accessToken.accessTokenPath", "/a b", "whitespace"),
    ("tokens.accessToken.accessTokenPath", "/a\tb", "whitespace"),
    ("tokens.accessToken.accessTokenPath", "/a;Domain=evil.com", "';'"),
    ("tokens.accessToken.accessTokenPath", "/a,b", "','"),
    ("tokens.accessToken.accessTokenPath", "/a\r\nSet-Cookie:x", "control"),
    ("tokens.accessToken.accessTokenPath", "/a\x00", "control"),
    ("tokens.accessToken.accessTokenPath", 1, "must be a string"),
    ("tokens.accessToken", True, "must be a mapping"),
    ("tokens.refreshToken.validity", 0, "between 1 and 8760 hours"),
    ("tokens.refreshToken.validity", 8761, "between 1 and 8760 hours"),
    ("tokens.refreshToken.validity", False, "must be a number"),
    ("tokens.refreshToken.removalCronjobInterval", "0 0 0 1-31/7 * * *", "6 fields"),
    ("tokens.refreshToken.removalCronjobInterval", "* * * *", "5 fields"),
    ("tokens.refreshToken.removalCronjobInterval", "@daily", "5 fields"),
    ("tokens.refreshToken.removalCronjobInterval", "61 0 0 * * *", "not a valid cron"),
    ("tokens.refreshToken.removalCronjobInterval", "0 0 99 * *", "not a valid cron"),
    ("tokens.refreshToken.removalCronjobInterval", "a b c d e f", "not a valid cron"),
    ("tokens.refreshToken.removalCronjobInterval", 7, "must be a string"),
    ("tokens.refreshToken.renewTokenPath", "api/refresh", "must start with '/'"),
    ("tokens.refreshToken.renewTokenPath", "/api/refresh; HttpOnly", "whitespace"),
    ("tokens.refreshToken.renewTokenPath", "/api,refresh", "','"),
    ("tokens.refreshToken.renewTokenPath", None, "must be a string"),
    ("tokens.enableAntiCsrf", "yes", "must be a boolean"),
    ("logging.info", "stdout", "must be a callable"),
    ("logging.error", 3, "must be a callable"),
    ("cookie.domain", "", "non-empty"),
    ("cookie.domain", None, "non-empty"),
    ("cookie.domain", "https://example.com", "scheme"),
    ("cookie.domain", "example.com:8080", "port"),
    ("cookie.domain", "example.com/app", "path"),
    ("cookie.domain", "exa mple.com", "whitespace"),
    ("cookie.domain", "exa_mple.com", "host name"),
    ("cookie.domain", "-example.com", "host name"),
    ("cookie.domain", "a..b", "host name"),
    ("cookie.domain", "..example.com", "host name"),
    ("cookie.domain", "256.1.1.1", "IPv4"),
    ("cookie.secure", "false", "must be a boolean"),
    ("cookie.secure", 0, "must be a boolean"),
    ("cookie.sameSite", "sometimes", "must be one of strict, lax, none"),
    ("cookie.sameSite", None, "must be one of strict, lax, none"),
    ("sessionExpiredStatusCode", 399, "between 400 and 599"),
    ("sessionExpiredStatusCode", 600, "between 400 and 599"),
    ("sessionExpiredStatusCode", 440.0, "must be an integer"),
    ("sessionExpiredStatusCode", True, "must be an integer"),
]


@pytest.mark.parametrize("path, value, rule", BAD)
def test_rejected_value(path: str, value: Any, rule: str) -> None:
    err = config_error(with_value(path, value))
    assert isinstance(err, GeneralError)
    assert err.path == path
    assert str(err).startswith(f"{path}: ")
    assert rule in str(err)


def test_same_site_none_requires_secure() -> None:
    raw = with_value("cookie", {"domain": "example.com", "secure": False, "sameSite": "none"})
    err = config_error(raw)
    assert err.path == "cookie.sameSite"
    assert "requires cookie.secure" in str(err)


def test_seed_example_error_message() -> None:
    err = config_error(with_value("tokens.accessToken.validity", 5))
    assert str(err) == "tokens.accessToken.validity: must be between 10 and 86400000 seconds"


def test_not_a_mapping() -> None:
    err = config_error(["postgres"])
    assert "must be a mapping" in str(err)


def test_environment_does_not_relax_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DEBUG", "SUPERTOKENS_DEBUG", "SUPERTOKENS_INSECURE", "TESTING"):
        monkeypatch.setenv(name, "1")
    err = config_error(with_value("postgres.tables.signingKey", "x; DROP TABLE y"))
    assert err.path == "postgres.tables.signingKey"


def test_rotation_grace_period_default_and_range():
    from tornado_supertokens.config import parse_config
    from tornado_supertokens.exceptions import ConfigError

    base = {
        "postgres": {"user": "postgres", "database": "x"},
        "tokens": {"refreshToken": {"renewTokenPath": "/r"}},
        "cookie": {"domain": "example.com"},
    }
    assert parse_config(base).tokens.refresh_token.rotation_grace_seconds == 20
    ok = {**base, "tokens": {"refreshToken": {"renewTokenPath": "/r", "rotationGracePeriod": 0}}}
    assert parse_config(ok).rotation_grace_ms == 0
    for bad in (-1, 301, True, "10"):
        cfg = {**base, "tokens": {"refreshToken": {"renewTokenPath": "/r",
                                                    "rotationGracePeriod": bad}}}
        with pytest.raises(ConfigError) as info:
            parse_config(cfg)
        assert info.value.path == "tokens.refreshToken.rotationGracePeriod"
