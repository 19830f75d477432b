"""Consultations and their extension requests.

A consultation goes `waiting` → `in_progress` → `completed`, or from `waiting`
to `cancelled`. Every transition is checked inside its write job, on the row
as it is at that moment, so two racing requests (two tabs, the server API and a
socket, the time-up tick on another process) cannot both win: the loser gets
`Conflict` and nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from . import webhooks
from .db import Db, Row, Runner, new_id
from .errors import Conflict, Forbidden, NotFound

WAITING = "waiting"
IN_PROGRESS = "in_progress"
COMPLETED = "completed"
CANCELLED = "cancelled"

OPEN = "open"
ACCEPTED = "accepted"
REJECTED = "rejected"

DEFAULT_MINUTES = 50

COLUMNS = (
    "id, expert_id, client_id, status, scheduled_start, duration_minutes, "
    "started_at, ends_at, ended_at, end_reason, created_at"
)
EXTENSION_COLUMNS = "id, consultation_id, requested_by, duration_minutes, status, created_at, answered_at"


def iso(moment: datetime) -> str:
    """The protocol's timestamp text (as `utc_now`); stored times compare as strings."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True, slots=True)
class Consultation:
    id: str
    expert_id: int
    client_id: int
    status: str
    scheduled_start: str | None
    duration_minutes: int
    started_at: str | None
    ends_at: str | None
    ended_at: str | None
    end_reason: str | None
    created_at: str

    def role_of(self, user_id: int) -> str | None:
        if user_id == self.expert_id:
            return "expert"
        if user_id == self.client_id:
            return "client"
        return None

    def record(self) -> dict[str, Any]:
        """The consultation as the server API shows it (unset times left out)."""
        record: dict[str, Any] = {
            "id": self.id,
            "expert_id": self.expert_id,
            "client_id": self.client_id,
            "status": self.status,
            "duration_minutes": self.duration_minutes,
            "created_at": self.created_at,
        }
        for key in ("scheduled_start", "started_at", "ends_at", "ended_at", "end_reason"):
            value = getattr(self, key)
            if value is not None:
                record[key] = value
        return record


@dataclass(frozen=True, slots=True)
class Extension:
    id: str
    consultation_id: str
    requested_by: int
    duration_minutes: int
    status: str
    created_at: str
    answered_at: str | None


def _consultation(row: Row) -> Consultation:
    return Consultation(
        id=row[0],
        expert_id=int(row[1]),
        client_id=int(row[2]),
        status=row[3],
        scheduled_start=row[4],
        duration_minutes=int(row[5]),
        started_at=row[6],
        ends_at=row[7],
        ended_at=row[8],
        end_reason=row[9],
        created_at=row[10],
    )


def _extension(row: Row) -> Extension:
    return Extension(row[0], row[1], int(row[2]), int(row[3]), row[4], row[5], row[6])


# ---- reads -------------------------------------------------------------------


async def get(db: Db, consultation_id: str) -> Consultation | None:
    row = await db.fetch_one(f"SELECT {COLUMNS} FROM consultations WHERE id = ?", (consultation_id,))
    return _consultation(row) if row else None


async def in_progress(db: Db) -> list[Consultation]:
    rows = await db.fetch_all(f"SELECT {COLUMNS} FROM consultations WHERE status = ? ORDER BY id", (IN_PROGRESS,))
    return [_consultation(row) for row in rows]


async def open_extension(db: Db, consultation_id: str) -> Extension | None:
    row = await db.fetch_one(
        f"SELECT {EXTENSION_COLUMNS} FROM consultation_extensions WHERE consultation_id = ? AND status = ?",
        (consultation_id, OPEN),
    )
    return _extension(row) if row else None


async def open_extensions(db: Db) -> dict[str, Extension]:
    """The open request of every consultation in progress (for the periodic status)."""
    rows = await db.fetch_all(
        "SELECT e.id, e.consultation_id, e.requested_by, e.duration_minutes, e.status, e.created_at, e.answered_at "
        "FROM consultation_extensions e JOIN consultations c ON c.id = e.consultation_id "
        "WHERE e.status = ? AND c.status = ?",
        (OPEN, IN_PROGRESS),
    )
    return {row[1]: _extension(row) for row in rows}


