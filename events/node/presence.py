"""The one presence manager (`PresenceManager`, Phoenix's Presence beside its
PubSub): who is in a consultation (this module) and who has a chat room open
(events/node/chat_presence.py), both from one factory, over one Redis client
and one key namespace, closed together.

Who is in a consultation right now, shared by every server process.

A participant is a user, not a socket: a user with two tabs joins once (on
the first live connection) and leaves once (when the last one closes or every
one of them has been silent for `timeout` seconds). Each connection records
when it was last seen; `sweep` drops the silent ones.

The state answers two questions the same way for every process: who has been
announced (`participant_joined` sent and no `participant_left` since), and
when each connection was last seen. `seen`, `leave` and `sweep` return what
changed, so exactly one caller announces each change.

With `BROKER_URL=memory://` it lives in this process; with `redis://` it lives
in Redis, each change one Lua script (atomic), every key with an expiry so that
nothing outlives the processes that wrote it for long.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.asyncio import Redis

from ...settings import Settings
from . import redis_client
from .chat_presence import ChatPresence
from .redis_client import RedisClients, namespace

Participant = dict[str, Any]  # {id, name, type, joined_at}


class Presence(Protocol):
    async def seen(self, consultation_id: str, user_id: int, conn: str, participant: Participant) -> bool:
        """The connection is alive (it connected, pinged or sent `presence_update`).
        True when the user was not announced: announce `participant`."""

    async def leave(self, consultation_id: str, user_id: int, conn: str) -> bool:
        """The connection closed. True when the user is no longer present: announce the leave."""

    async def participants(self, consultation_id: str) -> list[Participant]:
        """The announced participants, by the time they joined."""

    async def sweep(self) -> list[tuple[str, int]]:
        """Drop silent connections; returns the (consultation, user) pairs that left."""

    async def close(self) -> None: ...


def consultations_for_settings(settings: Settings, redis: RedisClients | None = None) -> Presence:
    if redis is not None:
        return RedisPresence(redis.client(), settings.presence_timeout, namespace(settings))
    return MemoryPresence(settings.presence_timeout)


def _by_join(participants: list[Participant]) -> list[Participant]:
    return sorted(participants, key=lambda p: (p["joined_at"], p["id"]))


# ---- one process -----------------------------------------------------------------


@dataclass
class _Room:
    conns: dict[str, tuple[int, float]] = field(default_factory=dict)  # conn -> (user, last seen)
    announced: dict[int, Participant] = field(default_factory=dict)

    def live(self, user_id: int, stale_before: float) -> bool:
        return any(user == user_id and seen >= stale_before for user, seen in self.conns.values())


class MemoryPresence:
    def __init__(self, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self.rooms: dict[str, _Room] = {}

    async def seen(self, consultation_id: str, user_id: int, conn: str, participant: Participant) -> bool:
        room = self.rooms.setdefault(consultation_id, _Room())
        room.conns[conn] = (user_id, time.time())
        if user_id in room.announced:
            return False
        room.announced[user_id] = participant
        return True

    async def leave(self, consultation_id: str, user_id: int, conn: str) -> bool:
        room = self.rooms.get(consultation_id)
        if room is None:
            return False
        room.conns.pop(conn, None)
        gone = user_id in room.announced and not room.live(user_id, time.time() - self.timeout)
        if gone:
            del room.announced[user_id]
        if not room.conns and not room.announced:
            del self.rooms[consultation_id]
        return gone

    async def participants(self, consultation_id: str) -> list[Participant]:
        room = self.rooms.get(consultation_id)
        return _by_join(list(room.announced.values())) if room else []

    async def sweep(self) -> list[tuple[str, int]]:
        stale_before = time.time() - self.timeout
        left: list[tuple[str, int]] = []
        for consultation_id, room in list(self.rooms.items()):
            room.conns = {conn: entry for conn, entry in room.conns.items() if entry[1] >= stale_before}
            for user_id in list(room.announced):
                if not room.live(user_id, stale_before):
                    del room.announced[user_id]
                    left.append((consultation_id, user_id))
            if not room.conns and not room.announced:
                del self.rooms[consultation_id]
        return left

    async def close(self) -> None:
        self.rooms.clear()


# ---- every process, in Redis ----------------------------------------------------------
#
# Per consultation: `…:conns` a sorted set of "<user>:<conn>" scored by the
# last-seen time in ms, `…:users` a hash user -> participant JSON (the announced
# ones). `…presence` a set of the consultations that have either, for sweeps.

# A user is live when one of its connections was seen at or after stale_before.
_LIVE = """
local function live(conns, user, stale_before)
  local prefix = user .. ':'
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', conns, stale_before, '+inf')) do
    if string.sub(member, 1, #prefix) == prefix then return true end
  end
  return false
end
"""

# KEYS conns, users, index; ARGV user, member, now, participant, ttl, consultation
_SEEN = """
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
local fresh = redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('SADD', KEYS[3], ARGV[6])
return fresh
"""

# KEYS conns, users; ARGV user, member, stale_before
_LEAVE = (
    _LIVE
    + """
redis.call('ZREM', KEYS[1], ARGV[2])
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 and not live(KEYS[1], ARGV[1], ARGV[3]) then
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
return 0
"""
)

# KEYS conns, users, index; ARGV stale_before, consultation. Returns the users that left.
_SWEEP = (
    _LIVE
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
local left = {}
for _, user in ipairs(redis.call('HKEYS', KEYS[2])) do
  if not live(KEYS[1], user, ARGV[1]) then
    redis.call('HDEL', KEYS[2], user)
    table.insert(left, user)
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SREM', KEYS[3], ARGV[2])
end
return left
"""
)


