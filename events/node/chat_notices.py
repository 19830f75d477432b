"""Chat notifications coalesced per room: the messages of a window, told once.

A message into a room with away members used to write one notification and
one stream event per away member, per message: a member of a 10,000-member
room sending at the rate limit wrote a million rows in half a minute. Here the
first message of a quiet room is told at once (no added latency for the usual
case), and what follows is gathered and told at most once per window: one
write, one small row per away member, however many messages the window held.

Windows also stretch with the work they cause: every member told costs a row
and an event, so a process writes at most about `MEMBER_WRITES_PER_SECOND`
of them a second across its rooms (a 10,000-member room flushes every 2.5 s
rather than every second). That bound is what keeps one huge room from
slowing every other room's writes.

The gathering is per process: with several processes a room's senders on two
of them make two writes per window (bounded by the number of processes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ...store.errors import StoreUnavailable

log = logging.getLogger("realtime.chat_notices")

# How long shutdown waits for the last windows to be written.
CLOSE_TIMEOUT = 10.0
# Members told per second, across this process's rooms, past which windows
# stretch. Measured (bench/away_room.py): a 10,000-member room flushed every
# second took an unrelated room's p99 round trip to 7x idle, every 3 s to 2x.
MEMBER_WRITES_PER_SECOND = 4000.0


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

    def absorb(self, older: Window) -> None:
        """Take back an older window whose flush failed: its messages come before this one's."""
        self.total += older.total
        for sender, count in older.by_sender.items():
            self.by_sender[sender] = self.by_sender.get(sender, 0) + count
        if self.last is None:
            self.last, self.last_other = older.last, older.last_other
        elif self.last_other is None:
            newest_sender = int(self.last["sender"]["id"])
            for message in (older.last, older.last_other):
                if message is not None and int(message["sender"]["id"]) != newest_sender:
                    self.last_other = message
                    break

    def for_user(self, user_id: int) -> tuple[int, dict[str, Any] | None]:
        """How many of the window's messages are news to `user_id`, and the latest of them."""
        count = self.total - self.by_sender.get(user_id, 0)
        if count <= 0 or self.last is None:
            return 0, None
        if int(self.last["sender"]["id"]) != user_id:
            return count, self.last
        return count, self.last_other


# Tells a window's messages; returns how many members it told.
Flush = Callable[[Window], Awaitable[int]]


class ChatNotices:
    def __init__(self, window: float = 1.0) -> None:
        self.window = window
        self.pending: dict[str, Window] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = asyncio.Event()
        self._closing: asyncio.Future[None] | None = None
        # When the members told so far are paid for at MEMBER_WRITES_PER_SECOND.
        self.paid_until = 0.0

    def add(self, room_id: str, message: dict[str, Any], flush: Flush) -> None:
        """Count one message; the room's flusher tells it now or at the end of the window."""
        if self.closing.is_set():
            return  # shutting down: the store is going too
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
                told = 0
                written = False
                try:
                    told = await flush(window)
                    written = True
                except StoreUnavailable as exc:
                    if self.closing.is_set():
                        log.warning("chat notifications for room %s not written at shutdown: %s", room_id, exc)
                        return
                    # Told with the next window instead: counts only, so it stays small.
                    log.warning("chat notifications for room %s wait for the store: %s", room_id, exc)
                    self.pending[room_id].absorb(window)
                except Exception:
                    log.exception("chat notifications for room %s failed", room_id)
                if written and not told:
                    # Nobody was away: nothing written to pace, nothing to gather more
                    # into; the messages that came meanwhile (if any) go at once.
                    continue
                now = time.monotonic()
                self.paid_until = max(now, self.paid_until) + told / MEMBER_WRITES_PER_SECOND
                if not self.closing.is_set():
                    # Until the window ends, or shutdown (which writes what is gathered now).
                    await asyncio.wait((self._closed(),), timeout=max(self.window, self.paid_until - now))
        finally:
            # Never leave a room gathering without a flusher (on cancellation
            # too; a normal return has just removed it, with no await since).
            self.pending.pop(room_id, None)

    def _closed(self) -> asyncio.Future[None]:
        """Done at shutdown: what a window's wait also ends on (one future for every room)."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_future()
            if self.closing.is_set():
                self._closing.set_result(None)
        return self._closing

    async def close(self) -> None:
        """On shutdown: write what is gathered now rather than at the end of the window."""
        self.closing.set()
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(None)
        if self.tasks:
            _, late = await asyncio.wait(set(self.tasks), timeout=CLOSE_TIMEOUT)
            for task in late:
                task.cancel()
