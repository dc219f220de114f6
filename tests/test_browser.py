"""The real supertokens-website@4.2.0 SDK in headless Chromium against the demo app.

The demo application (``demo.app.make_app``) is served from a background
thread (Playwright's sync API blocks this one) on ``localhost`` (the cookie
domain) with an instance made like the ``make_st`` fixture's (``base_config``:
private tables, dropped afterwards), a 10 s access-token validity and a
:class:`ManualClock`. Access tokens expire only when a test moves that clock,
never by waiting.

The server's clock starts an hour ahead of the wall clock: the browser drops
cookies by *its* clock, so this keeps it from dropping an access-token cookie
on its own while the server still considers the token valid.

Refreshes are counted server-side (every POST to the refresh endpoint).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import pytest

from tornado_supertokens import RefreshHandler
from tornado_supertokens.clock import ManualClock, SystemClock

from browser_support import (
    CHROMIUM_PATH,
    LoopThread,
    chromium_available,
    ensure_sdk_bundle,
    launch_browser,
    sdk_bundle_buildable,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not chromium_available(),
        reason=f"browser tests need Chromium at {CHROMIUM_PATH} (apt-get install chromium) "
        "and the playwright package (pip install playwright)",
    ),
    pytest.mark.skipif(
        not sdk_bundle_buildable(),
        reason="browser tests need node and npm to build the supertokens-website bundle",
    ),
]

ACCESS_VALIDITY_S = 10  # the configuration's minimum
SESSION_COOKIES = {"sAccessToken", "sRefreshToken", "sIdRefreshToken", "sIRTFrontend"}


# -- the server under test -------------------------------------------------------------


@dataclass
class DemoServer:
    url: str
    st: Any
    clock: ManualClock
    loop: LoopThread
    #: One dict per POST to the refresh endpoint: {"status": ...} (set as it answers).
    refreshes: List[Dict[str, Any]] = field(default_factory=list)
    #: (method, uri, status) of every response, recorded before it is sent.
    requests: List[tuple] = field(default_factory=list)
    #: (session handle, user id) of every theft the refresh handler reported.
    thefts: List[tuple] = field(default_factory=list)
    #: When set, the refresh handler waits (5 s at most) until it returns true,
    #: so that a test can make sure every racing call met the expired token.
    refresh_gate: Optional[Callable[[], bool]] = None
    _stop: Optional[Callable[[], None]] = None

    def expire_access_tokens(self) -> None:
        """Move the server's clock past the lifetime of every access token issued so far."""
        self.clock.advance(seconds=self.st.config.tokens.access_token.validity_seconds + 1)

    def pass_rotation_grace_period(self) -> None:
        """Move the clock past the window in which a just-rotated refresh token is still honoured."""
        grace_ms = getattr(self.st.config, "rotation_grace_ms", 0)
        self.clock.advance(ms=grace_ms + 1000)

    def statuses(self, method: str, uri: str) -> List[int]:
        return [s for (m, u, s) in list(self.requests) if m == method and u == uri]

    def count(self, method: str, uri_prefix: str, status: int) -> int:
        return sum(
            1 for (m, u, s) in list(self.requests)
            if m == method and u.startswith(uri_prefix) and s == status
        )

    def handles_of(self, user_id: Any) -> List[str]:
        return self.loop.run(self.st.engine.get_all_session_handles_for_user(user_id))


def _counting_refresh_handler(server: DemoServer) -> type:
    class CountingRefreshHandler(RefreshHandler):
        async def prepare(self) -> None:
            self._record = {"status": None}
            server.refreshes.append(self._record)
            gate = server.refresh_gate
            deadline = time.monotonic() + 5
            while gate is not None and not gate() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            parent = super().prepare()  # the library's own checks still apply
            if parent is not None:
                await parent

        def finish(self, chunk: Any = None) -> Any:
            record = getattr(self, "_record", None)
            if record is not None:
                record["status"] = self.get_status()  # before the client can see it
            return super().finish(chunk)

        def on_token_theft_detected(self, session_handle: str, user_id: Any) -> Any:
            server.thefts.append((session_handle, user_id))
            return super().on_token_theft_detected(session_handle, user_id)

    return CountingRefreshHandler


