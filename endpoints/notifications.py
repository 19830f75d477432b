"""`/ws/notifications/` and `/ws/notifications/{user_id}/`: one user's notifications.

The socket follows the user's stream (`user:<id>`), so every change reaches
every connection of the user on every process, in seq order, and `?since=` /
`sync` resume after a gap. A `user_id` in the path must be the token's user:
anything else, a non-integer included, is refused with 4003 (it can only name
somebody else's notifications, never a missing resource).
"""

from __future__ import annotations

from ..events.node import topics
from ..events.protocol import notifications as frames
from ..events.protocol.frames import Sync
from ..store import notifications
from .base import FORBIDDEN, BaseEndpoint, Refused


class NotificationsEndpoint(BaseEndpoint):
    channel = "notifications"
    kinds = frames.NOTIFICATIONS

    async def authorize(self) -> None:
        path_user = self.scope["path_params"].get("user_id")
        if path_user is not None and path_user != str(self.user_id):
            raise Refused(FORBIDDEN, "these are not your notifications")
        self.stream = topics.user(self.user_id)
        self.topics = [self.stream]

    async def opened(self) -> None:
        await self.catch_up(self.since_param(), self.epoch_param())

    async def snapshot(self) -> int:
        listed, unread, last = await notifications.snapshot(self.rt.db, self.user_id, self.rt.settings.history_limit)
        self.out.push(frames.bulk_update(listed, unread, last, await self.stream_epoch()))
        return last

    # ---- frames ------------------------------------------------------------------

    async def handle_mark_read(self, frame: frames.MarkNotificationRead) -> None:
        read = notifications.mark_read(self.rt.db, self.user_id, frame.notification_id)
        # Already read: nothing changed, nothing to tell (the client counts reads down).
        await self.rt.commit(self.stream, "notification_read", read)

    async def handle_mark_all_read(self, frame: frames.MarkAllRead) -> None:
        read = notifications.mark_all_read(self.rt.db, self.user_id, self.rt.settings.history_limit)
        if await self.rt.commit(self.stream, "bulk_update", read) is not None:
            return
        # Nothing was unread: the other connections are current; answer this one.
        listed, unread, last = await notifications.snapshot(self.rt.db, self.user_id, self.rt.settings.history_limit)
        self.out.push(frames.bulk_update(listed, unread, last, await self.stream_epoch()))

    async def handle_sync(self, frame: Sync) -> None:
        await self.catch_up(frame.since, frame.epoch)
