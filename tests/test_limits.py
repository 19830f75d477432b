"""Abuse containment: origins, rate limits, socket limits, revocation, token expiry."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.conftest import Server, base_settings, chat, running, token, ws


@pytest.mark.settings(allowed_origins=("https://app.example",))
async def test_a_foreign_origin_is_refused_with_1008(server: Server) -> None:
    await server.room("r1", [1])
    url = server.ws_url("/ws/chat/r1/", token=token(1))
    async with ws(url, origin="https://evil.example") as client:
        assert await client.closed() == 1008
    async with ws(url, origin="https://app.example") as client:
        await client.expect("message_history")
    async with ws(url) as client:  # no Origin: not a browser, no cookie to hijack
        await client.expect("message_history")


@pytest.mark.settings(rate_limit=5, rate_burst=10)
async def test_frames_over_the_rate_get_rate_limited_and_the_socket_recovers(server: Server) -> None:
    await server.room("r1", [1])
    async with chat(server, "r1", 1) as client:
        await client.expect("message_history")
        await client.send([{"type": "fetch_history"}] * 15)
        replies = [await client.recv() for _ in range(15)]
        assert [r["type"] for r in replies].count("history_page") == 10
        limited = [r for r in replies if r["type"] == "error"]
        assert len(limited) == 5 and {r["code"] for r in limited} == {"rate_limited"}
        assert limited[0]["request_type"] == "fetch_history"
        await asyncio.sleep(0.5)
        await client.send({"type": "fetch_history"})
        await client.expect("history_page")


@pytest.mark.settings(rate_limit=5, rate_burst=10)
async def test_typing_is_cheaper_than_messages(server: Server) -> None:
    await server.room("r1", [1])
    async with chat(server, "r1", 1) as client:
        await client.expect("message_history")
        await client.send([{"type": "typing_start"}] * 30 + [{"type": "ping"}])
        assert (await client.recv())["type"] == "pong"


@pytest.mark.settings(rate_limit=1, rate_burst=5)
async def test_sustained_abuse_closes_with_1008(server: Server) -> None:
    await server.room("r1", [1])
    async with chat(server, "r1", 1) as client:
        await client.expect("message_history")
        for _ in range(4):
            await client.send([{"type": "fetch_history"}] * 40)
        assert await client.closed() == 1008


@pytest.mark.settings(rate_limit=5, rate_burst=10)
async def test_the_user_budget_spans_their_sockets(server: Server) -> None:
    await server.room("r1", [1])
    async with chat(server, "r1", 1) as a, chat(server, "r1", 1) as b:
        await a.expect("message_history")
        await b.expect("message_history")
        await a.send([{"type": "fetch_history"}] * 10)
        await b.send([{"type": "fetch_history"}] * 10)
        await a.send([{"type": "fetch_history"}] * 5)
        frames = [await a.recv() for _ in range(15)] + [await b.recv() for _ in range(10)]
        # Each socket may burst 10, the user 20 in all.
        assert [f["type"] for f in frames].count("history_page") == 20


@pytest.mark.settings(max_sockets_per_user=2)
async def test_sockets_per_user_are_limited(server: Server) -> None:
    await server.room("r1", [1, 2])
    async with chat(server, "r1", 1) as a, chat(server, "r1", 1) as b:
        await a.expect("message_history")
        await b.expect("message_history")
        async with chat(server, "r1", 1) as third:
            assert await third.closed() == 1008
        async with chat(server, "r1", 2) as other_user:
            await other_user.expect("message_history")


async def test_unauthenticated_sockets_waiting_are_limited(tmp_path: Path) -> None:
    async with running(base_settings(tmp_path, max_pending_auth=2, auth_timeout=5)) as srv:
        await srv.room("r1", [1])
        async with ws(srv.ws_url("/ws/chat/r1/")), ws(srv.ws_url("/ws/chat/r1/")):
            await asyncio.sleep(0.2)
            async with ws(srv.ws_url("/ws/chat/r1/")) as third:
                assert await third.closed() == 1013


async def test_the_server_api_disconnects_a_user_everywhere(server: Server) -> None:
    await server.room("r1", [1, 2])
    async with chat(server, "r1", 1) as a, chat(server, "r1", 1) as a2, chat(server, "r1", 2) as b:
        for client in (a, a2, b):
            await client.expect("message_history")
        async with server.api() as api:
            response = await api.post("/api/users/1/disconnect")
            assert response.status_code == 202
        assert await a.closed() == 4001
        assert await a2.closed() == 4001
        await b.send({"type": "ping"})
        await b.expect("pong")


async def test_token_expiry_close_mode_warns_then_closes_unless_refreshed(tmp_path: Path) -> None:
    async with running(base_settings(tmp_path, token_expiry="close", token_grace=0.5)) as srv:
        await srv.room("r1", [1])
        async with ws(srv.ws_url("/ws/chat/r1/", token=token(1, exp=time.time() + 1))) as client:
            await client.expect("message_history")
            warning = await client.expect("token_expiring", timeout=3)
            assert warning["grace_seconds"] == 0.5
            assert await client.closed() == 4001
        async with ws(srv.ws_url("/ws/chat/r1/", token=token(1, exp=time.time() + 1))) as client:
            await client.expect("message_history")
            await client.expect("token_expiring", timeout=3)
            await client.send({"type": "auth", "token": token(1, exp=time.time() + 60)})
            await client.expect("auth_ok")
            await asyncio.sleep(1)
            await client.send({"type": "ping"})
            await client.expect("pong")


async def test_token_expiry_ignore_keeps_an_expired_socket_open(tmp_path: Path) -> None:
    # The default is `close` (tests/test_revocation.py); `ignore` is there for clients that never refresh.
    async with running(base_settings(tmp_path, token_expiry="ignore")) as srv:
        await srv.room("r1", [1])
        async with ws(srv.ws_url("/ws/chat/r1/", token=token(1, exp=time.time() + 1))) as client:
            await client.expect("message_history")
            await asyncio.sleep(1.5)
            await client.send({"type": "ping"})
            await client.expect("pong")
