"""The server API's presence: `GET /api/presence?room=|consultation=|user=`
and `GET /api/users/{id}/sockets`, in one process and across processes on
Redis (a socket on another process is listed, with its channel and access; a
closed one leaves at once, a dead process's within the lease)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from realtime.events.node.socket_slots import RedisSlots
from tests.conftest import Server, chat, token, ws
from tests.procs import REDIS_URL, Proc, make_room, require, servers

LEASE = 2.0


async def test_presence_of_a_room_a_consultation_and_a_user(server: Server) -> None:
    await server.room("r", [1, 2])
    async with server.api() as api:
        booked = await api.post("/api/consultations", json={"id": "c1", "expert_id": 1, "client_id": 2})
        assert booked.status_code == 201
        assert (await api.get("/api/presence", params={"room": "r"})).json() == {"room_id": "r", "user_ids": []}
        offline = {"user_id": 1, "online": False, "sockets": 0, "channels": []}
        assert (await api.get("/api/presence", params={"user": 1})).json() == offline
        assert (await api.get("/api/users/1/sockets")).json() == {"user_id": 1, "sockets": []}
        async with (
            chat(server, "r", 1) as room,
            ws(server.ws_url("/ws/notifications/", token=token(1))) as inbox,
            ws(server.ws_url("/ws/consultation/c1/", token=token(1, name="Dr. Kim", role="expert"))) as call,
        ):
            await room.expect("message_history")
            await inbox.expect("bulk_update")
            await call.expect("consultation_status")
            assert (await api.get("/api/presence?room=r")).json() == {"room_id": "r", "user_ids": [1]}
            consultation = (await api.get("/api/presence?consultation=c1")).json()
            assert consultation["consultation_id"] == "c1"
            assert [(p["id"], p["name"], p["type"]) for p in consultation["participants"]] == [(1, "Dr. Kim", "expert")]
            online = (await api.get("/api/presence?user=1")).json()
            assert online == {
                "user_id": 1,
                "online": True,
                "sockets": 3,
                "channels": ["chat", "consultation", "notifications"],
            }
            listed = (await api.get("/api/users/1/sockets")).json()["sockets"]
            assert sorted((s["channel"], s["access"] or "") for s in listed) == [
                ("chat", "chat:r"),
                ("consultation", "consultation:c1"),
                ("notifications", ""),
            ]
            assert listed == sorted(listed, key=lambda s: s["opened_at"])
            assert all(time.time() - 60 < s["opened_at"] <= time.time() for s in listed)
        assert (await api.get("/api/presence?user=1")).json() == offline


async def test_bad_presence_and_socket_queries(server: Server) -> None:
    await server.room("r", [1])
    async with server.api() as api:
        for bad in (
            "",
            "room=r&user=1",
            "room=r&consultation=c",
            "room=r&room=r",
            "user=abc",
            "user=0",
            "user=1.0",
            "user=9223372036854775808",
            "room=a%20b",
            "consultation=" + "x" * 65,
        ):
            response = await api.get(f"/api/presence?{bad}")
            assert (response.status_code, response.json()["error"]) == (400, "invalid_payload"), bad
        for unknown in ("room=nope", "consultation=nope"):
            response = await api.get(f"/api/presence?{unknown}")
            assert (response.status_code, response.json()["error"]) == (404, "not_found"), unknown
        for bad_user in ("abc", "0", "-1", "9223372036854775808"):
            assert (await api.get(f"/api/users/{bad_user}/sockets")).status_code == 404
    async with httpx.AsyncClient(base_url=server.http, headers={"Authorization": "Bearer wrong"}) as wrong:
        assert (await wrong.get("/api/presence?room=r")).status_code == 401
        assert (await wrong.get("/api/users/1/sockets")).status_code == 401


async def eventually(read: Callable[[], Awaitable[Any]], wanted: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (got := await read()) != wanted:
        assert time.monotonic() < deadline, f"{got} != {wanted}"
        await asyncio.sleep(0.1)


async def channels_on(proc: Proc, user_id: int) -> list[tuple[str, str | None]]:
    async with proc.api() as api:
        response = await api.get(f"/api/users/{user_id}/sockets")
        assert response.status_code == 200, response.text
        return [(s["channel"], s["access"]) for s in response.json()["sockets"]]


async def test_sockets_and_presence_are_listed_from_every_process(tmp_path: Path) -> None:
    require("redis")
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/shared.db", "BROKER_URL": REDIS_URL, "SOCKET_LEASE": str(LEASE)}
    async with servers(2, env, tmp_path) as (one, two):
        await make_room(one, "r1", [1])
        async with contextlib.AsyncExitStack() as stack:
            # One after the other: they are listed in the order they were opened.
            room = await stack.enter_async_context(ws(one.ws_url("/ws/chat/r1/", token=token(1))))
            await room.expect("message_history")
            inbox = await stack.enter_async_context(ws(two.ws_url("/ws/notifications/", token=token(1))))
            await inbox.expect("bulk_update")
            both = [("chat", "chat:r1"), ("notifications", None)]
            for proc in (one, two):
                assert await channels_on(proc, 1) == both
                async with proc.api() as api:
                    presence = (await api.get("/api/presence?user=1")).json()
                    assert presence == {
                        "user_id": 1,
                        "online": True,
                        "sockets": 2,
                        "channels": ["chat", "notifications"],
                    }
                    assert (await api.get("/api/presence?room=r1")).json()["user_ids"] == [1]
            # A socket that closes leaves the other process's answer at once (no lease to wait for).
            async with ws(one.ws_url("/ws/chat/r1/", token=token(1))) as second:
                await second.expect("message_history")
                assert await channels_on(two, 1) == [*both, ("chat", "chat:r1")]
            await eventually(lambda: channels_on(two, 1), both, timeout=2)
            # A process that dies without a word: its sockets leave within the lease.
            one.kill()
            await eventually(lambda: channels_on(two, 1), [("notifications", None)], timeout=LEASE + 3)


async def test_slots_describe_sockets_to_the_other_processes_and_tidy_up(tmp_path: Path) -> None:
    """RedisSlots directly: info written with the slot, updated, read by the
    other process only, removed with the slot, and a lapsed one's info removed
    by the next reservation."""
    require("redis")
    prefix = f"rt:test{secrets.token_hex(4)}:"
    here, there = RedisSlots(REDIS_URL, prefix, 1.0), RedisSlots(REDIS_URL, prefix, 1.0)
    info_key = f"{prefix}sockets:7:info"
    try:
        opened = {"channel": "chat", "access": None, "opened_at": 1.5}
        slot = await here.reserve(7, 5, opened)
        assert slot is not None
        assert await here.elsewhere(7) == [] and await there.elsewhere(7) == [opened]
        authorized = {**opened, "access": "chat:r"}
        await here.update(7, slot, authorized)
        assert await there.elsewhere(7) == [authorized]
        await here.release(7, slot)
        assert await there.elsewhere(7) == []
        assert await there.redis.hlen(info_key) == 0
        # A process that dies stops renewing: its socket stops being listed, and its info goes with the next reserve.
        lost = await here.reserve(7, 5, opened)
        assert lost is not None
        assert here.renewer is not None
        here.renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await here.renewer
        here.renewer, here.held = None, {}
        await asyncio.sleep(1.1)
        assert await there.elsewhere(7) == []
        assert await there.redis.hkeys(info_key) == [lost]
        kept = await there.reserve(7, 5, authorized)
        assert await there.redis.hkeys(info_key) == [kept]
        assert await here.elsewhere(7) == [authorized]
        # Renewals keep the info while the socket lives.
        await asyncio.sleep(1.5)
        assert await here.elsewhere(7) == [authorized]
    finally:
        await here.close()
        await there.close()
