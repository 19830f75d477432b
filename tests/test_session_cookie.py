"""The WebSocket session cookie: set on a token handshake, honoured on a
token-less reconnect from the server's own (or an allowed) Origin only."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import connect

from realtime.events.node.auth import Identity, cookie_value
from realtime.events.node.session import COOKIE, TOKEN_TYPE, SessionCookies, session_key
from realtime.settings import Settings, SettingsError, from_env
from tests.conftest import SECRET, Client, Server, base_settings, running, token

HOUR = 3600


def own_origin(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}"


async def handshake(server: Server, path: str, **headers: str) -> tuple[Client, dict[str, str]]:
    """An open socket and the handshake response's headers (the caller closes it)."""
    conn = await connect(server.ws_url("") + path, open_timeout=5, close_timeout=2, additional_headers=headers)
    return Client(conn), dict(conn.response.headers.raw_items())


def set_cookie(response_headers: dict[str, str]) -> dict[str, Any] | None:
    header = next((v for k, v in response_headers.items() if k.lower() == "set-cookie"), None)
    if header is None:
        return None
    parts = [p.strip() for p in header.split(";")]
    name, _, value = parts[0].partition("=")
    attributes = {}
    for part in parts[1:]:
        key, _, val = part.partition("=")
        attributes[key.lower()] = val or True
    return {"name": name, "value": value, **attributes}


async def issued_cookie(server: Server, user_id: int = 1, **token_claims: Any) -> dict[str, Any]:
    headers = {"Origin": own_origin(server)}
    client, response = await handshake(server, f"/ws/notifications/?token={token(user_id, **token_claims)}", **headers)
    try:
        await client.expect("bulk_update")
    finally:
        await client.close()
    cookie = set_cookie(response)
    assert cookie is not None, response
    return cookie


async def with_cookie(server: Server, value: str, origin: str | None, path: str = "/ws/notifications/") -> Client:
    headers = {"Cookie": f"{COOKIE}={value}"}
    if origin is not None:
        headers["Origin"] = origin
    client, _ = await handshake(server, path, **headers)
    return client


@pytest.fixture
async def srv(tmp_path: Path) -> Any:
    async with running(base_settings(tmp_path, auth_timeout=0.5)) as server:
        yield server


async def test_a_token_handshake_sets_a_short_http_only_strict_cookie(srv: Server) -> None:
    cookie = await issued_cookie(srv, name="Kim", role="expert")
    assert cookie["name"] == COOKIE
    assert cookie["path"] == "/ws" and cookie["httponly"] is True and cookie["samesite"] == "Strict"
    assert "secure" not in cookie  # plain ws://
    assert 890 <= int(cookie["max-age"]) <= 900
    claims = jwt.decode(cookie["value"], options={"verify_signature": False})
    assert claims["token_type"] == TOKEN_TYPE and claims["user_id"] == 1 and claims["name"] == "Kim"
    assert abs(claims["iat"] - time.time()) < 5 and claims["exp"] - claims["iat"] == int(cookie["max-age"])
    # Not an access token: signed with a key of its own.
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(cookie["value"], SECRET, algorithms=["HS256"])
    client, _ = await handshake(srv, f"/ws/notifications/?token={cookie['value']}")
    assert await client.closed() == 4001


async def test_the_cookie_never_outlives_the_token(srv: Server) -> None:
    cookie = await issued_cookie(srv, exp=time.time() + 60)
    assert 50 <= int(cookie["max-age"]) <= 60
    claims = jwt.decode(cookie["value"], options={"verify_signature": False})
    assert claims["exp"] <= time.time() + 60


async def test_secure_over_tls(srv: Server) -> None:
    # uvicorn takes the scheme from the proxy's header (wss).
    headers = {"Origin": own_origin(srv), "X-Forwarded-Proto": "https"}
    client, response = await handshake(srv, f"/ws/notifications/?token={token(1)}", **headers)
    await client.close()
    cookie = set_cookie(response)
    assert cookie is not None and cookie["secure"] is True


