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

Beside the sorted set, a hash `<namespace>sockets:<user_id>:info` holds what
each member's socket is (`{channel, access, opened_at}` as JSON), written with
the slot, again once the socket is authorized, and with each renewal; it is
removed with the slot. The server API lists a user's sockets on every process
from the two (`elsewhere`), reading only the members whose lease is live.

When Redis cannot be reached a socket is let in on the per-process count alone
(the broker is down too, so that process is already impaired): refusing every
user would be worse than a limit that holds per process for a while. The next
renewal adds its lease back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Iterable
from typing import Any, Protocol

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

# KEYS user key, its info hash; ARGV limit, member, lease ms, the socket's info.
# 1: taken, 0: the user is at the limit.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 1, #lapsed do redis.call('HDEL', KEYS[2], lapsed[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + lease, ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], lease * 2)
redis.call('PEXPIRE', KEYS[2], lease * 2)
return 1
"""

# KEYS user key, its info hash; ARGV lease ms, then member and info for each
# socket this process holds for the user (the info too: Redis may have lost it).
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], lease * 2)
redis.call('PEXPIRE', KEYS[2], lease * 2)
return 1
"""

# KEYS user key, its info hash. The live members and their info, flat: member,
# info ('' where a process wrote none), member, info... HMGET in chunks: Lua's
# unpack has a small limit and MAX_SOCKETS_PER_USER a large one.
_LIST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
local out = {}
for i = 1, #live, 500 do
  local j = math.min(i + 499, #live)
  local infos = redis.call('HMGET', KEYS[2], unpack(live, i, j))
  for k = i, j do
    out[#out + 1] = live[k]
    out[#out + 1] = infos[k - i + 1] or ''
  end
end
return out
"""

# What a member whose process wrote no info shows (a process of an older version).
UNKNOWN: dict[str, Any] = {"channel": None, "access": None, "opened_at": None}


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
    async def reserve(self, user_id: int, limit: int, info: dict[str, Any]) -> str | None:
        """A slot for one more socket of the user, or None at the limit. `info`
        is what the socket is (`BaseEndpoint.describe()`), for `elsewhere`."""

    async def update(self, user_id: int, slot: str, info: dict[str, Any]) -> None:
        """The socket's info changed (its access is known once it is authorized)."""

    async def release(self, user_id: int, slot: str) -> None: ...

    async def elsewhere(self, user_id: int) -> list[dict[str, Any]]:
        """The user's sockets on the other processes, as each process described them."""

    async def online(self, user_ids: Iterable[int]) -> set[int]:
        """Those of `user_ids` holding a slot on any process (Redis errors are
        raised). In one process there are none: the Node's own registry of
        sockets is the whole answer there (`Node.online_users`)."""

    async def close(self) -> None: ...


class LocalSlots:
    """One process: its own socket registry is the whole count."""

    async def reserve(self, user_id: int, limit: int, info: dict[str, Any]) -> str | None:
        return "local"

    async def update(self, user_id: int, slot: str, info: dict[str, Any]) -> None:
        return None

    async def release(self, user_id: int, slot: str) -> None:
        return None

    async def elsewhere(self, user_id: int) -> list[dict[str, Any]]:
        return []

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
        # Per user, the slots this process holds and each socket's info (JSON).
        self.held: dict[int, dict[str, str]] = {}
        # A renewal writes what is held as it was when it started: a release
        # waits for it, so a lease is never renewed after its ZREM.
        self.lock = asyncio.Lock()
        self.renewer: asyncio.Task[None] | None = None
        self._reserve = self.redis.register_script(_RESERVE)
        self._renew = self.redis.register_script(_RENEW)
        self._list = self.redis.register_script(_LIST)
        self._live = self.redis.register_script(_LIVE)

    def _keys(self, user_id: int) -> list[str]:
        key = f"{self.prefix}{user_id}"
        return [key, key + ":info"]

    async def reserve(self, user_id: int, limit: int, info: dict[str, Any]) -> str | None:
        if self.renewer is None:
            self.renewer = asyncio.create_task(self._renew_forever(), name="socket-slot-leases")
        slot = f"{self.node}:{secrets.token_hex(4)}"
        encoded = json.dumps(info, separators=(",", ":"))
        taken = 1
        if not self._away():
            try:
                taken = await self._reserve(keys=self._keys(user_id), args=[limit, slot, self.lease_ms, encoded])
            except (RedisError, OSError) as exc:
                self._failed()
                log.warning("socket limit counted in this process only, Redis unreachable: %r", exc)
        if not taken:
            return None
        self.held.setdefault(user_id, {})[slot] = encoded
        return slot

    async def update(self, user_id: int, slot: str, info: dict[str, Any]) -> None:
        encoded = json.dumps(info, separators=(",", ":"))
        slots = self.held.get(user_id)
        if slots is None or slot not in slots or slots[slot] == encoded:
            return  # released, or nothing new to say
        slots[slot] = encoded
        if self._away():
            return  # the next renewal writes it
        info_key = self._keys(user_id)[1]
        try:
            async with self.lock:
                if slot not in self.held.get(user_id, {}):
                    return  # released meanwhile: its info is gone and stays gone
                pipe = self.redis.pipeline(transaction=False)
                pipe.hset(info_key, slot, encoded)
                pipe.pexpire(info_key, self.lease_ms * 2)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed()
            log.warning("socket info update failed: %r", exc)

    async def release(self, user_id: int, slot: str) -> None:
        slots = self.held.get(user_id)
        if slots is not None:
            slots.pop(slot, None)
            if not slots:
                del self.held[user_id]
        if self._away():
            return  # not renewed any more: it lapses within the lease
        key, info_key = self._keys(user_id)
        try:
            async with self.lock:
                # The member first: a reader lists live members, so it never sees one without its info.
                pipe = self.redis.pipeline(transaction=False)
                pipe.zrem(key, slot)
                pipe.hdel(info_key, slot)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed()
            log.warning("socket slot release failed: %r", exc)

    async def elsewhere(self, user_id: int) -> list[dict[str, Any]]:
        """Read from Redis; while it cannot be reached, none (with a warning): the
        caller then has this process's sockets only, as the limit then counts."""
        if self._away():
            return []
        try:
            flat = await self._list(keys=self._keys(user_id), args=[])
        except (RedisError, OSError) as exc:
            self._failed()
            log.warning("sockets on other processes unreadable, listing this process's only: %r", exc)
            return []
        own = self.node + ":"
        listed = []
        for member, info in zip(flat[::2], flat[1::2], strict=True):
            if not member.startswith(own):
                listed.append(_info(info))
        return listed

    async def online(self, user_ids: Iterable[int]) -> set[int]:
        users = sorted(set(user_ids))
        found: set[int] = set()
        for start in range(0, len(users), LIVE_CHUNK):
            chunk = users[start : start + LIVE_CHUNK]
            flags = await self._live(keys=[self._keys(u)[0] for u in chunk])
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
                pairs = [part for slot, info in slots.items() for part in (slot, info)]
                await self._renew(keys=self._keys(user_id), args=[self.lease_ms, *pairs], client=pipe)
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
                    key, info_key = self._keys(user_id)
                    pipe.zrem(key, *slots)
                    pipe.hdel(info_key, *slots)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("socket slot cleanup failed: %r", exc)
        finally:
            self.held.clear()
            if self._owned:
                await self.redis.aclose()


def _info(text: str) -> dict[str, Any]:
    try:
        info = json.loads(text) if text else None
    except ValueError:
        info = None
    if not isinstance(info, dict):
        return dict(UNKNOWN)
    return {key: info.get(key) for key in UNKNOWN}


def for_settings(settings: Settings, redis: RedisClients | None = None) -> SocketSlots:
    if redis is None:
        return LocalSlots()
    return RedisSlots(redis.client(), namespace(settings), settings.socket_lease)
