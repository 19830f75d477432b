"""Consultations across two server processes on one Redis and one PostgreSQL:
presence, the once-per-tick broadcast and its takeover, the lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from realtime.events.node.presence import MemoryPresence, Presence, RedisPresence, namespace
from realtime.settings import Settings
from realtime.store.consultations import iso
from tests.conftest import Client, next_of, token, ws
from tests.procs import REDIS_URL, Proc, fresh_postgres, require, servers

EXPERT, CLIENT = 1, 2
INTERVAL = 0.4


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path, **env: str) -> AsyncIterator[tuple[str, list[Proc]]]:
    require("redis")
    require("postgres")
    async with fresh_postgres() as db_url:
        full = {"DATABASE_URL": db_url, "BROKER_URL": REDIS_URL, "STATUS_INTERVAL": str(INTERVAL), **env}
        async with servers(2, full, tmp_path) as procs:
            yield db_url, procs


async def book(proc: Proc, start: bool = False) -> str:
    # Unique per test: the broker's channels are shared with any other test run.
    cid = f"p-{uuid.uuid4().hex[:12]}"
    async with proc.api() as api:
        response = await api.post("/api/consultations", json={"id": cid, "expert_id": EXPERT, "client_id": CLIENT})
        assert response.status_code == 201, response.text
        if start:
            assert (await api.post(f"/api/consultations/{cid}/start")).status_code == 200
    return cid


def room(proc: Proc, user_id: int, cid: str) -> contextlib.AbstractAsyncContextManager[Client]:
    return ws(proc.ws_url(f"/ws/consultation/{cid}/", token=token(user_id, name=f"user{user_id}")))


async def count_status(client: Client, seconds: float) -> int:
    count = 0
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            frame = await client.recv(left)
        except TimeoutError:
            break
        count += frame["type"] == "consultation_status"
    return count


@contextlib.asynccontextmanager
async def keeping_alive(*clients: Client) -> AsyncIterator[None]:
    async def beat() -> None:
        while True:
            for client in clients:
                with contextlib.suppress(Exception):
                    await client.send({"type": "presence_update"})
            await asyncio.sleep(0.2)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()


async def test_presence_crosses_processes_and_survives_a_killed_one(tmp_path: Path) -> None:
    async with cluster(tmp_path, PRESENCE_TIMEOUT="1.5") as (_, (one, two)):
        cid = await book(one)
        async with room(one, EXPERT, cid) as expert:
            alone = await next_of(expert, "consultation_status")
            assert [p["id"] for p in alone["status_data"]["participants"]] == [EXPERT]
            async with keeping_alive(expert):
                async with room(two, CLIENT, cid) as client:
                    status = (await next_of(client, "consultation_status"))["status_data"]
                    assert [(p["id"], p["type"]) for p in status["participants"]] == [
                        (EXPERT, "expert"),
                        (CLIENT, "client"),
                    ]
                    joined = await next_of(expert, "participant_joined")
                    assert joined["participant"]["id"] == CLIENT and joined["participant"]["type"] == "client"
                    async with room(two, CLIENT, cid) as tab, room(one, CLIENT, cid) as tab_elsewhere:
                        await next_of(tab, "consultation_status")
                        await next_of(tab_elsewhere, "consultation_status")
                    # Three tabs on two processes, still one participant.
                    await expert.silent(0.5)
                left = await next_of(expert, "participant_left")
                assert left["participant_id"] == CLIENT

                async with room(two, CLIENT, cid) as client:
                    await next_of(client, "consultation_status")
                    assert (await next_of(expert, "participant_joined"))["participant"]["id"] == CLIENT
                    async with keeping_alive(client):
                        await expert.silent(0.5)
                        # The client's process dies without closing anything:
                        # its connection goes silent and the survivor sweeps it.
                        two.kill()
                        left = await next_of(expert, "participant_left", timeout=6)
                        assert left["participant_id"] == CLIENT


async def tick_owner(redis: Redis, prefix: str) -> str | None:
    keys = [key async for key in redis.scan_iter(match=f"{prefix}tick:*")]
    if not keys:
        return None
    latest = max(keys, key=lambda key: int(key.rsplit(":", 1)[1]))
    return await redis.get(latest)


async def test_the_tick_runs_once_per_interval_and_moves_when_its_holder_dies(tmp_path: Path) -> None:
    async with cluster(tmp_path) as (db_url, (one, two)):
        cid = await book(one, start=True)
        prefix = namespace(Settings(database_url=db_url))
        redis = Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            async with room(two, CLIENT, cid) as client:
                await next_of(client, "consultation_status")
                ticks = await count_status(client, INTERVAL * 6)
                # Both processes tick; one broadcast each: about 6, never about 12.
                assert 4 <= ticks <= 8, ticks
                owners = set()
                deadline = time.monotonic() + 15
                while True:
                    owner = await tick_owner(redis, prefix)
                    owners.add(owner)
                    if owner is not None and owner.endswith(f":{one.popen.pid}"):
                        break
                    assert time.monotonic() < deadline, owners
                    await asyncio.sleep(INTERVAL / 4)
                one.kill()
                await count_status(client, INTERVAL)  # what the dead holder had sent
                ticks = await count_status(client, INTERVAL * 6)
                assert 4 <= ticks <= 8, ticks
                assert (await tick_owner(redis, prefix) or "").endswith(f":{two.popen.pid}")
        finally:
            await redis.aclose()


async def test_lifecycle_and_time_up_across_processes_on_postgres(tmp_path: Path) -> None:
    async with cluster(tmp_path) as (db_url, (one, two)):
        cid = await book(one)
        async with room(one, EXPERT, cid) as expert:
            await next_of(expert, "consultation_status")
            async with room(two, CLIENT, cid) as client:
                await next_of(client, "consultation_status")
                await next_of(expert, "participant_joined")
                await consult(expert, client, db_url, cid)


async def consult(expert: Client, client: Client, db_url: str, cid: str) -> None:
    await expert.send({"type": "start_consultation"})
    started = await next_of(client, "consultation_started")
    assert started == await next_of(expert, "consultation_started")

    await client.send({"type": "request_extension", "duration_minutes": 15})
    asked = await next_of(expert, "extension_requested")
    assert asked["requested_by"] == CLIENT
    await client.send({"type": "request_extension", "duration_minutes": 15})
    assert (await next_of(client, "error"))["code"] == "conflict"
    await expert.send({"type": "respond_extension", "request_id": asked["request_id"], "accept": True})
    for c in (expert, client):
        extended = await next_of(c, "consultation_extended")
        assert extended["duration_minutes"] == 15
    ends = datetime.fromisoformat(extended["ends_at"].replace("Z", "+00:00"))
    assert ends - datetime.fromisoformat(started["ends_at"].replace("Z", "+00:00")) == timedelta(minutes=15)

    conn = await asyncpg.connect(db_url)
    try:
        past = iso(datetime.now(UTC) - timedelta(seconds=1))
        await conn.execute("UPDATE consultations SET ends_at = $1 WHERE id = $2", past, cid)
    finally:
        await conn.close()
    for c in (expert, client):
        assert (await next_of(c, "consultation_ended"))["reason"] == "time_up"
        # Over on both processes: each socket is closed after the event.
        assert await c.closed() == 4003


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_both_presence_stores_agree(kind: str) -> None:
    timeout = 0.3
    if kind == "redis":
        require("redis")
        store: Presence = RedisPresence(REDIS_URL, timeout, f"test-{uuid.uuid4().hex}:")
    else:
        store = MemoryPresence(timeout)
    cid = "c"

    def who(user_id: int) -> dict[str, Any]:
        return {"id": user_id, "name": f"user{user_id}", "type": "client", "joined_at": iso(datetime.now(UTC))}

    try:
        assert await store.seen(cid, 1, "tab-a", who(1)) is True
        first = (await store.participants(cid))[0]
        assert await store.seen(cid, 1, "tab-b", who(1)) is False
        assert await store.seen(cid, 2, "x", who(2)) is True
        assert [p["id"] for p in await store.participants(cid)] == [1, 2]
        assert (await store.participants(cid))[0] == first  # a second tab keeps the first joined_at
        assert await store.leave(cid, 1, "tab-a") is False
        assert await store.leave(cid, 1, "tab-b") is True
        assert await store.leave(cid, 1, "tab-b") is False
        assert [p["id"] for p in await store.participants(cid)] == [2]
        assert await store.sweep() == []
        await asyncio.sleep(timeout + 0.1)
        assert await store.sweep() == [(cid, 2)]
        assert await store.participants(cid) == []
        assert await store.sweep() == []
        assert await store.leave(cid, 2, "x") is False  # its leave was already announced
        assert await store.seen(cid, 2, "x", who(2)) is True
        if isinstance(store, RedisPresence):
            conns, users = store._keys(cid)
            assert 0 < await store.redis.pttl(conns) <= store.ttl_ms
            assert 0 < await store.redis.pttl(users) <= store.ttl_ms
        assert await store.leave(cid, 2, "x") is True
        if isinstance(store, RedisPresence):
            assert await store.sweep() == []
            assert not await store.redis.exists(store.index)
    finally:
        await store.close()
