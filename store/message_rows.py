"""A chat message's row, its record, and its `chat_message` event made from it.

A `chat_message` event is stored once, as its message row: its `stream_events`
row (what orders the room's stream, what retention prunes, what the outbox
points at) carries an empty frame (`FROM_ROW`), and the frame is made again
from the message row when the stream is replayed or refilled or the outbox
relays it. It is byte for byte the frame sent live: both come from `frame`
here, with the record as it was sent (`is_read` false; a deletion only sets
`deleted_at`, and the content is never rewritten).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import msgspec

from .db import Row

COLUMNS = (
    "id, seq, room_id, sender_id, sender_name, sender_image, content, message_type, "
    "file_url, file_name, client_msg_id, created_at"
)
# The frame of a stream event that is a message row.
FROM_ROW = ""
ROOM_STREAM = "room:"

_encode = msgspec.json.Encoder().encode

# `read(sql, params)`: rows from the store (a `Db`'s or a transaction's `fetch_all`).
Read = Callable[[str, Sequence[Any]], Awaitable[list[Row]]]


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


def frame(seq: int, record: dict[str, Any]) -> str:
    """The `chat_message` event of a message record, as `streams.frame` writes every event."""
    return _encode({"type": "chat_message", "seq": seq, "message": record}).decode()


async def frames(read: Read, stream: str, seqs: Iterable[int]) -> dict[int, str]:
    """The frames of `stream`'s `chat_message` events at `seqs`, made from their
    message rows; a seq whose row is not there is left out (a hole: the reader
    then resyncs, or the outbox drops the event unpublished)."""
    wanted = set(seqs)
    if not wanted or not stream.startswith(ROOM_STREAM):
        return {}
    rows = await read(
        f"SELECT {COLUMNS} FROM messages WHERE room_id = ? AND seq >= ? AND seq <= ? ORDER BY seq",
        (stream[len(ROOM_STREAM) :], min(wanted), max(wanted)),
    )
    made = {}
    for row in rows:
        seq = int(row[1])
        if seq in wanted:
            made[seq] = frame(seq, to_record(row, False))
    return made