# ---- writes ------------------------------------------------------------------


async def create(
    db: Db,
    consultation_id: str,
    expert_id: int,
    client_id: int,
    scheduled_start: str | None = None,
    duration_minutes: int = DEFAULT_MINUTES,
) -> Consultation:
    async def job(tx: Runner) -> Consultation:
        if await tx.fetch_one("SELECT 1 FROM consultations WHERE id = ?", (consultation_id,)) is not None:
            raise Conflict(f"consultation {consultation_id} exists")
        row = await tx.fetch_one(
            f"INSERT INTO consultations ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL, ?) "
            f"RETURNING {COLUMNS}",
            (consultation_id, expert_id, client_id, WAITING, scheduled_start, duration_minutes, iso(_now())),
        )
        assert row is not None
        return _consultation(row)

    return await db.write(job)


async def _lock(tx: Runner, consultation_id: str) -> Consultation:
    """The row, locked until the transaction ends.

    A no-op UPDATE takes the row lock on PostgreSQL (SQLite's writer already
    holds the database), so two processes changing one consultation go one
    after the other and the checks that follow see the latest state. It
    changes no data, so raising after it still leaves nothing half-written.
    """
    row = await tx.fetch_one(
        f"UPDATE consultations SET status = status WHERE id = ? RETURNING {COLUMNS}", (consultation_id,)
    )
    if row is None:
        raise NotFound(f"consultation {consultation_id} not found")
    return _consultation(row)


async def _set(tx: Runner, consultation_id: str, changes: dict[str, Any]) -> Consultation:
    assignments = ", ".join(f"{column} = ?" for column in changes)
    row = await tx.fetch_one(
        f"UPDATE consultations SET {assignments} WHERE id = ? RETURNING {COLUMNS}",
        (*changes.values(), consultation_id),
    )
    assert row is not None
    return _consultation(row)


async def _tell(tx: Runner, type_: str, c: Consultation, **more: Any) -> None:
    """A `consultation.*` webhook event, ordered per consultation (its row is locked by then)."""
    if webhooks.on(tx):
        event = webhooks.Event(type_, f"consultation:{c.id}", {"consultation": c.record(), **more})
        await webhooks.enqueue(tx, [event])


def _expect(c: Consultation, status: str, action: str) -> None:
    if c.status != status:
        raise Conflict(f"cannot {action} a consultation that is {c.status}")


async def start(db: Db, consultation_id: str, by: int | None) -> Consultation:
    """`waiting` → `in_progress`, by the expert (`by` None: the platform)."""

    async def job(tx: Runner) -> Consultation:
        c = await _lock(tx, consultation_id)
        if by is not None and by != c.expert_id:
            raise Forbidden("only the expert may start the consultation")
        _expect(c, WAITING, "start")
        now = _now()
        ends = now + timedelta(minutes=c.duration_minutes)
        started = await _set(tx, c.id, {"status": IN_PROGRESS, "started_at": iso(now), "ends_at": iso(ends)})
        await _tell(tx, "consultation.started", started)
        return started

    return await db.write(job)


async def end(db: Db, consultation_id: str, by: int | None, reason: str) -> Consultation:
    """`in_progress` → `completed`, by the expert (`by` None: the platform)."""

    async def job(tx: Runner) -> Consultation:
        c = await _lock(tx, consultation_id)
        if by is not None and by != c.expert_id:
            raise Forbidden("only the expert may end the consultation")
        _expect(c, IN_PROGRESS, "end")
        ended = await _set(tx, c.id, {"status": COMPLETED, "ended_at": iso(_now()), "end_reason": reason})
        await _tell(tx, "consultation.ended", ended)
        return ended

    return await db.write(job)


async def cancel(db: Db, consultation_id: str, by: int | None, reason: str | None) -> Consultation:
    """`waiting` → `cancelled`, by either participant (`by` None: the platform)."""

    async def job(tx: Runner) -> Consultation:
        c = await _lock(tx, consultation_id)
        if by is not None and c.role_of(by) is None:
            raise Forbidden("only a participant may cancel the consultation")
        _expect(c, WAITING, "cancel")
        cancelled = await _set(tx, c.id, {"status": CANCELLED, "ended_at": iso(_now()), "end_reason": reason})
        # Over before it began: `consultation.ended` with status `cancelled` (docs/webhooks.md).
        await _tell(tx, "consultation.ended", cancelled)
        return cancelled

    return await db.write(job)