async def test_no_cookie_without_a_usable_token_or_origin(srv: Server) -> None:
    forged_token = token(1, secret="another-secret-of-32-bytes-or-more")
    for path, headers, code in [
        (f"/ws/notifications/?token={token(1)}", {}, 1000),  # no Origin: not a browser
        (f"/ws/notifications/?token={token(1)}", {"Origin": "https://evil.example"}, 1000),
        (f"/ws/notifications/?token={forged_token}", {"Origin": own_origin(srv)}, 4001),
        (f"/ws/notifications/?token={token(1, exp=time.time() - 5)}", {"Origin": own_origin(srv)}, 4001),
    ]:
        client, response = await handshake(srv, path, **headers)
        if code == 1000:
            await client.expect("bulk_update")
            await client.close()
        else:
            assert await client.closed() == code
        assert set_cookie(response) is None, (path, headers)


async def test_a_token_less_reconnect_is_authenticated_by_the_cookie(srv: Server) -> None:
    await srv.room("r", [1, 2])
    cookie = await issued_cookie(srv, 1, name="Kim")
    client = await with_cookie(srv, cookie["value"], own_origin(srv), "/ws/chat/r/")
    try:
        await client.expect("message_history")
        await client.send({"type": "chat_message", "content": "via the cookie"})
        echo = await client.expect("chat_message")
        assert echo["message"]["sender"]["id"] == 1 and echo["message"]["sender"]["name"] == "Kim"
    finally:
        await client.close()


async def test_a_foreign_origin_cannot_use_the_cookie(srv: Server) -> None:
    cookie = await issued_cookie(srv)
    for origin in ("https://evil.example", f"http://127.0.0.1:{srv.port + 1}", None):
        client = await with_cookie(srv, cookie["value"], origin)
        assert await client.closed() == 4001, origin
        assert "origin" in (client.conn.close_reason or ""), client.conn.close_reason
    # The socket is not refused outright: an `auth` frame still works.
    client = await with_cookie(srv, cookie["value"], "https://evil.example")
    await client.send({"type": "auth", "token": token(1)})
    await client.expect("auth_ok")
    await client.close()


async def test_an_allowed_origin_may_use_the_cookie(tmp_path: Path) -> None:
    app = "https://app.example"
    async with running(base_settings(tmp_path, allowed_origins=(app,), auth_timeout=0.5)) as srv:
        client, response = await handshake(srv, f"/ws/notifications/?token={token(3)}", Origin=app)
        await client.close()
        cookie = set_cookie(response)
        assert cookie is not None
        client = await with_cookie(srv, cookie["value"], app)
        await client.expect("bulk_update")
        await client.close()
        # An origin neither listed nor the server's own: refused with 1008 before any cookie is read.
        client = await with_cookie(srv, cookie["value"], "https://evil.example")
        assert await client.closed() == 1008


def forged(settings: Settings, **claims: Any) -> str:
    key = session_key(settings)
    assert key is not None
    base = {"user_id": 1, "iat": int(time.time()), "exp": int(time.time()) + 600, "token_type": TOKEN_TYPE}
    return jwt.encode({**base, **claims}, key, algorithm="HS256")


async def test_expired_garbled_or_foreign_cookies_are_refused(srv: Server) -> None:
    good = forged(srv.settings)
    client = await with_cookie(srv, good, own_origin(srv))
    await client.expect("bulk_update")
    await client.close()
    bad = {
        "expired": forged(srv.settings, iat=int(time.time()) - 1000, exp=int(time.time()) - 10),
        "garbled": good[:-6] + "AAAAAA",
        "junk": "not-a-token",
        "no iat": forged(srv.settings, iat=None),
        "access token": token(1),
        "other kind": forged(srv.settings, token_type="access"),
        "no user": forged(srv.settings, user_id="x"),
    }
    for what, value in bad.items():
        client = await with_cookie(srv, value, own_origin(srv))
        assert await client.closed() == 4001, what
        assert (client.conn.close_reason or "").startswith("session cookie"), (what, client.conn.close_reason)


