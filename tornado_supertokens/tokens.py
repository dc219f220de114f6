"""Token formats: the access token (a JWT) and the refresh token (AEAD).

Pure functions of their inputs and keys: no I/O, no clock reads. Any problem
with a presented token raises :class:`InvalidTokenError`; the session layer
turns that into try-refresh or unauthorised.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any, Optional

import jwt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from jwt.algorithms import HMACAlgorithm

ALGORITHM = "HS256"
#: Longest access token accepted for verification (browsers cap a cookie at 4 KiB).
MAX_ACCESS_TOKEN_LENGTH = 8192
#: Longest refresh token accepted for decryption.
MAX_REFRESH_TOKEN_LENGTH = 1024
_REFRESH_AAD = b"tornado_supertokens refresh token v2"
_SIV_TAG_BYTES = 16
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
#: A compact JWS exactly as PyJWT writes it: three unpadded base64url segments.
#: PyJWT itself accepts a trailing "=" (and so a second spelling of a token).
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class InvalidTokenError(Exception):
    """A presented token is malformed, forged, tampered with or expired."""


class _CheckedKeyHS256(HMACAlgorithm):
    """PyJWT's HS256, running its key checks once per key instead of once per token.

    PyJWT (2.14+) refuses, on every call, a key that looks asymmetric or like a
    JWK: a DER parse, an X.509 parse and a JSON parse, about half the cost of
    signing a token. The verdict depends on the key alone, so it is kept for
    the few keys a process uses (bounded; a refused key is never kept).
    """

    MAX_KEYS = 16

    def __init__(self) -> None:
        super().__init__(HMACAlgorithm.SHA256)
        self._checked: dict[bytes, bytes] = {}

    def prepare_key(self, key: str | bytes) -> bytes:
        raw = key_bytes(key)
        prepared = self._checked.get(raw)
        if prepared is None:
            prepared = super().prepare_key(raw)  # raises for a refused key
            if len(self._checked) >= self.MAX_KEYS:
                self._checked.clear()
            self._checked[raw] = prepared
        return prepared


def _hs256_only() -> jwt.PyJWS:
    jws = jwt.PyJWS(algorithms=[ALGORITHM])
    jws.unregister_algorithm(ALGORITHM)
    jws.register_algorithm(ALGORITHM, _CheckedKeyHS256())
    return jws


#: The one JWS codec: HS256 and nothing else, whatever a token's header says.
_JWS = _hs256_only()


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def new_session_handle() -> str:
    return str(uuid.uuid4())


def anti_csrf_token_for(refresh_token: str, key: str | bytes) -> str:
    """The anti-CSRF token issued beside ``refresh_token``: a MAC of it under
    its own key derived from ``key`` (the refresh key), as long as
    ``secrets.token_urlsafe(32)``.

    Unpredictable without the key, new with every refresh token, and the same
    in every response that hands out one refresh token: racing refreshes that
    return one child also return one anti-CSRF token, so a browser that mixes
    their responses (an access token from one, the ``anti-csrf`` header from
    another) never fails its own anti-CSRF check.
    """
    mac = hmac.new(_anti_csrf_key(key), refresh_token.encode("ascii"), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode("ascii")


@functools.lru_cache(maxsize=8)
def _anti_csrf_key(key: str | bytes) -> bytes:
    return hashlib.sha256(b"tornado_supertokens anti-csrf\x00" + key_bytes(key)).digest()


def new_id_refresh_token() -> str:
    return secrets.token_urlsafe(32)


def new_key() -> str:
    """A fresh 256-bit key, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")


def key_bytes(key: str | bytes) -> bytes:
    return key if isinstance(key, bytes) else key.encode("utf-8")


# -- access token ------------------------------------------------------------


@dataclass(frozen=True)
class AccessTokenPayload:
    session_handle: str
    user_id: Any
    refresh_token_hash1: str
    parent_refresh_token_hash2: Optional[str]
    anti_csrf_token: Optional[str]
    user_data: Any
    expiry_ms: int


