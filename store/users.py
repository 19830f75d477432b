"""Users as the main backend describes them (`PUT /api/users/{id}`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .db import Db, Runner

MANY = 500  # ids in one `get_many`


async def get(db: Db, user_id: int) -> dict[str, Any] | None:
    row = await db.fetch_one("SELECT id, name, role, profile_image FROM users WHERE id = ?", (user_id,))
    return None if row is None else _user(row)


async def get_many(db: Db, user_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The stored ones of `user_ids` (at most `MANY` at a time: SQLite's bound parameters), by id."""
    assert len(user_ids) <= MANY
    if not user_ids:
        return {}
    marks = ", ".join("?" * len(user_ids))
    rows = await db.fetch_all(f"SELECT id, name, role, profile_image FROM users WHERE id IN ({marks})", user_ids)
    return {int(row[0]): _user(row) for row in rows}


def _user(row: Any) -> dict[str, Any]:
    return {"id": int(row[0]), "name": row[1], "role": row[2], "profile_image": row[3]}


async def upsert(db: Db, user_id: int, name: str, role: str, profile_image: str | None) -> None:
    async def job(tx: Runner) -> None:
        await tx.execute(
            "INSERT INTO users (id, name, role, profile_image) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET name = excluded.name, role = excluded.role, "
            "profile_image = excluded.profile_image",
            (user_id, name, role, profile_image),
        )

    await db.write(job)
