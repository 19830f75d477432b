"""Reservation requests from clients to an expert, and the messages between them.

A request lives `pending` → `accepted` | `rejected` | `cancelled`. Requests and
messages are all kept, so a reconnecting socket gets its state back whole.
Both take `seq` from one counter per expert (`reservation:<expert_id>` in
`streams`, no events logged), so their order is exact even within one
millisecond. Records come out in the protocol's shapes, None fields left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from . import streams, webhooks
from .db import Db, Row, Runner, new_id, utc_now
from .errors import Conflict, NotFound

MAX_PENDING = 5  # pending requests one client may have with one expert
EXPERT_REQUESTS = 500  # pending requests in an expert's snapshot, oldest first
CLIENT_REQUESTS = 50  # a client's own requests in its snapshot (pending ones first)
THREADS = 50  # client threads in an expert's snapshot, most recently active
THREAD_MESSAGES = 50  # messages per thread in a snapshot, the latest

REQUEST_COLUMNS = (
    "id, expert_id, client_id, client_name, seq, child_name, requested_date, requested_time, "
    "concern_summary, status, reason, client_msg_id, created_at"
)
MESSAGE_COLUMNS = "id, expert_id, client_id, client_name, seq, sender, message, client_msg_id, created_at"

Sender = Literal["expert", "client"]


@dataclass(frozen=True, slots=True)
class Saved:
    record: dict[str, Any]
    new: bool  # False: a repeated client_msg_id, nothing was stored


def counter(expert_id: int) -> str:
    return f"reservation:{expert_id}"


def request_record(row: Row) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": row[0],
        "client": {"id": int(row[2]), "name": row[3]},
        "child_name": row[5],
        "requested_date": row[6],
        "requested_time": row[7],
        "concern_summary": row[8],
        "status": row[9],
        "created_at": row[12],
    }
    if row[10] is not None:
        record["reason"] = row[10]
    if row[11] is not None:
        record["client_msg_id"] = row[11]
    return record


def message_record(row: Row) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": row[0],
        "expert_id": int(row[1]),
        "client_id": int(row[2]),
        "client": {"id": int(row[2]), "name": row[3]},
        "sender": row[5],
        "message": row[6],
        "created_at": row[8],
    }
    if row[7] is not None:
        record["client_msg_id"] = row[7]
    return record


async def create_request(
    db: Db,
    expert_id: int,
    client: dict[str, Any],
    child_name: str,
    requested_date: str,
    requested_time: str,
    concern_summary: str,
    client_msg_id: str | None = None,
) -> Saved:
    async def job(tx: Runner) -> Saved:
        if client_msg_id is not None:
            row = await tx.fetch_one(
                f"SELECT {REQUEST_COLUMNS} FROM reservation_requests "
                "WHERE expert_id = ? AND client_id = ? AND client_msg_id = ?",
                (expert_id, client["id"], client_msg_id),
            )
            if row is not None:
                return Saved(request_record(row), False)
        pending = await tx.fetch_one(
            "SELECT COUNT(*) FROM reservation_requests WHERE expert_id = ? AND client_id = ? AND status = 'pending'",
            (expert_id, client["id"]),
        )
        if pending is not None and int(pending[0]) >= MAX_PENDING:
            raise Conflict(f"at most {MAX_PENDING} pending requests with one expert: cancel one or wait for an answer")
        seq = await streams.next_seq(tx, counter(expert_id))
        row = (
            new_id(),
            expert_id,
            client["id"],
            client["name"],
            seq,
            child_name.strip(),
            requested_date,
            requested_time,
            concern_summary,
            "pending",
            None,
            client_msg_id,
            utc_now(),
        )
        await tx.execute(f"INSERT INTO reservation_requests ({REQUEST_COLUMNS}) VALUES ({', '.join('?' * 13)})", row)
        record = request_record(row)
        await _tell(tx, "reservation.requested", expert_id, record)
        return Saved(record, True)

    return await db.write(job)


async def answer(
    db: Db,
    expert_id: int,
    request_id: str,
    status: Literal["accepted", "rejected", "cancelled"],
    reason: str | None = None,
    client_id: int | None = None,
) -> dict[str, Any]:
    """Move a pending request to `status`. With `client_id`, only that client's
    request is found: another client's id is `not_found`, never `forbidden`, so
    ids reveal nothing."""

    async def job(tx: Runner) -> dict[str, Any]:
        # A no-op UPDATE, not a SELECT: it locks the row on PostgreSQL until the
        # transaction ends, so of two answers racing on two processes the second
        # sees the first's status (and its webhook event comes second).
        sql = (
            "UPDATE reservation_requests SET status = status WHERE id = ? AND expert_id = ?"
            + (" AND client_id = ?" if client_id is not None else "")
            + f" RETURNING {REQUEST_COLUMNS}"
        )
        params: tuple[Any, ...] = (request_id, expert_id) + ((client_id,) if client_id is not None else ())
        row = await tx.fetch_one(sql, params)
        if row is None:
            raise NotFound("no such reservation request")
        if row[9] != "pending":
            raise Conflict(f"the request is already {row[9]}")
        await tx.execute(
            "UPDATE reservation_requests SET status = ?, reason = ?, answered_at = ? WHERE id = ?",
            (status, reason, utc_now(), request_id),
        )
        record = request_record((*row[:9], status, reason, *row[11:]))
        await _tell(tx, f"reservation.{status}", expert_id, record)
        return record

    return await db.write(job)


async def _tell(tx: Runner, type_: str, expert_id: int, request: dict[str, Any]) -> None:
    """A `reservation.*` webhook event, ordered per request: its row is written
    (created) or locked (answered) by then."""
    if webhooks.on(tx):
        event = webhooks.Event(type_, f"reservation:{request['id']}", {"expert_id": expert_id, "request": request})
        await webhooks.enqueue(tx, [event])


async def post_message(
    db: Db,
    expert_id: int,
    client_id: int,
    sender: Sender,
    message: str,
    client_name: str | None = None,
    client_msg_id: str | None = None,
) -> Saved:
    """Store one message of the thread between the expert and a client. The expert writes only to
    clients who already wrote or asked (`not_found` otherwise); the client's
    name is then taken from that thread."""

    async def job(tx: Runner) -> Saved:
        if client_msg_id is not None:
            row = await tx.fetch_one(
                f"SELECT {MESSAGE_COLUMNS} FROM reservation_messages "
                "WHERE expert_id = ? AND client_id = ? AND sender = ? AND client_msg_id = ?",
                (expert_id, client_id, sender, client_msg_id),
            )
            if row is not None:
                return Saved(message_record(row), False)
        name = client_name if client_name is not None else await _thread_name(tx, expert_id, client_id)
        if name is None:
            raise NotFound("no conversation with this client: a client must write or request first")
        seq = await streams.next_seq(tx, counter(expert_id))
        row = (new_id(), expert_id, client_id, name, seq, sender, message, client_msg_id, utc_now())
        await tx.execute(f"INSERT INTO reservation_messages ({MESSAGE_COLUMNS}) VALUES ({', '.join('?' * 9)})", row)
        return Saved(message_record(row), True)

    return await db.write(job)


async def _thread_name(tx: Runner, expert_id: int, client_id: int) -> str | None:
    for table in ("reservation_messages", "reservation_requests"):
        row = await tx.fetch_one(
            f"SELECT client_name FROM {table} WHERE expert_id = ? AND client_id = ? ORDER BY seq DESC LIMIT 1",
            (expert_id, client_id),
        )
        if row is not None:
            return str(row[0])
    return None


async def expert_state(db: Db, expert_id: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Pending requests (oldest first) and the latest messages of the most recently active threads."""
    requests = await db.fetch_all(
        f"SELECT {REQUEST_COLUMNS} FROM reservation_requests WHERE expert_id = ? AND status = 'pending' "
        "ORDER BY seq LIMIT ?",
        (expert_id, EXPERT_REQUESTS),
    )
    messages = await db.fetch_all(
        f"SELECT {MESSAGE_COLUMNS} FROM ("
        f"  SELECT {MESSAGE_COLUMNS}, ROW_NUMBER() OVER (PARTITION BY client_id ORDER BY seq DESC) AS n"
        "   FROM reservation_messages WHERE expert_id = ? AND client_id IN ("
        "     SELECT client_id FROM reservation_messages WHERE expert_id = ?"
        "     GROUP BY client_id ORDER BY MAX(seq) DESC LIMIT ?)"
        ") recent WHERE n <= ? ORDER BY seq",
        (expert_id, expert_id, THREADS, THREAD_MESSAGES),
    )
    return [request_record(r) for r in requests], [message_record(r) for r in messages]


async def client_state(db: Db, expert_id: int, client_id: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The client's own requests and its own thread with this expert, oldest first."""
    requests = await db.fetch_all(
        f"SELECT {REQUEST_COLUMNS} FROM reservation_requests WHERE expert_id = ? AND client_id = ? "
        "ORDER BY CASE WHEN status = 'pending' THEN 0 ELSE 1 END, seq DESC LIMIT ?",
        (expert_id, client_id, CLIENT_REQUESTS),
    )
    messages = await db.fetch_all(
        f"SELECT {MESSAGE_COLUMNS} FROM reservation_messages WHERE expert_id = ? AND client_id = ? "
        "ORDER BY seq DESC LIMIT ?",
        (expert_id, client_id, THREAD_MESSAGES),
    )
    ordered = sorted(requests, key=lambda r: int(r[4]))
    return [request_record(r) for r in ordered], [message_record(r) for r in reversed(messages)]
