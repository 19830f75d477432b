"""The background pruner: every `RETENTION_INTERVAL_SECONDS`, old stream events
and read notifications are deleted in small batches with pauses between, so
the store stays bounded without ever holding the writer for long."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from ...settings import Settings
from ...store import retention
from ...store.db import Db

log = logging.getLogger("realtime.retention")

# Rows per statement, and the pause after each full batch: at most about
# BATCH / PAUSE rows a second, in statements of a few milliseconds.
BATCH = 500
PAUSE = 0.05


class Pruner:
    def __init__(self, settings: Settings, db: Db) -> None:
        self.settings = settings
        self.db = db
        self.task: asyncio.Task[None] | None = None
        self.passes = 0
        self.pruned = 0

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="retention-pruner")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.retention_interval)
            try:
                counts = await self.prune()
            except Exception:  # a store outage: try again next interval
                log.exception("retention pass failed")
                continue
            if any(counts.values()):
                log.info("retention pass: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))

    async def prune(self) -> dict[str, int]:
        """One full pass; rows touched by kind."""
        s = self.settings
        counts = {
            "untimed events stamped": await self._drain(lambda: retention.stamp_untimed_events(self.db, BATCH)),
            "old events": await self._drain(
                lambda: retention.prune_old_events(self.db, retention.cutoff(s.stream_retention_seconds), BATCH)
            ),
            "events over the per-stream count": await self._excess(),
            "read notifications": await self._drain(
                lambda: retention.prune_read_notifications(
                    self.db, retention.cutoff(s.read_notification_retention_seconds), BATCH
                )
            ),
        }
        self.passes += 1
        self.pruned += sum(counts.values())
        return counts

    async def _drain(self, step: Callable[[], Awaitable[int]]) -> int:
        """Run `step` until a batch comes back short, pausing after each full one."""
        total = 0
        while True:
            done = await step()
            if done == retention.BUSY:
                return total  # another node is pruning: its pass covers this one
            total += done
            if done < BATCH:
                return total
            await asyncio.sleep(PAUSE)

    async def _excess(self) -> int:
        keep, total, after = self.settings.stream_retention_events, 0, ""
        while True:
            page = await retention.streams_over(self.db, keep, after)
            for stream, last_seq in page:
                total += await self._drain(
                    lambda stream=stream, last_seq=last_seq: retention.prune_excess_events(  # type: ignore[misc]
                        self.db, stream, last_seq, keep, BATCH
                    )
                )
            if len(page) < retention.STREAM_PAGE:
                return total
            after = page[-1][0]
