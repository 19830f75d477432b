"""Chat rooms and their members."""

from __future__ import annotations

from collections.abc import Iterable

from .db import Db, Runner, utc_now
from .errors import Conflict, NotFound


async def exists(db: Db, room_id: str) -> bool:
    return await db.fetch_one("SELECT 1 FROM rooms WHERE id = ?", (room_id,)) is not None


async def is_member(db: Db, room_id: str, user_id: int) -> bool:
    row = await db.fetch_one("SELECT 1 FROM room_members WHERE room_id = ? AND user_id = ?", (room_id, user_id))
    return row is not None


async def members_if_exists(db: Db, room_id: str) -> list[int] | None:
    """The room's member ids in one read; None when there is no such room."""
    rows = await db.fetch_all(
        "SELECT m.user_id FROM rooms r LEFT JOIN room_members m ON m.room_id = r.id WHERE r.id = ?", (room_id,)
    )
    if not rows:
        return None
    return [int(row[0]) for row in rows if row[0] is not None]


async def member_ids(db: Db, room_id: str) -> list[int]:
    rows = await db.fetch_all("SELECT user_id FROM room_members WHERE room_id = ? ORDER BY user_id", (room_id,))
    return [int(row[0]) for row in rows]


async def create(db: Db, room_id: str, member_ids: Iterable[int], consultation_id: str | None = None) -> None:
    members = sorted(set(member_ids))

    async def job(tx: Runner) -> None:
        if await tx.fetch_one("SELECT 1 FROM rooms WHERE id = ?", (room_id,)) is not None:
            raise Conflict(f"room {room_id} exists")
        await tx.execute(
            "INSERT INTO rooms (id, consultation_id, created_at) VALUES (?, ?, ?)",
            (room_id, consultation_id, utc_now()),
        )
        if members:
            await tx.executemany(
                "INSERT INTO room_members (room_id, user_id) VALUES (?, ?)", [(room_id, m) for m in members]
            )

    await db.write(job)


async def ensure(db: Db, room_id: str, member_ids: Iterable[int]) -> None:
    """Create the room if missing and add the members (dev mode's demo room)."""
    members = sorted(set(member_ids))

    async def job(tx: Runner) -> None:
        await tx.execute(
            "INSERT INTO rooms (id, consultation_id, created_at) VALUES (?, NULL, ?) ON CONFLICT (id) DO NOTHING",
            (room_id, utc_now()),
        )
        await tx.executemany(
            "INSERT INTO room_members (room_id, user_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
            [(room_id, m) for m in members],
        )

    await db.write(job)


async def add_member(db: Db, room_id: str, user_id: int) -> None:
    async def job(tx: Runner) -> None:
        if await tx.fetch_one("SELECT 1 FROM rooms WHERE id = ?", (room_id,)) is None:
            raise NotFound(f"room {room_id} not found")
        await tx.execute(
            "INSERT INTO room_members (room_id, user_id) VALUES (?, ?) ON CONFLICT DO NOTHING", (room_id, user_id)
        )

    await db.write(job)


async def remove_member(db: Db, room_id: str, user_id: int) -> None:
    async def job(tx: Runner) -> None:
        row = await tx.fetch_one("SELECT 1 FROM room_members WHERE room_id = ? AND user_id = ?", (room_id, user_id))
        if row is None:
            raise NotFound(f"user {user_id} is not in room {room_id}")
        await tx.execute("DELETE FROM room_members WHERE room_id = ? AND user_id = ?", (room_id, user_id))

    await db.write(job)
