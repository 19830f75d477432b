"""The outbox: persisted events committed but not yet known to be published.

With a broker that can fail (Redis), every `stream_events` row gets a
`stream_outbox` row in the same transaction (the writer's runner carries
`outbox = True`). The committing process deletes it once the broker took the
publish; if that process loses the broker, or dies first, the rows stay and the
relay of any live process publishes them after a short grace. With the
in-process broker publishing cannot fail, so no rows are written at all.

Confirmation is a per-stream mark, "published up to seq": once the broker took
seq N, every subscribed process either receives N (and refills anything before
it from the store) or lost the broker and refills everything on reconnect, so
older rows of that stream are no longer needed either.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from . import message_rows
from .db import Db, PgRunner, Runner

# (stream, seq, frame) of one event to publish, oldest first per stream.
Pending = tuple[str, int, str]
Publish = Callable[[list[Pending]], Awaitable[None]]

INSERT_EVENT = "INSERT INTO stream_events (stream, seq, frame, created_at) VALUES (?, ?, ?, ?)"
INSERT = "INSERT INTO stream_outbox (stream, seq, created_ms) VALUES (?, ?, ?)"

# Rows the relay takes per pass (one broker pipeline, one delete).
RELAY_BATCH = 500
# With each chat message's row: its event's frame is made from it (store/message_rows.py).
CLAIM = (
    "SELECT o.stream, o.seq, e.frame, "
    + ", ".join(f"m.{column.strip()}" for column in message_rows.COLUMNS.split(","))
    + " FROM stream_outbox o "
    "LEFT JOIN stream_events e ON e.stream = o.stream AND e.seq = o.seq "
    f"LEFT JOIN messages m ON e.frame = '{message_rows.FROM_ROW}' "
    f"AND m.room_id = SUBSTR(o.stream, {len(message_rows.ROOM_STREAM) + 1}) AND m.seq = o.seq "
    "WHERE o.created_ms < ? ORDER BY o.stream, o.seq LIMIT ?"
)


def now_ms() -> int:
    return int(time.time() * 1000)


async def record(tx: Runner, events: Sequence[tuple[str, int, str, str]]) -> None:
    """Log stream events `(stream, seq, frame, created_at)`, and with the outbox
    on, their outbox rows: in the caller's transaction. A `chat_message`'s
    frame is `message_rows.FROM_ROW`: its message row is the event."""
    await tx.executemany(INSERT_EVENT, events)
    if tx.outbox:
        created = now_ms()
        await tx.executemany(INSERT, [(stream, seq, created) for stream, seq, _, _ in events])


class Outbox:
    """The outbox rows of one store, as the hub and its relay use them."""

    def __init__(self, db: Db) -> None:
        self.db = db

    async def confirm(self, published: dict[str, int]) -> None:
        """The broker took each stream's events up to the given seq."""
        rows = sorted(published.items())
        if self.db.is_sqlite:

            async def job(tx: Runner) -> None:
                await tx.executemany("DELETE FROM stream_outbox WHERE stream = ? AND seq <= ?", rows)

            await self.db.write(job)
            return
        # Off the writer's connection, and skipping rows a relay holds (it deletes
        # them itself): a confirmation never waits for a relay's publish.
        async with self.db.database.connection() as conn:
            await PgRunner(conn.raw_connection).executemany(
                "DELETE FROM stream_outbox WHERE (stream, seq) IN (SELECT stream, seq FROM stream_outbox "
                "WHERE stream = ? AND seq <= ? FOR UPDATE SKIP LOCKED)",
                rows,
            )

    async def backlog(self) -> int:
        row = await self.db.fetch_one("SELECT COUNT(*) FROM stream_outbox")
        return int(row[0]) if row else 0

    async def relay(self, grace_ms: int, publish: Publish, limit: int = RELAY_BATCH) -> int:
        """Publish rows older than the grace (a committing process that is alive
        has confirmed its own by then), then delete them; returns how many.

        PostgreSQL: the rows stay locked (`FOR UPDATE SKIP LOCKED`) from the
        claim to the delete, so relays of other processes take other rows
        meanwhile. SQLite has one writer per file: read, publish, delete; two
        relays may publish one row twice, which receivers drop by seq.
        If `publish` raises, nothing is deleted.
        """
        before = now_ms() - grace_ms
        if self.db.is_sqlite:
            rows = await self.db.fetch_all(CLAIM, (before, limit))
            if rows:
                await publish(_live(rows))
                await self._delete(rows)
            return len(rows)
        async with self.db.database.connection() as conn:
            runner = PgRunner(conn.raw_connection)
            async with conn.raw_connection.transaction():
                rows = await runner.fetch_all(CLAIM + " FOR UPDATE OF o SKIP LOCKED", (before, limit))
                if rows:
                    await publish(_live(rows))
                    await runner.executemany(
                        "DELETE FROM stream_outbox WHERE stream = ? AND seq = ?", [(r[0], r[1]) for r in rows]
                    )
            return len(rows)

    async def _delete(self, rows: Sequence[Sequence[Any]]) -> None:
        keys = [(str(r[0]), int(r[1])) for r in rows]

        async def job(tx: Runner) -> None:
            await tx.executemany("DELETE FROM stream_outbox WHERE stream = ? AND seq = ?", keys)

        await self.db.write(job)


def _live(rows: Sequence[Sequence[Any]]) -> list[Pending]:
    """The claimed rows' events, a chat message's made from its row. A row whose
    event (or message) is gone (never expected) is deleted unpublished."""
    live = []
    for row in rows:
        frame = row[2]
        message = row[3:]
        if frame == message_rows.FROM_ROW:
            made = message[0] is not None
            frame = message_rows.frame(int(row[1]), message_rows.to_record(message, False)) if made else None
        if frame is not None:
            live.append((str(row[0]), int(row[1]), str(frame)))
    return live