async def end_due(db: Db, reason: str = "time_up") -> list[Consultation]:
    """End every consultation whose `ends_at` has passed."""
    due = await db.fetch_one(
        "SELECT 1 FROM consultations WHERE status = ? AND ends_at <= ? LIMIT 1", (IN_PROGRESS, iso(_now()))
    )
    if due is None:
        return []  # the usual tick: no write transaction for nothing

    async def job(tx: Runner) -> list[Consultation]:
        now = iso(_now())
        # One conditional statement: an extension accepted meanwhile holds the
        # row, and this re-reads `ends_at` after it.
        rows = await tx.fetch_all(
            f"UPDATE consultations SET status = ?, ended_at = ?, end_reason = ? "
            f"WHERE status = ? AND ends_at <= ? RETURNING {COLUMNS}",
            (COMPLETED, now, reason, IN_PROGRESS, now),
        )
        ended = [_consultation(row) for row in rows]
        for c in ended:
            await _tell(tx, "consultation.ended", c)
        return ended

    return await db.write(job)


async def request_extension(db: Db, consultation_id: str, by: int, minutes: int) -> Extension:
    async def job(tx: Runner) -> Extension:
        c = await _lock(tx, consultation_id)
        if c.role_of(by) is None:
            raise Forbidden("only a participant may ask for an extension")
        _expect(c, IN_PROGRESS, "extend")
        pending = await tx.fetch_one(
            "SELECT id FROM consultation_extensions WHERE consultation_id = ? AND status = ?", (c.id, OPEN)
        )
        if pending is not None:
            raise Conflict(f"extension request {pending[0]} is still open")
        row = await tx.fetch_one(
            f"INSERT INTO consultation_extensions ({EXTENSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, NULL) "
            f"RETURNING {EXTENSION_COLUMNS}",
            (new_id(), c.id, by, minutes, OPEN, iso(_now())),
        )
        assert row is not None
        return _extension(row)

    return await db.write(job)


async def respond_extension(
    db: Db, consultation_id: str, request_id: str, by: int, accept: bool
) -> tuple[Extension, Consultation]:
    """Accept (push `ends_at` back) or reject an open request; only the other participant may."""

    async def job(tx: Runner) -> tuple[Extension, Consultation]:
        c = await _lock(tx, consultation_id)
        row = await tx.fetch_one(
            f"SELECT {EXTENSION_COLUMNS} FROM consultation_extensions WHERE id = ? AND consultation_id = ?",
            (request_id, c.id),
        )
        if row is None:
            raise NotFound(f"extension request {request_id} not found")
        ext = _extension(row)
        if c.role_of(by) is None or by == ext.requested_by:
            raise Forbidden("only the other participant may answer an extension request")
        if ext.status != OPEN:
            raise Conflict(f"extension request {request_id} is already {ext.status}")
        _expect(c, IN_PROGRESS, "extend")
        answered = iso(_now())
        status = ACCEPTED if accept else REJECTED
        row = await tx.fetch_one(
            f"UPDATE consultation_extensions SET status = ?, answered_at = ? WHERE id = ? "
            f"RETURNING {EXTENSION_COLUMNS}",
            (status, answered, ext.id),
        )
        assert row is not None
        if accept:
            assert c.ends_at is not None
            ends = iso(parse(c.ends_at) + timedelta(minutes=ext.duration_minutes))
            c = await _set(tx, c.id, {"ends_at": ends, "duration_minutes": c.duration_minutes + ext.duration_minutes})
            extension = {"id": ext.id, "requested_by": ext.requested_by, "duration_minutes": ext.duration_minutes}
            await _tell(tx, "consultation.extended", c, extension=extension)
        return _extension(row), c

    return await db.write(job)


def _now() -> datetime:
    return datetime.now(UTC)
