"""Session management for Tornado on PostgreSQL.

A port of ``supertokens-node-postgres-ref-jwt`` v4: short-lived JWT access
tokens, rotating refresh tokens with theft detection, anti-CSRF, revocation,
per-session data and scheduled cleanup.
"""

from .core import (
    get_all_session_handles_for_user,
    get_session_info,
    revoke_all_sessions_for_user,
    revoke_session_using_session_handle,
    update_session_info,
)
from .exceptions import (
    ConfigError,
    GeneralError,
    StorageUnavailableError,
    SuperTokensError,
    TokenTheftDetectedError,
    TryRefreshTokenError,
    UnauthorisedError,
)
from .supertokens import SuperTokens, close, get_instance, init
from .web import (
    RefreshHandler,
    SessionRequestHandler,
    WebSession,
    create_new_session,
    get_session,
    refresh_session,
    set_relevant_headers_for_options_api,
)

__all__ = [
    "ConfigError",
    "RefreshHandler",
    "SessionRequestHandler",
    "WebSession",
    "create_new_session",
    "get_session",
    "refresh_session",
    "set_relevant_headers_for_options_api",
    "GeneralError",
    "StorageUnavailableError",
    "SuperTokens",
    "SuperTokensError",
    "TokenTheftDetectedError",
    "TryRefreshTokenError",
    "UnauthorisedError",
    "close",
    "get_all_session_handles_for_user",
    "get_instance",
    "get_session_info",
    "init",
    "revoke_all_sessions_for_user",
    "revoke_session_using_session_handle",
    "update_session_info",
]

__version__ = "0.1.0"
