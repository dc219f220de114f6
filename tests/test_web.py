"""The Tornado layer and the wire contract (SPEC §6-§7), over real HTTP."""

from __future__ import annotations

import contextlib
import json
from typing import Any, AsyncIterator, Optional

import pytest
import tornado.httpserver
import tornado.testing
import tornado.web
from tornado.httpclient import AsyncHTTPClient

import tornado_supertokens as st
from tornado_supertokens.clock import ManualClock

from helpers import CookieJar, set_cookie_headers


class Login(tornado.web.RequestHandler):
    def check_xsrf_cookie(self) -> None:
        """This test app's JSON login is exempt from Tornado's _xsrf check."""

    async def post(self) -> None:
        body = json.loads(self.request.body or b"{}")
        session = await st.create_new_session(
            self, body["user"], body.get("payload"), body.get("info")
        )
        self.write({"handle": session.handle})


class Me(st.SessionRequestHandler):
    async def get(self) -> None:
        s = self.session
        self.write({"user": s.user_id, "payload": s.jwt_payload, "handle": s.handle})

    async def post(self) -> None:
        self.write({"ok": True, "user": self.session.user_id})


class Maybe(st.SessionRequestHandler):
    session_required = False

    async def get(self) -> None:
        self.write({"user": self.session.user_id if self.session else None})


class PostOnly(st.SessionRequestHandler):
    session_required = {"POST"}
    anti_csrf_methods = ()

    async def get(self) -> None:
        self.write({"user": self.session.user_id if self.session else None})

    async def post(self) -> None:
        self.write({"user": self.session.user_id})


class Info(st.SessionRequestHandler):
    anti_csrf_methods = ()

    async def get(self) -> None:
        self.write({"info": await self.session.get_session_info()})


class Logout(st.SessionRequestHandler):
    async def post(self) -> None:
        await self.session.revoke_session()
        self.write({})


class Authenticated(st.SessionRequestHandler):
    session_required = False

    def get_login_url(self) -> str:
        return "/login-page"

    @tornado.web.authenticated
    async def get(self) -> None:
        self.write({"user": self.current_user.user_id})


class Broken(st.SessionRequestHandler):
    anti_csrf_methods = ()

    async def get(self) -> None:
        raise st.GeneralError("a bug, with secret internals")


class Options(tornado.web.RequestHandler):
    def options(self) -> None:
        self.set_header("Access-Control-Allow-Headers", "content-type")
        st.set_relevant_headers_for_options_api(self)
        st.set_relevant_headers_for_options_api(self)
        self.set_status(204)


class TheftAware(st.RefreshHandler):
    thefts: list = []

    async def on_token_theft_detected(self, session_handle: str, user_id: Any) -> None:
        TheftAware.thefts.append((session_handle, user_id))
        await self.supertokens.revoke_all_sessions_for_user(user_id)


def make_app(instance: st.SuperTokens, **settings: Any) -> tornado.web.Application:
    return tornado.web.Application(
        [
            (r"/login", Login),
            (r"/api/me", Me),
            (r"/api/maybe", Maybe),
            (r"/api/post-only", PostOnly),
            (r"/api/info", Info),
            (r"/api/logout", Logout),
            (r"/api/authenticated", Authenticated),
            (r"/api/options", Options),
            (r"/api/broken", Broken),
            (r"/api/refresh", TheftAware),
        ],
        supertokens=instance,
        **settings,
    )


