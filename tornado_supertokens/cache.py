"""A bounded, per-process cache of access tokens that already verified.

Keyed by the exact token string, so a malleated spelling of a token misses
and is verified in full. An entry never outlives its token's ``exp``, and
remembers the key it verified under, so a key taken away by a user ``get``
callable invalidates it. Anti-CSRF and blacklisting are checked by the
caller on every request, hit or miss.
"""

from __future__ import annotations

from typing import Optional, Union

from .tokens import AccessTokenPayload

#: Default bound on the number of cached tokens.
DEFAULT_MAX_ENTRIES = 10_000
#: Tokens longer than this are not cached (bounds the memory to ~entries x 4 KiB).
MAX_CACHED_TOKEN_LENGTH = 4096

Key = Union[str, bytes]


class VerifiedTokenCache:
    """Token string -> (payload, key it verified under); oldest entries leave first."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.max_entries = max_entries
        self._entries: dict[str, tuple[AccessTokenPayload, Key]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str, now_ms: int) -> Optional[tuple[AccessTokenPayload, Key]]:
        entry = self._entries.get(token)
        if entry is None:
            return None
        if entry[0].expiry_ms <= now_ms:
            del self._entries[token]
            return None
        return entry

    def put(self, token: str, payload: AccessTokenPayload, key: Key) -> None:
        if self.max_entries == 0 or len(token) > MAX_CACHED_TOKEN_LENGTH:
            return
        entries = self._entries
        if token not in entries:
            while len(entries) >= self.max_entries:
                del entries[next(iter(entries))]  # insertion order: the oldest
        entries[token] = (payload, key)

    def clear(self) -> None:
        self._entries.clear()