@pytest.fixture
def loop_thread() -> Any:
    """A loop in a background thread for the server (Playwright's sync API owns this one)."""
    thread = LoopThread().start()
    yield thread
    thread.stop()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(SystemClock().now_ms() + 3_600_000)


def _merge(base: dict, overrides: Optional[dict]) -> dict:
    out = dict(base)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def start_server(
    base_config: dict, pg_params: dict, loop_thread: LoopThread, clock: ManualClock
) -> Any:
    """``start_server(overrides=None, **app_settings)`` -> a listening :class:`DemoServer`.

    Like ``make_st`` (private tables, dropped afterwards), but the instance
    lives on ``loop_thread``: ``make_st`` closes its instances with
    ``io_loop.run_sync`` in this thread, which the sync Playwright API forbids.
    """
    import tornado.httpserver
    import tornado.netutil
    import tornado.web

    from demo.app import make_app
    from tornado_supertokens.supertokens import SuperTokens

    from helpers import drop_tables

    servers: List[DemoServer] = []
    instances: List[Any] = []
    tables = set(base_config["postgres"]["tables"].values())

    def start(overrides: Optional[dict] = None, **app_settings: Any) -> DemoServer:
        config = _merge(
            _merge(base_config, {"tokens": {"accessToken": {"validity": ACCESS_VALIDITY_S}}}),
            overrides,
        )
        tables.update(config["postgres"]["tables"].values())
        st = loop_thread.run(SuperTokens.create(config, clock=clock, start_cleanup=False))
        instances.append(st)
        server = DemoServer(url="", st=st, clock=clock, loop=loop_thread)

        class RecordResponses(tornado.web.OutputTransform):
            """Records each response as its headers are written (before the client sees it)."""

            def transform_first_chunk(self, status_code: int, headers: Any, chunk: bytes,
                                      finishing: bool) -> tuple:
                server.requests.append((self.request.method, self.request.uri, status_code))
                return status_code, headers, chunk

            def __init__(self, request: Any) -> None:
                self.request = request

        def listen() -> tuple:
            app = make_app(
                st,
                refresh_handler=_counting_refresh_handler(server),
                transforms=[RecordResponses],
                **app_settings,
            )
            sockets = tornado.netutil.bind_sockets(0, address="localhost")
            http = tornado.httpserver.HTTPServer(app)
            http.add_sockets(sockets)
            return http, sockets[0].getsockname()[1]

        http, port = loop_thread.run(listen)
        server.url = f"http://localhost:{port}"
        server._stop = http.stop
        servers.append(server)
        return server

    yield start

    async def shutdown() -> None:
        for server in servers:
            if server._stop is not None:
                server._stop()
        for st in instances:
            await st.close()

    loop_thread.run(shutdown())
    drop_tables(pg_params, *tables)


# -- the browser ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Any:
    ensure_sdk_bundle()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch_browser(p)
        try:
            yield b
        finally:
            b.close()


class Contexts:
    """Browser contexts (separate cookie jars and localStorage) made by one test."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self.made: List[Any] = []
        self.page_errors: List[str] = []

    def new(self) -> Any:
        context = self.browser.new_context()
        context.set_default_timeout(10_000)
        self.made.append(context)
        return context

    def page(self, context: Any, url: str) -> Any:
        """A new page of ``context`` showing the demo at ``url``, its script started."""
        page = context.new_page()
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        page.goto(url + "/")
        page.wait_for_selector("body:not([data-state='loading'])", state="attached")
        return page

    def close(self) -> None:
        for context in self.made:
            context.close()


@pytest.fixture
def contexts(browser: Any) -> Any:
    made = Contexts(browser)
    yield made
    made.close()
    assert made.page_errors == [], "uncaught errors in the page"


# -- page helpers -------------------------------------------------------------------------

FETCH_JS = """async ([url, init]) => {
    const r = await fetch(url, init || {});
    let body = null;
    try { body = await r.json(); } catch (e) {}
    return {status: r.status, body};
}"""


def sdk_fetch(page: Any, url: str, init: Optional[dict] = None) -> dict:
    """``fetch`` as patched by the SDK (anti-csrf added, refresh on 440)."""
    return page.evaluate(FETCH_JS, [url, init])


def raw_fetch(page: Any, url: str, init: Optional[dict] = None) -> dict:
    """The browser's own fetch, bypassing the SDK: no anti-csrf header, no refresh."""
    js = FETCH_JS.replace("await fetch(", "await supertokens.originalFetch(")
    return page.evaluate(js, [url, {"credentials": "include", **(init or {})}])