class Client:
    """An HTTP client with a cookie jar and the SDK's anti-csrf habit."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = CookieJar()
        self.anti_csrf: Optional[str] = None
        self.http = AsyncHTTPClient()

    async def call(
        self, method: str, path: str, body: Any = None, headers: Optional[dict] = None,
        csrf: bool = True, cookie: Optional[str] = None,
    ) -> Any:
        h = {"Cookie": self.jar.header(path) if cookie is None else cookie}
        if csrf and self.anti_csrf:
            h["anti-csrf"] = self.anti_csrf
        h.update(headers or {})
        response = await self.http.fetch(
            self.base + path,
            method=method,
            headers=h,
            body=None if method in ("GET", "OPTIONS") else json.dumps(body or {}),
            raise_error=False,
            follow_redirects=False,
        )
        self.jar.update(response)
        if response.headers.get("anti-csrf"):
            self.anti_csrf = response.headers["anti-csrf"]
        return response

    async def login(self, user: Any = "alice", **extra: Any) -> Any:
        r = await self.call("POST", "/login", {"user": user, **extra})
        assert r.code == 200, r.body
        return r


@contextlib.asynccontextmanager
async def serve(app: tornado.web.Application) -> AsyncIterator[str]:
    sock, port = tornado.testing.bind_unused_port()
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets([sock])
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        await server.close_all_connections()


@contextlib.asynccontextmanager
async def running(make_st: Any, overrides: Optional[dict] = None, clock: Any = None,
                  **settings: Any) -> AsyncIterator[tuple[Client, st.SuperTokens]]:
    instance = await make_st(overrides, clock=clock)
    async with serve(make_app(instance, **settings)) as base:
        yield Client(base), instance


# -- create -------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_create_sets_three_cookies_and_headers_exactly(make_st):
    overrides = {
        "cookie": {"domain": "example.com", "secure": True, "sameSite": "strict"},
        "tokens": {"accessToken": {"accessTokenPath": "/api"},
                   "refreshToken": {"renewTokenPath": "/api/refresh"}},
    }
    async with running(make_st, overrides) as (client, instance):
        r = await client.login("alice")
    cookies = set_cookie_headers(r)
    assert set(cookies) == {"sAccessToken", "sRefreshToken", "sIdRefreshToken"}
    access, refresh, idr = cookies["sAccessToken"], cookies["sRefreshToken"], cookies["sIdRefreshToken"]
    for c in (access, refresh, idr):
        assert c["domain"] == "example.com"
        assert c["secure"] is True
        assert c["samesite"] == "Strict"
        assert c["value"]
    assert access["path"] == "/api" and idr["path"] == "/api"
    assert refresh["path"] == "/api/refresh"
    assert access.get("httponly") is True and refresh.get("httponly") is True
    assert "httponly" not in idr
    id_value, _, id_expiry = r.headers["id-refresh-token"].partition(";")
    assert id_value == idr["value"]
    assert _expires_ms(idr) == int(id_expiry) // 1000 * 1000
    assert _expires_ms(refresh) == _expires_ms(idr)
    assert _expires_ms(access) < _expires_ms(refresh)
    assert r.headers["anti-csrf"]
    exposed = {h.strip() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"id-refresh-token", "anti-csrf"} <= exposed


def _expires_ms(cookie: dict) -> int:
    from email.utils import parsedate_to_datetime

    return int(parsedate_to_datetime(cookie["expires"]).timestamp() * 1000)


@pytest.mark.gen_test
async def test_secure_false_and_default_samesite_lax(make_st):
    async with running(make_st) as (client, _):
        r = await client.login()
    for c in set_cookie_headers(r).values():
        assert "secure" not in c
        assert c["samesite"] == "Lax"


@pytest.mark.gen_test
async def test_cookie_values_are_url_encoded_and_read_back(make_st):
    # A user-supplied signing key getter makes no difference to the encoding;
    # what matters is that values survive quote/unquote, like the original's.
    async with running(make_st) as (client, _):
        await client.login("bob", payload={"name": "b/o+b="})
        for name in ("sAccessToken", "sIdRefreshToken"):
            raw = client.jar.get(name)
            assert raw and all(ch not in raw for ch in "=/+;, ")
        r = await client.call("GET", "/api/me")
        assert r.code == 200 and json.loads(r.body)["payload"] == {"name": "b/o+b="}


@pytest.mark.gen_test
async def test_login_on_a_request_with_a_session_revokes_it(make_st):
    async with running(make_st) as (client, instance):
        first = json.loads((await client.login("eve")).body)["handle"]
        second = json.loads((await client.login("eve")).body)["handle"]
    assert first != second
    assert await instance.engine.get_all_session_handles_for_user("eve") == [second]


# -- verify -------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_protected_get_and_csrf_protected_post(make_st):
    async with running(make_st) as (client, _):
        await client.login("carol", payload={"role": "x"})
        r = await client.call("GET", "/api/me", csrf=False)  # GET: no anti-csrf needed
        assert r.code == 200
        assert json.loads(r.body)["user"] == "carol"
        assert json.loads(r.body)["payload"] == {"role": "x"}
        r = await client.call("POST", "/api/me", csrf=False)
        assert r.code == 440
        assert r.reason == "Session Expired"
        assert "Set-Cookie" not in r.headers  # try-refresh keeps cookies
        r = await client.call("POST", "/api/me", headers={"anti-csrf": "forged"}, csrf=False)
        assert r.code == 440
        r = await client.call("POST", "/api/me")
        assert r.code == 200


@pytest.mark.gen_test
async def test_no_id_refresh_cookie_is_unauthorised_and_clears(make_st):
    async with running(make_st) as (client, _):
        await client.login()
        access = client.jar.get("sAccessToken")
        r = await client.call("GET", "/api/me", cookie=f"sAccessToken={access}")
    assert r.code == 440
    assert json.loads(r.body)["type"] == "UNAUTHORISED"
    _assert_cleared(r)


@pytest.mark.gen_test
async def test_no_cookies_at_all_is_unauthorised(make_st):
    async with running(make_st) as (client, _):
        r = await client.call("GET", "/api/me")
    assert r.code == 440 and json.loads(r.body)["type"] == "UNAUTHORISED"
    _assert_cleared(r)


@pytest.mark.gen_test
async def test_no_access_token_but_id_refresh_is_try_refresh_cookies_kept(make_st):
    async with running(make_st) as (client, _):
        await client.login()
        idr = client.jar.get("sIdRefreshToken")
        r = await client.call("GET", "/api/me", cookie=f"sIdRefreshToken={idr}")
    assert r.code == 440
    assert json.loads(r.body)["type"] == "TRY_REFRESH_TOKEN"
    assert "Set-Cookie" not in r.headers
    assert "id-refresh-token" not in r.headers


def _assert_cleared(r: Any) -> None:
    cookies = set_cookie_headers(r)
    assert set(cookies) == {"sAccessToken", "sRefreshToken", "sIdRefreshToken"}
    for c in cookies.values():
        assert c["value"] in ("", "\"\"")
        assert _expires_ms(c) <= 1000
    assert r.headers["id-refresh-token"] == "remove"
    assert "id-refresh-token" in r.headers["Access-Control-Expose-Headers"]


BAD_ACCESS_COOKIES = [
    "garbage",
    "a.b.c",
    "%ZZ%",
    "\"quoted\"",
    "x" * 9000,
    "eyJhbGciOiJub25lIn0.eyJleHAiOjk5OTk5OTk5OTl9.",
    "é" * 10,
]


@pytest.mark.parametrize("bad", BAD_ACCESS_COOKIES)
@pytest.mark.gen_test
async def test_malformed_access_cookie_is_440_never_500(make_st, bad):
    async with running(make_st) as (client, _):
        await client.login()
        idr = client.jar.get("sIdRefreshToken")
        r = await client.call(
            "GET", "/api/me", cookie=f"sIdRefreshToken={idr}; sAccessToken={bad}"
        )
    assert r.code == 440
    assert json.loads(r.body)["type"] == "TRY_REFRESH_TOKEN"


@pytest.mark.gen_test
async def test_oversized_cookie_header_never_500(make_st):
    async with running(make_st) as (client, _):
        await client.login()
        cookie = client.jar.header("/api/me") + "; junk=" + "y" * 20000
        r = await client.call("GET", "/api/me", cookie=cookie)
    assert r.code in (200, 440, 431)


@pytest.mark.gen_test
async def test_duplicated_access_cookie_the_genuine_one_wins(make_st):
    async with running(make_st) as (client, _):
        await client.login("dup")
        good = client.jar.get("sAccessToken")
        idr = client.jar.get("sIdRefreshToken")
        for order in (f"sAccessToken=forged; sAccessToken={good}",
                      f"sAccessToken={good}; sAccessToken=forged"):
            r = await client.call("GET", "/api/me", cookie=f"{order}; sIdRefreshToken={idr}")
            assert r.code == 200 and json.loads(r.body)["user"] == "dup"
        r = await client.call(
            "GET", "/api/me", cookie=f"sAccessToken=a; sAccessToken=b; sIdRefreshToken={idr}"
        )
        assert r.code == 440


@pytest.mark.gen_test
async def test_duplicated_refresh_cookie_is_440_never_500(make_st):
    async with running(make_st) as (client, _):
        await client.login()
        good = client.jar.get("sRefreshToken")
        r = await client.call("POST", "/api/refresh",
                              cookie=f"sRefreshToken={good}; sRefreshToken=other")
    assert r.code == 440


@pytest.mark.parametrize("bad", ["garbage", "%00%01", "x" * 2000, "", "AAAA"])
@pytest.mark.gen_test
async def test_malformed_refresh_cookie_is_440_unauthorised(make_st, bad):
    async with running(make_st) as (client, _):
        r = await client.call("POST", "/api/refresh", cookie=f"sRefreshToken={bad}")
    assert r.code == 440
    assert json.loads(r.body)["type"] == "UNAUTHORISED"
    _assert_cleared(r)


@pytest.mark.gen_test
async def test_optional_session(make_st):
    async with running(make_st) as (client, _):
        r = await client.call("GET", "/api/maybe")
        assert r.code == 200 and json.loads(r.body)["user"] is None
        r = await client.call("GET", "/api/post-only")
        assert r.code == 200 and json.loads(r.body)["user"] is None
        r = await client.call("POST", "/api/post-only")
        assert r.code == 440
        await client.login("opt")
        r = await client.call("GET", "/api/maybe")
        assert json.loads(r.body)["user"] == "opt"
        r = await client.call("POST", "/api/post-only", csrf=False)  # anti-csrf off here
        assert r.code == 200 and json.loads(r.body)["user"] == "opt"


@pytest.mark.gen_test
async def test_authenticated_decorator_sees_current_user(make_st):
    async with running(make_st) as (client, _):
        r = await client.call("GET", "/api/authenticated")
        assert r.code == 302 and r.headers["Location"].startswith("/login-page")
        await client.login("auth")
        r = await client.call("GET", "/api/authenticated")
        assert r.code == 200 and json.loads(r.body)["user"] == "auth"


@pytest.mark.gen_test
async def test_configurable_session_expired_status(make_st):
    async with running(make_st, {"sessionExpiredStatusCode": 401}) as (client, _):
        r = await client.call("GET", "/api/me")
    assert r.code == 401


# -- refresh and promotion ------------------------------------------------------------


@pytest.mark.gen_test
async def test_refresh_sets_new_tokens_and_id_changes(make_st):
    async with running(make_st) as (client, _):
        login = await client.login("dan")
        first_id = login.headers["id-refresh-token"].split(";")[0]
        r = await client.call("POST", "/api/refresh", csrf=False)
        assert r.code == 200
        cookies = set_cookie_headers(r)
        assert set(cookies) == {"sAccessToken", "sRefreshToken", "sIdRefreshToken"}
        new_id, _, expiry = r.headers["id-refresh-token"].partition(";")
        assert new_id != first_id and new_id == cookies["sIdRefreshToken"]["value"]
        assert int(expiry) > 0
        assert r.headers["anti-csrf"] and r.headers["anti-csrf"] != login.headers["anti-csrf"]
        assert cookies["sRefreshToken"]["path"] == "/api/refresh"
        # The child's access token promotes: a new sAccessToken only (the wire
        # contract: sRefreshToken on create and refresh); the session id and
        # anti-csrf stay.
        refresh_before = client.jar.get("sRefreshToken")
        r = await client.call("GET", "/api/me")
        assert r.code == 200
        promoted = set_cookie_headers(r)
        assert set(promoted) == {"sAccessToken"}
        assert "id-refresh-token" not in r.headers and "anti-csrf" not in r.headers
        # The jar's refresh token, now the current one, refreshes.
        assert client.jar.get("sRefreshToken") == refresh_before
        assert (await client.call("POST", "/api/refresh")).code == 200
        assert (await client.call("GET", "/api/me")).code == 200
        r = await client.call("GET", "/api/me")
        assert r.code == 200 and "Set-Cookie" not in r.headers


@pytest.mark.gen_test
async def test_refresh_after_access_expiry(make_st):
    clock = ManualClock()
    async with running(make_st, {"tokens": {"accessToken": {"validity": 10}}}, clock) as (client, _):
        await client.login("exp")
        clock.advance(seconds=11)
        r = await client.call("GET", "/api/me")
        assert r.code == 440 and json.loads(r.body)["type"] == "TRY_REFRESH_TOKEN"
        assert (await client.call("POST", "/api/refresh")).code == 200
        assert (await client.call("GET", "/api/me")).code == 200


@pytest.mark.gen_test
async def test_refresh_works_with_tornado_xsrf_cookies(make_st):
    async with running(make_st, xsrf_cookies=True) as (client, instance):
        result = await instance.engine.create_new_session("x")
        cookie = (f"sRefreshToken={result.tokens.refresh_token.value}")
        r = await client.call("POST", "/api/refresh", cookie=cookie)
    assert r.code == 200


@pytest.mark.gen_test
async def test_theft_clears_cookies_and_calls_hook(make_st):
    TheftAware.thefts.clear()
    clock = ManualClock()
    async with running(make_st, clock=clock) as (client, instance):
        await client.login("vic")
        old_refresh = client.jar.get("sRefreshToken")
        other = await instance.engine.create_new_session("vic")
        assert (await client.call("POST", "/api/refresh")).code == 200
        assert (await client.call("GET", "/api/me")).code == 200  # promotes the child
        clock.advance(seconds=21)  # past the rotation grace period
        r = await client.call("POST", "/api/refresh", cookie=f"sRefreshToken={old_refresh}")
        assert r.code == 440
        assert json.loads(r.body)["type"] == "TOKEN_THEFT_DETECTED"
        _assert_cleared(r)
        handle = json.loads((await client.call("GET", "/api/me")).body)
        assert handle.get("type") == "UNAUTHORISED"
        assert TheftAware.thefts and TheftAware.thefts[0][1] == "vic"
        # The hook revoked every session of the user.
        assert await instance.engine.get_all_session_handles_for_user("vic") == []
        assert other.session.handle


# -- revoke / logout ----------------------------------------------------------------


@pytest.mark.gen_test
async def test_logout_clears_cookies_even_if_row_is_gone(make_st):
    async with running(make_st) as (client, instance):
        login = json.loads((await client.login("leo")).body)
        await instance.engine.revoke_session(login["handle"])
        r = await client.call("POST", "/api/logout")
        assert r.code == 200
        _assert_cleared(r)
        assert client.jar.get("sAccessToken") is None
        r = await client.call("GET", "/api/me")
        assert r.code == 440


@pytest.mark.gen_test
async def test_handler_error_from_session_method_maps_to_status(make_st):
    async with running(make_st) as (client, instance):
        login = json.loads((await client.login("ina", info={"a": 1})).body)
        r = await client.call("GET", "/api/info")
        assert json.loads(r.body)["info"] == {"a": 1}
        await instance.engine.revoke_session(login["handle"])
        r = await client.call("GET", "/api/info")  # no blacklisting: verify passes, info fails
        assert r.code == 440 and json.loads(r.body)["type"] == "UNAUTHORISED"
        _assert_cleared(r)


# -- options ---------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_options_headers_merge_and_never_duplicate(make_st):
    async with running(make_st) as (client, _):
        r = await client.call("OPTIONS", "/api/options")
    allowed = [h.strip() for h in r.headers["Access-Control-Allow-Headers"].split(",")]
    assert allowed == ["content-type", "anti-csrf", "supertokens-sdk-name", "supertokens-sdk-version"]
    assert r.headers.get_list("Access-Control-Allow-Credentials") == ["true"]


# -- storage down ----------------------------------------------------------------------


@pytest.mark.gen_test
async def test_database_down_is_503_and_cookies_kept(make_st, pg_params):
    from helpers import make_pool

    pool = await make_pool(pg_params)
    instance = await make_st({"tokens": {"accessToken": {"blacklisting": True}}}, pool=pool)
    async with serve(make_app(instance)) as base:
        client = Client(base)
        await client.login("dbdown")
        pool.close()
        await pool.wait_closed()
        for method, path in (("GET", "/api/me"), ("POST", "/api/refresh")):
            r = await client.call(method, path)
            assert r.code == 503, (path, r.code, r.body)
            assert "Set-Cookie" not in r.headers
            assert b"Traceback" not in r.body


# -- refresh endpoint CSRF ----------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "null"},
    ],
)
@pytest.mark.gen_test
async def test_cross_site_refresh_is_refused_and_changes_nothing(make_st, headers):
    async with running(make_st, xsrf_cookies=True) as (client, instance):
        await client.login("csrf")
        refresh_before = client.jar.get("sRefreshToken")
        r = await client.call("POST", "/api/refresh", headers=headers, csrf=False)
        assert r.code == 403
        assert "Set-Cookie" not in r.headers
        # Nothing rotated: the same refresh token is still the current one.
        r = await client.call("POST", "/api/refresh",
                              headers={"supertokens-sdk-name": "website"}, csrf=False)
        assert r.code == 200
        assert client.jar.get("sRefreshToken") != refresh_before


@pytest.mark.gen_test
async def test_same_origin_and_sdk_refresh_are_accepted(make_st):
    async with running(make_st, xsrf_cookies=True) as (client, _):
        await client.login("ok")
        host = client.base.split("//", 1)[1]
        r = await client.call("POST", "/api/refresh", headers={"Origin": f"http://{host}"})
        assert r.code == 200
        r = await client.call("POST", "/api/refresh", headers={
            "Origin": "https://app.example", "Sec-Fetch-Site": "cross-site",
            "supertokens-sdk-name": "website"})
        assert r.code == 200


@pytest.mark.gen_test
async def test_a_verified_request_leaves_no_reference_cycle(make_st):
    """Handler and session must not form a cycle: every request would then
    wait for the cyclic garbage collector (a measurable cost per request)."""
    import gc

    async with running(make_st) as (client, _):
        await client.login("gc")
        await client.call("GET", "/api/me")
        gc.collect()
        gc.disable()
        try:
            for _ in range(30):
                assert (await client.call("GET", "/api/me")).code == 200
            assert gc.collect() < 30  # with a cycle: dozens of objects per request
        finally:
            gc.enable()


@pytest.mark.gen_test
async def test_general_error_is_500_with_cookies_kept_and_no_internals(make_st):
    async with running(make_st) as (client, _):
        await client.login("bug")
        r = await client.call("GET", "/api/broken")
    assert r.code == 500
    assert json.loads(r.body) == {"message": "internal error", "type": "GENERAL_ERROR"}
    assert "Set-Cookie" not in r.headers and "id-refresh-token" not in r.headers
    assert b"secret internals" not in r.body and b"Traceback" not in r.body
