"""Access that ends when it is revoked: the per-user socket limit under a
handshake race, removed members, revoked tokens, expired tokens, finished
consultations."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from realtime.store import rooms
from tests.conftest import Client, Server, base_settings, chat, running, token, ws

# ---- the per-user socket limit ------------------------------------------------------


async def _open_or_refused(url: str, stack: contextlib.AsyncExitStack) -> str:
    """'open' when the socket got its snapshot (it stays open in `stack`), else the close code."""
    client = await stack.enter_async_context(ws(url))
    try:
        frame = await client.recv(timeout=20)
    except Exception:  # closed before any frame
        return str(await client.closed())
    assert frame["type"] == "message_history", frame
    return "open"


@pytest.mark.settings(max_sockets_per_user=5)
async def test_two_hundred_simultaneous_handshakes_get_at_most_the_limit(server: Server) -> None:
    await server.room("r1", [1])
    url = server.ws_url("/ws/chat/r1/", token=token(1))
    async with contextlib.AsyncExitStack() as stack:
        outcomes = await asyncio.gather(*(_open_or_refused(url, stack) for _ in range(200)))
        assert outcomes.count("open") == 5, sorted(set(outcomes))
        assert set(outcomes) == {"open", "1008"}
    # Every slot was given back when the sockets closed, the refused ones' too.
    await asyncio.sleep(0.2)
    assert server.runtime.open_sockets() == 0
    async with contextlib.AsyncExitStack() as stack:
        outcomes = [await _open_or_refused(url, stack) for _ in range(6)]
        assert outcomes == ["open"] * 5 + ["1008"]


# ---- a removed member ------------------------------------------------------------------


async def history_contents(server: Server, room_id: str, user_id: int) -> list[str]:
    async with chat(server, room_id, user_id) as client:
        frame = await client.expect("message_history")
    return [m["content"] for m in frame["messages"]]


async def test_a_removed_member_is_closed_with_4003_at_once(server: Server) -> None:
    await server.room("r1", [1, 2])
    async with chat(server, "r1", 1) as stay, chat(server, "r1", 2) as removed, chat(server, "r1", 2) as tab:
        for client in (stay, removed, tab):
            await client.expect("message_history")
        async with server.api() as api:
            assert (await api.delete("/api/rooms/r1/members/2")).status_code == 204
        # Sent right after the 204: too late either way.
        with contextlib.suppress(Exception):
            await removed.send({"type": "chat_message", "content": "after removal", "client_msg_id": "late"})
        assert await removed.closed(timeout=1) == 4003
        assert await tab.closed(timeout=1) == 4003
        await stay.send({"type": "ping"})
        await stay.expect("pong")
        await stay.silent()
    assert "after removal" not in await history_contents(server, "r1", 1)
    async with chat(server, "r1", 2) as again:
        assert await again.closed() == 4003


async def test_a_frame_handled_after_the_removal_is_refused_and_not_stored(server: Server) -> None:
    """The membership is checked where the message is written: a removal that
    has not reached this socket yet (here: no `ctl` at all) still refuses it."""
    await server.room("r1", [1, 2])
    async with chat(server, "r1", 2) as removed:
        await removed.expect("message_history")
        await removed.send({"type": "chat_message", "content": "while a member"})
        await removed.expect("chat_message")
        # Straight in the store: the socket hears nothing of it.
        await rooms.remove_member(server.runtime.db, "r1", 2)
        await removed.send({"type": "chat_message", "content": "after removal", "client_msg_id": "m2"})
        refused = await removed.expect("error")
        assert refused["code"] == "forbidden" and refused["client_msg_id"] == "m2"
        assert await removed.closed() == 4003
    assert await history_contents(server, "r1", 1) == ["while a member"]


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "fetch_history"},
        {"type": "sync", "since": 0},
        {"type": "mark_read", "message_id": "MID"},
        {"type": "delete_message", "message_id": "MID"},
    ],
)
async def test_every_room_frame_after_the_removal_is_refused(server: Server, frame: dict[str, Any]) -> None:
    await server.room("r1", [1, 2])
    async with chat(server, "r1", 1) as one, chat(server, "r1", 2) as two:
        await one.expect("message_history")
        await two.expect("message_history")
        await two.send({"type": "chat_message", "content": "mine"})
        message = (await two.expect("chat_message"))["message"]
        await one.expect("chat_message")
        await one.send({"type": "chat_message", "content": "theirs"})
        theirs = (await one.expect("chat_message"))["message"]
        await two.expect("chat_message")
        await rooms.remove_member(server.runtime.db, "r1", 2)
        target = message["id"] if frame["type"] == "delete_message" else theirs["id"]
        await two.send({k: (target if v == "MID" else v) for k, v in frame.items()})
        assert (await two.expect("error"))["code"] == "forbidden"
        assert await two.closed() == 4003
        await one.silent()
    assert await history_contents(server, "r1", 1) == ["mine", "theirs"]


# ---- revoked users ---------------------------------------------------------------------


async def next_second() -> None:
    """Tokens carry `iat` in whole seconds: one issued after a revocation is a second later."""
    await asyncio.sleep(1.05 - time.time() % 1)


async def test_revoke_refuses_old_tokens_across_a_restart_and_accepts_new_ones(
    tmp_path: Path, database_url: str
) -> None:
    settings = base_settings(tmp_path, database_url=database_url)
    old = token(1, iat=int(time.time()))
    without_iat = token(1)
    async with running(settings) as srv:
        await srv.room("r1", [1, 2])
        async with chat(srv, "r1", 1, token=old) as a, chat(srv, "r1", 2) as b:
            await a.expect("message_history")
            await b.expect("message_history")
            async with srv.api() as api:
                response = await api.post("/api/users/1/disconnect", json={"revoke": True})
            assert response.status_code == 202, response.text
            answer = response.json()
            assert answer == {"user_id": 1, "revoked": True, "revoked_before": answer["revoked_before"]}
            # Unix milliseconds; a token is refused while its `iat` (seconds) is not after it.
            assert abs(answer["revoked_before"] / 1000 - time.time()) < 5
            assert await a.closed() == 4001
            await b.send({"type": "ping"})
            await b.expect("pong")
        for refused in (old, without_iat):
            async with chat(srv, "r1", 1, token=refused) as again:
                assert await again.closed() == 4001
    await next_second()
    async with running(settings) as srv:
        for refused in (old, without_iat):
            async with chat(srv, "r1", 1, token=refused) as again:
                assert await again.closed() == 4001
            async with ws(srv.ws_url("/ws/chat/r1/")) as by_frame:
                await by_frame.send({"type": "auth", "token": refused})
                assert await by_frame.closed() == 4001
        fresh = token(1, iat=int(time.time()))
        async with chat(srv, "r1", 1, token=fresh) as client:
            await client.expect("message_history")
            # A refresh with a revoked token ends the socket too.
            await client.send({"type": "auth", "token": old})
            assert await client.closed() == 4001


async def test_disconnect_without_revoke_lets_the_same_token_back(server: Server) -> None:
    await server.room("r1", [1])
    same = token(1, iat=int(time.time()))
    async with chat(server, "r1", 1, token=same) as client:
        await client.expect("message_history")
        async with server.api() as api:
            response = await api.post("/api/users/1/disconnect", json={"revoke": False})
        assert response.status_code == 202 and response.json() == {"user_id": 1, "revoked": False}
        assert await client.closed() == 4001
    async with chat(server, "r1", 1, token=same) as client:
        await client.expect("message_history")


@pytest.mark.parametrize(
    "content",
    [b'{"revoke": "yes"}', b'{"revoke": 1}', b'{"revoke": true, "also": 1}', b"[]", b"{", b'"x"', b"null"],
)
async def test_disconnect_refuses_bad_input_and_changes_nothing(server: Server, content: bytes) -> None:
    await server.room("r1", [1])
    async with chat(server, "r1", 1) as client:
        await client.expect("message_history")
        async with server.api() as api:
            response = await api.post("/api/users/1/disconnect", content=content)
        assert response.status_code == 400, response.text
        assert response.json()["error"] in ("invalid_json", "invalid_payload")
        await client.send({"type": "ping"})
        await client.expect("pong")
    async with chat(server, "r1", 1) as client:
        await client.expect("message_history")


# ---- token expiry ------------------------------------------------------------------------


async def test_an_expired_token_closes_the_socket_by_default(tmp_path: Path) -> None:
    async with running(base_settings(tmp_path, token_grace=0.5)) as srv:
        assert srv.settings.token_expiry == "close"
        await srv.room("r1", [1])
        async with ws(srv.ws_url("/ws/chat/r1/", token=token(1, exp=time.time() + 1))) as client:
            await client.expect("message_history")
            await client.expect("token_expiring", timeout=3)
            assert await client.closed() == 4001


# ---- consultations that end ---------------------------------------------------------------


async def _consultation(srv: Server, cid: str) -> tuple[contextlib.AsyncExitStack, Client, Client]:
    async with srv.api() as api:
        response = await api.post("/api/consultations", json={"id": cid, "expert_id": 1, "client_id": 2})
        assert response.status_code == 201
    stack = contextlib.AsyncExitStack()
    expert = await stack.enter_async_context(ws(srv.ws_url(f"/ws/consultation/{cid}/", token=token(1))))
    await expert.expect("consultation_status")
    client = await stack.enter_async_context(ws(srv.ws_url(f"/ws/consultation/{cid}/", token=token(2))))
    await client.expect("consultation_status")
    await expert.expect("participant_joined")
    return stack, expert, client


@pytest.mark.settings(status_interval=1e7)
async def test_ending_or_cancelling_a_consultation_closes_its_sockets_after_the_event(server: Server) -> None:
    stack, expert, client = await _consultation(server, "c1")
    async with stack, server.api() as api:
        assert (await api.post("/api/consultations/c1/cancel", json={"reason": "no-show"})).status_code == 200
        for c in (expert, client):
            await c.expect("consultation_cancelled")
            assert await c.closed() == 4003
    stack, expert, client = await _consultation(server, "c2")
    async with stack, server.api() as api:
        assert (await api.post("/api/consultations/c2/start")).status_code == 200
        for c in (expert, client):
            await c.expect("consultation_started")
        assert (await api.post("/api/consultations/c2/end")).status_code == 200
        for c in (expert, client):
            await c.expect("consultation_ended")
            assert await c.closed() == 4003
    # A late socket still learns how it ended, then is closed the same way.
    for cid, status in (("c1", "cancelled"), ("c2", "completed")):
        async with ws(server.ws_url(f"/ws/consultation/{cid}/", token=token(2))) as late:
            assert (await late.expect("consultation_status"))["status_data"]["status"] == status
            assert await late.closed() == 4003


async def test_a_revoked_token_cannot_upload(server: Server) -> None:
    await server.room("r1", [1])
    old = token(1, iat=int(time.time()))

    async def upload(bearer: str) -> int:
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{server.http}/chat/messages/file/",
                files={"file": ("a.bin", b"data", "application/octet-stream")},
                data={"room_id": "r1"},
                headers={"Authorization": f"Bearer {bearer}"},
            )
        return response.status_code

    assert await upload(old) == 201
    async with server.api() as api:
        assert (await api.post("/api/users/1/disconnect", json={"revoke": True})).status_code == 202
    assert await upload(old) == 401
    await next_second()
    assert await upload(token(1, iat=int(time.time()))) == 201