def login(page: Any, user: str) -> None:
    """Sign in through the demo's form, as a person would."""
    page.fill("#user", user)
    page.click("#login")
    page.wait_for_selector("body[data-state='signed-in']", state="attached")
    page.wait_for_selector(f"#user-id:text-is({json.dumps(user)})")


def session_exists(page: Any) -> bool:
    return page.evaluate("supertokens.doesSessionExist()")


def cookies(context: Any) -> Dict[str, dict]:
    return {c["name"]: c for c in context.cookies()}


def anti_csrf_in_storage(page: Any) -> Optional[str]:
    return page.evaluate("localStorage.getItem('anti-csrf-localstorage')")


def parallel_fetches(page: Any, url: str, n: int) -> None:
    """Start ``n`` SDK fetches without waiting; collect with :func:`collect`."""
    page.evaluate(
        """([url, n]) => {
            window.__results = Promise.all(Array.from({length: n}, () =>
                fetch(url).then(async r => ({status: r.status, body: await r.json()}))));
        }""",
        [url, n],
    )


def collect(page: Any) -> List[dict]:
    return page.evaluate("window.__results")


# -- tests ----------------------------------------------------------------------------------


def test_login_then_protected_call(start_server: Any, contexts: Contexts) -> None:
    server = start_server()
    context = contexts.new()
    page = contexts.page(context, server.url)
    assert page.evaluate("document.body.dataset.state") == "signed-out"
    assert session_exists(page) is False

    login(page, "alice")

    assert session_exists(page) is True
    assert json.loads(page.text_content("#jwt-payload"))["name"] == "alice"
    assert anti_csrf_in_storage(page)
    jar = cookies(context)
    assert SESSION_COOKIES <= set(jar)
    assert jar["sAccessToken"]["httpOnly"] and jar["sRefreshToken"]["httpOnly"]
    assert not jar["sIdRefreshToken"]["httpOnly"]
    assert jar["sRefreshToken"]["path"] == "/api/refresh"
    assert jar["sAccessToken"]["domain"] in ("localhost", ".localhost")

    result = sdk_fetch(page, "/api/me")
    assert result["status"] == 200
    assert result["body"]["userId"] == "alice"
    assert result["body"]["jwtPayload"]["role"] == "demo-user"
    assert server.refreshes == []


def test_expired_access_token_refreshes_exactly_once(start_server: Any, contexts: Contexts) -> None:
    server = start_server()
    context = contexts.new()
    page = contexts.page(context, server.url)
    login(page, "alice")
    id_before = cookies(context)["sIRTFrontend"]["value"]
    csrf_before = anti_csrf_in_storage(page)
    server.requests.clear()

    server.expire_access_tokens()
    result = sdk_fetch(page, "/api/me")

    assert result["status"] == 200 and result["body"]["userId"] == "alice"
    assert [r["status"] for r in server.refreshes] == [200]
    assert server.statuses("GET", "/api/me") == [440, 200]
    # The SDK took the new id-refresh-token and anti-csrf from the refresh response.
    assert cookies(context)["sIRTFrontend"]["value"] != id_before
    assert anti_csrf_in_storage(page) not in (None, csrf_before)

    # The new tokens work, for reads and for anti-CSRF-checked writes; no more refreshes.
    assert sdk_fetch(page, "/api/me")["status"] == 200
    assert sdk_fetch(page, "/api/counter", {"method": "POST"})["body"] == {"counter": 1}
    assert len(server.refreshes) == 1


