"""Per-user notifications on the user's stream (`user:<id>`).

Each change is a stream event in the same transaction: `new_notification`
(its seq is the notification's `seq`), `notification_updated` (a coalesced
chat notification that counts more messages), `notification_read`, and the
`bulk_update` that `mark_all_read` produces. A notification remembers the seq
that read it (`read_seq`), so a snapshot taken at seq N shows exactly the state
after event N, and the events after N apply on top of it without double counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from . import outbox, streams, webhooks
from .db import Db, Row, Runner, new_id, utc_now
from .errors import NotFound

Kind = Literal["consultation", "message", "payment", "system"]
KINDS = ("consultation", "message", "payment", "system")
COLUMNS = "id, user_id, seq, type, title, body, action_url, read_seq, created_at, message_count"
# Ids per `IN (...)` read: far under the parameter limits of SQLite and PostgreSQL.
READ_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Created:
    user_id: int
    seq: int
    notification: dict[str, Any]
    frame: str  # the `new_notification` (or `notification_updated`) event
    event: str = "new_notification"


@dataclass(frozen=True, slots=True)
class ChatNotice:
    """What one user is told about a room's messages of one coalescing window."""

    user_id: int
    count: int  # messages in the window (not the user's own)
    title: str
    body: str


def to_record(row: Row, upto: int | None = None) -> dict[str, Any]:
    """The protocol's `Notification`; `upto`: read as of that seq (snapshots)."""
    read_seq = row[7]
    record: dict[str, Any] = {
        "id": row[0],
        "type": row[3],
        "title": row[4],
        "body": row[5],
        "is_read": read_seq is not None and (upto is None or int(read_seq) <= upto),
        "created_at": row[8],
    }
    if row[6] is not None:
        record["action_url"] = row[6]
    if len(row) > 9 and row[9] is not None:
        record["count"] = int(row[9])
    return record


async def create(
    db: Db,
    user_ids: Iterable[int],
    kind: Kind,
    title: str,
    body: str,
    action_url: str | None = None,
    members_of: str | None = None,
) -> list[Created]:
    """One notification per user (duplicates collapse), all in one write job:
    each statement runs once over every user (`executemany`), however many.
    With `members_of`, only the users who are members of that room when it is
    written (a chat message's text never reaches someone removed meanwhile)."""
    if kind not in KINDS:
        raise ValueError(f"notification type must be one of {KINDS}")
    wanted = set(user_ids)

    async def job(tx: Runner) -> list[Created]:
        users = wanted
        if members_of is not None:
            rows = await tx.fetch_all("SELECT user_id FROM room_members WHERE room_id = ?", (members_of,))
            users = wanted & {int(row[0]) for row in rows}
        if not users:
            return []
        # Sorted: concurrent writers lock the users' stream rows in one order (no deadlock on PostgreSQL).
        targets = sorted(users)
        names = [(streams.user_stream(u),) for u in targets]
        before = await streams.advance(tx, {name: 1 for (name,) in names})
        seqs = {name: seq + 1 for name, seq in before.items()}
        created_at = utc_now()
        rows_out: list[tuple[Any, ...]] = []
        events: list[tuple[str, int, str]] = []
        created: list[Created] = []
        for user_id, (name,) in zip(targets, names, strict=True):
            seq = seqs[name]
            row = (new_id(), user_id, seq, kind, title, body, action_url, None, created_at, None)
            record = to_record(row)
            frame = streams.frame("new_notification", seq, {"notification": record})
            rows_out.append(row)
            events.append((name, seq, frame, created_at))
            created.append(Created(user_id, seq, record, frame))
        await tx.executemany(f"INSERT INTO notifications ({COLUMNS}) VALUES ({', '.join('?' * 10)})", rows_out)
        await outbox.record(tx, events)
        await _webhook_events(tx, created)
        return created

    return await db.write(job)


