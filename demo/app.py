"""The demo application: ``make_app(st)`` builds it around a started instance.

Routes (all JSON APIs answer JSON, never a traceback):

=======================  =========================================================
``GET /``                the page, served to anyone; its JavaScript asks the SDK
                         (``supertokens.doesSessionExist()``) what to show
``POST /api/login``      form field ``user`` -> ``create_new_session``
``GET /api/me``          user id, session handle, JWT payload, counter
``GET|PUT /api/session-info``  the session's editable data (PUT: anti-CSRF)
``POST /api/counter``    a CSRF-protected action (anti-CSRF header required)
``POST /api/logout``     revokes the session and clears its cookies
``GET /api/sessions``    the current user's sessions
``DELETE /api/sessions/<handle>``  revoke one of the current user's sessions
``POST /api/refresh``    :class:`tornado_supertokens.RefreshHandler`
=======================  =========================================================
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from typing import Any, Dict, Optional, Type

import tornado.web

import tornado_supertokens
from tornado_supertokens import (
    RefreshHandler,
    SessionRequestHandler,
    StorageUnavailableError,
    SuperTokens,
    UnauthorisedError,
)
from tornado_supertokens.web import SETTINGS_KEY, instance_for

HERE = Path(__file__).resolve().parent
TEMPLATE_PATH = HERE / "templates"
STATIC_PATH = HERE / "static"
SDK_BUNDLE = STATIC_PATH / "supertokens.js"

MAX_USER_NAME = 64
MAX_SESSION_INFO_BYTES = 4096
HANDLE_RE = r"[0-9a-fA-F-]{36}"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


class DemoState:
    """In-memory state of the demo: one counter per session handle."""

    def __init__(self) -> None:
        self.counters: Dict[str, int] = {}


class ApiHandler(tornado.web.RequestHandler):
    """JSON errors and a few security headers for every demo handler."""

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Cache-Control", "no-store")

    @property
    def st(self) -> SuperTokens:
        return instance_for(self)

    @property
    def state(self) -> DemoState:
        return self.settings["demo_state"]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish({"message": self._reason})

    def json_body(self) -> Any:
        try:
            return json.loads(self.request.body or b"null")
        except ValueError:
            raise tornado.web.HTTPError(400, reason="the body must be JSON") from None


class SessionApiHandler(SessionRequestHandler, ApiHandler):
    """A JSON API that needs a session (anti-CSRF checked on unsafe methods)."""

    session: tornado_supertokens.WebSession


class PageHandler(ApiHandler):
    """The single page. Served to anyone: the page's script decides what to show."""

    def get(self) -> None:
        xsrf_enabled = bool(self.settings.get("xsrf_cookies"))
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.set_header("X-Frame-Options", "DENY")
        self.render(
            "index.html",
            refresh_url=self.st.config.tokens.refresh_token.renew_token_path,
            expired_status=self.st.config.session_expired_status_code,
            access_validity=int(self.st.config.tokens.access_token.validity_seconds),
            blacklisting=self.st.config.tokens.access_token.blacklisting,
            xsrf_token=self.xsrf_token.decode() if xsrf_enabled else None,
        )


class LoginHandler(ApiHandler):
    """``POST /api/login`` with form field ``user``: starts a session for that name.

    No password: this is a demo of sessions, not of authentication. With
    ``xsrf_cookies`` on, the form also carries Tornado's ``_xsrf``.
    """

    async def post(self) -> None:
        user = self.get_body_argument("user", "").strip()
        if not user:
            raise tornado.web.HTTPError(400, reason="enter a user name")
        if len(user) > MAX_USER_NAME or not user.isprintable():
            raise tornado.web.HTTPError(
                400, reason=f"a user name is at most {MAX_USER_NAME} printable characters"
            )
        try:
            session = await tornado_supertokens.create_new_session(
                self,
                user,
                jwt_payload={"name": user, "role": "demo-user", "loginAt": _now_iso()},
                session_info={
                    "note": "edit me: this is stored in the database, per session",
                    "createdAt": _now_iso(),
                    "userAgent": self.request.headers.get("User-Agent", "")[:200],
                },
            )
        except StorageUnavailableError:
            raise tornado.web.HTTPError(503, reason="the database is unavailable") from None
        self.write({"userId": session.user_id, "handle": session.handle})


