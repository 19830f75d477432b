"""Webhook events: their outbox rows, and the SQL of their delivery.

An event is written in the transaction of the change it reports (`enqueue`,
on the writer's runner, which carries the configured URLs in `tx.webhooks`;
with webhooks off it carries None and nothing is written), one row per URL.
Events that no store change carries (`message.unread`, `user.online`,
`user.offline`) get a transaction of their own (`enqueue_alone`,
`record_presence`). The dispatcher (events/node/webhooks.py) of every process
delivers them; docs/webhooks.md says what a receiver gets.

Order: per (url, stream) rows go out in `id` order. `id` is taken at insert,
and every stream's writes are serialized by a lock the change already takes
(a room's or user's `streams` row, a consultation's or reservation request's
own row, a `webhook_online` row) or, for `enqueue_alone`, an advisory lock
on PostgreSQL (SQLite has one writer): a later id never commits first.

Claims: a process holds a stream while it holds the lease on its head (the
stream's oldest pending row: `locked_by`, `locked_until`), taken with a
conditional UPDATE, so no two processes deliver a stream at once and none
takes a row behind a head another holds. On PostgreSQL delivery bookkeeping
runs on pool connections, off the writer; on SQLite through the one writer.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from .db import Db, PgRunner, Runner, new_ids, utc_now

T = TypeVar("T")

PENDING = "pending"
PARKED = "parked"
INSERT = "INSERT INTO webhook_outbox (url, stream, event_id, type, event, created_ms) VALUES (?, ?, ?, ?, ?, ?)"
# The two-key advisory lock space, apart from the one-key locks of store/db.py.
LOCK_CLASS = 7_202_613
LAST_ERROR = 300  # characters of a failure kept on the row

_encode = msgspec.json.Encoder().encode


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Event:
    type: str  # `message.created`, ... (docs/webhooks.md)
    stream: str  # what it is ordered within: `room:<id>`, `user:<id>`, ...
    data: dict[str, Any]


def on(tx: Runner) -> bool:
    """Whether this transaction queues webhook events (build them only then)."""
    return tx.webhooks is not None


def _rows(urls: Sequence[str], events: Sequence[Event]) -> list[tuple[Any, ...]]:
    created_at, created_ms = utc_now(), now_ms()
    rows: list[tuple[Any, ...]] = []
    for event, id_ in zip(events, new_ids(len(events)), strict=True):
        event_id = f"evt_{id_}"
        body = {"id": event_id, "type": event.type, "stream": event.stream, "created_at": created_at}
        text = _encode({**body, "data": event.data}).decode()
        rows += [(url, event.stream, event_id, event.type, text, created_ms) for url in urls]
    return rows


async def enqueue(tx: Runner, events: Sequence[Event]) -> None:
    """Queue `events` in the caller's transaction, in order (nothing with webhooks off)."""
    targets = tx.webhooks
    if targets is None or not events:
        return
    await tx.executemany(INSERT, _rows(targets.urls, events))
    targets.queued = True


async def enqueue_alone(db: Db, events: Sequence[Event]) -> None:
    """Queue `events` that no store change carries, in a transaction of their own."""
    if not events:
        return

    async def job(tx: Runner) -> None:
        if not db.is_sqlite:
            # Another process may queue on the same stream: take the streams in one order.
            for stream in sorted({event.stream for event in events}):
                await tx.execute("SELECT pg_advisory_xact_lock(?, hashtext(?))", (LOCK_CLASS, stream))
        await enqueue(tx, events)

    await db.write(job)


# ---- user.online / user.offline ------------------------------------------------------


def presence_stream(user_id: int) -> str:
    return f"presence:{user_id}"


async def record_presence(db: Db, online: Sequence[int], offline: Sequence[int]) -> list[Event]:
    """Tell the backend of users that came online or went offline, each only
    when that changes what it was last told (`webhook_online`): the row and the
    event in one transaction. Returns the events queued."""

    async def job(tx: Runner) -> list[Event]:
        at = utc_now()
        events: list[Event] = []
        for user_id in sorted(set(online)):
            row = await tx.fetch_one(
                "INSERT INTO webhook_online (user_id, since) VALUES (?, ?) ON CONFLICT (user_id) DO NOTHING "
                "RETURNING user_id",
                (user_id, at),
            )
            if row is not None:
                events.append(Event("user.online", presence_stream(user_id), {"user_id": user_id, "at": at}))
        for user_id in sorted(set(offline)):
            row = await tx.fetch_one("DELETE FROM webhook_online WHERE user_id = ? RETURNING since", (user_id,))
            if row is not None:
                data = {"user_id": user_id, "at": at, "online_since": row[0]}
                events.append(Event("user.offline", presence_stream(user_id), data))
        await enqueue(tx, events)
        return events

    return await db.write(job)


async def announced_online(db: Db) -> list[int]:
    """The users the backend was last told are online."""
    rows = await db.fetch_all("SELECT user_id FROM webhook_online ORDER BY user_id")
    return [int(row[0]) for row in rows]


# ---- delivery ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Batch:
    """A stream's head, held by this process, and the pending rows after it."""

    url: str
    stream: str
    ids: list[int]  # the head first
    event_ids: list[str]
    events: list[str]  # each event's JSON
    attempts: int  # the head's failed attempts so far

    @property
    def head(self) -> int:
        return self.ids[0]


