"""The periodic consultation tick (the old Celery Beat job).

Every `status_interval` seconds: end the consultations whose time is up
(`consultation_ended`, reason `time_up`), drop silent participants
(`participant_left`), and send each consultation in progress its
`consultation_status` with `remaining_seconds`.

Ticks fall on wall-clock multiples of the interval in every process. With
Redis, each tick is a lock of its own, taken with `SET NX PX` by the first
process to reach it: one process runs each tick, and when it dies the next
tick simply goes to another one, with no lease to wait out. With the memory
broker there is one process, and it runs every tick.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Protocol

from redis.asyncio import Redis

from ...store import consultations
from . import consultation_rules, redis_client
from .node import Runtime
from .redis_client import namespace

log = logging.getLogger("realtime.scheduler")


class TickLock(Protocol):
    async def acquire(self, tick: int) -> bool:
        """True for exactly one process per tick number."""

    async def close(self) -> None: ...


class LocalTicks:
    async def acquire(self, tick: int) -> bool:
        return True

    async def close(self) -> None:
        return None


class RedisTicks:
    def __init__(self, redis: str | Redis, prefix: str, interval: float) -> None:
        self.redis, self._owned = redis_client.adopt(redis)
        self.prefix = f"{prefix}tick:"
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        # Kept well past its tick, so a process whose clock lags cannot take it again.
        self.ttl_ms = int(max(interval * 10, 10.0) * 1000)

    async def acquire(self, tick: int) -> bool:
        return bool(await self.redis.set(f"{self.prefix}{tick}", self.owner, nx=True, px=self.ttl_ms))

    async def close(self) -> None:
        if self._owned:
            await self.redis.aclose()


class Scheduler:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.interval = rt.settings.status_interval
        self.lock: TickLock = (
            RedisTicks(rt.redis.client(), namespace(rt.settings), self.interval)
            if rt.redis is not None
            else LocalTicks()
        )
        self.task: asyncio.Task[None] | None = None
        self.ticks = 0  # ticks this process ran

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="consultation-scheduler")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait([self.task])
        await self.lock.close()

    async def _run(self) -> None:
        last = 0
        while True:
            # `last + 1` at least: a sleep that wakes a hair early must not repeat a tick.
            tick = last = max(int(time.time() // self.interval) + 1, last + 1)
            await asyncio.sleep(max(0.0, tick * self.interval - time.time()))
            try:
                if await self.lock.acquire(tick):
                    await self.tick()
            except Exception:
                # A broker or store outage skips this tick; the next one tries again.
                log.exception("consultation tick %d failed", tick)

    async def tick(self) -> None:
        self.ticks += 1
        rt = self.rt
        for ended in await consultations.end_due(rt.db):
            await consultation_rules.announce_ended(rt, ended)
        for consultation_id, user_id in await rt.presence.consultations.sweep():
            await consultation_rules.announce_left(rt, consultation_id, user_id)
        pending = await consultations.open_extensions(rt.db)
        for c in await consultations.in_progress(rt.db):
            frame = await consultation_rules.status_frame(rt, c, pending.get(c.id), look_up=False)
            await consultation_rules.publish(rt, c.id, "consultation_status", frame)