class RedisPresence:
    io_timeout = 2.0

    def __init__(self, redis: str | Redis, timeout: float, prefix: str) -> None:
        self.timeout = timeout
        self.prefix = prefix
        self.index = f"{prefix}presence"
        # Keys outlive a silent connection long enough for a sweep to see it.
        self.ttl_ms = int(max(timeout * 4, 60.0) * 1000)
        self.redis, self._owned = redis_client.adopt(redis)
        self._seen = self.redis.register_script(_SEEN)
        self._leave = self.redis.register_script(_LEAVE)
        self._sweep = self.redis.register_script(_SWEEP)

    def _keys(self, consultation_id: str) -> tuple[str, str]:
        base = f"{self.prefix}presence:{consultation_id}"
        return f"{base}:conns", f"{base}:users"

    def _stale_before(self) -> int:
        return int((time.time() - self.timeout) * 1000)

    async def seen(self, consultation_id: str, user_id: int, conn: str, participant: Participant) -> bool:
        conns, users = self._keys(consultation_id)
        args = [user_id, f"{user_id}:{conn}", int(time.time() * 1000), json.dumps(participant), self.ttl_ms]
        fresh = await self._seen(keys=[conns, users, self.index], args=[*args, consultation_id])
        return bool(fresh)

    async def leave(self, consultation_id: str, user_id: int, conn: str) -> bool:
        conns, users = self._keys(consultation_id)
        gone = await self._leave(keys=[conns, users], args=[user_id, f"{user_id}:{conn}", self._stale_before()])
        return bool(gone)

    async def participants(self, consultation_id: str) -> list[Participant]:
        _, users = self._keys(consultation_id)
        return _by_join([json.loads(value) for value in await self.redis.hvals(users)])

    async def sweep(self) -> list[tuple[str, int]]:
        stale_before = self._stale_before()
        left: list[tuple[str, int]] = []
        for consultation_id in await self.redis.smembers(self.index):
            conns, users = self._keys(consultation_id)
            gone = await self._sweep(keys=[conns, users, self.index], args=[stale_before, consultation_id])
            left += [(consultation_id, int(user)) for user in gone]
        return left

    async def close(self) -> None:
        if self._owned:
            await self.redis.aclose()


@dataclass
class PresenceManager:
    """Both presences of the Node: `consultations` (participants, announced once
    per user) and `rooms` (who has a chat socket open where: chat notifications)."""

    consultations: Presence = field(default_factory=lambda: MemoryPresence())
    rooms: ChatPresence = field(default_factory=ChatPresence)

    async def close(self) -> None:
        await self.consultations.close()
        await self.rooms.close()


def for_settings(settings: Settings, redis: RedisClients | None = None) -> PresenceManager:
    """In this process with memory://; with Redis, on the Node's shared client (`redis`)."""
    return PresenceManager(consultations_for_settings(settings, redis), ChatPresence.for_settings(settings, redis))
