"""What the main backend may do without a socket, once for every caller: the
server API (endpoints/api.py and its siblings) and the Python API
(embedding.py) both call these, so a change made from Python reaches the
sockets exactly as one made over HTTP does.

Callers check their input first (the HTTP routes decode it into the structs of
endpoints/, the Python API converts into the same structs); each function
here then writes through the store and publishes through the Node, in that
order, and raises the store's errors (`NotFound`, `Conflict`, `AccessEnded`,
`StoreUnavailable`) for the caller to answer.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from ...store import consultations, messages, revocations, rooms, users
from ...store.consultations import Consultation
from ...store.db import new_id
from ...store.errors import NotFound
from . import consultation_rules, control, topics
from .node import Node

SYSTEM: dict[str, Any] = {"id": 0, "name": "System"}


# ---- users ---------------------------------------------------------------------------


async def put_user(rt: Node, user_id: int, name: str, role: str, profile_image: str | None) -> dict[str, Any]:
    """Create or update the profile the protocol shows for a user whose token carries none."""
    await users.upsert(rt.db, user_id, name, role, profile_image)
    user: dict[str, Any] = {"id": user_id, "name": name, "role": role, "profile_image": profile_image}
    return user


async def get_user(rt: Node, user_id: int) -> dict[str, Any] | None:
    stored = await users.get(rt.db, user_id)
    return None if stored is None else {"id": user_id, **stored}


async def disconnect_user(rt: Node, user_id: int, *, revoke: bool) -> int | None:
    """Close the user's sockets on every process. With `revoke`, their tokens
    issued up to now stop working too; returns that moment (ms), else None."""
    if not revoke:
        await control.disconnect(rt, user_id)
        return None
    before = await revocations.revoke(rt.db, user_id, int(time.time() * 1000))
    await control.revoke(rt, user_id, before)
    return before


# ---- rooms and members ------------------------------------------------------------


async def create_room(
    rt: Node, member_ids: list[int], room_id: str | None = None, consultation_id: str | None = None
) -> dict[str, Any]:
    room_id = room_id or new_id()
    await rooms.create(rt.db, room_id, member_ids, consultation_id)
    room: dict[str, Any] = {"id": room_id, "member_ids": sorted(set(member_ids))}
    if consultation_id:
        room["consultation_id"] = consultation_id
    return room


async def room_members(rt: Node, room_id: str) -> list[int]:
    if not await rooms.exists(rt.db, room_id):
        raise NotFound("no such room")
    return await rooms.member_ids(rt.db, room_id)


async def add_member(rt: Node, room_id: str, user_id: int) -> None:
    await rt.add_member(room_id, user_id)


async def remove_member(rt: Node, room_id: str, user_id: int) -> None:
    await rt.remove_member(room_id, user_id)
    # Committed first: a frame of theirs that gets past this is refused by the store.
    await control.end_access(rt, user_id, topics.chat_access(room_id))


# ---- messages ----------------------------------------------------------------------


async def post_message(
    rt: Node,
    room_id: str,
    content: str,
    *,
    user_id: int | None = None,
    sender: dict[str, Any] | None = None,
    message_type: str = "text",
    file_url: str | None = None,
    file_name: str | None = None,
    client_msg_id: str | None = None,
) -> messages.Posted:
    """A chat message from the backend, delivered as a member's would be. As a
    member (`user_id`: their stored profile; they must be in the room, else
    `AccessEnded`), as a given `sender` (`{id, name, profile_image?}`), or as
    the system (user id 0). A repeated `client_msg_id` returns the original."""
    if not await rooms.exists(rt.db, room_id):
        raise NotFound("no such room")
    if user_id is not None:
        stored = await users.get(rt.db, user_id)
        author: dict[str, Any] = {"id": user_id, "name": (stored and stored["name"]) or f"User {user_id}"}
        if stored and stored["profile_image"]:
            author["profile_image"] = stored["profile_image"]
    else:
        author = dict(sender or SYSTEM)
    return await rt.post_message(
        room_id,
        author,
        content,
        message_type,
        file_url,
        file_name,
        client_msg_id,
        from_member=user_id is not None,
    )


async def history(
    rt: Node, room_id: str, before_seq: int | None = None, limit: int = 50
) -> tuple[list[dict[str, Any]], bool]:
    """A room's messages before `before_seq` (the newest without it), oldest first, and whether older ones exist."""
    if not await rooms.exists(rt.db, room_id):
        raise NotFound("no such room")
    return await messages.history(rt.db, room_id, before_seq, limit)