def test_parallel_calls_after_expiry_cause_one_refresh(start_server: Any, contexts: Contexts) -> None:
    server = start_server()
    # The refresh waits until all five calls were answered 440.
    server.refresh_gate = lambda: server.count("GET", "/api/me", 440) >= 5
    page = contexts.page(contexts.new(), server.url)
    login(page, "alice")
    server.requests.clear()

    server.expire_access_tokens()
    parallel_fetches(page, "/api/me", 5)
    results = collect(page)

    assert [r["status"] for r in results] == [200] * 5
    assert all(r["body"]["userId"] == "alice" for r in results)
    assert [r["status"] for r in server.refreshes] == [200]
    assert sorted(server.statuses("GET", "/api/me")) == [200] * 5 + [440] * 5


def test_parallel_calls_in_two_tabs_cause_one_refresh(start_server: Any, contexts: Contexts) -> None:
    server = start_server()
    # The refresh (by whichever tab gets the lock) waits until all six calls were
    # answered 440, so the other tab must wait for it across tabs.
    server.refresh_gate = lambda: server.count("GET", "/api/me?tab=", 440) >= 6
    context = contexts.new()
    tab1 = contexts.page(context, server.url)
    login(tab1, "alice")
    tab2 = contexts.page(context, server.url)  # same cookies and localStorage
    assert tab2.evaluate("document.body.dataset.state") == "signed-in"
    tab2.wait_for_selector("#session-handle:not(:empty)")  # its page load is over
    server.requests.clear()

    server.expire_access_tokens()
    parallel_fetches(tab1, "/api/me?tab=1", 3)
    parallel_fetches(tab2, "/api/me?tab=2", 3)
    results = collect(tab1) + collect(tab2)

    assert [r["status"] for r in results] == [200] * 6
    assert [r["status"] for r in server.refreshes] == [200]
    # Both tabs really met the expired token and waited for the other's refresh.
    for tab in ("1", "2"):
        statuses = server.statuses("GET", f"/api/me?tab={tab}")
        assert sorted(statuses) == [200] * 3 + [440] * 3, (tab, statuses)


def test_logout_leaves_no_session_and_no_refresh_loop(start_server: Any, contexts: Contexts) -> None:
    server = start_server()
    context = contexts.new()
    page = contexts.page(context, server.url)
    login(page, "alice")
    assert len(server.handles_of("alice")) == 1

    page.click("#logout")
    page.wait_for_selector("body[data-state='signed-out']", state="attached")

    assert session_exists(page) is False
    assert not SESSION_COOKIES & set(cookies(context))
    assert anti_csrf_in_storage(page) is None
    assert server.handles_of("alice") == []

    # A protected call now gets the session-expired status, and nothing refreshes.
    assert sdk_fetch(page, "/api/me")["status"] == 440
    server.expire_access_tokens()
    assert sdk_fetch(page, "/api/me")["status"] == 440
    time.sleep(0.3)
    assert server.refreshes == []
    assert server.statuses("GET", "/api/me")[-2:] == [440, 440]
    assert session_exists(page) is False

    # A reload shows the sign-in form.
    page.reload()
    page.wait_for_selector("body[data-state='signed-out']", state="attached")
    assert server.refreshes == []


def test_post_without_anti_csrf_header_gets_440(start_server: Any, contexts: Contexts) -> None:
    server = start_server()
    context = contexts.new()
    page = contexts.page(context, server.url)
    login(page, "alice")

    bare = raw_fetch(page, "/api/counter", {"method": "POST"})
    assert bare["status"] == 440
    wrong = raw_fetch(page, "/api/counter", {"method": "POST", "headers": {"anti-csrf": "x" * 43}})
    assert wrong["status"] == 440
    # Try-refresh keeps the cookies: the session is intact.
    assert SESSION_COOKIES <= set(cookies(context))
    # A GET is not CSRF-checked.
    assert raw_fetch(page, "/api/me")["status"] == 200

    through_sdk = sdk_fetch(page, "/api/counter", {"method": "POST"})
    assert through_sdk == {"status": 200, "body": {"counter": 1}}
    assert server.refreshes == []  # the SDK's call carried the right header at once