async def test_the_key_survives_a_restart_and_is_shared(tmp_path: Path) -> None:
    settings = base_settings(tmp_path)
    async with running(settings) as first:
        cookie = await issued_cookie(first)
    # Another process (here: another app) with the same settings takes it.
    async with running(replace(settings)) as second:
        client = await with_cookie(second, cookie["value"], own_origin(second))
        await client.expect("bulk_update")
        await client.close()
    # A different JWT_SECRET, a different key.
    other = replace(settings, jwt_secret="another-secret-of-32-bytes-or-more")
    assert session_key(other) != session_key(settings)
    assert session_key(replace(settings, session_secret="s" * 32)) == b"s" * 32


def test_session_settings() -> None:
    env = {"JWT_SECRET": SECRET}
    assert from_env({**env, "SESSION_TTL": "60"}).session_ttl == 60
    with pytest.raises(SettingsError, match=r"^SESSION_SECRET: must be at least 32"):
        from_env({**env, "SESSION_SECRET": "short"})
    with pytest.raises(SettingsError, match=r"^SESSION_TTL: must be a number of seconds above 0"):
        from_env({**env, "SESSION_TTL": "0"})
    with pytest.raises(SettingsError, match=r"^DRAIN_TIMEOUT: "):
        from_env({**env, "DRAIN_TIMEOUT": "soon"})
    pem = "-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----"
    assert session_key(Settings(jwt_public_key=pem, jwt_algorithms=("RS256",))) is None
    assert session_key(Settings(jwt_public_key=pem, jwt_algorithms=("RS256",), session_secret="k" * 32)) == b"k" * 32


async def test_with_a_public_key_and_no_session_secret_cookies_are_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    settings = base_settings(tmp_path, jwt_secret=None, jwt_public_key=pem, jwt_algorithms=("ES256",))
    async with running(settings) as srv:
        assert "session cookies off" in caplog.text
        signed = jwt.encode({"user_id": 1, "exp": int(time.time()) + HOUR}, private, algorithm="ES256")
        client, response = await handshake(srv, f"/ws/notifications/?token={signed}", Origin=own_origin(srv))
        await client.expect("bulk_update")
        await client.close()
        assert set_cookie(response) is None


def test_the_cookie_is_found_among_others() -> None:
    assert cookie_value(f"a=1; {COOKIE}=abc.def.ghi; b=2", COOKIE) == "abc.def.ghi"
    assert cookie_value("a=1", COOKIE) is None and cookie_value(None, COOKIE) is None


def test_a_cookie_opened_socket_lives_as_long_as_the_access_token() -> None:
    sessions = SessionCookies(b"k" * 32, ttl=60)
    access_exp = int(time.time()) + HOUR
    identity = Identity(user_id=7, name="Kim", role="expert", profile_image=None, expires_at=access_exp)
    _, header = sessions.set_cookie(identity, secure=True)
    assert header.endswith(b"; Secure")
    value = header.decode().split(";")[0].split("=", 1)[1]
    back = sessions.identity({"cookie": f"{COOKIE}={value}"})
    # The cookie itself is good for a minute; the socket it opens, for the token's hour (TOKEN_EXPIRY=close).
    assert back == identity
    assert jwt.decode(value, b"k" * 32, algorithms=["HS256"])["exp"] <= time.time() + 60


async def test_a_bearer_header_sets_it_and_an_auth_frame_cannot(srv: Server) -> None:
    origin = own_origin(srv)
    client, response = await handshake(srv, "/ws/notifications/", Authorization=f"Bearer {token(1)}", Origin=origin)
    await client.expect("bulk_update")
    await client.close()
    assert set_cookie(response) is not None
    # The handshake's response is sent before the `auth` frame can arrive.
    client, response = await handshake(srv, "/ws/notifications/", Origin=origin)
    await client.send({"type": "auth", "token": token(1)})
    await client.expect("auth_ok")
    await client.close()
    assert set_cookie(response) is None
