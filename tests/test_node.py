"""The Node owns the parts: one Redis client (one pool) for presence, socket
slots and the scheduler's tick locks; the broker's pub/sub stays its own."""

from __future__ import annotations

from pathlib import Path

from realtime.events.node.scheduler import RedisTicks, Scheduler
from tests.conftest import base_settings, chat, running
from tests.procs import REDIS_URL, require


async def test_one_redis_client_serves_presence_slots_and_tick_locks(tmp_path: Path) -> None:
    require("redis")
    async with running(base_settings(tmp_path, broker_url=REDIS_URL)) as srv:
        node = srv.runtime
        assert node.redis is not None
        shared = node.redis.client()
        assert node.presence.consultations.redis is shared
        assert node.presence.rooms.redis is shared
        assert node.slots.redis is shared  # type: ignore[attr-defined]
        ticks = Scheduler(node).lock
        assert isinstance(ticks, RedisTicks) and ticks.redis is shared
        # The broker's subscribed connection is not the shared client.
        assert getattr(node.hub.backend, "_redis", None) is not shared
        # And it works: a chat socket is in Redis through the shared client (which reads text).
        rooms = node.presence.rooms
        await srv.room("r1", [1, 2])
        async with chat(srv, "r1", 1) as a:
            await a.expect("message_history")
            assert await shared.zrange(rooms.prefix + "r1", 0, -1) == [f"1:{rooms.node}"]
            assert await rooms.away(node.db, "r1", 0) == [2]
        await ticks.close()  # not the owner: the shared client stays open
        assert await shared.ping()


async def test_memory_broker_needs_no_redis(tmp_path: Path) -> None:
    async with running(base_settings(tmp_path)) as srv:
        assert srv.runtime.redis is None
        assert srv.runtime.hub.backend.inline
