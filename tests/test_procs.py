"""Two server processes on one Redis and one PostgreSQL: chat crosses processes."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Client, token, ws
from tests.procs import REDIS_URL, fresh_postgres, require, servers


async def test_members_on_two_processes_chat_both_ways(tmp_path: Path) -> None:
    require("redis")
    require("postgres")
    async with fresh_postgres() as db_url:
        env = {"DATABASE_URL": db_url, "BROKER_URL": REDIS_URL}
        async with servers(2, env, tmp_path) as (one, two):
            async with one.api() as api:
                assert (await api.post("/api/rooms", json={"id": "x", "member_ids": [1, 2]})).status_code == 201
            async with (
                ws(one.ws_url("/ws/chat/x/", token=token(1))) as a,
                ws(two.ws_url("/ws/chat/x/", token=token(2))) as b,
            ):
                await a.expect("message_history")
                await b.expect("message_history")
                for i in range(10):
                    sender: Client = a if i % 2 == 0 else b
                    await sender.send({"type": "chat_message", "content": f"m{i}"})
                    for client in (a, b):
                        frame = await client.expect("chat_message")
                        assert frame["message"]["content"] == f"m{i}"
                        assert frame["seq"] == i + 1