def test_cross_site_refresh_is_refused(start_server: Any, contexts: Contexts) -> None:
    """A page of another site (127.0.0.1 is not localhost) POSTs to the refresh endpoint."""
    server = start_server()
    context = contexts.new()
    page = contexts.page(context, server.url)
    login(page, "alice")
    before = {name: c["value"] for name, c in cookies(context).items()}

    # Any document of the other site will do (the demo page's CSP would stop the call).
    other_site = context.new_page()
    other_site.goto(server.url.replace("localhost", "127.0.0.1") + "/static/style.css")
    other_site.evaluate(
        "url => fetch(url, {method: 'POST', mode: 'no-cors', credentials: 'include'})"
        ".then(() => true)",
        server.url + "/api/refresh",
    )

    assert [r["status"] for r in server.refreshes] == [403]
    assert {name: c["value"] for name, c in cookies(context).items()} == before
    assert sdk_fetch(page, "/api/me")["status"] == 200
    assert len(server.refreshes) == 1


# The theft tests use 60 s access tokens so that, after a refresh, the clock can
# pass the rotation grace period while A's new access token is still valid.
LONGER_ACCESS = {"tokens": {"accessToken": {"validity": 60}}}


def _steal_after_rotation(server: DemoServer, contexts: Contexts) -> tuple:
    """A signs in; its refresh token is copied; A refreshes and uses the new tokens;
    later B replays the copied (rotated-out) token. Returns (page_a, ctx_a, handle)."""
    ctx_a = contexts.new()
    page_a = contexts.page(ctx_a, server.url)
    login(page_a, "alice")
    handle = sdk_fetch(page_a, "/api/me")["body"]["handle"]
    stolen = [c for c in ctx_a.cookies() if c["name"] in ("sRefreshToken", "sIRTFrontend")]
    assert len(stolen) == 2

    # A refreshes (its refresh token rotates out) and uses the new tokens.
    server.expire_access_tokens()
    assert sdk_fetch(page_a, "/api/me")["status"] == 200
    assert sdk_fetch(page_a, "/api/me")["status"] == 200
    assert [r["status"] for r in server.refreshes] == [200]
    old_refresh = next(c["value"] for c in stolen if c["name"] == "sRefreshToken")
    assert cookies(ctx_a)["sRefreshToken"]["value"] != old_refresh
    server.pass_rotation_grace_period()

    # B replays the old refresh token (with the SDK's session marker, so it tries).
    ctx_b = contexts.new()
    page_b = contexts.page(ctx_b, server.url)
    ctx_b.add_cookies(stolen)
    assert session_exists(page_b) is True
    assert page_b.evaluate("supertokens.attemptRefreshingSession()") is False

    assert [r["status"] for r in server.refreshes] == [200, 440]
    assert server.thefts == [(handle, "alice")]
    assert not SESSION_COOKIES & set(cookies(ctx_b))
    assert session_exists(page_b) is False
    assert server.handles_of("alice") == []
    return page_a, ctx_a, handle


def test_replayed_refresh_token_ends_the_session_for_both(
    start_server: Any, contexts: Contexts
) -> None:
    server = start_server(LONGER_ACCESS)
    page_a, ctx_a, _ = _steal_after_rotation(server, contexts)

    # Without blacklisting A's access token stays valid until it expires...
    assert sdk_fetch(page_a, "/api/me")["status"] == 200
    # ...then A's refresh fails, and the SDK reports no session.
    server.expire_access_tokens()
    assert sdk_fetch(page_a, "/api/me")["status"] == 440
    assert [r["status"] for r in server.refreshes] == [200, 440, 440]
    assert session_exists(page_a) is False
    assert not SESSION_COOKIES & set(cookies(ctx_a))
    page_a.reload()
    page_a.wait_for_selector("body[data-state='signed-out']", state="attached")


