"""Webhooks to the main backend: the Node's part that delivers them, and the
producers of the events no store change carries (docs/webhooks.md).

Every process runs a `Dispatcher` over the shared webhook outbox
(store/webhooks.py): it takes the lease on up to `CONCURRENCY` streams whose
head is due, POSTs each stream's next events (up to `BATCH_EVENTS`, one JSON
body, signed: webhooks.py at the top level), and deletes them on a 2xx. Any
other answer, a timeout or a connection error is a failed attempt: the batch
is tried again after a jittered exponential backoff (1 s doubling, at most
`WEBHOOK_BACKOFF_MAX_SECONDS`), and its events older than
`WEBHOOK_RETRY_WINDOW_SECONDS` are parked instead (kept in the table, counted
in the metrics). A 4xx is retried too: most often the receiver's
configuration (a secret, a route) is what is wrong, and it gets fixed.

At least once, in order per (url, stream): a stream's next batch is taken only
after its head is delivered or parked, and a lease outlives the longest
attempt (`WEBHOOK_TIMEOUT`, enforced over the whole request) by
`LEASE_MARGIN`, so a stream is never sent by two processes at once while
their clocks agree within that margin. The dispatcher looks at the outbox when
this process commits events, when a delivery ends, when a backoff it set is
over, and every `POLL_INTERVAL` (events other processes committed).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Iterable
from typing import Any, Protocol

import httpx

from ... import webhooks as signing
from ...settings import Settings, redacted_url
from ...store import webhooks as store
from ...store.db import Db, WebhookTargets, describe
from ...store.errors import StoreError
from . import redis_client
from .metrics import Metrics
from .presence import PresenceManager
from .webhook_presence import PresenceWebhooks
from .webhook_unread import UnreadWebhooks

log = logging.getLogger("realtime.webhooks")

CONCURRENCY = 8  # streams one process delivers at once
BATCH_EVENTS = 100  # events per POST at most
BATCH_BYTES = 1_000_000  # bytes of events per POST at most (one larger event goes alone)
POLL_INTERVAL = 1.0
COUNT_INTERVAL = 5.0  # seconds between counts of the outbox, for the metrics
LEASE_MARGIN = 30.0
BACKOFF_FIRST = 1.0
# The claim failed (the store away): try again after this, doubling, at most the cap.
CLAIM_BACKOFF, CLAIM_BACKOFF_CAP = 0.5, 5.0
# A delivery's outcome that could not be written is tried this often before the lease is left to lapse.
BOOK_ATTEMPTS = 5
STOP_GRACE = 2.0  # seconds shutdown waits for deliveries in flight before it cancels them
USER_AGENT = "realtime-webhooks/1"


def delivery_id(event_ids: Iterable[str]) -> str:
    """The same for every attempt of the same events."""
    return "dlv_" + hashlib.sha256("\n".join(event_ids).encode()).hexdigest()[:32]


def body_of(events: list[str]) -> bytes:
    return ('{"events":[' + ",".join(events) + "]}").encode()


class Dispatcher:
    def __init__(self, settings: Settings, db: Db, metrics: Metrics, *, sole: bool = False) -> None:
        """`sole`: this process holds the database alone (memory://), so any lease
        it finds at start-up is a killed predecessor's and is taken back at once,
        not after the lease's time."""
        assert settings.webhook_secret is not None, "settings.checked() requires it with WEBHOOK_URL"
        self.db = db
        self.sole = sole
        self.metrics = metrics
        self.urls = settings.webhook_urls
        self.secret = settings.webhook_secret.encode()
        self.timeout = settings.webhook_timeout
        self.window_ms = int(settings.webhook_retry_window * 1000)
        self.backoff_max = settings.webhook_backoff_max
        self.lease_ms = int((self.timeout + LEASE_MARGIN) * 1000)
        self.node = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.client: httpx.AsyncClient | None = None
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.inflight: dict[asyncio.Task[None], store.Batch] = {}
        self.stopping = False

    def start(self) -> None:
        # One client per process: its connections are kept alive between deliveries.
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=CONCURRENCY * 2, max_keepalive_connections=CONCURRENCY),
            headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"},
        )
        self.task = asyncio.create_task(self._run(), name="webhook-dispatcher")

    def wake(self) -> None:
        """Look at the outbox now (events committed here, a stream set free)."""
        self.wakeup.set()

    async def stop(self) -> None:
        self.stopping = True
        self.wake()
        if self.task is not None:
            # Let a claim in flight end: cancelled, its leases would still be taken, and wait out their time.
            await asyncio.wait({self.task}, timeout=STOP_GRACE)
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.inflight:
            await asyncio.wait(set(self.inflight), timeout=STOP_GRACE)
        late = dict(self.inflight)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(set(late))
            for batch in late.values():
                # Given back at once, not after the lease: another process sends them (again, maybe).
                with contextlib.suppress(Exception):
                    await store.release(self.db, self.node, batch)
        if self.client is not None:
            await self.client.aclose()

    async def _run(self) -> None:
        if self.sole:
            try:
                if taken := await store.release_all(self.db):
                    log.info("webhooks: %d lease(s) of a previous process taken back", taken)
            except StoreError as exc:  # the leases then lapse by themselves
                log.warning("webhooks: the previous process's leases stay until they lapse: %r", exc)
        failures = 0
        next_count = 0.0
        while not self.stopping:
            self.wakeup.clear()
            if time.monotonic() >= next_count:
                next_count = time.monotonic() + COUNT_INTERVAL
                await self._count()
            free = CONCURRENCY - len(self.inflight)
            if free > 0:
                try:
                    batches = await store.claim(
                        self.db, self.node, self.urls, self.lease_ms, free, BATCH_EVENTS, BATCH_BYTES
                    )
                except Exception as exc:  # noqa: BLE001 - the store away: try again after a backoff
                    failures += 1
                    level = logging.WARNING if failures == 1 else logging.DEBUG
                    log.log(level, "webhook outbox unreadable: %s", describe(exc))
                    await asyncio.sleep(min(CLAIM_BACKOFF_CAP, CLAIM_BACKOFF * 2 ** min(failures, 8)))
                    continue
                failures = 0
                if self.stopping:
                    # Claimed as shutdown began: given back untried.
                    for batch in batches:
                        with contextlib.suppress(Exception):
                            await store.release(self.db, self.node, batch)
                    return
                for batch in batches:
                    task = asyncio.create_task(self._deliver(batch), name="webhook-delivery")
                    self.inflight[task] = batch
                    task.add_done_callback(self._done)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), POLL_INTERVAL)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.inflight.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook delivery failed", exc_info=task.exception())
        self.wake()  # its stream is free, and a slot

    async def _count(self) -> None:
        try:
            counts = await store.counts(self.db)
        except Exception as exc:  # noqa: BLE001 - the metrics keep their last numbers
            log.debug("webhook outbox not counted: %s", describe(exc))
            return
        self.metrics.webhook_backlog.set(counts[store.PENDING])
        self.metrics.webhook_parked.set(counts[store.PARKED])

    async def _deliver(self, batch: store.Batch) -> None:
        assert self.client is not None
        body = body_of(batch.events)
        headers = signing.sign(self.secret, body, delivery_id(batch.event_ids))
        started = time.perf_counter()
        error = reason = None
        try:
            # The whole request, not each of its phases: the lease depends on it.
            async with asyncio.timeout(self.timeout):
                request = self.client.build_request("POST", batch.url, content=body, headers=headers)
                response = await self.client.send(request, stream=True)
                await response.aclose()  # the body of the answer is not read
            if not 200 <= response.status_code < 300:
                error, reason = f"HTTP {response.status_code}", f"http_{response.status_code // 100}xx"
        except (TimeoutError, httpx.TimeoutException):
            error, reason = f"no answer within {self.timeout:g}s", "timeout"
        except httpx.HTTPError as exc:
            error, reason = describe(exc), "connection"
        except Exception as exc:  # noqa: BLE001 - whatever else the client raises is a failed attempt too
            error, reason = describe(exc), "other"
        seconds = time.perf_counter() - started
        if error is None:
            self.metrics.webhook_delivered(len(batch.ids), seconds)
            kept = await self._book(lambda: store.delivered(self.db, self.node, batch))
            if kept is False:
                log.warning("webhook batch delivered after its lease lapsed: it may be delivered once more")
            return
        assert reason is not None
        self.metrics.webhook_failed(reason)
        delay = min(self.backoff_max, BACKOFF_FIRST * 2 ** min(batch.attempts, 30))
        delay *= random.uniform(0.5, 1.0)  # jitter: processes and streams do not retry in step
        now = store.now_ms()
        parked = await self._book(
            lambda: store.failed(self.db, self.node, batch, error, now + int(delay * 1000), now - self.window_ms)
        )
        level = logging.WARNING if batch.attempts == 0 or parked else logging.INFO
        log.log(
            level,
            "webhook to %s failed (%s), attempt %d of stream %s; %s",
            redacted_url(batch.url),
            error,
            batch.attempts + 1,
            batch.stream,
            f"{parked} event(s) parked" if parked else f"next in {delay:.1f}s",
        )
        if parked:
            self.metrics.webhook_parked_events.inc(parked)
        if not self.stopping:
            asyncio.get_running_loop().call_later(delay, self.wake)

    async def _book(self, write: Any) -> Any:
        """Write a delivery's outcome, tried again while the store is away; None
        when it never took it (the lease then lapses and the batch goes again)."""
        for attempt in range(BOOK_ATTEMPTS):
            try:
                return await write()
            except Exception as exc:  # noqa: BLE001 - the store away: try again, then leave it to the lease
                log.warning("webhook outcome not written (%s), attempt %d", describe(exc), attempt + 1)
                await asyncio.sleep(min(CLAIM_BACKOFF_CAP, CLAIM_BACKOFF * 2**attempt))
        return None


