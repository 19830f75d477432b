"""Token revocations: per user, the moment before which its tokens are refused."""

from __future__ import annotations

from .db import Db, Runner, utc_now


async def revoke(db: Db, user_id: int, before_ms: int) -> int:
    """Refuse the user's tokens issued at or before `before_ms` (Unix ms); returns
    the moment now stored (a later revocation is never moved back)."""

    async def job(tx: Runner) -> int:
        row = await tx.fetch_one(
            "INSERT INTO token_revocations (user_id, revoked_before, revoked_at) VALUES (?, ?, ?) "
            "ON CONFLICT (user_id) DO UPDATE SET revoked_at = excluded.revoked_at, revoked_before = "
            "CASE WHEN excluded.revoked_before > token_revocations.revoked_before "
            "THEN excluded.revoked_before ELSE token_revocations.revoked_before END "
            "RETURNING revoked_before",
            (user_id, before_ms, utc_now()),
        )
        assert row is not None
        return int(row[0])

    return await db.write(job)


async def revoked_before(db: Db, user_id: int) -> int | None:
    row = await db.fetch_one("SELECT revoked_before FROM token_revocations WHERE user_id = ?", (user_id,))
    return int(row[0]) if row is not None else None


async def all_revoked(db: Db, most: int) -> dict[int, int] | None:
    """Every user's `revoked_before`, or None when there are more than `most` of them."""
    rows = await db.fetch_all("SELECT user_id, revoked_before FROM token_revocations LIMIT ?", (most + 1,))
    if len(rows) > most:
        return None
    return {int(row[0]): int(row[1]) for row in rows}