# ---- presence ----------------------------------------------------------------------


async def room_presence(rt: Node, room_id: str) -> list[int]:
    """The room's members with a chat socket open on it, on any process."""
    members = await room_members(rt, room_id)
    present = await rt.presence.rooms.present(room_id, members)
    return sorted(present)


async def consultation_presence(rt: Node, consultation_id: str) -> list[dict[str, Any]]:
    """The consultation's announced participants, on any process, by the time they joined."""
    if await consultations.get(rt.db, consultation_id) is None:
        raise NotFound("no such consultation")
    return await rt.presence.consultations.participants(consultation_id)


def local_sockets(rt: Node, user_id: int) -> list[dict[str, Any]]:
    """The user's sockets open on this process: their channel and since when."""
    return sorted((s.describe() for s in rt.sockets.get(user_id, ())), key=_opened)


async def user_sockets(rt: Node, user_id: int) -> list[dict[str, Any]]:
    """The user's open sockets on every process (`{channel, access, opened_at}`),
    oldest first: this process's from its registry, the others' from their
    socket slots (with Redis; with memory:// there are no others)."""
    elsewhere = await rt.slots.elsewhere(user_id)
    return sorted([*local_sockets(rt, user_id), *elsewhere], key=_opened)


async def user_presence(rt: Node, user_id: int) -> dict[str, Any]:
    """Whether the user is online: how many sockets they have open on every process, and on which channels."""
    sockets = await user_sockets(rt, user_id)
    channels = sorted({s["channel"] for s in sockets if s["channel"] is not None})
    return {"user_id": user_id, "online": bool(sockets), "sockets": len(sockets), "channels": channels}


def _opened(socket: dict[str, Any]) -> tuple[float, str]:
    return (socket["opened_at"] or 0.0, socket["channel"] or "")


# ---- consultations --------------------------------------------------------------------


async def create_consultation(
    rt: Node,
    expert_id: int,
    client_id: int,
    *,
    consultation_id: str | None = None,
    scheduled_start: datetime | None = None,
    duration_minutes: int = consultations.DEFAULT_MINUTES,
) -> Consultation:
    """Book a consultation (`waiting`). A `scheduled_start` without an offset is
    taken as UTC, as every time in this protocol."""
    if expert_id == client_id:
        raise ValueError("expert_id and client_id must be different users")
    scheduled = None
    if scheduled_start is not None:
        start = scheduled_start if scheduled_start.tzinfo else scheduled_start.replace(tzinfo=UTC)
        scheduled = consultations.iso(start)
    return await consultations.create(
        rt.db, consultation_id or new_id(), expert_id, client_id, scheduled, duration_minutes
    )


async def get_consultation(rt: Node, consultation_id: str) -> Consultation:
    c = await consultations.get(rt.db, consultation_id)
    if c is None:
        raise NotFound("no such consultation")
    return c


async def start_consultation(rt: Node, consultation_id: str) -> Consultation:
    c = await consultations.start(rt.db, consultation_id, None)
    await consultation_rules.announce_started(rt, c)
    return c


async def end_consultation(rt: Node, consultation_id: str, reason: str | None = None) -> Consultation:
    c = await consultations.end(rt.db, consultation_id, None, reason or "ended_by_platform")
    await consultation_rules.announce_ended(rt, c)
    return c


async def cancel_consultation(rt: Node, consultation_id: str, reason: str | None = None) -> Consultation:
    c = await consultations.cancel(rt.db, consultation_id, None, reason)
    await consultation_rules.announce_cancelled(rt, c)
    return c
