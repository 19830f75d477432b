"""Who is a member of which room, as this process last read it, for the chat
connect path: in a reconnect storm, one read per room instead of two per socket.

A cached room answers only "yes": a user not in the copy is asked of the store
again (a member added on another process a moment ago gets in at once). A
"yes" is never older than what this process has heard: the Node forgets a
room when it adds or removes a member (before its answer to the API), and
every other process forgets it when the `ctl` command about it arrives
(`members` on an add, `access` on a removal, which also closes the removed
user's sockets there). A read that began before such a command is not kept.
After a broker gap (commands may have been missed) every room is forgotten,
and entries lapse after `TTL` whatever happens.

Frames on an open socket (sending, history, sync) keep asking the store,
where the membership is checked in the same transaction as the write.
"""

from __future__ import annotations

import time

from ...store import rooms
from ...store.db import Db

TTL = 60.0
MAX_ROOMS = 10_000  # rooms kept; past that the cache starts over


class Memberships:
    def __init__(self, ttl: float = TTL, max_rooms: int = MAX_ROOMS) -> None:
        self.ttl = ttl
        self.max_rooms = max_rooms
        # room -> (member ids, when the entry lapses, monotonic)
        self.rooms: dict[str, tuple[frozenset[int], float]] = {}
        # Bumped by every `forget`: a read that started before it may be stale.
        self.generation = 0

    async def admits(self, db: Db, room_id: str, user_id: int) -> bool | None:
        """Whether the user is a member of the room; None when there is no such room."""
        entry = self.rooms.get(room_id)
        if entry is not None and user_id in entry[0] and entry[1] > time.monotonic():
            return True
        generation = self.generation
        members = await rooms.members_if_exists(db, room_id)
        if members is None:
            self.rooms.pop(room_id, None)
            return None
        if generation == self.generation:
            if len(self.rooms) >= self.max_rooms and room_id not in self.rooms:
                self.rooms.clear()
            self.rooms[room_id] = (frozenset(members), time.monotonic() + self.ttl)
        return user_id in members

    def forget(self, room_id: str) -> None:
        """The room's members changed (here, or on another process: `ctl`)."""
        self.generation += 1
        self.rooms.pop(room_id, None)

    def forget_all(self) -> None:
        """Commands may have been missed (a broker gap): read every room again."""
        self.generation += 1
        self.rooms.clear()