def encode_access_token(
    payload: AccessTokenPayload,
    key: str | bytes,
    kid: Optional[str],
    expiry_ms: Optional[int] = None,
) -> str:
    """Sign ``payload`` as a standard HS256 JWT (``exp`` in whole seconds).

    ``expiry_ms``, when given, replaces ``payload.expiry_ms``. The token is
    byte for byte what ``PyJWS.encode`` writes (PyJWT's own HS256 signs it);
    only the constant header segment is encoded once per ``kid``.
    """
    claims: dict[str, Any] = {
        "sessionHandle": payload.session_handle,
        "userId": payload.user_id,
        "refreshTokenHash1": payload.refresh_token_hash1,
        "userData": payload.user_data,
        "exp": (payload.expiry_ms if expiry_ms is None else expiry_ms) // 1000,
    }
    if payload.parent_refresh_token_hash2 is not None:
        claims["parentRefreshTokenHash2"] = payload.parent_refresh_token_hash2
    if payload.anti_csrf_token is not None:
        claims["antiCsrfToken"] = payload.anti_csrf_token
    body = json.dumps(claims, separators=(",", ":")).encode("utf-8")
    signing_input = _header_segment(kid) + b"." + _b64url(body)
    hs256 = _JWS.get_algorithm_by_name(ALGORITHM)
    signature = hs256.sign(signing_input, hs256.prepare_key(key_bytes(key)))
    return (signing_input + b"." + _b64url(signature)).decode("ascii")


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


@functools.lru_cache(maxsize=64)
def _header_segment(kid: Optional[str]) -> bytes:
    """The encoded JOSE header, exactly as ``PyJWS.encode`` writes it (sorted keys)."""
    header: dict[str, str] = {"alg": ALGORITHM, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    return _b64url(json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8"))


def _check_access_token_shape(token: object) -> None:
    """Length first (before any parsing), then the exact compact-JWS shape."""
    if not isinstance(token, str) or len(token) > MAX_ACCESS_TOKEN_LENGTH:
        raise InvalidTokenError("access token too long or not a string")
    if not _JWT_SHAPE.fullmatch(token):
        raise InvalidTokenError("access token is not a compact JWS")


def access_token_kid(token: str) -> Optional[str]:
    """The ``kid`` header of a token, unverified (to pick the key to verify with).

    Only the header segment is read. The shape check has already limited it
    to the base64url alphabet, and the full decode that follows verifies every
    segment, this one included, with PyJWT's own checks: parsing the whole
    token twice (``jwt.get_unverified_header``) would double a verify's cost.
    """
    _check_access_token_shape(token)
    header = _unverified_header(token)
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise InvalidTokenError("malformed kid")
    return kid


def _unverified_header(token: str) -> dict[str, Any]:
    segment = token[: token.index(".")]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, RecursionError):  # binascii.Error and UnicodeDecodeError included
        raise InvalidTokenError("malformed access token header") from None
    if not isinstance(header, dict):
        raise InvalidTokenError("access token header is not a JSON object")
    return header


def decode_access_token(
    token: str, key: str | bytes, now_ms: int, *, allow_expired: bool = False
) -> AccessTokenPayload:
    """Verify signature (HS256 only), structure and expiry against ``now_ms``.

    ``allow_expired`` skips only the expiry comparison (``exp`` is still required).
    """
    _check_access_token_shape(token)
    try:
        verified = _JWS.decode_complete(token, key_bytes(key), algorithms=[ALGORITHM])
        claims = json.loads(verified["payload"])
    except (jwt.PyJWTError, ValueError):
        raise InvalidTokenError("access token failed verification") from None
    if not isinstance(claims, dict):
        raise InvalidTokenError("access token claims are not a JSON object")
    exp = claims.get("exp")
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise InvalidTokenError("exp must be an integer")
    if exp * 1000 <= now_ms and not allow_expired:
        raise InvalidTokenError("access token expired")
    handle = claims.get("sessionHandle")
    rt_hash = claims.get("refreshTokenHash1")
    parent = claims.get("parentRefreshTokenHash2")
    anti_csrf = claims.get("antiCsrfToken")
    user_id = claims.get("userId")
    if (
        not isinstance(handle, str)
        or not isinstance(rt_hash, str)
        or not (parent is None or isinstance(parent, str))
        or not (anti_csrf is None or isinstance(anti_csrf, str))
        or not _valid_user_id(user_id)
        or "userData" not in claims
    ):
        raise InvalidTokenError("access token has an unexpected structure")
    return AccessTokenPayload(
        session_handle=handle,
        user_id=user_id,
        refresh_token_hash1=rt_hash,
        parent_refresh_token_hash2=parent,
        anti_csrf_token=anti_csrf,
        user_data=claims["userData"],
        expiry_ms=exp * 1000,
    )


def _valid_user_id(value: Any) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool)


