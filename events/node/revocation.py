"""Whether a token was revoked: the store's answer, kept per process.

`POST /api/users/{id}/disconnect {"revoke": true}` writes the revocation, then
tells every process through `ctl` (`learn`), which also closes the user's
sockets there. A socket a process let in before it heard of the revocation is
closed by that same command. Entries also lapse after `TTL`, so a process that
missed the command (cut off from the broker at that moment) catches up with the
store by itself.
"""

from __future__ import annotations

import time

from ...store import revocations
from ...store.db import Db
from .auth import Identity

TTL = 60.0
MAX_CACHED = 100_000  # users; past that the cache starts over


class Revocations:
    def __init__(self) -> None:
        # user -> (revoked before, Unix ms, or None; when the entry lapses, monotonic)
        self.known: dict[int, tuple[int | None, float]] = {}
        # Bumped by every `learn`: a store read that started before it may be stale.
        self.generation = 0

    async def refuses(self, db: Db, identity: Identity) -> bool:
        before = await self.revoked_before(db, identity.user_id)
        if before is None:
            return False
        return identity.issued_at is None or identity.issued_at * 1000 <= before

    async def revoked_before(self, db: Db, user_id: int) -> int | None:
        entry = self.known.get(user_id)
        if entry is not None and entry[1] > time.monotonic():
            return entry[0]
        generation = self.generation
        before = await revocations.revoked_before(db, user_id)
        if generation == self.generation:
            if len(self.known) >= MAX_CACHED:
                self.known.clear()
            self.known[user_id] = (before, time.monotonic() + TTL)
        return before

    def forget(self) -> None:
        """Ask the store again for everyone (a `learn` may have been missed)."""
        self.generation += 1
        self.known.clear()

    def learn(self, user_id: int, before_ms: int) -> None:
        """A revocation was stored (here or on another process)."""
        self.generation += 1
        entry = self.known.get(user_id)
        if entry is not None and entry[0] is not None:
            before_ms = max(before_ms, entry[0])
        self.known[user_id] = (before_ms, time.monotonic() + TTL)
