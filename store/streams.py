"""Per-room and per-user event streams: strict, gap-free `seq`, and replay.

Every persisted event is appended here in the same transaction as the change it
reports, with its exact wire frame, so a client that resumes with `since` gets
byte for byte what the live path sent, and a process that lost its broker can
refill its sockets from here.
"""

from __future__ import annotations

import secrets
from typing import Any

import msgspec

from . import message_rows, outbox
from .db import Db, Runner, utc_now

_encode = msgspec.json.Encoder().encode
# Streams read back per statement (well under every driver's parameter limit).
READ_CHUNK = 500

# The row that holds the streams table's own epoch (no topic is named ""): a new
# stream's row takes it, so a client that saw a stream before its first event
# resumes it without a resync. A fresh database, or a streams table emptied,
# gets a new one; so does a restore once that row is deleted (docs/PROTOCOL.md).
EPOCH_ROW = ""
TABLE_EPOCH = "(SELECT epoch FROM streams WHERE stream = '')"


def chat_stream(room_id: str) -> str:
    return f"room:{room_id}"


def user_stream(user_id: int) -> str:
    return f"user:{user_id}"


async def next_seq(tx: Runner, stream: str) -> int:
    row = await tx.fetch_one(
        "UPDATE streams SET last_seq = last_seq + 1 WHERE stream = ? RETURNING last_seq",
        (stream,),
    )
    if row is None:
        await tx.execute(
            f"INSERT INTO streams (stream, last_seq, epoch) VALUES (?, 0, {TABLE_EPOCH}) "
            "ON CONFLICT (stream) DO NOTHING",
            (stream,),
        )
        row = await tx.fetch_one(
            "UPDATE streams SET last_seq = last_seq + 1 WHERE stream = ? RETURNING last_seq",
            (stream,),
        )
    assert row is not None
    return int(row[0])


async def advance(tx: Runner, counts: dict[str, int]) -> dict[str, int]:
    """Reserve `count` seqs on each stream at once; returns each stream's last seq before.

    One upsert over all the streams (`executemany`: on SQLite one many-row
    statement, prepared per row count, measured three times slower), in sorted
    order, so two writers lock the same rows in the same order on PostgreSQL
    (no deadlock); a concurrent creator of the same row makes the other one
    update it.
    """
    names = sorted(counts)
    await tx.executemany(
        f"INSERT INTO streams (stream, last_seq, epoch) VALUES (?, ?, {TABLE_EPOCH}) "
        "ON CONFLICT (stream) DO UPDATE SET last_seq = streams.last_seq + excluded.last_seq",
        [(name, counts[name]) for name in names],
    )
    after: dict[str, int] = {}
    for start in range(0, len(names), READ_CHUNK):
        chunk = names[start : start + READ_CHUNK]
        marks = ", ".join("?" * len(chunk))
        rows = await tx.fetch_all(f"SELECT stream, last_seq FROM streams WHERE stream IN ({marks})", chunk)
        after.update((str(row[0]), int(row[1])) for row in rows)
    return {name: after[name] - counts[name] for name in names}


def frame(type_: str, seq: int, body: dict[str, Any]) -> str:
    """The wire frame of a persisted event: `type` and `seq` first, then the body."""
    return _encode({"type": type_, "seq": seq, **body}).decode()


async def append(tx: Runner, stream: str, type_: str, body: dict[str, Any], seq: int | None = None) -> tuple[int, str]:
    """Log one event; returns its seq and its frame. `seq` may be pre-allocated."""
    if seq is None:
        seq = await next_seq(tx, stream)
    text = frame(type_, seq, body)
    await outbox.record(tx, [(stream, seq, text, utc_now())])
    return seq, text


def new_epoch() -> str:
    return secrets.token_hex(8)


async def epoch(db: Db, stream: str) -> str:
    """The stream's epoch: the one its row was given, else (a stream with no
    event yet, or a row from before epochs) the streams table's own. Creating
    the table's own is the one write on this read path, once per database."""
    row = await db.fetch_one(f"SELECT COALESCE((SELECT epoch FROM streams WHERE stream = ?), {TABLE_EPOCH})", (stream,))
    if row is not None and row[0]:
        return str(row[0])
    fresh = new_epoch()

    async def job(tx: Runner) -> str:
        await tx.execute(
            "INSERT INTO streams (stream, last_seq, epoch) VALUES (?, 0, ?) ON CONFLICT (stream) DO NOTHING",
            (EPOCH_ROW, fresh),
        )
        found = await tx.fetch_one(f"SELECT {TABLE_EPOCH}", ())
        assert found is not None
        return str(found[0])

    return await db.write(job)


async def ensure_table_epoch(db: Db) -> None:
    """At start-up: give the streams table its own epoch now, so that reading a
    stream's epoch (every snapshot) never has to write."""
    await epoch(db, EPOCH_ROW)


async def last_seq(db: Db, stream: str) -> int:
    row = await db.fetch_one("SELECT last_seq FROM streams WHERE stream = ?", (stream,))
    return int(row[0]) if row else 0


def _unbroken(rows: list[tuple[int, str]], after: int) -> bool:
    """The events run after+1, after+2, ... with none missing (retention prunes
    the oldest; a clock step between nodes could leave a hole further on)."""
    return not rows or (rows[0][0] == after + 1 and rows[-1][0] == after + len(rows))


async def since(db: Db, stream: str, after: int, limit: int, upto: int = 0) -> list[tuple[int, str]] | None:
    """Events after `after`, oldest first; None when they cannot all be replayed:
    more than `limit`, some of them no longer kept, or fewer than reach `upto`
    (the stream's last seq, when the caller knows it)."""
    found = await db.fetch_all(
        "SELECT seq, frame FROM stream_events WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?",
        (stream, after, limit + 1),
    )
    if len(found) > limit:
        return None
    rows = await _with_message_frames(db, stream, [(int(seq), text) for seq, text in found])
    if not _unbroken(rows, after) or (rows[-1][0] if rows else after) < upto:
        return None
    return rows


async def between(db: Db, stream: str, after: int, upto: int) -> list[tuple[int, str]] | None:
    """Events after+1..upto, or None when some of them are no longer kept."""
    found = await db.fetch_all(
        "SELECT seq, frame FROM stream_events WHERE stream = ? AND seq > ? AND seq <= ? ORDER BY seq",
        (stream, after, upto),
    )
    rows = await _with_message_frames(db, stream, [(int(seq), text) for seq, text in found])
    if len(rows) != max(0, upto - after) or not _unbroken(rows, after):
        return None
    return rows


async def _with_message_frames(db: Db, stream: str, rows: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """`rows` with each `chat_message` event's frame made from its message row
    (store/message_rows.py); one whose row is gone is left out, a hole."""
    wanted = [seq for seq, text in rows if text == message_rows.FROM_ROW]
    if not wanted:
        return rows
    made = await message_rows.frames(db.fetch_all, stream, wanted)
    return [(seq, made[seq] if text == message_rows.FROM_ROW else text) for seq, text in rows if text or seq in made]


# How many missed events a process refills from the store before it asks its
# sockets to resync instead.
REFILL_LIMIT = 10_000


class StreamLog:
    """What the hub reads to put missed events back in order."""

    def __init__(self, db: Db) -> None:
        self.db = db

    async def last_seq(self, stream: str) -> int:
        return await last_seq(self.db, stream)

    async def between(self, stream: str, after: int, upto: int | None) -> list[tuple[int, str]] | None:
        if upto is None:
            return await since(self.db, stream, after, REFILL_LIMIT)
        return await between(self.db, stream, after, upto)
