"""Chat notifications coalesced per room: the messages of a window, told once.

A message into a room with away members used to write one notification and
one stream event per away member, per message: a member of a 10,000-member
room sending at the rate limit wrote a million rows in half a minute. Here the
first message of a quiet room is told at once (no added latency for the usual
case), and what follows is gathered and told at most once per window: one
write, one small row per away member, however many messages the window held.

The gathering is per process: with several processes a room's senders on two
of them make two writes per window (bounded by the number of processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("realtime.chat_notices")

# How long shutdown waits for the last windows to be written.
CLOSE_TIMEOUT = 10.0


@dataclass
class Window:
    """A room's messages since its last flush: counts, and the two latest
    messages from different senders (a user is never told of its own)."""

    total: int = 0
    by_sender: dict[int, int] = field(default_factory=dict)
    last: dict[str, Any] | None = None
    last_other: dict[str, Any] | None = None  # the latest one by someone else than `last`'s sender

    def add(self, message: dict[str, Any]) -> None:
        sender = int(message["sender"]["id"])
        self.total += 1
        self.by_sender[sender] = self.by_sender.get(sender, 0) + 1
        if self.last is not None and int(self.last["sender"]["id"]) != sender:
            self.last_other = self.last
        self.last = message

    def for_user(self, user_id: int) -> tuple[int, dict[str, Any] | None]:
        """How many of the window's messages are news to `user_id`, and the latest of them."""
        count = self.total - self.by_sender.get(user_id, 0)
        if count <= 0 or self.last is None:
            return 0, None
        if int(self.last["sender"]["id"]) != user_id:
            return count, self.last
        return count, self.last_other


Flush = Callable[[Window], Awaitable[None]]


class ChatNotices:
    def __init__(self, window: float = 1.0) -> None:
        self.window = window
        self.pending: dict[str, Window] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = asyncio.Event()

    def add(self, room_id: str, message: dict[str, Any], flush: Flush) -> None:
        """Count one message; the room's flusher tells it now or at the end of the window."""
        window = self.pending.get(room_id)
        if window is not None:
            window.add(message)
            return
        window = self.pending[room_id] = Window()
        window.add(message)
        # Not tied to the sender's socket, which may close right after sending.
        task = asyncio.ensure_future(self._run(room_id, flush))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, room_id: str, flush: Flush) -> None:
        try:
            while True:
                window = self.pending.get(room_id)
                if window is None or window.total == 0:
                    self.pending.pop(room_id, None)
                    return
                self.pending[room_id] = Window()
                try:
                    await flush(window)
                except Exception:
                    log.exception("chat notifications for room %s failed", room_id)
                if not self.closing.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.closing.wait(), self.window)
        finally:
            # Never leave a room gathering without a flusher (on cancellation
            # too; a normal return has just removed it, with no await since).
            self.pending.pop(room_id, None)

    async def close(self) -> None:
        """On shutdown: write what is gathered now rather than at the end of the window."""
        self.closing.set()
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=CLOSE_TIMEOUT)
