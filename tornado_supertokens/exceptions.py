"""The error tree. Every error the library raises is a :class:`SuperTokensError`.

Callers tell outcomes apart by class (or by ``err_type``, kept from the
original library's wire-level numbering):

- :class:`GeneralError` (1000): something unexpected; HTTP 500.
- :class:`StorageUnavailableError` (1000): the database could not answer; HTTP 503.
- :class:`ConfigError` (1000): the configuration is invalid.
- :class:`UnauthorisedError` (2000): the session is over; log in again.
- :class:`TryRefreshTokenError` (3000): call the refresh endpoint.
- :class:`TokenTheftDetectedError` (4000): a rotated-out refresh token was used.
"""

from __future__ import annotations

from typing import Any, Optional


class SuperTokensError(Exception):
    """Base class of every error raised by tornado_supertokens."""

    #: Numeric kind of the error, as in the original library.
    err_type: int = 1000

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class GeneralError(SuperTokensError):
    """Anything unexpected: a crypto failure, a bug, a database error."""

    err_type = 1000


class StorageUnavailableError(GeneralError):
    """The database is unreachable, timed out or read-only.

    Never a reason to log anybody out: retrying later works.
    """


class ConfigError(GeneralError):
    """The configuration given to :func:`init` is invalid.

    The message names the key path and the rule that failed.
    """

    def __init__(self, message: str, path: Optional[str] = None) -> None:
        super().__init__(message)
        #: Dotted key path of the offending setting, when known.
        self.path = path


class UnauthorisedError(SuperTokensError):
    """The session is over (revoked, expired or never existed): log in again."""

    err_type = 2000


class TryRefreshTokenError(SuperTokensError):
    """The access token is invalid or expired, or anti-CSRF failed: refresh."""

    err_type = 3000


class TokenTheftDetectedError(UnauthorisedError):
    """A refresh token that was rotated away was presented again.

    The library has already revoked the session named by :attr:`session_handle`
    before raising; the application may revoke more (every session of
    :attr:`user_id`).
    """

    err_type = 4000

    def __init__(self, session_handle: str, user_id: Any) -> None:
        super().__init__("token theft detected")
        #: Handle of the session whose refresh token was reused.
        self.session_handle = session_handle
        #: The user that session belonged to.
        self.user_id = user_id
