"""The WebSocket session cookie: a token-less reconnect stays authenticated.

The platform's client reconnects with `connect()` and no token. A socket that
authenticated with a token in its handshake (`?token=`, `Authorization:
Bearer`) gets a short-lived cookie on the handshake's response, so such a
reconnect from the same browser carries a credential again.

The cookie holds the server's own HS256 token: the user's identity claims,
`iat`, an `exp` no later than the access token's, and `token_type` `ws_session`.
It is signed with a key of its own (derived from JWT_SECRET, or SESSION_SECRET),
so it never verifies as an access token, and every node that shares the
settings accepts it, across restarts.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import jwt
from starlette.requests import HTTPConnection

from ...settings import Settings
from .auth import (
    AuthError,
    Identity,
    TokenVerifier,
    cookie_origin_allowed,
    cookie_value,
    explicit_token,
    identity_from,
)

COOKIE = "realtime_session"
ACCESS_EXP = "access_exp"
ACCESS_IAT = "access_iat"
TOKEN_TYPE = "ws_session"
ALGORITHM = "HS256"
# Only the WebSocket paths get it: the HTTP API never sees it.
PATH = "/ws"
# What derives the cookie key from JWT_SECRET: a key of its own, not the access tokens'.
DERIVATION = b"realtime websocket session cookie v1"


def session_key(settings: Settings) -> bytes | None:
    """SESSION_SECRET, else one derived from the HS* JWT_SECRET; None (no
    cookies) with a public key and no SESSION_SECRET: nothing to sign with."""
    if settings.session_secret:
        return settings.session_secret.encode()
    if settings.jwt_public_key:
        return None
    return hmac.new(settings.jwt_key.encode(), DERIVATION, hashlib.sha256).digest()


class SessionCookies:
    def __init__(
        self, key: bytes, ttl: float, verifier: TokenVerifier | None = None, allowed_origins: tuple[str, ...] = ()
    ) -> None:
        self._key = key
        self._ttl = ttl
        self._verifier = verifier
        self._allowed = allowed_origins

    def on_handshake(self, conn: HTTPConnection) -> list[tuple[bytes, bytes]]:
        """The headers for the handshake's response: the cookie, for a client
        that sent a valid token itself from an Origin that may use cookies."""
        token = explicit_token(conn.query_params, conn.headers)
        if token is None or self._verifier is None or not self._origin_ok(conn):
            return []
        try:
            identity = self._verifier.verify(token)
        except AuthError:
            return []  # the socket is refused with 4001 once accepted
        return [self.set_cookie(identity, secure=conn.scope.get("scheme") == "wss")]

    def authenticate(self, conn: HTTPConnection) -> Identity | None:
        """The identity in the handshake's session cookie; None without one;
        AuthError for one that is bad or comes from an Origin that may not use it."""
        identity = self.identity(conn.headers)
        if identity is not None and not self._origin_ok(conn):
            raise AuthError("session cookie not accepted from this origin")
        return identity

    def _origin_ok(self, conn: HTTPConnection) -> bool:
        # Only browsers get and use it, and a browser always sends Origin on a handshake.
        origin = conn.headers.get("origin")
        return origin is not None and cookie_origin_allowed(origin, conn.headers.get("host"), self._allowed)

    def set_cookie(self, identity: Identity, secure: bool) -> tuple[bytes, bytes]:
        """The `Set-Cookie` header for a socket that has just authenticated as `identity`."""
        now = int(time.time())
        # Never past the access token it stands for.
        expires = min(now + int(self._ttl), identity.expires_at)
        claims: dict[str, Any] = {
            "user_id": identity.user_id,
            "iat": now,
            "exp": expires,
            "token_type": TOKEN_TYPE,
            # The access token's own expiry: a socket the cookie opens lives as
            # long as one the token opened would (TOKEN_EXPIRY=close), no longer.
            ACCESS_EXP: identity.expires_at,
        }
        # The access token's own `iat`, which revocation judges: a cookie set
        # later must not outlive a revocation of the token it stands for.
        if identity.issued_at is not None:
            claims[ACCESS_IAT] = identity.issued_at
        for name in ("name", "role", "profile_image"):
            value = getattr(identity, name)
            if value is not None:
                claims[name] = value
        value = jwt.encode(claims, self._key, algorithm=ALGORITHM)
        attributes = [f"{COOKIE}={value}", f"Path={PATH}", f"Max-Age={max(0, expires - now)}", "HttpOnly"]
        attributes.append("SameSite=Strict")
        if secure:
            attributes.append("Secure")
        return (b"set-cookie", "; ".join(attributes).encode())

    def identity(self, headers: Mapping[str, str]) -> Identity | None:
        """The identity in the request's session cookie; None without one;
        AuthError for one that is garbled, forged, expired or of another kind."""
        value = cookie_value(headers.get("cookie"), COOKIE)
        if value is None:
            return None
        try:
            claims = jwt.decode(value, self._key, algorithms=[ALGORITHM], options={"require": ["exp", "iat"]})
        except jwt.PyJWTError as exc:
            raise AuthError(f"session cookie: {exc}") from None
        if claims.get("token_type") != TOKEN_TYPE:
            raise AuthError("session cookie: not a session token")
        try:
            identity = identity_from(claims)
        except AuthError as exc:
            raise AuthError(f"session cookie: {exc}") from None
        access_exp = claims.get(ACCESS_EXP)
        if isinstance(access_exp, int) and not isinstance(access_exp, bool) and access_exp >= identity.expires_at:
            identity = replace(identity, expires_at=access_exp)
        access_iat = claims.get(ACCESS_IAT)
        issued = access_iat if isinstance(access_iat, int | float) and not isinstance(access_iat, bool) else None
        return replace(identity, issued_at=None if issued is None else float(issued))


def for_settings(settings: Settings, verifier: TokenVerifier) -> SessionCookies | None:
    key = session_key(settings)
    return None if key is None else SessionCookies(key, settings.session_ttl, verifier, settings.allowed_origins)
