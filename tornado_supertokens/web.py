"""Tornado integration: the handler mixin, the refresh handler, and the Tornado forms.

>>> class MeHandler(SessionRequestHandler):
...     async def get(self):
...         self.write({"user": self.session.user_id})

Mount :class:`RefreshHandler` at ``tokens.refreshToken.renewTokenPath``.
Session errors become responses here and nowhere else: try-refresh is the
session-expired status (440 by default) with cookies kept; unauthorised and
token theft are the same status with cookies cleared; an unavailable
database is 503 and anything else 500, cookies kept, no traceback sent.
"""

from __future__ import annotations

import inspect
import weakref
from typing import Any, Collection, Optional, Union
from urllib.parse import urlsplit

import tornado.web

from . import cookies
from .exceptions import (
    GeneralError,
    StorageUnavailableError,
    SuperTokensError,
    TokenTheftDetectedError,
    TryRefreshTokenError,
    UnauthorisedError,
)
from .session import Session
from .supertokens import SuperTokens, get_instance

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_REFRESHED_BODY = b'{"message": "refreshed"}'  # what finish({"message": "refreshed"}) writes
SETTINGS_KEY = "supertokens"


def instance_for(handler: tornado.web.RequestHandler) -> SuperTokens:
    """The instance in ``application.settings["supertokens"]``, else the default one."""
    instance = handler.settings.get(SETTINGS_KEY)
    return instance if instance is not None else get_instance()


class WebSession(Session):
    """A :class:`Session` bound to the request it came from."""

    __slots__ = ("_handler", "_st")

    def __init__(self, session: Session, handler: tornado.web.RequestHandler, st: SuperTokens) -> None:
        self._engine = session._engine
        self.handle = session.handle
        self.user_id = session.user_id
        self.jwt_payload = session.jwt_payload
        # A weak reference: the handler holds the session (self.session,
        # current_user), and a cycle would leave every request to the cyclic
        # garbage collector.
        self._handler = weakref.ref(handler)
        self._st = st

    async def revoke_session(self) -> bool:
        """Delete the session and clear the request's cookies (even if it was gone)."""
        existed = await super().revoke_session()
        handler = self._handler()
        if handler is not None and not handler._finished:
            cookies.clear_session(handler, self._st.config)
        return existed


# -- Tornado forms of the core operations ---------------------------------------


async def create_new_session(
    handler: tornado.web.RequestHandler,
    user_id: Any,
    jwt_payload: Any = None,
    session_info: Any = None,
) -> WebSession:
    """Start a session and set its cookies and headers on ``handler``.

    A session the request already carries is revoked first (no fixation).
    """
    st = instance_for(handler)
    try:
        previous = cookies.read_cookie_values(handler, cookies.ACCESS_TOKEN_COOKIE)
    except cookies.CookieError:
        previous = []
    for token in previous:
        handle = await st.engine.session_handle_of(token)
        if handle is not None:
            await st.engine.revoke_session(handle)
    result = await st.engine.create_new_session(user_id, jwt_payload, session_info)
    try:
        cookies.set_tokens(handler, st.config, result.tokens)
    except GeneralError:
        await st.engine.revoke_session(result.session.handle)
        raise
    return WebSession(result.session, handler, st)


async def get_session(
    handler: tornado.web.RequestHandler, enable_csrf_protection: bool
) -> WebSession:
    """Verify the request's session; may set a new access token (promotion).

    Raises :class:`UnauthorisedError` (cookies cleared) when there is no
    session, :class:`TryRefreshTokenError` when the access token must be
    refreshed.
    """
    st = instance_for(handler)
    try:
        candidates = _access_token_candidates(handler)
        anti_csrf = cookies.read_anti_csrf_header(handler)
        result = None
        for i, token in enumerate(candidates):
            # Duplicated cookies (another path or a parent domain): the genuine one wins.
            try:
                result = await st.engine.get_session(token, anti_csrf, enable_csrf_protection)
                break
            except TryRefreshTokenError:
                if i == len(candidates) - 1:
                    raise
        assert result is not None
    except UnauthorisedError:
        cookies.clear_session(handler, st.config)
        raise
    if result.tokens.access_token is not None:  # a promotion
        cookies.set_tokens(handler, st.config, result.tokens)
    return WebSession(result.session, handler, st)


