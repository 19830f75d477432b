"""`message.unread` webhooks: a room's messages for members who are offline
(no socket open on any process, any channel), coalesced per (user, room).

The window is chat notifications' own (`ChatNotices`, events/node/chat_notices.py)
over `WEBHOOK_UNREAD_WINDOW_SECONDS`: the first message of a quiet room is
told at once, the ones that follow within the window together at its end, so
each (user, room) gets at most one event per window, with how many messages
it missed and the latest of them. Who is offline is worked out when the window
is told, for all its messages at once. The events are written in a
transaction of their own; what a window gathered and had not yet written when
a process dies is lost (its messages are stored; only the nudge is).

Per process, as chat notifications are: senders of one room on two processes
make two events per window at most.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Protocol

from ...store import webhooks as store
from ...store.db import Db
from .chat_notices import ChatNotices, Window
from .presence import PresenceManager

log = logging.getLogger("realtime.webhooks")

WRITE_CHUNK = 100  # events per write


class Runtime(Protocol):
    """The Node's parts this uses (events/node/node.py; named here so the two do not import each other)."""

    db: Db
    presence: PresenceManager
    sockets: dict[int, set[Any]]

    async def online_users(self, user_ids: Iterable[int]) -> set[int]: ...


def unread_stream(user_id: int, room_id: str) -> str:
    return f"unread:{user_id}:{room_id}"


class UnreadWebhooks:
    def __init__(self, runtime: Runtime, window: float) -> None:
        self.rt = runtime
        self.windows = ChatNotices(window)

    def message_posted(self, room_id: str, message: dict[str, Any]) -> None:
        """After a new chat message is stored and published. Returns at once."""
        if self.rt.presence.rooms.away_now(room_id, int(message["sender"]["id"])) == []:
            return  # everybody has the room open here: nobody is offline
        self.windows.add(room_id, message, lambda window: self._tell(room_id, window))

    async def _tell(self, room_id: str, window: Window) -> int:
        rt = self.rt
        # Offline members are among those away from the room.
        away = await rt.presence.rooms.away(rt.db, room_id, 0)
        if not away:
            return 0
        try:
            online = await rt.online_users(away)
        except Exception as exc:  # noqa: BLE001 - Redis away: a nudge too many beats one missed
            log.warning("who is online elsewhere is unknown; counting this process only: %r", exc)
            online = {u for u in away if rt.sockets.get(u)}
        events = []
        for user_id in away:
            if user_id in online:
                continue
            count, latest = window.for_user(user_id)
            if latest is None:
                continue
            data = {"user_id": user_id, "room_id": room_id, "count": count, "message": latest}
            events.append(store.Event("message.unread", unread_stream(user_id, room_id), data))
        for start in range(0, len(events), WRITE_CHUNK):
            await store.enqueue_alone(rt.db, events[start : start + WRITE_CHUNK])
        return len(events)

    async def close(self) -> None:
        """On shutdown: tell what the windows gathered now."""
        await self.windows.close()
