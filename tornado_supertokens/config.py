"""Configuration: the seed's camelCase keys, validated into an immutable object.

:func:`parse_config` is the only entry point; everything else in the library
reads the frozen :class:`Config` it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Optional, Union

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
    def key_update_interval_ms(self) -> int:
        return int(self.tokens.access_token.signing_key.update_interval_hours * 3600 * 1000)


def parse_config(raw: Union[Mapping[str, Any], Config]) -> Config:
    """Validate a seed-style config dict and return the frozen :class:`Config`.

    Raises :class:`~tornado_supertokens.exceptions.ConfigError` naming the key
    path and the rule that failed.
    """
    raise NotImplementedError
