"""Which users have a chat socket open on which room, on any server process.

The chat notification trigger asks it which members are away from a room.

Each process counts its own chat sockets per (room, user): with
`BROKER_URL=memory://` that is the whole answer. With Redis, each room also has a sorted set
`<namespace>chat:<room_id>` whose members are `<user_id>:<process>`, scored by
an expiry time: a process adds a member when a user's first socket on the room
opens there, removes it when the last one closes, and refreshes its members
every TTL/3. A process that dies without cleaning up drops out after the TTL
(until then its users count as present: at worst a missed notification, while
the message itself is in the room's history). Readers ignore expired scores.

`away` also keeps each room's member list for a couple of seconds, so a busy
room costs no store read per message. A stale list errs only one way that
matters: a member added meanwhile may miss a notification; a removed one is
filtered out again when the notifications are written.
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
from ...store import rooms
from ...store.db import Db
from . import redis_client
from .redis_client import RedisClients, namespace


class Member(Protocol):
    """A chat socket as presence sees it (endpoints/chat.py's; no socket module is imported here)."""

    user_id: int


log = logging.getLogger("realtime.chat_presence")

TTL = 30.0
IO_TIMEOUT = 2.0
MEMBERS_TTL = 2.0
MEMBERS_CACHED = 10_000  # rooms; past that the cache starts over

Key = tuple[str, int]  # (room_id, user_id)


class ChatPresence:
    def __init__(self, redis: str | Redis | None = None, namespace: str = "") -> None:
        self.redis: Redis | None = None
        self._owned = False
        if redis is not None:
            self.redis, self._owned = redis_client.adopt(redis)
        self.prefix = namespace + "chat:"
        self.node = secrets.token_hex(6)
        self.counts: dict[Key, int] = {}
        self.entered: dict[Member, Key] = {}
        self.lock = asyncio.Lock()
        self.heartbeat: asyncio.Task[None] | None = None
        self.members: dict[str, tuple[float, list[int]]] = {}
        # How often a user's first socket on a room opened or last one closed
        # (anywhere here), and per room the away list last worked out.
        self.changes = 0
        self.away_cache: dict[str, tuple[int, list[int], list[int]]] = {}

    @classmethod
    def for_settings(cls, settings: Settings, redis: RedisClients | None = None) -> ChatPresence:
        if redis is None:
            return cls()
        # Processes that share a store share presence; other deployments on the same Redis do not.
        return cls(redis.client(), namespace(settings))

    async def enter(self, socket: Member, room_id: str) -> None:
        if socket in self.entered:
            return
        key = (room_id, socket.user_id)
        self.entered[socket] = key
        self.counts[key] = self.counts.get(key, 0) + 1
        if self.counts[key] == 1:
            self.changes += 1
        if self.redis is None:
            return
        if self.heartbeat is None:
            self.heartbeat = asyncio.create_task(self._beat(), name="chat-presence-heartbeat")
        if self.counts[key] == 1:
            await self._sync(key)

    async def leave(self, socket: Member) -> None:
        key = self.entered.pop(socket, None)
        if key is None:
            return
        count = self.counts.get(key, 0) - 1
        if count > 0:
            self.counts[key] = count
            return
        self.counts.pop(key, None)
        self.changes += 1
        if self.redis is not None:
            await self._sync(key)

    def away_now(self, room_id: str, sender_id: int) -> list[int] | None:
        """`away` without waiting, when this process knows the answer (the member
        list is cached, and the absent are absent everywhere); else None."""
        cached = self.members.get(room_id)
        if cached is None or cached[0] < time.monotonic():
            return None
        # Worked out again only when somebody came or went, or the member list
        # was read again: a busy room does not scan its members per message.
        change = self.changes
        known = self.away_cache.get(room_id)
        if known is None or known[0] != change or known[1] is not cached[1]:
            counts = self.counts
            known = (change, cached[1], [m for m in cached[1] if (room_id, m) not in counts])
            self.away_cache[room_id] = known
        away = [m for m in known[2] if m != sender_id]
        if away and self.redis is not None:
            return None  # they may have a socket on another process
        return away

    async def away(self, db: Db, room_id: str, sender_id: int) -> list[int]:
        """The room's members, but the sender, with no chat socket open on it anywhere."""
        now = time.monotonic()
        cached = self.members.get(room_id)
        if cached is None or cached[0] < now:
            if len(self.members) >= MEMBERS_CACHED:
                self.members.clear()
                self.away_cache.clear()
            cached = (now + MEMBERS_TTL, await rooms.member_ids(db, room_id))
            self.members[room_id] = cached
        others = [m for m in cached[1] if m != sender_id]
        if not others:
            return []
        present = await self.present(room_id, others)
        return [m for m in others if m not in present]

    async def present(self, room_id: str, user_ids: Iterable[int]) -> set[int]:
        """Those of `user_ids` with a chat socket open on the room, here or on another process."""
        wanted = set(user_ids)
        here = {u for u in wanted if (room_id, u) in self.counts}
        if self.redis is None or here == wanted:
            return here
        try:
            members = await self.redis.zrangebyscore(self.prefix + room_id, time.time(), "+inf")
        except (RedisError, OSError) as exc:
            # Without Redis, notify rather than stay silent: a duplicate beats a miss.
            log.warning("chat presence unreadable, counting only this process: %r", exc)
            return here
        elsewhere = {int(member.split(":", 1)[0]) for member in members}
        return here | (elsewhere & wanted)

    async def _sync(self, key: Key) -> None:
        """Make Redis match `counts` for one key. Under the lock, each call writes
        the state as it is then, so the last write is the current state."""
        assert self.redis is not None
        room_id, user_id = key
        member = f"{user_id}:{self.node}"
        try:
            async with self.lock:
                if key in self.counts:
                    pipe = self.redis.pipeline(transaction=False)
                    pipe.zadd(self.prefix + room_id, {member: time.time() + TTL})
                    pipe.expire(self.prefix + room_id, int(TTL * 2))
                    await pipe.execute()
                else:
                    await self.redis.zrem(self.prefix + room_id, member)
        except (RedisError, OSError) as exc:
            # The heartbeat writes the whole state again once Redis is back.
            log.warning("chat presence update failed: %r", exc)

    async def _beat(self) -> None:
        assert self.redis is not None
        while True:
            await asyncio.sleep(TTL / 3)
            try:
                async with self.lock:
                    now = time.time()
                    pipe = self.redis.pipeline(transaction=False)
                    for room_id, user_id in self.counts:
                        pipe.zadd(self.prefix + room_id, {f"{user_id}:{self.node}": now + TTL})
                        pipe.expire(self.prefix + room_id, int(TTL * 2))
                    for room_id in {room for room, _ in self.counts}:
                        pipe.zremrangebyscore(self.prefix + room_id, "-inf", now)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                log.warning("chat presence heartbeat failed: %r", exc)

    async def close(self) -> None:
        """On shutdown: leave every room at once rather than after the TTL."""
        if self.heartbeat is not None:
            self.heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.heartbeat
        if self.redis is None:
            return
        try:
            if self.counts:
                pipe = self.redis.pipeline(transaction=False)
                for room_id, user_id in self.counts:
                    pipe.zrem(self.prefix + room_id, f"{user_id}:{self.node}")
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("chat presence cleanup failed: %r", exc)
        finally:
            self.counts.clear()
            self.entered.clear()
            if self._owned:
                await self.redis.aclose()
