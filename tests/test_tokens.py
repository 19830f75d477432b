"""Which tokens the server takes: access tokens only, a numeric `exp` within
`JWT_MAX_LIFETIME`, the configured audience and issuer, and public-key tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.conftest import SECRET, Server, base_settings, running, token, ws

DAY = 86_400


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[Server]:
    async with running(base_settings(tmp_path)) as server:
        await server.room("r1", [1])
        yield server


def raw(claims: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def soon() -> int:
    return int(time.time()) + 600


REFUSED = {
    # SimpleJWT's refresh token lives for days and must not open sockets.
    "refresh token": lambda: token(1, token_type="refresh"),
    "sliding token": lambda: token(1, token_type="sliding"),
    "token_type not a string": lambda: token(1, token_type=["access"]),
    "exp as a string": lambda: raw({"user_id": 1, "exp": str(soon())}),
    "exp as a boolean": lambda: raw({"user_id": 1, "exp": True}),
    "exp 2**70": lambda: raw({"user_id": 1, "exp": 2**70}),
    "exp two days ahead": lambda: token(1, exp=time.time() + 2 * DAY),
    "exp infinite": lambda: raw({"user_id": 1, "exp": float("inf")}),
    # Without JWT_AUDIENCE, a token meant for some audience is not for this server.
    "aud without JWT_AUDIENCE": lambda: token(1, aud="billing"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_tokens_that_are_not_access_tokens_for_now_close_with_4001(srv: Server, case: str) -> None:
    async with ws(srv.ws_url("/ws/chat/r1/", token=REFUSED[case]())) as client:
        assert await client.closed() == 4001
    # The `auth` frame takes the same path.
    async with ws(srv.ws_url("/ws/chat/r1/")) as client:
        await client.send({"type": "auth", "token": REFUSED[case]()})
        assert await client.closed() == 4001


async def test_an_access_token_and_one_without_token_type_are_taken(srv: Server) -> None:
    for good in (token(1, token_type="access"), token(1), token(1, exp=time.time() + DAY - 5)):
        async with ws(srv.ws_url("/ws/chat/r1/", token=good)) as client:
            await client.expect("message_history")


async def test_jwt_max_lifetime_bounds_exp(tmp_path: Path) -> None:
    async with running(base_settings(tmp_path, jwt_max_lifetime=600)) as server:
        await server.room("r1", [1])
        async with ws(server.ws_url("/ws/chat/r1/", token=token(1, exp=time.time() + 3600))) as client:
            assert await client.closed() == 4001
        async with ws(server.ws_url("/ws/chat/r1/", token=token(1, exp=time.time() + 300))) as client:
            await client.expect("message_history")


async def test_audience_and_issuer(tmp_path: Path) -> None:
    settings = base_settings(tmp_path, jwt_audience=("realtime",), jwt_issuer=("https://auth.example",))
    async with running(settings) as server:
        await server.room("r1", [1])
        cases = {
            "other audience": token(1, aud="billing", iss="https://auth.example"),
            "no audience": token(1, iss="https://auth.example"),
            "other issuer": token(1, aud="realtime", iss="https://evil.example"),
            "no issuer": token(1, aud="realtime"),
        }
        for case, bad in cases.items():
            async with ws(server.ws_url("/ws/chat/r1/", token=bad)) as client:
                assert await client.closed() == 4001, case
        for good in (
            token(1, aud="realtime", iss="https://auth.example"),
            token(1, aud=["billing", "realtime"], iss="https://auth.example"),
        ):
            async with ws(server.ws_url("/ws/chat/r1/", token=good)) as client:
                await client.expect("message_history")


def hs256_by_hand(claims: dict[str, Any], secret: str) -> str:
    """PyJWT refuses to sign with a PEM key as an HMAC secret; an attacker would not."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = part(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + part(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{part(signature)}"


def pem(public_key: Any) -> str:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


async def test_rs256_tokens_verify_with_jwt_public_key(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    settings = base_settings(
        tmp_path, jwt_secret=None, jwt_public_key=pem(private.public_key()), jwt_algorithms=("RS256",)
    )
    async with running(settings) as server:
        await server.room("r1", [1])
        good = jwt.encode({"user_id": 1, "exp": soon(), "token_type": "access"}, private, algorithm="RS256")
        async with ws(server.ws_url("/ws/chat/r1/", token=good)) as client:
            await client.expect("message_history")
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        forged = jwt.encode({"user_id": 1, "exp": soon()}, other, algorithm="RS256")
        # An HS256 token signed with the public key's text: the classic key-confusion attack.
        confused = hs256_by_hand({"user_id": 1, "exp": soon()}, settings.jwt_public_key or "")
        for bad in (forged, confused):
            async with ws(server.ws_url("/ws/chat/r1/", token=bad)) as client:
                assert await client.closed() == 4001


async def test_es256_tokens_verify_with_an_ec_public_key(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    settings = base_settings(
        tmp_path, jwt_secret=None, jwt_public_key=pem(private.public_key()), jwt_algorithms=("ES256",)
    )
    async with running(settings) as server:
        await server.room("r1", [1])
        good = jwt.encode({"user_id": 1, "exp": soon()}, private, algorithm="ES256")
        async with ws(server.ws_url("/ws/chat/r1/", token=good)) as client:
            await client.expect("message_history")