async def coalesce_chat(db: Db, room_id: str, notices: list[ChatNotice]) -> list[Created]:
    """One window of a room's chat notifications, in one write job: per user,
    a new notification (`new_notification`) or, while the last one for this
    room is unread, that one updated in place (`notification_updated`: latest
    title and text, count added up). Each is one event on the user's stream.
    Only users who are members of the room when it is written."""

    async def job(tx: Runner) -> list[Created]:
        asked = sorted({n.user_id for n in notices if n.count > 0})
        members: set[int] = set()
        for start in range(0, len(asked), READ_CHUNK):
            chunk = asked[start : start + READ_CHUNK]
            rows = await tx.fetch_all(
                f"SELECT user_id FROM room_members WHERE room_id = ? AND user_id IN ({', '.join('?' * len(chunk))})",
                [room_id, *chunk],
            )
            members.update(int(row[0]) for row in rows)
        wanted = {n.user_id: n for n in notices if n.user_id in members and n.count > 0}
        if not wanted:
            return []
        # Sorted, as in `create`. On PostgreSQL the upsert on `streams` also locks
        # each user's stream row until commit, so a second node flushing the same
        # room waits here and then sees this one's row: no duplicate (user, room).
        targets = sorted(wanted)
        names = {user_id: streams.user_stream(user_id) for user_id in targets}
        before = await streams.advance(tx, {names[user_id]: 1 for user_id in targets})
        existing: dict[int, Row] = {}
        for start in range(0, len(targets), READ_CHUNK):
            chunk = targets[start : start + READ_CHUNK]
            found = await tx.fetch_all(
                f"SELECT {COLUMNS} FROM notifications WHERE room_id = ? AND read_seq IS NULL "
                f"AND user_id IN ({', '.join('?' * len(chunk))})",
                [room_id, *chunk],
            )
            existing.update((int(row[1]), row) for row in found)
        now = utc_now()
        inserts: list[tuple[Any, ...]] = []
        updates: list[tuple[Any, ...]] = []
        events: list[tuple[str, int, str, str]] = []
        out: list[Created] = []
        for user_id in targets:
            notice, old, seq = wanted[user_id], existing.get(user_id), before[names[user_id]] + 1
            if old is None:
                row: tuple[Any, ...] = (
                    new_id(), user_id, seq, "message", notice.title, notice.body, None, None, now, notice.count
                )  # fmt: skip
                inserts.append((*row, room_id))
                event = "new_notification"
            else:
                count = int(old[9] or 1) + notice.count
                row = (old[0], user_id, old[2], old[3], notice.title, notice.body, old[6], None, old[8], count)
                updates.append((notice.title, notice.body, count, old[0]))
                event = "notification_updated"
            record = to_record(row)
            frame = streams.frame(event, seq, {"notification": record})
            events.append((names[user_id], seq, frame, now))
            out.append(Created(user_id, seq, record, frame, event))
        if inserts:
            await tx.executemany(
                f"INSERT INTO notifications ({COLUMNS}, room_id) VALUES ({', '.join('?' * 11)})", inserts
            )
        if updates:
            await tx.executemany(
                "UPDATE notifications SET title = ?, body = ?, message_count = ? WHERE id = ?", updates
            )
        await outbox.record(tx, events)
        await _webhook_events(tx, out)
        return out

    return await db.write(job)


async def _webhook_events(tx: Runner, created: list[Created]) -> None:
    """`notification.created` for each new one (a chat notification updated in
    place is not new), ordered per user: its `streams` row is locked by then."""
    if webhooks.on(tx):
        events = [
            webhooks.Event(
                "notification.created",
                streams.user_stream(c.user_id),
                {"user_id": c.user_id, "notification": c.notification},
            )
            for c in created
            if c.event == "new_notification"
        ]
        await webhooks.enqueue(tx, events)


async def snapshot(db: Db, user_id: int, limit: int) -> tuple[list[dict[str, Any]], int, int]:
    """The newest `limit` notifications, the unread count and the seq they are exact at."""
    last = await streams.last_seq(db, streams.user_stream(user_id))
    rows = await db.fetch_all(
        f"SELECT {COLUMNS} FROM notifications WHERE user_id = ? AND seq <= ? ORDER BY seq DESC LIMIT ?",
        (user_id, last, limit),
    )
    unread = await db.fetch_one(
        "SELECT COUNT(*) FROM notifications WHERE user_id = ? AND seq <= ? AND (read_seq IS NULL OR read_seq > ?)",
        (user_id, last, last),
    )
    return [to_record(row, last) for row in rows], int(unread[0]) if unread else 0, last


async def mark_read(db: Db, user_id: int, notification_id: str) -> tuple[int, str] | None:
    """Mark one of the user's notifications read; the event, or None when it already was.
    Another user's notification is `not_found`."""
    stream = streams.user_stream(user_id)

    async def job(tx: Runner) -> tuple[int, str] | None:
        row = await tx.fetch_one(
            "SELECT read_seq FROM notifications WHERE id = ? AND user_id = ?", (notification_id, user_id)
        )
        if row is None:
            raise NotFound("no such notification")
        if row[0] is not None:
            return None
        seq = await streams.next_seq(tx, stream)
        await tx.execute("UPDATE notifications SET read_seq = ? WHERE id = ?", (seq, notification_id))
        return await streams.append(tx, stream, "notification_read", {"notification_id": notification_id}, seq=seq)

    return await db.write(job)


async def mark_all_read(db: Db, user_id: int, limit: int) -> tuple[int, str] | None:
    """Mark everything read; the event is a `bulk_update` of the newest `limit`
    as they are now. None when nothing was unread."""
    stream = streams.user_stream(user_id)

    async def job(tx: Runner) -> tuple[int, str] | None:
        unread = await tx.fetch_one(
            "SELECT 1 FROM notifications WHERE user_id = ? AND read_seq IS NULL LIMIT 1", (user_id,)
        )
        if unread is None:
            return None
        seq = await streams.next_seq(tx, stream)
        await tx.execute("UPDATE notifications SET read_seq = ? WHERE user_id = ? AND read_seq IS NULL", (seq, user_id))
        rows = await tx.fetch_all(
            f"SELECT {COLUMNS} FROM notifications WHERE user_id = ? ORDER BY seq DESC LIMIT ?", (user_id, limit)
        )
        body = {"notifications": [to_record(row) for row in rows], "unread_count": 0}
        return await streams.append(tx, stream, "bulk_update", body, seq=seq)

    return await db.write(job)