def _access_token_candidates(handler: tornado.web.RequestHandler) -> list[str]:
    """The request's access token(s), after the cookie checks of the wire contract."""
    try:
        id_refresh = cookies.read_cookie_values(handler, cookies.ID_REFRESH_TOKEN_COOKIE)
    except cookies.CookieError:
        raise TryRefreshTokenError("malformed sIdRefreshToken cookie") from None
    if not id_refresh:
        raise UnauthorisedError("no session: sIdRefreshToken cookie missing")
    try:
        candidates = cookies.read_cookie_values(handler, cookies.ACCESS_TOKEN_COOKIE)
    except cookies.CookieError:
        raise TryRefreshTokenError("malformed sAccessToken cookie") from None
    if not candidates:
        raise TryRefreshTokenError("access token missing")
    return candidates


def _session_if_cached(
    handler: tornado.web.RequestHandler, st: SuperTokens, enable_csrf_protection: bool
) -> Optional[WebSession]:
    """The request's session without any await, when this process already verified
    its access token; ``None`` sends the caller down the full path."""
    token = cookies.single_access_token(handler)
    if token is None:
        return None
    session = st.engine.get_session_if_cached(
        token, cookies.read_anti_csrf_header(handler), enable_csrf_protection
    )
    return WebSession(session, handler, st) if session is not None else None


async def refresh_session(handler: tornado.web.RequestHandler) -> WebSession:
    """Rotate the request's refresh token and set the new cookies and headers.

    On :class:`UnauthorisedError` and :class:`TokenTheftDetectedError` the
    cookies are cleared before the error propagates.
    """
    st = instance_for(handler)
    try:
        try:
            token = cookies.read_cookie(handler, cookies.REFRESH_TOKEN_COOKIE)
        except cookies.CookieError:
            raise UnauthorisedError("malformed or duplicated sRefreshToken cookie") from None
        if token is None:
            raise UnauthorisedError("no refresh token")
        result = await st.engine.refresh_session(token)
    except UnauthorisedError:
        cookies.clear_session(handler, st.config)
        raise
    cookies.set_tokens(handler, st.config, result.tokens)
    return WebSession(result.session, handler, st)


def set_relevant_headers_for_options_api(handler: tornado.web.RequestHandler) -> None:
    """For a CORS preflight: allow the SDK's headers, and credentials."""
    cookies.set_options_headers(handler)


# -- handlers ------------------------------------------------------------------


_UPPER_CACHE: dict[Any, frozenset[str]] = {}


def _upper(methods: Collection[str]) -> frozenset[str]:
    """``methods`` upper-cased, memoised for the (few) class attributes it is given."""
    try:
        return _UPPER_CACHE[methods]
    except (KeyError, TypeError):  # TypeError: an unhashable collection
        upper = frozenset(m.upper() for m in methods)
        try:
            if len(_UPPER_CACHE) < 256:
                _UPPER_CACHE[methods] = upper
        except TypeError:
            pass
        return upper


class _SessionErrorResponses(tornado.web.RequestHandler):
    """Turns session errors into the status codes of the wire contract."""

    def respond_to_session_error(self, exc: SuperTokensError) -> None:
        """Write the response for ``exc`` and finish the request."""
        st = self._st_or_none()
        expired = st.config.session_expired_status_code if st else 440
        if isinstance(exc, TokenTheftDetectedError):
            status, body = expired, {"message": "token theft detected", "type": "TOKEN_THEFT_DETECTED"}
        elif isinstance(exc, UnauthorisedError):
            status, body = expired, {"message": "unauthorised", "type": "UNAUTHORISED"}
        elif isinstance(exc, TryRefreshTokenError):
            status, body = expired, {"message": "try refresh token", "type": "TRY_REFRESH_TOKEN"}
        elif isinstance(exc, StorageUnavailableError):
            status, body = 503, {"message": "service unavailable", "type": "GENERAL_ERROR"}
        else:
            status, body = 500, {"message": "internal error", "type": "GENERAL_ERROR"}
        if isinstance(exc, GeneralError) and st is not None:
            st.logger.error(f"{type(exc).__name__} on {self.request.method} {self.request.path}", exc)
        self.set_status(status, reason="Session Expired" if status == expired else None)
        if isinstance(exc, UnauthorisedError) and st is not None:
            cookies.clear_session(self, st.config)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(body)

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, SuperTokensError) and not self._headers_written:
            self.clear()
            self.respond_to_session_error(exc)
            return
        super().send_error(status_code, **kwargs)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, SuperTokensError):
            return  # answered (and, for general errors, logged) by respond_to_session_error
        super().log_exception(typ, value, tb)

    @property
    def supertokens(self) -> SuperTokens:
        """The instance this handler works with (see :func:`instance_for`)."""
        return instance_for(self)

    def _st_or_none(self) -> Optional[SuperTokens]:
        try:
            return instance_for(self)
        except GeneralError:
            return None


