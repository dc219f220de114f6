"""The wire contract: cookie and header names, and reading/writing them on a handler.

Byte-compatible with ``supertokens-node-postgres-ref-jwt`` v4, so that the
``supertokens-website`` 4.x SDK works unchanged (values URL-encoded the way
the original did, ``id-refresh-token: <id>;<expiry ms>``, ``remove`` when the
session is cleared).
"""

from __future__ import annotations

import functools
import re
import time
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import quote, unquote

from .config import Config, CookieConfig
from .exceptions import GeneralError
from .session import SessionTokens, TokenInfo

if TYPE_CHECKING:
    from tornado.web import RequestHandler

ACCESS_TOKEN_COOKIE = "sAccessToken"
REFRESH_TOKEN_COOKIE = "sRefreshToken"
ID_REFRESH_TOKEN_COOKIE = "sIdRefreshToken"
ID_REFRESH_TOKEN_HEADER = "id-refresh-token"
ANTI_CSRF_HEADER = "anti-csrf"
SDK_NAME_HEADER = "supertokens-sdk-name"
SDK_VERSION_HEADER = "supertokens-sdk-version"
EXPOSE_HEADERS = "Access-Control-Expose-Headers"

#: Longest cookie value read; anything longer is treated as absent-and-invalid.
MAX_COOKIE_VALUE_LENGTH = 8192
#: At most this many values of one cookie name are considered.
MAX_DUPLICATES = 4
#: Browsers drop cookies larger than this (name + value + attributes, roughly).
BROWSER_COOKIE_LIMIT = 4096
#: Expiry used to delete a cookie (1970-01-01T00:00:01Z; 0 would mean "no expiry").
_EPOCH_PLUS_ONE_MS = 1000


class CookieError(ValueError):
    """A session cookie is malformed or oversized."""


_SESSION_COOKIES = frozenset({ACCESS_TOKEN_COOKIE, REFRESH_TOKEN_COOKIE, ID_REFRESH_TOKEN_COOKIE})
_PARSED_ATTRIBUTE = "_tornado_supertokens_cookies"


def _session_cookies(handler: RequestHandler) -> dict[str, Any]:
    """The session cookies of the request, parsed once and kept on the handler.

    Maps each name to its list of distinct URL-decoded values, or to the
    :class:`CookieError` that reading it raised. Reads the raw ``Cookie``
    headers: Tornado's parser keeps only the last of duplicates.
    """
    parsed: Optional[dict[str, Any]] = getattr(handler, _PARSED_ATTRIBUTE, None)
    if parsed is not None:
        return parsed
    parsed = {}
    for header in handler.request.headers.get_list("Cookie"):
        for chunk in header.split(";"):
            key, sep, value = chunk.partition("=")
            key = key.strip()
            if not sep or key not in _SESSION_COOKIES:
                continue
            values = parsed.setdefault(key, [])
            if isinstance(values, CookieError):
                continue
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if len(value) > MAX_COOKIE_VALUE_LENGTH:
                parsed[key] = CookieError(f"cookie {key} is too large")
                continue
            if "%" in value:
                value = unquote(value)
            if value and value not in values:
                values.append(value)
                if len(values) > MAX_DUPLICATES:
                    parsed[key] = CookieError(f"too many {key} cookies")
    setattr(handler, _PARSED_ATTRIBUTE, parsed)
    return parsed


def read_cookie_values(handler: RequestHandler, name: str) -> list[str]:
    """Every distinct value of session cookie ``name`` in the request, in order.

    Raises :class:`CookieError` for an oversized value or too many duplicates.
    """
    if name not in _SESSION_COOKIES:
        raise ValueError(f"{name} is not a session cookie")
    values = _session_cookies(handler).get(name, ())
    if isinstance(values, CookieError):
        raise values
    return list(values)


