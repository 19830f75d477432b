"""Chat messages, read receipts and deletions of one room.

Records are returned in the protocol's `ChatMessage` shape (None fields left
out), so the endpoints send them as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from store import streams
from store.db import Db, Row, Runner, new_id, utc_now
from store.errors import Forbidden, NotFound

COLUMNS = (
    "id, seq, room_id, sender_id, sender_name, sender_image, content, message_type, "
    "file_url, file_name, client_msg_id, created_at"
)
# `is_read`: some member other than the sender has read it.
IS_READ = "EXISTS (SELECT 1 FROM message_reads r WHERE r.message_id = m.id AND r.user_id <> m.sender_id)"


@dataclass(frozen=True, slots=True)
class Posted:
    message: dict[str, Any]
    frame: str | None  # None when the client_msg_id was seen before: nothing new to publish
    seq: int


def to_record(row: Row, is_read: bool) -> dict[str, Any]:
    sender: dict[str, Any] = {"id": int(row[3]), "name": row[4]}
    if row[5]:
        sender["profile_image"] = row[5]
    record: dict[str, Any] = {
        "id": row[0],
        "seq": int(row[1]),
        "room_id": row[2],
        "sender": sender,
        "content": row[6],
        "message_type": row[7],
        "created_at": row[11],
        "is_read": is_read,
    }
    for key, value in (("file_url", row[8]), ("file_name", row[9]), ("client_msg_id", row[10])):
        if value is not None:
            record[key] = value
    return record


async def post(
    db: Db,
    room_id: str,
    sender: dict[str, Any],
    content: str,
    message_type: str = "text",
    file_url: str | None = None,
    file_name: str | None = None,
    client_msg_id: str | None = None,
) -> Posted:
    stream = streams.chat_stream(room_id)

    async def job(tx: Runner) -> Posted:
        if client_msg_id is not None:
            row = await tx.fetch_one(
                f"SELECT {COLUMNS}, {IS_READ} FROM messages m "
                "WHERE room_id = ? AND sender_id = ? AND client_msg_id = ?",
                (room_id, sender["id"], client_msg_id),
            )
            if row is not None:
                return Posted(to_record(row, bool(row[12])), None, int(row[1]))
        seq = await streams.next_seq(tx, stream)
        row = (
            new_id(),
            seq,
            room_id,
            sender["id"],
            sender["name"],
            sender.get("profile_image"),
            content,
            message_type,
            file_url,
            file_name,
            client_msg_id,
            utc_now(),
        )
        await tx.execute(f"INSERT INTO messages ({COLUMNS}) VALUES ({', '.join('?' * 12)})", row)
        record = to_record(row, False)
        _, text = await streams.append(tx, stream, "chat_message", {"message": record}, seq=seq)
        return Posted(record, text, seq)

    return await db.write(job)


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
