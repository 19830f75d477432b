"""The per-user socket limit across every server process.

Each process first counts its own sockets (`Runtime.sockets`, reserved before
the handshake's first `await`). With `BROKER_URL=redis://` a socket also takes
a slot in a Redis sorted set per user, `<namespace>sockets:<user_id>`, whose
members are `<process>:<socket>` scored by a lease expiry (Redis server time,
so the processes' clocks do not matter). One Lua script drops lapsed members,
counts and adds, so simultaneous handshakes on several processes never pass
the limit together. Each process renews its leases every third of
`SOCKET_LEASE`; a process that dies stops renewing, and its sockets stop
counting within the lease.

When Redis cannot be reached a socket is let in on the per-process count alone
(the broker is down too, so that process is already impaired): refusing every
user would be worse than a limit that holds per process for a while. The next
renewal adds its lease back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Iterable
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ...settings import Settings
from . import redis_client
from .redis_client import RedisClients, namespace

log = logging.getLogger("realtime.socket_slots")

IO_TIMEOUT = 2.0
# After Redis failed, how long handshakes and closes skip it: a partition must
# not add IO_TIMEOUT to every one of them. The renewal keeps trying meanwhile.
AWAY_BACKOFF = 1.0

# KEYS user key; ARGV limit, member, lease ms. 1: taken, 0: the user is at the limit.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + lease, ARGV[2])
redis.call('PEXPIRE', KEYS[1], lease * 2)
return 1
"""

# KEYS user key; ARGV lease ms, then the members this process holds for the user.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], now + lease, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], lease * 2)
return 1
"""


# KEYS the users' keys. Per key, 1 when it holds a live lease (a socket open on some process).
_LIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('ZCOUNT', key, now, '+inf') > 0 and 1 or 0
end
return out
"""
LIVE_CHUNK = 500  # users per script call


class SocketSlots(Protocol):
    async def reserve(self, user_id: int, limit: int) -> str | None:
        """A slot for one more socket of the user, or None at the limit."""

    async def release(self, user_id: int, slot: str) -> None: ...

    async def online(self, user_ids: Iterable[int]) -> set[int]:
        """Those of `user_ids` holding a slot on any process (Redis errors are
        raised). In one process there are none: the Node's own registry of
        sockets is the whole answer there (`Node.online_users`)."""

    async def close(self) -> None: ...


class LocalSlots:
    """One process: its own socket registry is the whole count."""

    async def reserve(self, user_id: int, limit: int) -> str | None:
        return "local"

    async def release(self, user_id: int, slot: str) -> None:
        return None

    async def online(self, user_ids: Iterable[int]) -> set[int]:
        return set()

    async def close(self) -> None:
        return None


class RedisSlots:
    def __init__(self, redis: str | Redis, prefix: str, lease: float) -> None:
        self.redis, self._owned = redis_client.adopt(redis)
        self._away_until = 0.0
        self.prefix = prefix + "sockets:"
        self.node = secrets.token_hex(6)
        self.lease_ms = int(lease * 1000)
        self.interval = lease / 3
        self.held: dict[int, set[str]] = {}
        # A renewal writes what is held as it was when it started: a release
        # waits for it, so a lease is never renewed after its ZREM.
        self.lock = asyncio.Lock()
        self.renewer: asyncio.Task[None] | None = None
        self._reserve = self.redis.register_script(_RESERVE)
        self._renew = self.redis.register_script(_RENEW)
        self._live = self.redis.register_script(_LIVE)

    def _key(self, user_id: int) -> str:
        return f"{self.prefix}{user_id}"

    async def reserve(self, user_id: int, limit: int) -> str | None:
        if self.renewer is None:
            self.renewer = asyncio.create_task(self._renew_forever(), name="socket-slot-leases")
        slot = f"{self.node}:{secrets.token_hex(4)}"
        taken = 1
        if not self._away():
            try:
                taken = await self._reserve(keys=[self._key(user_id)], args=[limit, slot, self.lease_ms])
            except (RedisError, OSError) as exc:
                self._failed()
                log.warning("socket limit counted in this process only, Redis unreachable: %r", exc)
        if not taken:
            return None
        self.held.setdefault(user_id, set()).add(slot)
        return slot

    async def release(self, user_id: int, slot: str) -> None:
        slots = self.held.get(user_id)
        if slots is not None:
            slots.discard(slot)
            if not slots:
                del self.held[user_id]
        if self._away():
            return  # not renewed any more: it lapses within the lease
        try:
            async with self.lock:
                await self.redis.zrem(self._key(user_id), slot)
        except (RedisError, OSError) as exc:
            self._failed()
            log.warning("socket slot release failed: %r", exc)

    async def online(self, user_ids: Iterable[int]) -> set[int]:
        users = sorted(set(user_ids))
        found: set[int] = set()
        for start in range(0, len(users), LIVE_CHUNK):
            chunk = users[start : start + LIVE_CHUNK]
            flags = await self._live(keys=[self._key(u) for u in chunk])
            found.update(u for u, flag in zip(chunk, flags, strict=True) if int(flag))
        return found

    def _away(self) -> bool:
        return time.monotonic() < self._away_until

    def _failed(self) -> None:
        self._away_until = time.monotonic() + AWAY_BACKOFF

    async def renew(self) -> None:
        async with self.lock:
            if not self.held:
                return
            pipe = self.redis.pipeline(transaction=False)
            for user_id, slots in self.held.items():
                await self._renew(keys=[self._key(user_id)], args=[self.lease_ms, *slots], client=pipe)
            await pipe.execute()

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.renew()
            except (RedisError, OSError) as exc:
                self._failed()
                log.warning("socket slot renewal failed: %r", exc)
            else:
                self._away_until = 0.0

    async def close(self) -> None:
        """On shutdown: give the slots back at once rather than after the lease."""
        if self.renewer is not None:
            self.renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.renewer
        try:
            if self.held:
                pipe = self.redis.pipeline(transaction=False)
                for user_id, slots in self.held.items():
                    pipe.zrem(self._key(user_id), *slots)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("socket slot cleanup failed: %r", exc)
        finally:
            self.held.clear()
            if self._owned:
                await self.redis.aclose()


def for_settings(settings: Settings, redis: RedisClients | None = None) -> SocketSlots:
    if redis is None:
        return LocalSlots()
    return RedisSlots(redis.client(), namespace(settings), settings.socket_lease)
