"""Configuration: the seed's camelCase keys, validated into an immutable object.

:func:`parse_config` is the only entry point; everything else in the library
reads the frozen :class:`Config` it returns.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Awaitable, Callable, Dict, Mapping, Optional, Union

import voluptuous as vol
from croniter import croniter

from .exceptions import ConfigError

KeyGetter = Callable[[], Union[str, bytes, Awaitable[Union[str, bytes]]]]
LogFunction = Callable[[Any], None]


@dataclass(frozen=True)
class PostgresConfig:
    user: str
    database: str
    host: str = "localhost"
    port: int = 5432
    password: Optional[str] = field(default=None, repr=False)
    connection_limit: int = 50
    signing_key_table: str = "signing_key"
    refresh_token_table: str = "refresh_token"


@dataclass(frozen=True)
class SigningKeyConfig:
    dynamic: bool = True
    update_interval_hours: float = 24
    get: Optional[KeyGetter] = None


@dataclass(frozen=True)
class AccessTokenConfig:
    signing_key: SigningKeyConfig = field(default_factory=SigningKeyConfig)
    validity_seconds: float = 3600
    blacklisting: bool = False
    path: str = "/"


@dataclass(frozen=True)
class RefreshTokenConfig:
    renew_token_path: str
    validity_hours: float = 2400
    removal_cronjob_interval: str = "0 0 0 1-31/7 * *"
    #: Seconds after a rotation during which the rotated-away token still gets
    #: a successor instead of a theft verdict.
    rotation_grace_seconds: float = 20


@dataclass(frozen=True)
class TokensConfig:
    refresh_token: RefreshTokenConfig
    access_token: AccessTokenConfig = field(default_factory=AccessTokenConfig)
    enable_anti_csrf: bool = True


@dataclass(frozen=True)
class LoggingConfig:
    info: Optional[LogFunction] = None
    error: Optional[LogFunction] = None


@dataclass(frozen=True)
class CookieConfig:
    domain: str
    secure: bool = True
    same_site: str = "lax"


@dataclass(frozen=True)
class Config:
    postgres: PostgresConfig
    tokens: TokensConfig
    cookie: CookieConfig
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    session_expired_status_code: int = 440

    @property
    def access_token_validity_ms(self) -> int:
        return int(self.tokens.access_token.validity_seconds * 1000)

    @property
    def refresh_token_validity_ms(self) -> int:
        return int(self.tokens.refresh_token.validity_hours * 3600 * 1000)

    @property
    def rotation_grace_ms(self) -> int:
        return int(self.tokens.refresh_token.rotation_grace_seconds * 1000)

    @property
    def key_update_interval_ms(self) -> int:
        return int(self.tokens.access_token.signing_key.update_interval_hours * 3600 * 1000)


# --- validation helpers ----------------------------------------------------

SQL_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}\.?$){_LABEL}(?:\.{_LABEL})*\.?$")
# postgres.host may also use "_" (Docker service names resolve fine).
_PG_HOSTNAME = re.compile(_HOSTNAME.pattern.replace("A-Za-z0-9-", "A-Za-z0-9_-"))
SAME_SITE_VALUES = ("strict", "lax", "none")


def _default(cls: type, name: str) -> Any:
    """The dataclass default of ``cls.name``, so schema and dataclasses agree."""
    default = next(f.default for f in fields(cls) if f.name == name)
    if default is MISSING:
        raise TypeError(f"{cls.__name__}.{name} has no plain default")
    return default


def _is_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise vol.Invalid("must be a boolean")
    return value


def _integer(lo: int, hi: int) -> Callable[[Any], int]:
    """An int (never a bool or float) within ``lo..hi``."""

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise vol.Invalid("must be an integer")
        if not lo <= value <= hi:
            raise vol.Invalid(f"must be between {lo} and {hi}")
        return value

    return check


def _number(lo: float, hi: float, unit: str) -> Callable[[Any], float]:
    """An int or float (never a bool, NaN or infinity) within ``lo..hi`` ``unit``."""

    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise vol.Invalid(f"must be a number ({unit})")
        if not lo <= value <= hi:  # also rejects NaN
            raise vol.Invalid(f"must be between {lo} and {hi} {unit}")
        return value

    return check


def _non_empty_str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise vol.Invalid("must be a non-empty string")
    return value


def _optional_str(value: Any) -> Optional[str]:
    if value is not None and not isinstance(value, str):
        raise vol.Invalid("must be a string or None")
    return value


def _optional_callable(value: Any) -> Any:
    if value is not None and not callable(value):
        raise vol.Invalid("must be a callable")
    return value


def _pg_host(value: Any) -> str:
    """A host name, an IP address, or an absolute socket directory path."""
    if isinstance(value, str):
        if value.startswith("/") and "\x00" not in value:
            return value
        if _PG_HOSTNAME.match(value):
            return value
        try:
            ipaddress.ip_address(value)
            return value
        except ValueError:
            pass
    raise vol.Invalid("must be a host name, an IP address or an absolute socket directory path")


def _sql_identifier(value: Any) -> str:
    if not isinstance(value, str) or not SQL_IDENTIFIER.match(value):
        raise vol.Invalid(
            "must be a valid SQL identifier (letters, digits and _, not starting "
            "with a digit, at most 63 characters)"
        )
    return value


def _distinct_tables(tables: Dict[str, str]) -> Dict[str, str]:
    # Compared case-insensitively: PostgreSQL folds unquoted names to lower case.
    if tables["signingKey"].lower() == tables["refreshTokens"].lower():
        raise vol.Invalid("must differ from postgres.tables.signingKey", path=["refreshTokens"])
    return tables


def _cookie_path(value: Any) -> str:
    """A cookie/URL path: starts with "/", printable ASCII, no whitespace, ";" or ","."""
    if not isinstance(value, str):
        raise vol.Invalid("must be a string")
    if not value.startswith("/"):
        raise vol.Invalid("must start with '/'")
    if any(not "\x21" <= c <= "\x7e" or c in ";," for c in value):
        raise vol.Invalid(
            "must not contain whitespace, ';', ',', control or non-ASCII characters"
        )
    return value


def _cron(value: Any) -> str:
    """A 6-field cron (leading seconds) or a standard 5-field cron."""
    if not isinstance(value, str):
        raise vol.Invalid("must be a string")
    count = len(value.split())
    if count == 6:
        ok = croniter.is_valid(value, second_at_beginning=True)
    elif count == 5:
        ok = croniter.is_valid(value)
    else:
        raise vol.Invalid(
            "must be a cron expression with 6 fields (sec min hour dom mon dow) or 5 fields"
        )
    if not ok:
        raise vol.Invalid("is not a valid cron expression")
    return value


def _cookie_domain(value: Any) -> str:
    """A host name (optionally with a leading ".") or an IPv4 address."""
    if not isinstance(value, str) or not value:
        raise vol.Invalid("must be a non-empty string")
    if "://" in value:
        raise vol.Invalid("must not include a scheme (no http:// or https://)")
    if ":" in value:
        raise vol.Invalid("must not include a port")
    if "/" in value:
        raise vol.Invalid("must not include a path ('/')")
    if any(c.isspace() for c in value):
        raise vol.Invalid("must not contain whitespace")
    if re.fullmatch(r"[0-9.]+", value):
        try:
            ipaddress.IPv4Address(value)
            return value
        except ValueError:
            raise vol.Invalid("must be a valid IPv4 address") from None
    if not _HOSTNAME.match(value[1:] if value.startswith(".") else value):
        raise vol.Invalid("must be a host name (a leading '.' is allowed) or an IPv4 address")
    return value


def _same_site(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in SAME_SITE_VALUES:
        raise vol.Invalid("must be one of " + ", ".join(SAME_SITE_VALUES))
    return value.lower()


def _none_needs_secure(cookie: Dict[str, Any]) -> Dict[str, Any]:
    if cookie["sameSite"] == "none" and not cookie["secure"]:
        raise vol.Invalid("'none' requires cookie.secure to be true", path=["sameSite"])
    return cookie


def _opt(key: str, cls: type, name: str) -> vol.Optional:
    return vol.Optional(key, default=_default(cls, name))




SCHEMA = vol.Schema(
    {
        vol.Required("postgres"): {
            _opt("host", PostgresConfig, "host"): _pg_host,
            _opt("port", PostgresConfig, "port"): _integer(1, 65535),
            vol.Required("user"): _non_empty_str,
            vol.Optional("password", default=None): _optional_str,
            _opt("connectionLimit", PostgresConfig, "connection_limit"): _integer(1, 1000),
            vol.Required("database"): _non_empty_str,
            vol.Optional("tables", default=dict): vol.All(
                {
                    _opt("signingKey", PostgresConfig, "signing_key_table"): _sql_identifier,
                    _opt("refreshTokens", PostgresConfig, "refresh_token_table"): _sql_identifier,
                },
                _distinct_tables,
            ),
        },
        vol.Required("tokens"): {
            vol.Optional("accessToken", default=dict): {
                vol.Optional("signingKey", default=dict): {
                    _opt("dynamic", SigningKeyConfig, "dynamic"): _is_bool,
                    _opt("updateInterval", SigningKeyConfig, "update_interval_hours"): _number(
                        1, 720, "hours"
                    ),
                    vol.Optional("get", default=None): _optional_callable,
                },
                _opt("validity", AccessTokenConfig, "validity_seconds"): _number(
                    10, 86400000, "seconds"
                ),
                _opt("blacklisting", AccessTokenConfig, "blacklisting"): _is_bool,
                _opt("accessTokenPath", AccessTokenConfig, "path"): _cookie_path,
            },
            vol.Required("refreshToken"): {
                _opt("validity", RefreshTokenConfig, "validity_hours"): _number(1, 8760, "hours"),
                _opt(
                    "removalCronjobInterval", RefreshTokenConfig, "removal_cronjob_interval"
                ): _cron,
                vol.Required("renewTokenPath"): _cookie_path,
                _opt(
                    "rotationGracePeriod", RefreshTokenConfig, "rotation_grace_seconds"
                ): _number(0, 300, "seconds"),
            },
            _opt("enableAntiCsrf", TokensConfig, "enable_anti_csrf"): _is_bool,
        },
        vol.Optional("logging", default=dict): {
            vol.Optional("info", default=None): _optional_callable,
            vol.Optional("error", default=None): _optional_callable,
        },
        vol.Required("cookie"): vol.All(
            {
                vol.Required("domain"): _cookie_domain,
                _opt("secure", CookieConfig, "secure"): _is_bool,
                _opt("sameSite", CookieConfig, "same_site"): _same_site,
            },
            _none_needs_secure,
        ),
        _opt("sessionExpiredStatusCode", Config, "session_expired_status_code"): _integer(
            400, 599
        ),
    }
)


def _to_dicts(value: Any) -> Any:
    """Copy nested mappings into plain dicts (voluptuous only walks ``dict``)."""
    if isinstance(value, Mapping):
        return {k: _to_dicts(v) for k, v in value.items()}
    return value


def _config_error(err: vol.Invalid) -> ConfigError:
    """Turn one voluptuous error into ``ConfigError("<path>: <rule>", path)``."""
    path = ".".join(str(p) for p in err.path)
    if isinstance(err, vol.RequiredFieldInvalid):
        rule = "required"
    elif err.msg == "extra keys not allowed":
        rule = "unknown key"
    elif isinstance(err, vol.DictInvalid):
        rule = "must be a mapping"
    else:
        rule = err.msg
    return ConfigError(f"{path or 'config'}: {rule}", path)


def parse_config(raw: Union[Mapping[str, Any], Config]) -> Config:
    """Validate a seed-style config dict and return the frozen :class:`Config`.

    Raises :class:`~tornado_supertokens.exceptions.ConfigError` naming the key
    path and the rule that failed.
    """
    if isinstance(raw, Config):
        return raw
    if not isinstance(raw, Mapping):
        raise ConfigError("config: must be a mapping", "")
    try:
        c = SCHEMA(_to_dicts(raw))
    except vol.MultipleInvalid as exc:
        # voluptuous keeps required keys in a set: sort so the report is stable.
        first = min(exc.errors, key=lambda e: [str(p) for p in e.path])
        raise _config_error(first) from None
    except vol.Invalid as exc:
        raise _config_error(exc) from None
    pg, tokens, access, refresh = (
        c["postgres"],
        c["tokens"],
        c["tokens"]["accessToken"],
        c["tokens"]["refreshToken"],
    )
    key = access["signingKey"]
    return Config(
        postgres=PostgresConfig(
            user=pg["user"],
            database=pg["database"],
            host=pg["host"],
            port=pg["port"],
            password=pg["password"],
            connection_limit=pg["connectionLimit"],
            signing_key_table=pg["tables"]["signingKey"],
            refresh_token_table=pg["tables"]["refreshTokens"],
        ),
        tokens=TokensConfig(
            refresh_token=RefreshTokenConfig(
                renew_token_path=refresh["renewTokenPath"],
                validity_hours=refresh["validity"],
                removal_cronjob_interval=refresh["removalCronjobInterval"],
                rotation_grace_seconds=refresh["rotationGracePeriod"],
            ),
            access_token=AccessTokenConfig(
                signing_key=SigningKeyConfig(
                    dynamic=key["dynamic"],
                    update_interval_hours=key["updateInterval"],
                    get=key["get"],
                ),
                validity_seconds=access["validity"],
                blacklisting=access["blacklisting"],
                path=access["accessTokenPath"],
            ),
            enable_anti_csrf=tokens["enableAntiCsrf"],
        ),
        cookie=CookieConfig(
            domain=c["cookie"]["domain"],
            secure=c["cookie"]["secure"],
            same_site=c["cookie"]["sameSite"],
        ),
        logging=LoggingConfig(info=c["logging"]["info"], error=c["logging"]["error"]),
        session_expired_status_code=c["sessionExpiredStatusCode"],
    )