def test_replayed_refresh_token_with_blacklisting_ends_the_session_at_once(
    start_server: Any, contexts: Contexts
) -> None:
    server = start_server(_merge(LONGER_ACCESS, {"tokens": {"accessToken": {"blacklisting": True}}}))
    page_a, ctx_a, _ = _steal_after_rotation(server, contexts)

    # A's very next call is refused although its access token has not expired,
    # and the SDK does not even try to refresh.
    assert sdk_fetch(page_a, "/api/me")["status"] == 440
    assert [r["status"] for r in server.refreshes] == [200, 440]
    assert session_exists(page_a) is False
    assert not SESSION_COOKIES & set(cookies(ctx_a))


def test_xsrf_cookies_login_protected_calls_and_refresh(start_server: Any, contexts: Contexts) -> None:
    server = start_server(xsrf_cookies=True)
    context = contexts.new()
    page = contexts.page(context, server.url)
    # Tornado's check is really on: a login without _xsrf is refused.
    assert raw_fetch(page, "/api/login", {"method": "POST", "body": "user=mallory", "headers": {
        "Content-Type": "application/x-www-form-urlencoded"}})["status"] == 403

    login(page, "alice")  # the form carries _xsrf
    assert sdk_fetch(page, "/api/me")["status"] == 200

    server.expire_access_tokens()
    page.click("#increment")  # POST with X-XSRFToken and anti-csrf; 440, refresh, retry
    page.wait_for_selector("#counter:text-is('1')")
    assert [r["status"] for r in server.refreshes] == [200]
    assert server.statuses("POST", "/api/counter") == [440, 200]
    assert sdk_fetch(page, "/api/me")["status"] == 200
    assert len(server.refreshes) == 1


def test_demo_page_session_info_counter_and_sessions(start_server: Any, contexts: Contexts) -> None:
    from playwright.sync_api import expect

    server = start_server()
    ctx_a, ctx_b, ctx_c = contexts.new(), contexts.new(), contexts.new()
    page_a = contexts.page(ctx_a, server.url)
    page_b = contexts.page(ctx_b, server.url)
    page_c = contexts.page(ctx_c, server.url)
    login(page_a, "carol")
    login(page_b, "carol")
    login(page_c, "dave")
    handle_b = page_b.text_content("#session-handle")
    handle_c = page_c.text_content("#session-handle")

    # Session info: edit, save (PUT through the SDK), and it survives a reload.
    page_a.fill("#session-info", '{"theme": "dark"}')
    page_a.click("#save-info")
    page_a.wait_for_selector("#status:text-is('Session info saved.')")
    page_a.reload()
    page_a.wait_for_selector("#session-handle:not(:empty)")
    assert json.loads(page_a.input_value("#session-info")) == {"theme": "dark"}

    page_a.click("#increment")
    page_a.wait_for_selector("#counter:text-is('1')")

    # Sessions of this user: both of carol's, this browser's marked, dave's absent.
    items = page_a.locator("#sessions li")
    assert items.count() == 2
    assert page_a.locator("#sessions li .tag").count() == 1
    assert handle_c not in page_a.text_content("#sessions")

    # Another user's session cannot be revoked from here.
    assert sdk_fetch(page_a, f"/api/sessions/{handle_c}", {"method": "DELETE"})["status"] == 404
    assert server.handles_of("dave") == [handle_c]

    # Revoke carol's other session from A.
    page_a.click(f"#sessions li[data-handle='{handle_b}'] button")
    expect(page_a.locator("#sessions li")).to_have_count(1)
    assert server.handles_of("carol") != [] and handle_b not in server.handles_of("carol")

    # B finds out at its next refresh; A carries on.
    server.expire_access_tokens()
    page_b.click("#reload")
    page_b.wait_for_selector("body[data-state='signed-out']", state="attached")
    assert session_exists(page_b) is False
    page_a.click("#reload")
    page_a.wait_for_selector("#status:text-is('Reloaded.')")
    assert page_a.evaluate("document.body.dataset.state") == "signed-in"

    # Revoking one's own session signs this browser out.
    own = page_a.text_content("#session-handle")
    page_a.click(f"#sessions li[data-handle='{own}'] button")
    page_a.wait_for_selector("body[data-state='signed-out']", state="attached")
    assert not SESSION_COOKIES & set(cookies(ctx_a))
    assert server.handles_of("carol") == []
