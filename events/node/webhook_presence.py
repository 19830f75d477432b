"""`user.online` and `user.offline` webhooks, debounced, right across processes.

A user is online while it has a socket open (any channel) on any process:
this process's own registry, and with Redis every process's socket slots
(events/node/socket_slots.py). When a user's first socket here opens or its
last one closes (`changed`), the user is looked at again once
`WEBHOOK_PRESENCE_DEBOUNCE_SECONDS` passed with no further change here:
online or not then, and the store (`webhook_online`) records what the backend
was last told, so the event is written only when that differs, in the same
transaction as the record. A reload, or a move to another process, within the
debounce tells nothing; several processes looking at one user tell it once.

A process that dies tells nothing of its users: every process sweeps the
users recorded online now and then (`SWEEP_INTERVAL`; the first sweep one
debounce after start-up, so users that reconnect after a restart are not
told they left), and the ones with no socket anywhere (their dead process's
slots lapse after `SOCKET_LEASE`) go offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from ...store import webhooks as store
from ...store.db import Db

log = logging.getLogger("realtime.webhooks")

# Seconds between sweeps of the users recorded online.
SWEEP_INTERVAL = 30.0
# Users per write: a burst of connections does not make one long transaction.
WRITE_CHUNK = 100

Online = Callable[[Iterable[int]], Awaitable[set[int]]]


class PresenceWebhooks:
    def __init__(self, db: Db, online: Online, debounce: float, sweep_interval: float = SWEEP_INTERVAL) -> None:
        self.db = db
        self.online = online  # `Node.online_users`
        self.debounce = debounce
        self.sweep_interval = sweep_interval
        self.due: dict[int, float] = {}  # user -> when to look (monotonic)
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="webhook-presence")

    async def stop(self) -> None:
        # Changes still due are left to the other processes' sweeps, or the next start's.
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def changed(self, user_id: int) -> None:
        """A user's first socket in this process opened, or its last one closed."""
        if not self.due:
            self.wakeup.set()
        # Moved back on every change: the look comes after a quiet debounce.
        self.due.pop(user_id, None)
        self.due[user_id] = time.monotonic() + self.debounce

    async def _run(self) -> None:
        next_sweep = time.monotonic() + self.debounce
        while True:
            now = time.monotonic()
            ready = []
            # `due` is in the order of its deadlines: each change re-inserts at the end.
            for user_id, at in self.due.items():
                if at > now:
                    break
                ready.append(user_id)
            for user_id in ready:
                del self.due[user_id]
            if ready:
                await self._look(ready)
            if now >= next_sweep:
                await self._sweep()
                next_sweep = time.monotonic() + self.sweep_interval
            first = next(iter(self.due.values()), next_sweep)
            self.wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), max(0.0, min(first, next_sweep) - time.monotonic()))

    async def _look(self, users: list[int]) -> None:
        try:
            live = await self.online(users)
        except Exception as exc:  # noqa: BLE001 - Redis away: unknown is not offline; look again later
            log.warning("user presence unknown, looked at again later: %r", exc)
            self._later(users)
            return
        await self._record([u for u in users if u in live], [u for u in users if u not in live])

    async def _sweep(self) -> None:
        try:
            recorded = await store.announced_online(self.db)
            live = await self.online(recorded) if recorded else set()
        except Exception as exc:  # noqa: BLE001 - store or Redis away: the next sweep tries again
            log.warning("sweep of online users failed: %r", exc)
            return
        # A user with a look due is left to it.
        await self._record([], [u for u in recorded if u not in live and u not in self.due])

    async def _record(self, online: list[int], offline: list[int]) -> None:
        changes = [(u, True) for u in online] + [(u, False) for u in offline]
        for start in range(0, len(changes), WRITE_CHUNK):
            chunk = changes[start : start + WRITE_CHUNK]
            came, went = [u for u, up in chunk if up], [u for u, up in chunk if not up]
            try:
                await store.record_presence(self.db, came, went)
            except Exception as exc:  # noqa: BLE001 - the store away: nothing recorded, look again later
                log.warning("user presence not recorded, looked at again later: %r", exc)
                self._later([u for u, _ in chunk])

    def _later(self, users: list[int]) -> None:
        for user_id in users:
            self.due.setdefault(user_id, time.monotonic() + self.debounce)