# -- refresh token ----------------------------------------------------------


@dataclass(frozen=True)
class RefreshTokenPayload:
    session_handle: str
    user_id: Any
    parent_refresh_token_hash2: Optional[str]


def encrypt_refresh_token(payload: RefreshTokenPayload, key: str | bytes) -> str:
    """Seal {handle, user id, parent hash, nonce} with AES-SIV; URL-safe base64.

    Deterministic for a child: every child of one parent is the same token,
    however many requests ask for it, so racing responses can never leave a
    browser holding a sibling of the session's current token (which would
    read as theft once the grace period is over). AES-SIV is the AEAD built
    for this (RFC 5297): equal plaintexts give equal tokens and reveal nothing
    else. A child's nonce is derived from its parent (a parent has one child,
    so it is still used once); a session's first token gets a random one.
    """
    parent = payload.parent_refresh_token_hash2
    if parent is None:
        nonce = secrets.token_urlsafe(16)
    else:
        nonce = _child_nonce(key, parent)
    body = json.dumps(
        {"h": payload.session_handle, "u": payload.user_id, "p": parent, "n": nonce},
        separators=(",", ":"),
    ).encode("utf-8")
    sealed = _cipher(key).encrypt(body, [_REFRESH_AAD])
    return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")


def decrypt_refresh_token(token: str, key: str | bytes) -> RefreshTokenPayload:
    """Authenticate and open a refresh token; any defect -> :class:`InvalidTokenError`."""
    if not isinstance(token, str) or not token or len(token) > MAX_REFRESH_TOKEN_LENGTH:
        raise InvalidTokenError("refresh token missing, too long or not a string")
    if not _B64URL.fullmatch(token):
        raise InvalidTokenError("refresh token is not URL-safe base64")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError:
        raise InvalidTokenError("refresh token is not base64") from None
    # Only the canonical spelling is accepted: its hash is what the database
    # stores, so a variant decoding to the same bytes must not pass as reuse.
    if not hmac.compare_digest(base64.urlsafe_b64encode(raw).rstrip(b"="), token.encode("ascii")):
        raise InvalidTokenError("refresh token is not canonical base64")
    if len(raw) <= _SIV_TAG_BYTES:
        raise InvalidTokenError("refresh token too short")
    try:
        body = _cipher(key).decrypt(raw, [_REFRESH_AAD])
        data = json.loads(body)
    except (InvalidTag, ValueError):
        raise InvalidTokenError("refresh token failed authentication") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("h"), str)
        or not _valid_user_id(data.get("u"))
        or not (data.get("p") is None or isinstance(data.get("p"), str))
    ):
        raise InvalidTokenError("refresh token has an unexpected structure")
    return RefreshTokenPayload(data["h"], data["u"], data["p"])


@functools.lru_cache(maxsize=8)
def _cipher(key: str | bytes) -> AESSIV:
    """The AEAD for ``key``, set up once per key (a process uses one refresh key)."""
    return AESSIV(_siv_key(key))


def _child_nonce(key: str | bytes, parent_h2: str) -> str:
    mac = hmac.new(_nonce_key(key), parent_h2.encode("utf-8"), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()[:16]).rstrip(b"=").decode("ascii")


@functools.lru_cache(maxsize=8)
def _nonce_key(key: str | bytes) -> bytes:
    # Its own key, derived apart from the cipher's.
    return hashlib.sha256(b"tornado_supertokens child nonce\x00" + key_bytes(key)).digest()


@functools.lru_cache(maxsize=8)
def _siv_key(key: str | bytes) -> bytes:
    # Keys are stored as text; derive the 512 bits of AES-256-SIV whatever their encoding.
    return hashlib.sha512(_REFRESH_AAD + b"\x00" + key_bytes(key)).digest()

