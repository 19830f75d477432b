"""Whether a token was revoked: the store's answer, kept per process.

`POST /api/users/{id}/disconnect {"revoke": true}` writes the revocation, then
tells every process through `ctl` (`learn`), which also closes the user's
sockets there. A socket a process let in before it heard of the revocation is
closed by that same command. What a process read lapses after `TTL`, so a
process that missed the command (cut off from the broker at that moment)
catches up with the store by itself.

While the table is small (at most `SNAPSHOT_MAX` rows) a process reads it
whole, once per `TTL`: a user with no row in that copy has no revocation,
and a storm of connects costs one read instead of one per user. A bigger
table is read one user at a time, as before.
"""

from __future__ import annotations

import asyncio
import time

from ...store import revocations
from ...store.db import Db
from .auth import Identity

TTL = 60.0
MAX_CACHED = 100_000  # users; past that the cache starts over
SNAPSHOT_MAX = 10_000  # rows of token_revocations read whole; beyond, one user at a time


class Revocations:
    def __init__(self) -> None:
        # user -> (revoked before, Unix ms, or None; when the entry lapses, monotonic)
        self.known: dict[int, tuple[int | None, float]] = {}
        # Bumped by every `learn`: a store read that started before it may be stale.
        self.generation = 0
        # Until when (monotonic) `known` holds every revoked user: a user not in it has none.
        self.complete_until = 0.0
        # When the table was last found too big for a whole copy (monotonic), to not try again within TTL.
        self._too_big_until = 0.0
        self._snapshot: asyncio.Future[bool] | None = None

    async def refuses(self, db: Db, identity: Identity) -> bool:
        before = await self.revoked_before(db, identity.user_id)
        if before is None:
            return False
        return identity.issued_at is None or identity.issued_at * 1000 <= before

    async def revoked_before(self, db: Db, user_id: int) -> int | None:
        now = time.monotonic()
        entry = self.known.get(user_id)
        if entry is not None and entry[1] > now:
            return entry[0]
        generation = self.generation
        if self.complete_until > now or (self._too_big_until <= now and await self._read_whole(db)):
            entry = self.known.get(user_id)
            return entry[0] if entry is not None else None
        before = await revocations.revoked_before(db, user_id)
        if generation == self.generation:
            if len(self.known) >= MAX_CACHED:
                self.known.clear()
                self.complete_until = 0.0
            self.known[user_id] = (before, time.monotonic() + TTL)
        else:
            # Learned meanwhile: that answer is at least as new as this read.
            entry = self.known.get(user_id)
            if entry is not None and entry[0] is not None:
                before = max(before or 0, entry[0])
        return before

    async def _read_whole(self, db: Db) -> bool:
        """Copy the whole table (one read shared by every caller meanwhile); False
        when it is too big or a `learn`/`forget` came during the read."""
        if self._snapshot is None:
            self._snapshot = asyncio.ensure_future(self._copy(db))
            self._snapshot.add_done_callback(self._copied)
        return await asyncio.shield(self._snapshot)

    def _copied(self, done: asyncio.Future[bool]) -> None:
        self._snapshot = None
        if not done.cancelled():
            done.exception()  # the callers saw it; not "never retrieved"

    async def _copy(self, db: Db) -> bool:
        generation = self.generation
        rows = await revocations.all_revoked(db, SNAPSHOT_MAX)
        now = time.monotonic()
        if rows is None:
            self._too_big_until = now + TTL
            return False
        if generation != self.generation:
            return False
        until = now + TTL
        # `learn` writes to the store first, so the copy holds what was learned before it; the later moment wins.
        learned = {user: entry[0] for user, entry in self.known.items() if entry[0] is not None and entry[1] > now}
        self.known = {user: (before, until) for user, before in rows.items()}
        for user, before in learned.items():
            self.known[user] = (max(before, rows.get(user, 0)), until)
        self.complete_until = until
        return True

    def forget(self) -> None:
        """Ask the store again for everyone (a `learn` may have been missed)."""
        self.generation += 1
        self.known.clear()
        self.complete_until = 0.0

    def learn(self, user_id: int, before_ms: int) -> None:
        """A revocation was stored (here or on another process)."""
        self.generation += 1
        entry = self.known.get(user_id)
        if entry is not None and entry[0] is not None:
            before_ms = max(before_ms, entry[0])
        self.known[user_id] = (before_ms, time.monotonic() + TTL)