class MeHandler(SessionApiHandler):
    async def get(self) -> None:
        self.write(
            {
                "userId": self.session.user_id,
                "handle": self.session.handle,
                "jwtPayload": self.session.jwt_payload,
                "counter": self.state.counters.get(self.session.handle, 0),
            }
        )


class SessionInfoHandler(SessionApiHandler):
    """The session's data: readable with GET, replaced with PUT ``{"sessionInfo": ...}``."""

    async def get(self) -> None:
        self.write({"sessionInfo": await self.session.get_session_info()})

    async def put(self) -> None:
        if len(self.request.body) > MAX_SESSION_INFO_BYTES:
            raise tornado.web.HTTPError(413, reason=f"at most {MAX_SESSION_INFO_BYTES} bytes")
        body = self.json_body()
        if not isinstance(body, dict) or "sessionInfo" not in body:
            raise tornado.web.HTTPError(400, reason='send {"sessionInfo": <any JSON value>}')
        await self.session.update_session_info(body["sessionInfo"])
        self.write({"sessionInfo": body["sessionInfo"]})


class CounterHandler(SessionApiHandler):
    """A state-changing action: only with the anti-CSRF header (the SDK adds it)."""

    async def post(self) -> None:
        handle = self.session.handle
        self.state.counters[handle] = self.state.counters.get(handle, 0) + 1
        self.write({"counter": self.state.counters[handle]})


class LogoutHandler(SessionApiHandler):
    async def post(self) -> None:
        await self.session.revoke_session()  # also clears the cookies
        self.state.counters.pop(self.session.handle, None)
        self.write({"message": "signed out"})


class SessionsHandler(SessionApiHandler):
    """The current user's sessions (handles and their session info)."""

    async def get(self) -> None:
        handles = await self.st.get_all_session_handles_for_user(self.session.user_id)
        sessions = []
        for handle in handles:
            try:
                info = await self.st.get_session_info(handle)
            except UnauthorisedError:  # expired or revoked meanwhile
                continue
            sessions.append(
                {"handle": handle, "current": handle == self.session.handle, "sessionInfo": info}
            )
        sessions.sort(key=lambda s: (not s["current"], s["handle"]))
        self.write({"userId": self.session.user_id, "sessions": sessions})


class SessionHandler(SessionApiHandler):
    """``DELETE /api/sessions/<handle>``: revoke one of the current user's own sessions."""

    async def delete(self, handle: str) -> None:
        handle = handle.lower()
        own = await self.st.get_all_session_handles_for_user(self.session.user_id)
        if handle not in own:
            raise tornado.web.HTTPError(404, reason="no such session of yours")
        self.state.counters.pop(handle, None)
        if handle == self.session.handle:
            await self.session.revoke_session()  # clears this browser's cookies too
            self.write({"revoked": handle, "current": True})
            return
        await self.st.revoke_session_using_session_handle(handle)
        self.write({"revoked": handle, "current": False})


def make_app(
    st: SuperTokens,
    *,
    refresh_handler: Optional[Type[RefreshHandler]] = None,
    **settings: Any,
) -> tornado.web.Application:
    """The demo application around the started instance ``st``.

    ``refresh_handler`` replaces :class:`tornado_supertokens.RefreshHandler`
    (tests subclass it to count refreshes). Other keyword arguments are
    Tornado application settings, e.g. ``xsrf_cookies=True``,
    ``log_function=...`` or ``debug=True``.
    """
    renew_path = st.config.tokens.refresh_token.renew_token_path
    routes = [
        (r"/", PageHandler),
        (r"/api/login", LoginHandler),
        (r"/api/me", MeHandler),
        (r"/api/session-info", SessionInfoHandler),
        (r"/api/counter", CounterHandler),
        (r"/api/logout", LogoutHandler),
        (r"/api/sessions", SessionsHandler),
        (rf"/api/sessions/({HANDLE_RE})", SessionHandler),
        (re.escape(renew_path), refresh_handler or RefreshHandler),
    ]
    app_settings: Dict[str, Any] = {
        "template_path": str(TEMPLATE_PATH),
        "static_path": str(STATIC_PATH),
        SETTINGS_KEY: st,
        "demo_state": DemoState(),
    }
    app_settings.update(settings)
    return tornado.web.Application(routes, **app_settings)
