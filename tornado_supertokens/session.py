"""The session engine: create, verify, refresh and revoke, on token strings.

No web framework here: inputs are token strings, outputs are a
:class:`Session` and the :class:`SessionTokens` the caller must hand to the
client. The database is touched once to create, never to verify (unless
blacklisting is on or a child token is being promoted), and once to refresh.

Refresh-token lineage: the database stores ``h2 = sha256(sha256(token))`` of
the current token. A refresh with the current token issues its child, which
names its parent's h2 and is the same token however often it is asked for
(see :func:`~tornado_supertokens.tokens.encrypt_refresh_token`); the first use
of the child (a refresh, or a request with the access token issued beside it)
promotes it to current, and the replaced h2 is remembered with the time of the
rotation. For ``rotationGracePeriod`` seconds after that, a rotated-away token
still gets a successor (its own child while that is current, else the current
token's child): parallel tabs, lost and reordered responses are not theft. Any
other token of a live session is token theft, and the session is revoked.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, replace
from typing import Any, Optional

from .cache import DEFAULT_MAX_ENTRIES, VerifiedTokenCache
from .clock import Clock
from .config import Config
from .exceptions import (
    GeneralError,
    TokenTheftDetectedError,
    TryRefreshTokenError,
    UnauthorisedError,
)
from .keys import KeyManager
from .log import Logger
from .storage import Storage
from .tokens import (
    AccessTokenPayload,
    InvalidTokenError,
    RefreshTokenPayload,
    access_token_kid,
    anti_csrf_token_for,
    decode_access_token,
    decrypt_refresh_token,
    encode_access_token,
    encrypt_refresh_token,
    key_bytes,
    new_id_refresh_token,
    new_session_handle,
    sha256_hex,
)

MAX_USER_ID_LENGTH = 256


@dataclass(frozen=True)
class TokenInfo:
    """A token and when it expires (ms since epoch)."""

    value: str
    expires_at: int


@dataclass(frozen=True)
class SessionTokens:
    """What the caller must send to the client; ``None`` means "unchanged"."""

    access_token: Optional[TokenInfo] = None
    refresh_token: Optional[TokenInfo] = None
    id_refresh_token: Optional[TokenInfo] = None
    anti_csrf_token: Optional[str] = None


#: What a verify that re-issues nothing returns.
NO_NEW_TOKENS = SessionTokens()


class Session:
    """One verified session: who it is, and operations on it."""

    __slots__ = ("_engine", "handle", "user_id", "jwt_payload")

    def __init__(self, engine: SessionEngine, handle: str, user_id: Any, jwt_payload: Any) -> None:
        self._engine = engine
        #: The session's handle (a UUID4 string).
        self.handle = handle
        #: The user id given at creation (a str or an int).
        self.user_id = user_id
        #: The JWT payload given at creation.
        self.jwt_payload = jwt_payload

    async def revoke_session(self) -> bool:
        """Delete this session; True if it still existed."""
        return await self._engine.revoke_session(self.handle)

    async def get_session_info(self) -> Any:
        return await self._engine.get_session_info(self.handle)

    async def update_session_info(self, info: Any) -> None:
        await self._engine.update_session_info(self.handle, info)

    def __repr__(self) -> str:
        return f"<Session handle={self.handle} user_id={self.user_id!r}>"


@dataclass(frozen=True)
class SessionResult:
    session: Session
    tokens: SessionTokens


def _dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise GeneralError(f"{what} must be JSON serialisable: {exc}") from None


def _loads(value: Optional[str]) -> Any:
    return None if value is None else json.loads(value)


def _user_key(user_id: Any) -> str:
    """The stored form of a user id: its JSON text, so 1 and "1" stay apart."""
    if isinstance(user_id, bool) or not isinstance(user_id, (str, int)):
        raise GeneralError("user_id must be a str or an int")
    stored = json.dumps(user_id)
    if len(stored) > MAX_USER_ID_LENGTH:
        raise GeneralError(f"user_id is too long (max {MAX_USER_ID_LENGTH} characters stored)")
    return stored


class SessionEngine:
    """Core operations of one :class:`~tornado_supertokens.SuperTokens` instance."""

    def __init__(
        self,
        config: Config,
        storage: Storage,
        keys: KeyManager,
        clock: Clock,
        logger: Logger,
        *,
        cache_size: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        self._config = config
        #: Access tokens that verified, so a repeat costs a look-up (0 disables it).
        self._cache = VerifiedTokenCache(cache_size)
        self._storage = storage
        self._keys = keys
        self._clock = clock
        self._log = logger
        self._anti_csrf = config.tokens.enable_anti_csrf
        self._blacklisting = config.tokens.access_token.blacklisting
        self._access_validity_ms = config.access_token_validity_ms
        self._refresh_validity_ms = config.refresh_token_validity_ms
        self._grace_ms = config.rotation_grace_ms
        #: A cache hit settles a verify (no per-request database or key check).
        self._cache_is_enough = not self._blacklisting and not keys.uses_getter

    # -- create ---------------------------------------------------------------

    async def create_new_session(
        self, user_id: Any, jwt_payload: Any = None, session_info: Any = None
    ) -> SessionResult:
        """Start a session for ``user_id``: one INSERT."""
        stored_user = _user_key(user_id)
        payload_json = _dumps(jwt_payload, "jwt_payload")
        info_json = _dumps(session_info, "session_info")
        now = self._clock.now_ms()
        handle = new_session_handle()
        refresh = self._new_refresh_token(handle, user_id, None, now + self._refresh_validity_ms)
        anti_csrf = self._anti_csrf_token_for(refresh.value)
        access = await self._new_access_token(
            AccessTokenPayload(
                session_handle=handle,
                user_id=user_id,
                refresh_token_hash1=sha256_hex(refresh.value),
                parent_refresh_token_hash2=None,
                anti_csrf_token=anti_csrf,
                user_data=jwt_payload,
                expiry_ms=0,
            ),
            now,
        )
        await self._storage.insert_session(
            handle,
            stored_user,
            sha256_hex(sha256_hex(refresh.value)),
            info_json,
            refresh.expires_at,
            payload_json,
        )
        return SessionResult(
            Session(self, handle, user_id, jwt_payload),
            SessionTokens(
                access_token=access,
                refresh_token=refresh,
                id_refresh_token=self._new_id_refresh_token(refresh.expires_at),
                anti_csrf_token=anti_csrf,
            ),
        )

    # -- verify -----------------------------------------------------------------

    async def get_session(
        self,
        access_token: Optional[str],
        anti_csrf_token: Optional[str],
        do_anti_csrf_check: bool,
    ) -> SessionResult:
        """Verify an access token; no database hit on the common path.

        Raises :class:`TryRefreshTokenError` for a bad, expired or CSRF-failing
        token and :class:`UnauthorisedError` for a session that is over.
        """
        if not access_token:
            raise TryRefreshTokenError("no access token")
        now = self._clock.now_ms()
        payload = await self._verify_access_token(access_token, now)
        if self._anti_csrf and do_anti_csrf_check:
            self._check_anti_csrf(payload, anti_csrf_token)
        session = Session(self, payload.session_handle, payload.user_id, payload.user_data)

        if payload.parent_refresh_token_hash2 is None:
            if self._blacklisting and not await self._storage.session_alive(
                payload.session_handle, now
            ):
                raise UnauthorisedError("session has been revoked")
            return SessionResult(session, NO_NEW_TOKENS)

        # First use of a child refresh token's access token: make the child current.
        if not await self._storage.promote(
            payload.session_handle,
            own_h2=sha256_hex(payload.refresh_token_hash1),
            parent_h2=payload.parent_refresh_token_hash2,
            now_ms=now,
            grace_ms=self._grace_ms,
        ):
            # The child was rotated away since (another tab moved on): the refresh
            # token decides, through refresh_session, between a successor and theft.
            if await self._storage.session_alive(payload.session_handle, now):
                raise TryRefreshTokenError("refresh token superseded: refresh again")
            raise UnauthorisedError("session is over")
        # Only the access token is re-issued, as the wire contract says. Calls are
        # not serialised like refreshes, so a promotion's response may land after
        # the responses of later refreshes; a refresh token in it would take the
        # browser back to a token rotated away since, judged theft once the grace
        # period is over. The browser's refresh token only ever comes from
        # create and refresh responses.
        access = await self._new_access_token(replace(payload, parent_refresh_token_hash2=None), now)
        return SessionResult(session, SessionTokens(access_token=access))

    def get_session_if_cached(
        self,
        access_token: str,
        anti_csrf_token: Optional[str],
        do_anti_csrf_check: bool,
    ) -> Optional[Session]:
        """:meth:`get_session` without awaiting, when it needs no I/O at all.

        Returns the session for an access token already verified by this
        process (and still unexpired), ``None`` when the full path must run
        (not cached, blacklisting on, or a user-supplied key). Anti-CSRF is
        checked as on the full path.
        """
        if not self._cache_is_enough:
            return None
        cached = self._cache.get(access_token, self._clock.now_ms())
        if cached is None:
            return None
        payload = cached[0]
        if self._anti_csrf and do_anti_csrf_check:
            self._check_anti_csrf(payload, anti_csrf_token)
        return Session(self, payload.session_handle, payload.user_id, payload.user_data)

    @staticmethod
    def _check_anti_csrf(payload: AccessTokenPayload, presented: Optional[str]) -> None:
        expected = payload.anti_csrf_token
        if (
            expected is None
            or not isinstance(presented, str)
            or not hmac.compare_digest(expected.encode(), presented.encode())
        ):
            raise TryRefreshTokenError("anti-csrf check failed")

    # -- refresh --------------------------------------------------------------------

    async def refresh_session(self, refresh_token: Optional[str]) -> SessionResult:
        """Rotate a refresh token: one conditional UPDATE on the hot path.

        Raises :class:`UnauthorisedError` for an unreadable token or a session
        that is over, and :class:`TokenTheftDetectedError` (after revoking the
        session) for a token of a live session that is neither current, nor
        the current one's child, nor rotated away within the grace period.
        """
        if not refresh_token:
            raise UnauthorisedError("no refresh token")
        try:
            presented = decrypt_refresh_token(refresh_token, self._keys.refresh_key)
        except InvalidTokenError:
            raise UnauthorisedError("invalid refresh token") from None
        now = self._clock.now_ms()
        handle, user_id = presented.session_handle, presented.user_id
        stored_user = _user_key(user_id)
        hash1 = sha256_hex(refresh_token)
        expires_at = now + self._refresh_validity_ms

        own_h2 = sha256_hex(hash1)
        row = await self._storage.rotate(
            handle,
            stored_user,
            own_h2=own_h2,
            parent_h2=presented.parent_refresh_token_hash2,
            expires_at=expires_at,
            now_ms=now,
            grace_ms=self._grace_ms,
        )
        if row is None:
            if await self._storage.delete_live_session(handle, stored_user, now):
                self._log.info(f"token theft detected: session {handle} revoked")
                raise TokenTheftDetectedError(handle, user_id)
            raise UnauthorisedError("session is over")

        # The answer is the presented token's own child while that child is
        # current or about to be: every refresh with one token gets one token,
        # also when another tab's call promoted that child in between (their
        # responses may land in any order). A token the session has moved two
        # steps beyond (within the grace period) gets the current token's child.
        current_h2, payload_json = row
        parent_h2 = own_h2
        child = self._new_refresh_token(handle, user_id, own_h2, expires_at)
        if current_h2 != own_h2 and sha256_hex(sha256_hex(child.value)) != current_h2:
            parent_h2 = current_h2
            child = self._new_refresh_token(handle, user_id, current_h2, expires_at)
        jwt_payload = _loads(payload_json)
        anti_csrf = self._anti_csrf_token_for(child.value)
        access = await self._new_access_token(
            AccessTokenPayload(
                session_handle=handle,
                user_id=user_id,
                refresh_token_hash1=sha256_hex(child.value),
                parent_refresh_token_hash2=parent_h2,
                anti_csrf_token=anti_csrf,
                user_data=jwt_payload,
                expiry_ms=0,
            ),
            now,
        )
        return SessionResult(
            Session(self, handle, user_id, jwt_payload),
            SessionTokens(
                access_token=access,
                refresh_token=child,
                id_refresh_token=self._new_id_refresh_token(child.expires_at),
                anti_csrf_token=anti_csrf,
            ),
        )

    # -- administration ---------------------------------------------------------

    async def revoke_session(self, session_handle: str) -> bool:
        """Delete one session; True if it existed."""
        return await self._storage.delete_session(session_handle)

    async def revoke_all_sessions_for_user(self, user_id: Any) -> list[str]:
        """Delete every session of ``user_id`` (one statement); their handles."""
        return await self._storage.delete_user_sessions(_user_key(user_id))

    async def get_all_session_handles_for_user(self, user_id: Any) -> list[str]:
        return await self._storage.user_handles(_user_key(user_id), self._clock.now_ms())

    async def get_session_info(self, session_handle: str) -> Any:
        row = await self._storage.get_session_info(session_handle, self._clock.now_ms())
        if row is None:
            raise UnauthorisedError("session does not exist")
        return _loads(row[0])

    async def update_session_info(self, session_handle: str, info: Any) -> None:
        info_json = _dumps(info, "session_info")
        if not await self._storage.update_session_info(
            session_handle, info_json, self._clock.now_ms()
        ):
            raise UnauthorisedError("session does not exist")

    async def session_handle_of(self, access_token: Optional[str]) -> Optional[str]:
        """The handle named by a genuine access token, expired or not; else None.

        For revoking the session a request already carries (no session fixation).
        """
        if not access_token:
            return None
        try:
            key = await self._keys.verification_key(access_token_kid(access_token))
            payload = decode_access_token(access_token, key, self._clock.now_ms(), allow_expired=True)
        except InvalidTokenError:
            return None
        return payload.session_handle

    # -- helpers ------------------------------------------------------------------

    async def _verify_access_token(self, token: str, now: int) -> AccessTokenPayload:
        cached = self._cache.get(token, now)
        if cached is not None:
            payload, key = cached
            if not self._keys.uses_getter:
                return payload
            # A user-supplied key may change at any time: the hit counts only
            # while the token's key is still the current one.
            if hmac.compare_digest(key_bytes(await self._keys.verification_key(None)), key_bytes(key)):
                return payload
        try:
            key = await self._keys.verification_key(access_token_kid(token))
            payload = decode_access_token(token, key, now)
        except InvalidTokenError:
            raise TryRefreshTokenError("access token invalid or expired") from None
        if payload.parent_refresh_token_hash2 is None:
            # Tokens naming a parent are about to be replaced by promotion.
            self._cache.put(token, payload, key)
        return payload

    async def _new_access_token(self, payload: AccessTokenPayload, now: int) -> TokenInfo:
        expiry = (now + self._access_validity_ms) // 1000 * 1000
        kid, key = await self._keys.signing_key()
        token = encode_access_token(payload, key, kid, expiry)
        return TokenInfo(token, expiry)

    def _new_refresh_token(
        self, handle: str, user_id: Any, parent_h2: Optional[str], expires_at: int
    ) -> TokenInfo:
        """A refresh token naming its parent's stored hash (``None``: a new session's)."""
        token = encrypt_refresh_token(
            RefreshTokenPayload(handle, user_id, parent_h2), self._keys.refresh_key
        )
        return TokenInfo(token, expires_at)

    def _anti_csrf_token_for(self, refresh_token: str) -> Optional[str]:
        if not self._anti_csrf:
            return None
        return anti_csrf_token_for(refresh_token, self._keys.refresh_key)

    def _new_id_refresh_token(self, expires_at: int) -> TokenInfo:
        return TokenInfo(new_id_refresh_token(), expires_at)
