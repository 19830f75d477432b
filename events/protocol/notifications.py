"""Notification frames (`/ws/notifications/`): what a client sends, and the snapshot.

The other server frames (`new_notification`, `notification_read`, the
`bulk_update` after `mark_all_read`) are stream events built in
`store.notifications`.
"""

from __future__ import annotations

from typing import Any

from .frames import COMMON, Frame, Id, Sync
from .outbound import encode


class MarkNotificationRead(Frame):
    notification_id: Id


class MarkAllRead(Frame):
    pass


NOTIFICATIONS: dict[str, type[Frame]] = {
    **COMMON,
    "sync": Sync,
    "mark_read": MarkNotificationRead,
    "mark_all_read": MarkAllRead,
}


def bulk_update(notifications: list[dict[str, Any]], unread_count: int, last_seq: int, epoch: str) -> str:
    """The snapshot: newest first, exact at `last_seq` (resume with `?since=` that and `?epoch=` this)."""
    return encode(
        {
            "type": "bulk_update",
            "notifications": notifications,
            "unread_count": unread_count,
            "last_seq": last_seq,
            "epoch": epoch,
        }
    )