class SessionRequestHandler(_SessionErrorResponses):
    """Verifies the session in ``prepare()``: ``self.session``, ``self.current_user``.

    Use it as a base class, or mix it in before another handler base::

        class CartHandler(SessionRequestHandler):
            session_required = {"POST", "DELETE"}   # GET works signed out too
            async def get(self):
                self.write({"signed_in": self.session is not None})

    Class attributes choose, per handler and per method, whether a session
    is required and whether the anti-CSRF header is checked. A session that
    is merely optional still answers try-refresh when its access token
    expired, so the SDK refreshes and retries instead of showing a
    signed-out page.
    """

    #: True (every method), False (none), or the set of methods that need a session.
    session_required: Union[bool, Collection[str]] = True
    #: Methods whose requests must carry the ``anti-csrf`` header.
    anti_csrf_methods: Collection[str] = UNSAFE_METHODS

    session: Optional[WebSession] = None

    def session_required_for(self, method: str) -> bool:
        required = self.session_required
        if isinstance(required, bool):
            return required
        return method.upper() in _upper(required)

    def anti_csrf_check_for(self, method: str) -> bool:
        return method.upper() in _upper(self.anti_csrf_methods)

    async def prepare(self) -> None:
        parent = super().prepare()
        if parent is not None and inspect.isawaitable(parent):
            await parent
        if self._finished:
            return
        self.session = None
        method = self.request.method or "GET"
        if method == "OPTIONS":
            return  # preflights carry no credentials
        try:
            csrf = self.anti_csrf_check_for(method)
            # A token this process verified before costs a look-up, no await.
            self.session = _session_if_cached(self, instance_for(self), csrf) or await get_session(
                self, csrf
            )
        except UnauthorisedError as exc:
            if self.session_required_for(method):
                self.respond_to_session_error(exc)
                return
        except SuperTokensError as exc:
            self.respond_to_session_error(exc)
            return
        self.current_user = self.session


class RefreshHandler(_SessionErrorResponses):
    """POST rotates the session's tokens. Mount it at ``renewTokenPath``.

    Cross-site request forgery: a forged refresh could rotate tokens or, worse,
    make a victim's browser present a token and be logged out. The SDK's
    refresh call carries no ``_xsrf`` token, so Tornado's check (with
    ``xsrf_cookies=True``) is replaced here by one that fits it: a request
    that carries the SDK's ``supertokens-sdk-name`` header (which a cross-site
    page can only send with the server's CORS approval) is accepted; without
    it, a request the browser marks as cross-site (``Sec-Fetch-Site``) or from
    a foreign ``Origin`` is refused with 403, touching no token and no cookie.
    Clients that are not browsers send neither and are accepted.

    A subclass that overrides ``prepare()`` must call ``await super().prepare()``
    first, or it loses this check.
    """

    def check_xsrf_cookie(self) -> None:
        """Tornado's ``_xsrf`` check does not apply: see :meth:`is_cross_site_forgery`."""

    def is_cross_site_forgery(self) -> bool:
        headers = self.request.headers
        if headers.get(cookies.SDK_NAME_HEADER):
            return False
        if headers.get("Sec-Fetch-Site", "").lower() in ("cross-site", "same-site"):
            return True
        origin = headers.get("Origin")
        if origin is None:
            return False
        return urlsplit(origin).netloc.lower() != (self.request.host or "").lower()

    async def prepare(self) -> None:
        parent = super().prepare()
        if inspect.isawaitable(parent):
            await parent
        if not self._finished and self.is_cross_site_forgery():
            self.set_status(403)
            self.finish({"message": "cross-site refresh refused", "type": "CROSS_SITE_REFUSED"})

    async def post(self) -> None:
        try:
            session = await refresh_session(self)
        except TokenTheftDetectedError as exc:
            try:
                result = self.on_token_theft_detected(exc.session_handle, exc.user_id)
                if inspect.isawaitable(result):
                    await result
            except Exception as hook_error:  # the verdict stands whatever the hook does
                self.supertokens.logger.error("on_token_theft_detected raised", hook_error)
            raise
        self.set_header("Cache-Control", "no-store")
        await self.on_refreshed(session)
        if not self._finished:
            self.set_header("Content-Type", "application/json; charset=UTF-8")
            self.finish(_REFRESHED_BODY)

    async def on_refreshed(self, session: WebSession) -> None:
        """Hook: called after a successful refresh (before the response)."""

    def on_token_theft_detected(self, session_handle: str, user_id: Any) -> Any:
        """Hook: a rotated-out refresh token was reused. The session is already revoked.

        Override to alert, or to revoke every session of ``user_id``. May be async.
        """
        st = self._st_or_none()
        if st is not None:
            st.logger.info(f"token theft detected for session {session_handle}; session revoked")