def single_access_token(handler: RequestHandler) -> Optional[str]:
    """The access token when the request carries exactly one, and an
    sIdRefreshToken, with nothing malformed; ``None`` otherwise (the caller
    then takes the full path, which reports what is wrong)."""
    parsed = _session_cookies(handler)
    access = parsed.get(ACCESS_TOKEN_COOKIE)
    id_refresh = parsed.get(ID_REFRESH_TOKEN_COOKIE)
    if (
        type(access) is list
        and len(access) == 1
        and type(id_refresh) is list
        and id_refresh
    ):
        return access[0]
    return None


def read_cookie(handler: RequestHandler, name: str) -> Optional[str]:
    """The single value of cookie ``name``; ``None`` if absent.

    Raises :class:`CookieError` if the request carries several different values.
    """
    values = read_cookie_values(handler, name)
    if len(values) > 1:
        raise CookieError(f"several different {name} cookies")
    return values[0] if values else None


def read_anti_csrf_header(handler: RequestHandler) -> Optional[str]:
    return handler.request.headers.get(ANTI_CSRF_HEADER)


#: Characters ``quote(value, safe="")`` leaves as they are: tokens are made of these.
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")


def _encode(value: str) -> str:
    """URL-encode a cookie value (``quote`` with nothing safe), skipping the work
    for the tokens, which never need it."""
    return value if _UNRESERVED.fullmatch(value) else quote(value, safe="")


