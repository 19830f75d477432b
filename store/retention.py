"""Pruning what is kept only for a while (docs/retention.md): stream events
past their age or beyond the newest N of their stream, and read notifications
past their age.

Every call is one bounded statement (at most `batch` rows) in one short write
job, so the writer is never held for long; the caller pauses between calls.
Each statement is idempotent: on PostgreSQL a transaction-scoped advisory lock
also keeps two nodes from pruning at the same moment (the one that misses it
ends its pass), and on SQLite the writer's `BEGIN IMMEDIATE` serializes them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from .db import Db, Runner, utc_now

# Any fixed number, beside the store's other advisory lock keys.
PRUNE_LOCK_KEY = 7_202_613
# Streams looked at per read when pruning by count.
STREAM_PAGE = 500

# Returned instead of a row count when another node is pruning right now.
BUSY = -1


def cutoff(seconds: float) -> str:
    """The time `seconds` ago, in the store's timestamp format (sorts as text)."""
    then = datetime.now(UTC) - timedelta(seconds=seconds)
    return then.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _claim(db: Db, tx: Runner) -> bool:
    if db.is_sqlite:
        return True
    row = await tx.fetch_one(f"SELECT pg_try_advisory_xact_lock({PRUNE_LOCK_KEY})")
    return bool(row and row[0])


async def _bounded(db: Db, sql: str, params: tuple[object, ...]) -> int:
    """One `... RETURNING 1` statement under the prune lock; the rows it touched, or BUSY."""

    async def job(tx: Runner) -> int:
        if not await _claim(db, tx):
            return BUSY
        return len(await tx.fetch_all(sql, params))

    return await db.write(job)


async def stamp_untimed_events(db: Db, batch: int) -> int:
    """Give events written before `created_at` existed (or by a writer that left
    it out) the current time: they age out one retention period from now."""
    return await _bounded(
        db,
        "UPDATE stream_events SET created_at = ? WHERE (stream, seq) IN "
        "(SELECT stream, seq FROM stream_events WHERE created_at IS NULL LIMIT ?) RETURNING 1",
        (utc_now(), batch),
    )


async def prune_old_events(db: Db, older_than: str, batch: int) -> int:
    """Delete up to `batch` of the oldest events written before `older_than`."""
    return await _bounded(
        db,
        "DELETE FROM stream_events WHERE (stream, seq) IN "
        "(SELECT stream, seq FROM stream_events WHERE created_at < ? ORDER BY created_at LIMIT ?) RETURNING 1",
        (older_than, batch),
    )


async def streams_over(db: Db, keep: int, after: str) -> list[tuple[str, int]]:
    """Up to a page of streams (by name, after `after`) that keep more than their newest `keep` events.

    Only those with an event left to delete: a stream pruned down once is not
    a write job at every pass (the check is one probe of the primary key)."""
    rows = await db.fetch_all(
        "SELECT s.stream, s.last_seq FROM streams s WHERE s.stream > ? AND s.last_seq > ? "
        "AND EXISTS (SELECT 1 FROM stream_events e WHERE e.stream = s.stream AND e.seq <= s.last_seq - ?) "
        "ORDER BY s.stream LIMIT ?",
        (after, keep, keep, STREAM_PAGE),
    )
    return [(str(row[0]), int(row[1])) for row in rows]


async def prune_excess_events(db: Db, stream: str, last_seq: int, keep: int, batch: int) -> int:
    """Delete up to `batch` of the stream's oldest events beyond its newest `keep`."""
    return await _bounded(
        db,
        "DELETE FROM stream_events WHERE (stream, seq) IN "
        "(SELECT stream, seq FROM stream_events WHERE stream = ? AND seq <= ? ORDER BY seq LIMIT ?) RETURNING 1",
        (stream, last_seq - keep, batch),
    )


async def prune_read_notifications(db: Db, older_than: str, batch: int) -> int:
    """Delete up to `batch` of the oldest read notifications created before `older_than`."""
    return await _bounded(
        db,
        "DELETE FROM notifications WHERE id IN (SELECT id FROM notifications "
        "WHERE read_seq IS NOT NULL AND created_at < ? ORDER BY created_at LIMIT ?) RETURNING 1",
        (older_than, batch),
    )
