"""JWT verification: pinned algorithms, access tokens only, a numeric `exp`
within the maximum lifetime, `user_id` or `sub`; where a token may come from,
and which origins may use the ambient one (the cookie).

A token that verified is remembered until its `exp` (`VerifiedTokens`): a
reconnect, or a second socket with the same token, costs a dictionary look-up
instead of a signature check. Only what cannot change with time is taken from
the cache: the signature, the claims and the checks on them; `exp` is checked
again on every use. Revocation is not a property of the token and is asked
separately on every connect (events/node/revocation.py).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlsplit

import jwt

COOKIE = "access_token"
# Tokens remembered per process (each entry holds the token and its Identity: ~1 KB).
VERIFIED_CACHE = 10_000
# Clock skew between the token issuer and this server that `JWT_MAX_LIFETIME` tolerates.
CLOCK_SKEW = 60
DEFAULT_PORTS = {"http": 80, "https": 443}


class AuthError(Exception):
    """The token is missing, malformed, expired or signed with what we don't accept."""


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: int
    name: str | None
    role: str | None
    profile_image: str | None
    expires_at: int
    # `iat` in seconds, None when the token has none (revocation refuses those).
    issued_at: float | None = None


class VerifiedTokens:
    """Tokens that verified, by signature, until their `exp`; at most `size`,
    the oldest dropped first. The whole token is compared on a hit: the key is
    only the part that is cheap to find and differs between tokens."""

    def __init__(self, size: int = VERIFIED_CACHE) -> None:
        self.size = size
        self._entries: dict[str, tuple[str, Identity]] = {}

    def get(self, token: str, now: float) -> Identity | None:
        key = token[token.rfind(".") + 1 :]
        entry = self._entries.get(key)
        if entry is None or entry[0] != token:
            return None
        identity = entry[1]
        if identity.expires_at <= now:
            # What PyJWT would say now: expired (it refuses `exp <= now`).
            del self._entries[key]
            return None
        return identity

    def put(self, token: str, identity: Identity) -> None:
        if self.size <= 0:
            return
        key = token[token.rfind(".") + 1 :]
        if not key:
            return
        while len(self._entries) >= self.size:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = (token, identity)

    def __len__(self) -> int:
        return len(self._entries)


class TokenVerifier:
    def __init__(
        self,
        key: str,
        algorithms: list[str],
        *,
        audience: tuple[str, ...] = (),
        issuer: tuple[str, ...] = (),
        max_lifetime: float = 86_400,
        cache_size: int = VERIFIED_CACHE,
    ) -> None:
        self._key = key
        self._algorithms = algorithms
        # None, not (): PyJWT then refuses a token that carries `aud` at all,
        # since such a token was meant for some other service.
        self._audience = audience or None
        self._issuer = issuer or None
        self._max_lifetime = max_lifetime
        self.verified = VerifiedTokens(cache_size)

    def verify(self, token: str) -> Identity:
        """The token's identity; AuthError if it does not verify or has expired."""
        identity = self.verified.get(token, time.time())
        if identity is not None:
            return identity
        identity = self._decode(token)
        self.verified.put(token, identity)
        return identity

    def _decode(self, token: str) -> Identity:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp"], "verify_sub": False},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(str(exc)) from None
        self._check(claims)
        return identity_from(claims)

    def _check(self, claims: Mapping[str, Any]) -> None:
        # SimpleJWT marks its tokens; a refresh token lives for days and is for the auth server only.
        if "token_type" in claims and claims["token_type"] != "access":
            raise AuthError("not an access token")
        exp = claims["exp"]
        # PyJWT takes `"exp": "1700000000"` (it calls int()); RFC 7519 says NumericDate.
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise AuthError("`exp` is not a number")
        if exp > time.time() + self._max_lifetime + CLOCK_SKEW:
            raise AuthError("`exp` is further ahead than JWT_MAX_LIFETIME")


def identity_from(claims: Mapping[str, Any]) -> Identity:
    user_id = _user_id(claims.get("user_id", claims.get("sub")))
    role = claims.get("role")
    name = claims.get("name")
    image = claims.get("profile_image")
    return Identity(
        user_id=user_id,
        name=name if isinstance(name, str) and name else None,
        role=role if role in ("expert", "client") else None,
        profile_image=image if isinstance(image, str) and image else None,
        expires_at=int(claims["exp"]),
        issued_at=_issued_at(claims.get("iat")),
    )


def _issued_at(value: Any) -> float | None:
    # PyJWT has checked a present `iat` is a number; a bool is not one.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _user_id(value: Any) -> int:
    if isinstance(value, bool):
        raise AuthError("the token's user id is not an integer")
    if isinstance(value, int):
        user_id = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        user_id = int(value)
    else:
        raise AuthError("the token carries no integer `user_id` or `sub`")
    if not 0 < user_id < 2**63:
        raise AuthError("the token's user id is out of range")
    return user_id


@dataclass(frozen=True, slots=True)
class Credential:
    token: str
    # A cookie is sent by the browser whichever page makes the request: see `cookie_origin_allowed`.
    via_cookie: bool


def credential_from_scope(query: Mapping[str, str], headers: Mapping[str, str]) -> Credential | None:
    """The first of: `?token=`, `Authorization: Bearer`, the `access_token` cookie."""
    token = query.get("token")
    if token:
        return Credential(token, via_cookie=False)
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return Credential(value.strip(), via_cookie=False)
    value = cookie_value(headers.get("cookie"), COOKIE)
    return Credential(value, via_cookie=True) if value is not None else None


def cookie_value(header: str | None, name: str) -> str | None:
    """The value of cookie `name` in a `Cookie` header; None without one."""
    if not header:
        return None
    cookie: SimpleCookie = SimpleCookie()
    try:
        cookie.load(header)
    except Exception:  # noqa: BLE001 - a malformed cookie header is just no cookie
        return None
    morsel = cookie.get(name)
    return morsel.value if morsel is not None and morsel.value else None


def cookie_origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """May a request from `origin` be authenticated by a cookie (ambient authority)?

    Yes for the server's own origin (same host:port as the Host header, any
    scheme: TLS may end at a proxy), for an origin in ALLOWED_ORIGINS, and for a
    request without Origin: browsers always send one on WebSocket handshakes
    and cross-site POSTs, so its absence means a program, not another site's page.
    """
    if origin is None:
        return True
    origin = origin.strip().lower()
    if origin in allowed:
        return True
    if host is None:
        return False
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc or parts.path not in ("", "/"):
        return False
    default = DEFAULT_PORTS[parts.scheme]
    return _without_port(parts.netloc, port, default) == _without_port(host.strip().lower(), None, default)


def _without_port(netloc: str, port: int | None, default: int) -> str:
    """`host[:port]` with the scheme's default port left out, as browsers leave it out."""
    suffix = f":{default}"
    if (port is None or port == default) and netloc.endswith(suffix):
        return netloc[: -len(suffix)]
    return netloc


def explicit_token(query: Mapping[str, str], headers: Mapping[str, str]) -> str | None:
    """A token the client sent itself (`?token=` or `Authorization: Bearer`), not a cookie."""
    credential = credential_from_scope(query, headers)
    return credential.token if credential is not None and not credential.via_cookie else None