async def _transaction(db: Db, job: Callable[[Runner], Awaitable[T]]) -> T:
    """One transaction: the writer's on SQLite, a pool connection's on PostgreSQL."""
    if db.is_sqlite:
        return await db.write(job)
    async with db.database.connection() as conn:
        async with conn.raw_connection.transaction():
            return await job(PgRunner(conn.raw_connection))


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))


async def claim(
    db: Db, node: str, urls: Sequence[str], lease_ms: int, streams: int, size: int, max_bytes: int
) -> list[Batch]:
    """Take the lease on up to `streams` due heads of `urls` whose lease is free
    (or lapsed), and read up to `size` events (`max_bytes` of JSON) of each stream."""
    now = now_ms()
    heads_sql = (
        "UPDATE webhook_outbox SET locked_by = ?, locked_until = ? WHERE id IN ("
        " SELECT h.id FROM webhook_outbox h WHERE h.id IN ("
        f"  SELECT MIN(id) FROM webhook_outbox WHERE state = ? AND url IN ({_marks(urls)}) GROUP BY url, stream)"
        " AND h.next_ms <= ? AND (h.locked_until IS NULL OR h.locked_until < ?) ORDER BY h.id LIMIT ?)"
        # Checked again on the row itself: of two processes that chose the same head, one gets it.
        " AND state = ? AND (locked_until IS NULL OR locked_until < ?)"
        " RETURNING id, url, stream, attempts, event_id, event"
    )
    params = (node, now + lease_ms, PENDING, *urls, now, now, streams, PENDING, now)

    async def job(tx: Runner) -> list[Sequence[Any]]:
        return await tx.fetch_all(heads_sql, params)

    heads = await _transaction(db, job)
    batches = []
    for head in sorted(heads, key=lambda row: int(row[0])):
        ids, event_ids, events = [int(head[0])], [str(head[4])], [str(head[5])]
        budget = max_bytes - len(events[0])
        if size > 1:
            # Rows behind a held head are this process's to send: nobody else takes them.
            rows = await db.fetch_all(
                "SELECT id, event_id, event FROM webhook_outbox WHERE url = ? AND stream = ? AND state = ? "
                "AND id > ? ORDER BY id LIMIT ?",
                (head[1], head[2], PENDING, ids[0], size - 1),
            )
            for row in rows:
                budget -= len(row[2]) + 1
                if budget < 0:
                    break
                ids.append(int(row[0]))
                event_ids.append(str(row[1]))
                events.append(str(row[2]))
        batches.append(Batch(str(head[1]), str(head[2]), ids, event_ids, events, int(head[3])))
    return batches


async def delivered(db: Db, node: str, batch: Batch) -> bool:
    """Delete a delivered batch; False when its head's lease was lost meanwhile
    (another process holds it now and may send it again: at least once)."""

    async def job(tx: Runner) -> bool:
        row = await tx.fetch_one(
            "DELETE FROM webhook_outbox WHERE id = ? AND locked_by = ? RETURNING id", (batch.head, node)
        )
        if row is None:
            return False
        rest = batch.ids[1:]
        if rest:
            await tx.execute(f"DELETE FROM webhook_outbox WHERE id IN ({_marks(rest)})", rest)
        return True

    return await _transaction(db, job)


async def failed(db: Db, node: str, batch: Batch, error: str, next_ms: int, park_before_ms: int) -> int | None:
    """Record a failed attempt: the batch is tried again from `next_ms`, and its
    rows created before `park_before_ms` are parked. Returns how many were
    parked, or None when the head's lease was lost meanwhile."""
    error = error[:LAST_ERROR]

    async def job(tx: Runner) -> int | None:
        row = await tx.fetch_one(
            "UPDATE webhook_outbox SET locked_by = NULL, locked_until = NULL WHERE id = ? AND locked_by = ? "
            "RETURNING id",
            (batch.head, node),
        )
        if row is None:
            return None
        marks = _marks(batch.ids)
        await tx.execute(
            f"UPDATE webhook_outbox SET attempts = attempts + 1, last_error = ?, next_ms = ? WHERE id IN ({marks})",
            (error, next_ms, *batch.ids),
        )
        parked = await tx.fetch_all(
            f"UPDATE webhook_outbox SET state = ?, parked_ms = ? WHERE id IN ({marks}) AND created_ms < ? RETURNING id",
            (PARKED, now_ms(), *batch.ids, park_before_ms),
        )
        return len(parked)

    return await _transaction(db, job)


async def release(db: Db, node: str, batch: Batch) -> None:
    """Give a head back untried (shutdown): another process may take it at once."""

    async def job(tx: Runner) -> None:
        await tx.execute(
            "UPDATE webhook_outbox SET locked_by = NULL, locked_until = NULL WHERE id = ? AND locked_by = ?",
            (batch.head, node),
        )

    await _transaction(db, job)


async def release_all(db: Db) -> int:
    """Give back every lease: for a process that holds the database alone
    (BROKER_URL=memory://), whose leases can only be its dead predecessor's."""

    async def job(tx: Runner) -> int:
        rows = await tx.fetch_all(
            "UPDATE webhook_outbox SET locked_by = NULL, locked_until = NULL WHERE locked_by IS NOT NULL RETURNING id"
        )
        return len(rows)

    return await _transaction(db, job)


async def counts(db: Db) -> dict[str, int]:
    """Rows by state (every URL, every process): `pending` is the backlog."""
    rows = await db.fetch_all("SELECT state, COUNT(*) FROM webhook_outbox GROUP BY state")
    found = {PENDING: 0, PARKED: 0}
    found.update((str(row[0]), int(row[1])) for row in rows)
    return found
