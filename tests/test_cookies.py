"""Cookie writing helpers of the wire contract (the HTTP-level rows are in test_web.py)."""

from __future__ import annotations

from email.utils import formatdate
from unittest.mock import Mock

from hypothesis import given
from hypothesis import strategies as st
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine
from tornado.web import Application, RequestHandler

from tornado_supertokens.config import parse_config
from tornado_supertokens.cookies import clear_session, http_date, set_tokens
from tornado_supertokens.session import SessionTokens, TokenInfo


@given(st.integers(min_value=0, max_value=253_402_300_799_999))  # up to 9999-12-31
def test_http_date_is_what_formatdate_writes(epoch_ms: int) -> None:
    assert http_date(epoch_ms) == formatdate(epoch_ms / 1000, usegmt=True)


def test_http_date_of_the_deletion_expiry() -> None:
    assert http_date(1000) == "Thu, 01 Jan 1970 00:00:01 GMT"
    assert http_date(1999) == "Thu, 01 Jan 1970 00:00:01 GMT"


# -- Tornado before 6.6 ----------------------------------------------------------


class HeadersOfTornado65(HTTPHeaders):
    """``HTTPHeaders`` as Tornado 6.5 deletes: KeyError for a header added twice
    (its ``__delitem__`` drops a cache entry that only one value creates)."""

    def __delitem__(self, name: str) -> None:
        if len(self.get_list(name)) > 1:
            raise KeyError(name)
        super().__delitem__(name)


def handler_with_old_headers() -> RequestHandler:
    app = Application()
    request = HTTPServerRequest(
        start_line=RequestStartLine("POST", "/api/refresh", "HTTP/1.1"),
        headers=HTTPHeaders({"Host": "example.com"}), connection=Mock())
    handler = RequestHandler(app, request)
    handler._headers = HeadersOfTornado65(handler._headers)
    return handler


def test_cookies_are_replaced_and_cleared_without_deleting_a_multi_valued_header() -> None:
    config = parse_config({
        "postgres": {"user": "u", "database": "d"},
        "tokens": {"refreshToken": {"renewTokenPath": "/api/refresh"}},
        "cookie": {"domain": "example.com"},
    })
    handler = handler_with_old_headers()
    tokens = SessionTokens(
        access_token=TokenInfo("access", 2_000_000_000_000),
        refresh_token=TokenInfo("refresh", 2_000_000_000_000),
        id_refresh_token=TokenInfo("id", 2_000_000_000_000),
        anti_csrf_token="csrf",
    )
    handler.add_header("Set-Cookie", "app=1; Path=/")
    set_tokens(handler, config, tokens)
    handler._headers.add("anti-csrf", "a second value")
    clear_session(handler, config)  # replaces all three cookies: raised KeyError before
    cookies = handler._headers.get_list("Set-Cookie")
    assert [c.split("=", 1)[0] for c in cookies] == [
        "app", "sAccessToken", "sRefreshToken", "sIdRefreshToken"]
    assert all("expires=Thu, 01 Jan 1970 00:00:01 GMT" in c for c in cookies[1:])
    assert "anti-csrf" not in handler._headers
    assert handler._headers["id-refresh-token"] == "remove"
