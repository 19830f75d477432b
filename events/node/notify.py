"""Notifying users from anywhere in the server: store, then publish on each
user's stream, and the platform's own triggers (reservations, chat).

The texts come from templates (notification_texts.py): Korean by default, like
the platform's client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Protocol

from ...store import notifications
from ...store.db import Db
from ...store.notifications import Created, Kind
from . import topics
from .chat_notices import ChatNotices, Window
from .hub import Delivery, Hub
from .notification_texts import NotificationTexts
from .presence import PresenceManager


class Runtime(Protocol):
    """The Node's parts a notification uses (events/node/node.py; named here so the two do not import each other)."""

    db: Db
    hub: Hub
    presence: PresenceManager
    chat_notices: ChatNotices
    texts: NotificationTexts


# Publishes in flight at once: a batch to 10,000 users must not open 10,000 broker requests.
PUBLISH_CONCURRENCY = 64
PREVIEW = 100
# Away members per write job of a chat notification window: small jobs keep
# the single writer free for other rooms (measured with bench/away_room.py:
# p99 round trip elsewhere 46 ms with 500, 19 ms with 100, 21 ms with 50).
WINDOW_WRITE = 100


async def notify(
    runtime: Runtime,
    user_ids: Iterable[int],
    type: Kind,  # the protocol's field name
    title: str,
    body: str,
    action_url: str | None = None,
) -> list[Created]:
    """Store one notification per user in one write, then send `new_notification`
    to every connection of each user on every process."""
    created = await notifications.create(runtime.db, user_ids, type, title, body, action_url)
    await publish(runtime, created)
    return created


async def publish(runtime: Runtime, created: list[Created]) -> None:
    hub = runtime.hub
    for start in range(0, len(created), PUBLISH_CONCURRENCY):
        await asyncio.gather(
            *(
                hub.publish(topics.user(c.user_id), Delivery(c.event, c.seq, 0, c.frame))
                for c in created[start : start + PUBLISH_CONCURRENCY]
            )
        )


# ---- the platform's own triggers ----------------------------------------------------


async def reservation_requested(runtime: Runtime, expert_id: int, request: dict[str, Any]) -> None:
    texts = runtime.texts
    when = f"{request['requested_date']} {request['requested_time']}"
    title = texts.render("reservation_requested_title")
    body = texts.render(
        "reservation_requested_body", client_name=request["client"]["name"], child_name=request["child_name"], when=when
    )
    await notify(runtime, [expert_id], "consultation", title, body)


async def reservation_answered(runtime: Runtime, request: dict[str, Any]) -> None:
    texts = runtime.texts
    when = f"{request['requested_date']} {request['requested_time']}"
    if request["status"] == "accepted":
        title = texts.render("reservation_accepted_title")
        body = texts.render("reservation_accepted_body", child_name=request["child_name"], when=when)
    else:
        title = texts.render("reservation_rejected_title")
        values = {"child_name": request["child_name"], "when": when}
        if request.get("reason"):
            body = texts.render("reservation_rejected_body_with_reason", **values, reason=request["reason"])
        else:
            body = texts.render("reservation_rejected_body", **values)
    await notify(runtime, [request["client"]["id"]], "consultation", title, body)


def chat_message(runtime: Runtime, room_id: str, message: dict[str, Any]) -> None:
    """After a chat message: notify the room's members, never the sender, who
    have no chat socket open on that room on any process. Returns at once; when
    this process already knows everybody is there (the busy case), it costs
    nothing more. Otherwise the message joins the room's coalescing window
    (`ChatNotices`): away members get one notification per room, updated in
    place while unread, written at most once per window."""
    sender_id = message["sender"]["id"]
    if runtime.presence.rooms.away_now(room_id, sender_id) == []:
        return
    runtime.chat_notices.add(room_id, message, lambda window: _chat_window(runtime, room_id, window))


async def _chat_window(runtime: Runtime, room_id: str, window: Window) -> int:
    """Who is away is worked out now, at the flush, for the whole window; returns how many were told."""
    away = await runtime.presence.rooms.away(runtime.db, room_id, 0)
    rendered: dict[int, tuple[str, str]] = {}  # per latest message: a window has at most two
    told = 0
    # In writes of a few hundred users each: other writes (a message in another
    # room) go between them instead of waiting behind one huge transaction,
    # and the loop gets the CPU back between them.
    for start in range(0, len(away), WINDOW_WRITE):
        notices = []
        for user_id in away[start : start + WINDOW_WRITE]:
            count, latest = window.for_user(user_id)
            if latest is None:
                continue
            text = rendered.get(id(latest))
            if text is None:
                title = runtime.texts.render("chat_message_title", sender_name=latest["sender"]["name"])
                text = rendered[id(latest)] = (title, _preview(runtime.texts, latest))
            notices.append(notifications.ChatNotice(user_id, count, *text))
        if notices:
            created = await notifications.coalesce_chat(runtime.db, room_id, notices)
            await publish(runtime, created)
            told += len(created)
    return told


def _preview(texts: NotificationTexts, message: dict[str, Any]) -> str:
    if message["message_type"] == "image":
        text = message["content"] or texts.render("chat_image_preview")
    elif message["message_type"] == "file":
        text = message["content"] or texts.render("chat_file_preview", file_name=message.get("file_name") or "")
    else:
        text = message["content"]
    return text if len(text) <= PREVIEW else text[: PREVIEW - 1] + "…"