class Runtime(Protocol):
    """The Node's parts the webhooks use (events/node/node.py; named here so the two do not import each other)."""

    settings: Settings
    db: Db
    metrics: Metrics
    presence: PresenceManager
    sockets: dict[int, set[Any]]

    async def online_users(self, user_ids: Iterable[int]) -> set[int]: ...


class Webhooks:
    """The Node's webhooks: delivery, and the events no store change carries."""

    def __init__(self, runtime: Runtime) -> None:
        settings = runtime.settings
        self.db = runtime.db
        sole = not redis_client.uses_redis(settings)
        self.dispatcher = Dispatcher(settings, runtime.db, runtime.metrics, sole=sole)
        self.presence = PresenceWebhooks(runtime.db, runtime.online_users, settings.webhook_presence_debounce)
        self.unread = UnreadWebhooks(runtime, settings.webhook_unread_window)

    def start(self) -> None:
        # From now on the writer's transactions queue events, and wake the dispatcher when they commit.
        self.db.use_webhooks(WebhookTargets(self.dispatcher.urls, on_queued=self.dispatcher.wake))
        self.dispatcher.start()
        self.presence.start()
        log.info("webhooks on: %s", ", ".join(redacted_url(url) for url in self.dispatcher.urls))

    async def stop(self) -> None:
        """Before the store closes: the last unread windows are written, then deliveries end."""
        await self.unread.close()
        await self.presence.stop()
        await self.dispatcher.stop()

    # ---- what the Node calls -------------------------------------------------------

    def message_posted(self, room_id: str, message: dict[str, Any]) -> None:
        self.unread.message_posted(room_id, message)

    def sockets_changed(self, user_id: int) -> None:
        self.presence.changed(user_id)


def for_settings(runtime: Runtime) -> Webhooks | None:
    """The webhooks of a Node, or None with no `WEBHOOK_URL`."""
    return Webhooks(runtime) if runtime.settings.webhook_urls else None
