"""Chat messages, read receipts and deletions of one room.

Records are returned in the protocol's `ChatMessage` shape (None fields left
out), so the endpoints send them as they are.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, NamedTuple

from . import outbox, streams, webhooks
from .db import Db, Runner, new_ids, utc_now
from .errors import AccessEnded, Forbidden, NotFound
from .message_rows import COLUMNS, FROM_ROW, frame, to_record

# `is_read`: some member other than the sender has read it.
IS_READ = "EXISTS (SELECT 1 FROM message_reads r WHERE r.message_id = m.id AND r.user_id <> m.sender_id)"


class Posted(NamedTuple):
    message: dict[str, Any]
    frame: str | None  # None when the client_msg_id was seen before: nothing new to publish
    seq: int


class NewMessage(NamedTuple):
    room_id: str
    sender: dict[str, Any]
    content: str
    message_type: str = "text"
    file_url: str | None = None
    file_name: str | None = None
    client_msg_id: str | None = None
    # The sender must be a member when the message is written (a socket's
    # message: the member may have been removed since the socket joined).
    from_member: bool = False

    @property
    def key(self) -> tuple[str, int, str | None]:
        return (self.room_id, int(self.sender["id"]), self.client_msg_id)


def created_event(posted: Posted) -> webhooks.Event:
    """`message.created`, ordered per room (its `streams` row is locked by then)."""
    message = posted.message
    stream = streams.chat_stream(message["room_id"])
    return webhooks.Event("message.created", stream, {"room_id": message["room_id"], "message": message})


class PostMessages:
    """Chat messages of a whole group commit in a handful of statements:
    one look-up of repeated `client_msg_id`s, one seq reservation per batch,
    and `executemany` for the rows and their stream events (the event refers
    to its row: each message is written once)."""

    async def run(self, tx: Runner, items: list[NewMessage]) -> list[Posted | AccessEnded]:
        results: list[Posted | AccessEnded | None] = [None] * len(items)
        outsiders = await self._outsiders(tx, [item for item in items if item.from_member])
        earlier = await self._earlier(tx, [item for item in items if item.client_msg_id is not None])
        first_of: dict[tuple[str, int, str | None], int] = {}
        fresh: list[int] = []
        for index, item in enumerate(items):
            if outsiders and (item.room_id, int(item.sender["id"])) in outsiders:
                results[index] = AccessEnded("no longer a member of this room")
                continue
            if item.client_msg_id is not None:
                if item.key in earlier:
                    results[index] = earlier[item.key]
                    continue
                if item.key in first_of:
                    continue  # a repeat inside this batch: answered below with the first
                first_of[item.key] = index
            fresh.append(index)
        if fresh:
            counts: dict[str, int] = {}
            for index in fresh:
                stream = streams.chat_stream(items[index].room_id)
                counts[stream] = counts.get(stream, 0) + 1
            seqs = await streams.advance(tx, counts)
            rows, events, posted = [], [], []
            # One clock reading and one draw of ids for the whole commit.
            now, ids = utc_now(), new_ids(len(fresh))
            for index, id_ in zip(fresh, ids, strict=True):
                item = items[index]
                stream = streams.chat_stream(item.room_id)
                seqs[stream] += 1
                seq = seqs[stream]
                row = (
                    id_, seq, item.room_id, item.sender["id"], item.sender["name"],
                    item.sender.get("profile_image"), item.content, item.message_type, item.file_url,
                    item.file_name, item.client_msg_id, now,
                )  # fmt: skip
                record = to_record(row, False)
                text = frame(seq, record)
                rows.append(row)
                # The message row is the event: its frame is not stored twice (store/message_rows.py).
                events.append((stream, seq, FROM_ROW, now))
                done = Posted(record, text, seq)
                results[index] = done
                posted.append(done)
            await tx.executemany(f"INSERT INTO messages ({COLUMNS}) VALUES ({', '.join('?' * 12)})", rows)
            await outbox.record(tx, events)
            if webhooks.on(tx):
                await webhooks.enqueue(tx, [created_event(p) for p in posted])
        for index, item in enumerate(items):
            if results[index] is None:
                original = results[first_of[item.key]]
                assert isinstance(original, Posted)
                results[index] = Posted(original.message, None, original.seq)
        return results  # type: ignore[return-value]

    @staticmethod
    async def _outsiders(tx: Runner, checked: list[NewMessage]) -> set[tuple[str, int]]:
        """The (room, sender) pairs of `checked` that are not (any more) members,
        read in the writing transaction: a removal committed before is seen."""
        pairs = {(item.room_id, int(item.sender["id"])) for item in checked}
        if not pairs:
            return set()
        where = " OR ".join(["(room_id = ? AND user_id = ?)"] * len(pairs))
        rows = await tx.fetch_all(
            f"SELECT room_id, user_id FROM room_members WHERE {where}", [v for pair in pairs for v in pair]
        )
        return pairs - {(row[0], int(row[1])) for row in rows}

    @staticmethod
    async def _earlier(tx: Runner, keyed: list[NewMessage]) -> dict[tuple[str, int, str | None], Posted]:
        if not keyed:
            return {}
        where = " OR ".join(["(room_id = ? AND sender_id = ? AND client_msg_id = ?)"] * len(keyed))
        params = [value for item in keyed for value in item.key]
        rows = await tx.fetch_all(f"SELECT {COLUMNS}, {IS_READ} FROM messages m WHERE {where}", params)
        found = {}
        for row in rows:
            record = to_record(row, bool(row[12]))
            found[(row[2], int(row[3]), row[10])] = Posted(record, None, int(row[1]))
        return found


POST = PostMessages()


def post(
    db: Db,
    room_id: str,
    sender: dict[str, Any],
    content: str,
    message_type: str = "text",
    file_url: str | None = None,
    file_name: str | None = None,
    client_msg_id: str | None = None,
    *,
    from_member: bool = False,
) -> Awaitable[Posted]:
    """Store one message (or find the one this `client_msg_id` already stored); await the result.
    `from_member`: refuse it (`AccessEnded`) unless the sender is a member as it is written."""
    item = NewMessage(room_id, sender, content, message_type, file_url, file_name, client_msg_id, from_member)
    return db.write_batched(POST, item)


async def history(db: Db, room_id: str, before_seq: int | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """Up to `limit` live messages before `before_seq`, oldest first, and whether more exist."""
    bound = before_seq if before_seq is not None else 2**62
    rows = await db.fetch_all(
        f"SELECT {COLUMNS}, {IS_READ} FROM messages m "
        "WHERE room_id = ? AND seq < ? AND deleted_at IS NULL ORDER BY seq DESC LIMIT ?",
        (room_id, bound, limit + 1),
    )
    has_more = len(rows) > limit
    return [to_record(row, bool(row[12])) for row in reversed(rows[:limit])], has_more


async def mark_read(db: Db, room_id: str, message_id: str, user_id: int) -> tuple[int, str] | None:
    """Store a receipt once; returns the event, or None when nothing changed."""
    stream = streams.chat_stream(room_id)

    async def job(tx: Runner) -> tuple[int, str] | None:
        await _still_member(tx, room_id, user_id)
        row = await tx.fetch_one(
            "SELECT sender_id FROM messages WHERE id = ? AND room_id = ? AND deleted_at IS NULL",
            (message_id, room_id),
        )
        if row is None:
            raise NotFound("no such message in this room")
        if int(row[0]) == user_id:
            return None
        read_at = utc_now()
        inserted = await tx.fetch_one(
            "INSERT INTO message_reads (message_id, user_id, read_at) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING RETURNING 1",
            (message_id, user_id, read_at),
        )
        if inserted is None:
            return None
        body = {"message_id": message_id, "user_id": user_id, "read_at": read_at}
        return await streams.append(tx, stream, "message_read", body)

    return await db.write(job)


async def delete(db: Db, room_id: str, message_id: str, user_id: int) -> tuple[int, str]:
    stream = streams.chat_stream(room_id)

    async def job(tx: Runner) -> tuple[int, str]:
        await _still_member(tx, room_id, user_id)
        row = await tx.fetch_one(
            "SELECT sender_id FROM messages WHERE id = ? AND room_id = ? AND deleted_at IS NULL",
            (message_id, room_id),
        )
        if row is None:
            raise NotFound("no such message in this room")
        if int(row[0]) != user_id:
            raise Forbidden("only the sender may delete a message")
        await tx.execute("UPDATE messages SET deleted_at = ? WHERE id = ?", (utc_now(), message_id))
        return await streams.append(tx, stream, "message_deleted", {"message_id": message_id})

    return await db.write(job)


async def _still_member(tx: Runner, room_id: str, user_id: int) -> None:
    """In the writing transaction: a member removed before it commits is refused."""
    row = await tx.fetch_one("SELECT 1 FROM room_members WHERE room_id = ? AND user_id = ?", (room_id, user_id))
    if row is None:
        raise AccessEnded("no longer a member of this room")
