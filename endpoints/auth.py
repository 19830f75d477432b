"""JWT verification: pinned algorithms, `exp` required, `user_id` or `sub`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any

import jwt

COOKIE = "access_token"


class AuthError(Exception):
    """The token is missing, malformed, expired or signed with what we don't accept."""


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: int
    name: str | None
    role: str | None
    profile_image: str | None
    expires_at: int


class TokenVerifier:
    def __init__(self, key: str, algorithms: list[str]) -> None:
        self._key = key
        self._algorithms = algorithms

    def verify(self, token: str) -> Identity:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                options={"require": ["exp"], "verify_sub": False, "verify_aud": False},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(str(exc)) from None
        return identity_from(claims)


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
    )


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


def token_from_scope(query: Mapping[str, str], headers: Mapping[str, str]) -> str | None:
    """The first of: `?token=`, `Authorization: Bearer`, the `access_token` cookie."""
    token = query.get("token")
    if token:
        return token
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    cookie_header = headers.get("cookie")
    if cookie_header:
        cookie: SimpleCookie = SimpleCookie()
        try:
            cookie.load(cookie_header)
        except Exception:  # noqa: BLE001 - a malformed cookie header is just no cookie
            return None
        morsel = cookie.get(COOKIE)
        if morsel is not None and morsel.value:
            return morsel.value
    return None


def explicit_token(query: Mapping[str, str], headers: Mapping[str, str]) -> str | None:
    """A token the client sent itself (`?token=` or `Authorization: Bearer`), not a cookie."""
    token = query.get("token")
    if token:
        return token
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def cookie_origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a cookie may authenticate a request from `origin`: a browser sends
    cookies with cross-site WebSocket handshakes too (cross-site WebSocket
    hijacking), so only the server's own origin (same host) or one listed in
    ALLOWED_ORIGINS may use them. No Origin (not a browser): no cookie."""
    if not origin:
        return False
    if origin in allowed:
        return True
    return host is not None and _authority(origin) == _default_port_stripped(host.lower())


def _authority(origin: str) -> str | None:
    scheme, sep, rest = origin.lower().partition("://")
    if not sep or scheme not in ("http", "https") or "/" in rest:
        return None
    return _default_port_stripped(rest, scheme)


def _default_port_stripped(authority: str, scheme: str | None = None) -> str:
    # `Host` omits the default port, and so does a browser's Origin; either may still spell it.
    for name, port in (("http", ":80"), ("https", ":443")):
        if scheme in (None, name) and authority.endswith(port):
            return authority[: -len(port)]
    return authority
