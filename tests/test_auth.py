"""Authentication on connect: the four ways, and every way to fail it."""

from __future__ import annotations

import base64
import json
import time

import pytest

from tests.conftest import Server, token, ws


def unsigned(claims: dict[str, object]) -> str:
    """An `alg: none` token."""

    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


@pytest.fixture
async def room(server: Server) -> Server:
    await server.room("r1", [1, 2])
    return server


BAD_TOKENS = {
    "wrong secret": token(1, secret="another-secret-that-is-long-enough-32b"),
    "expired": token(1, exp=time.time() - 60),
    "alg none": unsigned({"user_id": 1, "exp": int(time.time()) + 600}),
    "HS384 not configured": token(1, algorithm="HS384"),
    "no exp": None,  # filled below: PyJWT needs a real key to sign
    "garbage": "not.a.jwt",
    "no user": token(1, claim="someone"),
    "user id not an integer": token("abc"),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_bad_tokens_close_with_4001(room: Server, case: str) -> None:
    import jwt

    from tests.conftest import SECRET

    bad = BAD_TOKENS[case] or jwt.encode({"user_id": 1}, SECRET, algorithm="HS256")
    async with ws(room.ws_url("/ws/chat/r1/", token=bad)) as client:
        assert await client.closed() == 4001


async def test_missing_token_and_silence_close_with_4001(tmp_path) -> None:
    from tests.conftest import base_settings, running

    async with running(base_settings(tmp_path, auth_timeout=0.3)) as srv:
        await srv.room("r1", [1])
        async with ws(srv.ws_url("/ws/chat/r1/")) as client:
            started = time.monotonic()
            assert await client.closed() == 4001
            assert time.monotonic() - started < 3


async def test_first_frame_other_than_auth_closes_with_4001(room: Server) -> None:
    async with ws(room.ws_url("/ws/chat/r1/")) as client:
        await client.send({"type": "chat_message", "content": "hi"})
        assert await client.closed() == 4001


async def test_first_frame_authentication(room: Server) -> None:
    async with ws(room.ws_url("/ws/chat/r1/")) as client:
        await client.send({"type": "auth", "token": token(1, name="Ann")})
        ok = await client.expect("auth_ok")
        assert ok["user"]["id"] == 1 and ok["user"]["name"] == "Ann"
        await client.expect("message_history")


async def test_first_frame_with_a_bad_token_closes_with_4001(room: Server) -> None:
    async with ws(room.ws_url("/ws/chat/r1/")) as client:
        await client.send({"type": "auth", "token": token(1, exp=time.time() - 5)})
        assert await client.closed() == 4001


async def test_authorization_header(room: Server) -> None:
    headers = {"Authorization": f"Bearer {token(2)}"}
    async with ws(room.ws_url("/ws/chat/r1/"), additional_headers=headers) as client:
        await client.expect("message_history")


async def test_cookie_keeps_a_reconnect_without_token_authenticated(room: Server) -> None:
    headers = {"Cookie": f"theme=dark; access_token={token(2)}"}
    async with ws(room.ws_url("/ws/chat/r1/"), additional_headers=headers) as client:
        await client.expect("message_history")


async def test_sub_claim_works_like_user_id(room: Server) -> None:
    async with ws(room.ws_url("/ws/chat/r1/", token=token("2", claim="sub"))) as client:
        await client.expect("message_history")


async def test_query_token_wins_over_header(room: Server) -> None:
    headers = {"Authorization": "Bearer garbage"}
    async with ws(room.ws_url("/ws/chat/r1/", token=token(1)), additional_headers=headers) as client:
        await client.expect("message_history")


async def test_auth_frame_later_refreshes_for_the_same_user_only(room: Server) -> None:
    async with ws(room.ws_url("/ws/chat/r1/", token=token(1))) as client:
        await client.expect("message_history")
        await client.send({"type": "auth", "token": token(1)})
        assert (await client.expect("auth_ok"))["user"]["id"] == 1
        await client.send({"type": "auth", "token": token(2)})
        assert (await client.expect("error"))["code"] == "forbidden"
        await client.send({"type": "ping"})
        await client.expect("pong")
        await client.send({"type": "auth", "token": "garbage"})
        assert await client.closed() == 4001


async def test_profile_comes_from_the_server_api_when_the_token_has_no_name(room: Server) -> None:
    await room.user(2, "Minji", "client")
    async with ws(room.ws_url("/ws/chat/r1/", token=token(2))) as client:
        await client.expect("message_history")
        await client.send({"type": "chat_message", "content": "hi"})
        assert (await client.expect("chat_message"))["message"]["sender"]["name"] == "Minji"


async def test_tokens_never_reach_the_logs(room: Server, capsys: pytest.CaptureFixture[str], caplog) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    secret_token = token(1, name="Logged")
    async with ws(room.ws_url("/ws/chat/r1/", token=secret_token)) as client:
        await client.expect("message_history")
        await client.send({"type": "auth", "token": "x" * 40})
        await client.closed()
    captured = capsys.readouterr()
    everything = captured.out + captured.err + caplog.text
    assert secret_token not in everything
    assert secret_token.split(".")[2] not in everything