_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(epoch_ms: int) -> str:
    """An RFC 7231 date (``Thu, 01 Jan 1970 00:00:01 GMT``) for a cookie's Expires.

    Whole seconds, rounded down, as ``email.utils.formatdate(usegmt=True)``
    writes them, at a fraction of its cost.
    """
    return _http_date(epoch_ms // 1000)


@functools.lru_cache(maxsize=16)  # a second's responses share a handful of expiries
def _http_date(epoch_s: int) -> str:
    t = time.gmtime(epoch_s)
    return (f"{_WEEKDAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d}"
            f" {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


@functools.lru_cache(maxsize=64)
def _attributes(cookie: CookieConfig, path: str, httponly: bool) -> tuple[str, str]:
    """What surrounds a cookie's Expires date: ``; Domain=...; expires=`` and the rest.

    Computed once per configuration: every part is validated by the configuration.
    """
    tail = f"; Path={path}; SameSite={cookie.same_site.capitalize()}"
    if httponly:
        tail += "; HttpOnly"
    if cookie.secure:
        tail += "; Secure"
    return f"; Domain={cookie.domain}; expires=", tail


def _set(
    handler: RequestHandler,
    config: Config,
    name: str,
    value: str,
    expires_ms: int,
    path: str,
    httponly: bool,
) -> None:
    """Write one ``Set-Cookie`` header, replacing one this response already has.

    Written directly rather than through ``RequestHandler.set_cookie`` (whose
    ``http.cookies`` machinery costs more than the rest of a verify): the
    value is URL-encoded here and every attribute is validated by the
    configuration.
    """
    encoded = _encode(value)
    if len(name) + len(encoded) > BROWSER_COOKIE_LIMIT - 200:
        raise GeneralError(f"{name} would exceed the browser cookie size limit (payload too large?)")
    head, tail = _attributes(config.cookie, path, httponly)
    header = f"{name}={encoded}{head}{http_date(expires_ms)}{tail}"
    headers = handler._headers  # noqa: SLF001 (Tornado has no remover for one value)
    existing = headers.get_list("Set-Cookie")
    prefix = f"{name}="
    if existing and any(h.startswith(prefix) for h in existing):
        # Replaced, never deleted: Tornado before 6.6 raises KeyError when a
        # header with several values is deleted (HTTPHeaders.__delitem__).
        kept = [h for h in existing if not h.startswith(prefix)] + [header]
        headers["Set-Cookie"] = kept[0]
        for other in kept[1:]:
            headers.add("Set-Cookie", other)
        return
    # Straight into the headers: Tornado's character check of add_header
    # cannot fail here (URL-encoded value, attributes validated by the config).
    headers.add("Set-Cookie", header)


def _add_exposed(handler: RequestHandler, *names: str) -> None:
    current = handler._headers.get(EXPOSE_HEADERS)  # noqa: SLF001 (Tornado has no getter)
    if not current:
        handler.set_header(EXPOSE_HEADERS, ", ".join(names))
        return
    present = [h.strip() for h in current.split(",") if h.strip()]
    lowered = {h.lower() for h in present}
    present += [n for n in names if n.lower() not in lowered]
    handler.set_header(EXPOSE_HEADERS, ", ".join(present))


def set_access_token(handler: RequestHandler, config: Config, token: TokenInfo) -> None:
    _set(handler, config, ACCESS_TOKEN_COOKIE, token.value, token.expires_at,
         config.tokens.access_token.path, httponly=True)


def set_tokens(handler: RequestHandler, config: Config, tokens: SessionTokens) -> None:
    """Write whatever ``tokens`` carries as cookies and headers."""
    if tokens.access_token is not None:
        set_access_token(handler, config, tokens.access_token)
    if tokens.refresh_token is not None:
        _set(handler, config, REFRESH_TOKEN_COOKIE, tokens.refresh_token.value,
             tokens.refresh_token.expires_at, config.tokens.refresh_token.renew_token_path,
             httponly=True)
    if tokens.id_refresh_token is not None:
        idr = tokens.id_refresh_token
        _set(handler, config, ID_REFRESH_TOKEN_COOKIE, idr.value, idr.expires_at,
             config.tokens.access_token.path, httponly=False)
        # Straight into the headers (as in _set): values this library made.
        handler._headers[ID_REFRESH_TOKEN_HEADER] = f"{idr.value};{idr.expires_at}"  # noqa: SLF001
    if tokens.anti_csrf_token is not None:
        handler._headers[ANTI_CSRF_HEADER] = tokens.anti_csrf_token  # noqa: SLF001
    if tokens.id_refresh_token is not None and tokens.anti_csrf_token is not None:
        _add_exposed(handler, ID_REFRESH_TOKEN_HEADER, ANTI_CSRF_HEADER)
    elif tokens.id_refresh_token is not None:
        _add_exposed(handler, ID_REFRESH_TOKEN_HEADER)
    elif tokens.anti_csrf_token is not None:
        _add_exposed(handler, ANTI_CSRF_HEADER)


def clear_session(handler: RequestHandler, config: Config) -> None:
    """Expire all three cookies and tell the SDK the session is gone."""
    access_path = config.tokens.access_token.path
    for name, path, httponly in (
        (ACCESS_TOKEN_COOKIE, access_path, True),
        (REFRESH_TOKEN_COOKIE, config.tokens.refresh_token.renew_token_path, True),
        (ID_REFRESH_TOKEN_COOKIE, access_path, False),
    ):
        _set(handler, config, name, "", _EPOCH_PLUS_ONE_MS, path, httponly)
    handler.set_header(ID_REFRESH_TOKEN_HEADER, "remove")
    _add_exposed(handler, ID_REFRESH_TOKEN_HEADER)
    _remove_header(handler, ANTI_CSRF_HEADER)


def _remove_header(handler: RequestHandler, name: str) -> None:
    """``clear_header`` that also works on Tornado before 6.6, whose
    ``HTTPHeaders.__delitem__`` raises KeyError for a header added twice."""
    headers = handler._headers  # noqa: SLF001
    if name in headers:
        headers[name] = ""  # one value now, in both of Tornado's internal maps
        del headers[name]


def set_options_headers(handler: RequestHandler) -> None:
    """CORS preflight help: allow the SDK's headers and credentials."""
    current = handler._headers.get("Access-Control-Allow-Headers", "")  # noqa: SLF001
    present = [h.strip() for h in current.split(",") if h.strip()]
    lowered = {h.lower() for h in present}
    for name in (ANTI_CSRF_HEADER, SDK_NAME_HEADER, SDK_VERSION_HEADER):
        if name not in lowered:
            present.append(name)
    handler.set_header("Access-Control-Allow-Headers", ", ".join(present))
    handler.set_header("Access-Control-Allow-Credentials", "true")
