"""Keys: the access-token signing keys (with rotation) and the refresh-token key.

Signing keys live in the signing-key table under ``access_token_signing_key:<id>``.
With ``dynamic``, the id is the start (ms since epoch) of the current
``updateInterval`` bucket: every process on the database computes the same
name for the same interval and inserts it only if absent, so all of them
agree on one key per interval without any race. Older keys stay in memory
for as long as a token they signed can still be unexpired, and the JWT
header's ``kid`` picks the key, so a rotation sends nobody to refresh.

The next interval's key is made ahead of time: a signing in the last
:data:`NEXT_KEY_LEAD_MS` of an interval also creates (insert-if-absent) the
next key and keeps it in memory, unused. So when another process, whose
clock runs ahead by less than that, signs with the new key first, a process
that has been signing verifies those tokens without a database look-up; and
at the boundary the switch to the new key needs no database either. (A
process that signed nothing in that window falls back to one rate-limited
look-up of the unknown neighbouring kid.) If the database is unavailable
when a rotation is due, signing goes on with the current key (its tokens
stay valid everywhere) and the rotation is retried every
:data:`ROTATION_RETRY_MS` until it succeeds.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Optional

from .clock import Clock
from .config import Config
from .exceptions import GeneralError, StorageUnavailableError
from .log import Logger
from .storage import Storage
from .tokens import InvalidTokenError, new_key

ACCESS_KEY_PREFIX = "access_token_signing_key:"
REFRESH_KEY_NAME = "refresh_token_key"
STATIC_KID = "static"
#: After a failed rotation, keep signing with the previous key and retry after this.
ROTATION_RETRY_MS = 5_000
#: At most one database look-up per this period for a kid from the near future.
UNKNOWN_KID_LOOKUP_MS = 1_000
#: How long before an interval ends a signing also creates the next interval's key
#: (the clock skew between processes that costs no look-up on the verify path).
NEXT_KEY_LEAD_MS = 5 * 60_000


class KeyManager:
    """Holds the keys of one instance; reads the database only on rotation."""

    def __init__(self, storage: Storage, config: Config, clock: Clock, logger: Logger) -> None:
        self._storage = storage
        self._clock = clock
        self._log = logger
        signing = config.tokens.access_token.signing_key
        self._getter = signing.get
        self._dynamic = signing.dynamic
        self._interval_ms = config.key_update_interval_ms
        self._lead_ms = min(NEXT_KEY_LEAD_MS, self._interval_ms // 2)
        # A key is needed while a token it signed can be unexpired: it signs
        # until its interval ends, and may have been created a lead earlier.
        self._retention_ms = config.access_token_validity_ms + self._interval_ms + self._lead_ms
        self._keys: dict[str, str] = {}  # kid -> key, every key a live token may use
        self._current_kid: Optional[str] = None
        self._current_key: Optional[str] = None
        self._refresh_key: Optional[str] = None
        self._rotation: Optional[asyncio.Future[None]] = None
        self._retry_after_ms = 0
        self._preloading = False
        self._preload_retry_after_ms = 0
        self._last_unknown_lookup_ms = -UNKNOWN_KID_LOOKUP_MS

    async def start(self) -> None:
        """Load (or create) the refresh key and the current signing key."""
        self._refresh_key = await self._storage.insert_key_if_absent(
            REFRESH_KEY_NAME, new_key(), self._clock.now_ms()
        )
        if self._getter is None:
            await self._rotate(self._kid_for(self._clock.now_ms()))

    @property
    def refresh_key(self) -> str:
        if self._refresh_key is None:
            raise GeneralError("keys are not loaded: call init() first")
        return self._refresh_key

    @property
    def uses_getter(self) -> bool:
        """True when the application supplies the signing key (``signingKey.get``)."""
        return self._getter is not None

    @property
    def known_kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    async def signing_key(self) -> tuple[Optional[str], str | bytes]:
        """``(kid, key)`` to sign a new access token with."""
        if self._getter is not None:
            return None, await self._user_key()
        now = self._clock.now_ms()
        kid = self._kid_for(now)
        if kid != self._current_kid and now >= self._retry_after_ms:
            try:
                await self._rotate(kid)
            except StorageUnavailableError as exc:
                if self._current_key is None:
                    raise
                self._retry_after_ms = now + ROTATION_RETRY_MS
                self._log.error("signing key rotation postponed, database unavailable", exc)
        elif kid == self._current_kid and self._dynamic:
            await self._prepare_next_key(now)
        if self._current_kid is None or self._current_key is None:
            raise GeneralError("no signing key loaded")
        return self._current_kid, self._current_key

    async def verification_key(self, kid: Optional[str]) -> str | bytes:
        """The key a token with header ``kid`` must verify under."""
        if self._getter is not None:
            return await self._user_key()
        if kid is None:
            raise InvalidTokenError("access token has no kid")
        key = self._keys.get(kid)
        if key is not None:
            return key
        if self._may_be_next_bucket(kid):
            # Another process's clock crossed the interval before ours did, or
            # a process whose clock lags made the previous interval's key after
            # we had loaded the keys.
            self._last_unknown_lookup_ms = self._clock.now_ms()
            await self._load_keys()
            key = self._keys.get(kid)
            if key is not None:
                return key
        raise InvalidTokenError("unknown signing key")

    async def delete_retired_keys(self) -> int:
        """Delete the signing keys no live token can need (dynamic keys only).

        A key is kept for twice as long as a token it signed can live (its
        interval, the lead it may have been made with, the access token
        validity), so clock skew between processes never retires a key in use.
        The refresh-token key and a static key are never touched.
        """
        if self._getter is not None or not self._dynamic:
            return 0
        before = self._clock.now_ms() - 2 * self._retention_ms
        return await self._storage.delete_keys_before(
            ACCESS_KEY_PREFIX, before, keep=ACCESS_KEY_PREFIX + STATIC_KID
        )

    # -- internals -------------------------------------------------------------

    def _kid_for(self, now_ms: int) -> str:
        if not self._dynamic:
            return STATIC_KID
        return str(now_ms - now_ms % self._interval_ms)

    def _may_be_next_bucket(self, kid: str) -> bool:
        if not self._dynamic or not kid.isdigit() or self._current_kid is None:
            return False
        now = self._clock.now_ms()
        if now - self._last_unknown_lookup_ms < UNKNOWN_KID_LOOKUP_MS:
            return False
        # Judged against this process's own clock, not the key it last signed
        # with: a process that signed nothing for intervals must still learn
        # the key the others use now.
        start = int(kid)
        if start % self._interval_ms:
            return False  # not an interval's start: no key was ever made under it
        return abs(start - int(self._kid_for(now))) <= self._interval_ms

    async def _prepare_next_key(self, now: int) -> None:
        """In the last lead of an interval, create the next interval's key (once)."""
        next_start = int(self._kid_for(now)) + self._interval_ms
        next_kid = str(next_start)
        if (
            now < next_start - self._lead_ms
            or next_kid in self._keys
            or now < self._preload_retry_after_ms
            or self._preloading  # another signer is at it: do not wait
        ):
            return
        self._preloading = True
        try:
            key = await self._storage.insert_key_if_absent(
                ACCESS_KEY_PREFIX + next_kid, new_key(), now
            )
            self._keys[next_kid] = key
        except (StorageUnavailableError, GeneralError) as exc:
            # Not needed to sign now: the rotation itself will try again.
            self._preload_retry_after_ms = now + ROTATION_RETRY_MS
            self._log.error("creating the next signing key ahead of time failed", exc)
        finally:
            self._preloading = False

    def _switch_to_known(self, kid: str) -> bool:
        """Rotate to a key already in memory (made ahead of time, or learnt): no database."""
        key = self._keys.get(kid)
        if key is None:
            return False
        self._current_kid, self._current_key = kid, key
        oldest = self._clock.now_ms() - self._retention_ms
        self._keys = {k: v for k, v in self._keys.items() if k == kid or _starts_after(k, oldest)}
        self._log.info(f"access token signing key in use: kid {kid}")
        return True

    async def _rotate(self, kid: str) -> None:
        if self._switch_to_known(kid):
            return
        # Single flight: concurrent signers share one rotation, which runs in
        # a task of its own so that cancelling any one of them (the first
        # included) neither cancels it nor fails the others.
        if self._rotation is None:
            self._rotation = asyncio.ensure_future(self._do_rotate(kid))
            self._rotation.add_done_callback(self._rotation_done)
        await asyncio.shield(self._rotation)

    def _rotation_done(self, task: asyncio.Future[None]) -> None:
        self._rotation = None
        if not task.cancelled():
            task.exception()  # retrieved: every waiter re-raises it

    async def _do_rotate(self, kid: str) -> None:
        key = await self._storage.insert_key_if_absent(
            ACCESS_KEY_PREFIX + kid, new_key(), self._clock.now_ms()
        )
        self._keys[kid] = key
        self._current_kid, self._current_key = kid, key
        await self._load_keys()
        self._log.info(f"access token signing key in use: kid {kid}")

    async def _load_keys(self) -> None:
        """Learn every key a live token may have been signed with; forget older ones."""
        now = self._clock.now_ms()
        rows = await self._storage.keys_since(ACCESS_KEY_PREFIX, now - self._retention_ms)
        fresh = {name[len(ACCESS_KEY_PREFIX):]: value for name, value, _ in rows}
        if self._current_kid is not None and self._current_key is not None:
            fresh.setdefault(self._current_kid, self._current_key)
        # Keys learnt meanwhile (the next interval's, made ahead of time while
        # this read was in flight) are stored ones too: keep them.
        for kid, value in self._keys.items():
            if _starts_after(kid, now - self._retention_ms):
                fresh.setdefault(kid, value)
        self._keys = fresh

    async def _user_key(self) -> str | bytes:
        assert self._getter is not None
        try:
            value = self._getter()
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            raise GeneralError("the configured signing key getter failed") from exc
        if not isinstance(value, (str, bytes)) or not value:
            raise GeneralError("the configured signing key getter returned no key")
        return value


def _starts_after(kid: str, oldest_ms: int) -> bool:
    """True for a dynamic kid (an interval start) at or after ``oldest_ms``."""
    return kid.isdigit() and int(kid) >= oldest_ms
