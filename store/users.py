"""Users as the main backend describes them (`PUT /api/users/{id}`)."""

from __future__ import annotations

from typing import Any

from .db import Db, Runner


async def get(db: Db, user_id: int) -> dict[str, Any] | None:
    row = await db.fetch_one("SELECT id, name, role, profile_image FROM users WHERE id = ?", (user_id,))
    if row is None:
        return None
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
