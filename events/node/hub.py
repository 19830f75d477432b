"""The per-process hub between the endpoints and the broker.

One broker subscription per topic per process, however many local sockets
follow the topic; one listener task reads the broker and fans each event out to
the local subscribers, whose frame text was serialized once by the publisher.

Topics named after a stream (`room:…`, `user:…`) carry `seq`. For those the hub
keeps the last seq it delivered and guarantees order and no gaps per process:
an event that arrives ahead of a missing one (another process committed first
but published later), or a broker reconnect (the backend reports `GAP`), makes
it read the missing events from the store before going on.

With a broker that can fail (Redis), local delivery never waits for it: the
publisher fans an event out to this process's subscribers in its own stack and
then publishes it, tagged with this hub's node id, so the listener drops the
copy that comes back. A persisted event the broker did not take stays in the
store's outbox (store/outbox.py) and the relay of any live process publishes
it after `RELAY_GRACE`, so a committed event reaches every process even if the
one that committed it dies.

The hub drives a broker (events/node/broker.py: the in-process one or
events/node/redis_broker.py) directly; the broker's gaps reach `on_gap`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol

from . import topics
from .broker import GAP, Broker, is_gap

log = logging.getLogger("realtime.bus")

__all__ = ["GAP", "Delivery", "Hub"]
# An outbox row this old is published by whichever relay claims it: the
# committing process confirms its own publishes well within it.
RELAY_GRACE = 3.0
# How often each process's relay looks for rows left behind.
RELAY_INTERVAL = 1.0
# Confirmations wait this long to be deleted together in one write.
CONFIRM_DELAY = 0.05
# How long a metrics scrape waits for the outbox's row count.
BACKLOG_TIMEOUT = 2.0
# Streams whose newest refused event is republished at once on reconnect
# (beyond that, the relay publishes after its grace).
MAX_UNSENT_STREAMS = 10_000
# Seconds before a refill the store failed is tried again, doubling up to the most.
REFILL_RETRY = 0.5
MAX_REFILL_RETRY = 5.0


class Delivery(NamedTuple):
    """One event for a topic's subscribers (a tuple: made twice per event, read once per socket)."""

    type: str
    seq: int  # 0: not a persisted event
    exclude: int  # a user id whose sockets skip it (the typist), 0: nobody
    frame: str
    data: bytes = b""  # `frame` encoded, once for every local recipient
    origin: str = ""  # the node id of the hub that published it (broker copies only)


def pack(d: Delivery, origin: str = "") -> str:
    return f"{origin}\t{d.type}\t{d.seq}\t{d.exclude}\t{d.frame}"


def unpack(message: str) -> Delivery:
    # Frames are JSON (no raw tab) or a user id; four fields: a sender without the origin field.
    parts = message.split("\t", 4)
    if len(parts) == 4:
        parts.insert(0, "")
    origin, type_, seq, exclude, frame = parts
    return Delivery(type_, int(seq), int(exclude), frame, b"", origin)


class Subscriber(Protocol):
    user_id: int

    def deliver(self, delivery: Delivery) -> None:
        """Take one event; must not block (queue it)."""

    def resync(self) -> None:
        """Too much was missed to replay: fetch a fresh snapshot."""


class StreamSource(Protocol):
    async def last_seq(self, stream: str) -> int: ...
    async def between(self, stream: str, after: int, upto: int | None) -> list[tuple[int, str]] | None:
        """Events in (after, upto], oldest first; None when too many to replay."""


# (stream, seq, frame) of an event the outbox still holds.
Pending = tuple[str, int, str]


class OutboxStore(Protocol):
    async def confirm(self, published: dict[str, int]) -> None:
        """The broker took each stream's events up to the given seq."""

    async def backlog(self) -> int: ...

    async def relay(self, grace_ms: int, publish: Callable[[list[Pending]], Awaitable[None]]) -> int:
        """Publish rows older than the grace and delete them; how many."""
        ...


is_stream = topics.carries_seq


class Topic:
    __slots__ = ("_order", "last_seq", "lock", "name", "subscribed", "subscribers")

    def __init__(self, name: str) -> None:
        self.name = name
        self.subscribers: set[Subscriber] = set()
        self.lock = asyncio.Lock()
        self.subscribed = False
        self.last_seq: int | None = None  # None: not a stream, or not yet known
        self._order: asyncio.Lock | None = None

    @property
    def order(self) -> asyncio.Lock:
        """Serialises refills with deliveries; made on the first gap only."""
        if self._order is None:
            self._order = asyncio.Lock()
        return self._order


class Hub:
    def __init__(
        self, backend: Broker, source: StreamSource, prefix: str = "", outbox: OutboxStore | None = None
    ) -> None:
        self.backend = backend
        self.source = source
        # Broker channels are `prefix + topic`: deployments (and test runs) that
        # share one Redis but not one store never hear each other.
        self.prefix = prefix
        self.topics: dict[str, Topic] = {}
        # With the in-process broker, publishing is delivering: an event is fanned
        # out in the publisher's stack, unless events are still queued before it
        # or it is ahead of one not yet published (then the listener orders them).
        self._inline = backend.inline
        self._queued = 0
        self._listener: asyncio.Task[None] | None = None
        # Tags what this hub publishes, so its listener skips the copies
        # it already delivered in the publisher's stack.
        self.node = secrets.token_hex(6)
        # The in-process broker cannot fail: no outbox rows, no relay.
        self.outbox = None if self._inline else outbox
        self._published: dict[str, int] = {}  # stream -> highest seq the broker took, to confirm
        # stream -> the newest persisted event the broker refused: published again as
        # soon as the broker is back, which makes every receiver refill the ones before
        # it from the store. The durable copy is the outbox; this only saves the grace.
        self._unsent: dict[str, Delivery] = {}
        self._retries: dict[str, asyncio.Task[None]] = {}  # refills the store failed, by topic
        self._stopped = False
        self._resender: asyncio.Task[None] | None = None
        self._confirmer: asyncio.Task[None] | None = None
        self._relay: asyncio.Task[None] | None = None
        self._relay_wake = asyncio.Event()
        self.backlog = 0  # outbox rows at the last `measure_backlog`
        self.publish_failures = 0
        self.on_publish_failure: Callable[[], None] | None = None
        # Called once per event fanned out: (topic, event, local recipients).
        self.on_fan_out: Callable[[str, Delivery, int], None] | None = None
        # Called after the broker came back (a GAP): what is not in the store, such as
        # `ctl` commands, may have been missed meanwhile.
        self.gap_listeners: list[Callable[[], None]] = []

    async def start(self) -> None:
        await self.backend.connect()
        self._listener = asyncio.create_task(self._listen(), name="hub-listener")
        if self.outbox is not None:
            self._relay = asyncio.create_task(self._relay_loop(), name="hub-outbox-relay")

    async def stop(self) -> None:
        self._stopped = True
        for task in (self._relay, self._resender, *self._retries.values()):
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
        if self._confirmer is not None and not self._confirmer.done():
            # Best effort: rows left unconfirmed are published again by a relay, and dropped by seq.
            await asyncio.wait([self._confirmer], timeout=BACKLOG_TIMEOUT)
            self._confirmer.cancel()
        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except asyncio.CancelledError:
                pass
        await self.backend.disconnect()

    @property
    def listening(self) -> bool:
        return self._listener is not None and not self._listener.done()

    @property
    def problem(self) -> str | None:
        """Why events may not reach other processes right now (readiness), or None."""
        problem = self.backend.problem
        if problem is not None:
            return problem
        if not self.listening:
            return "the hub's listener stopped"
        return None

    async def measure_backlog(self) -> int:
        """Outbox rows waiting to be published (0 without an outbox); also kept in `backlog`."""
        if self.outbox is not None:
            try:
                self.backlog = await asyncio.wait_for(self.outbox.backlog(), BACKLOG_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - a scrape must not fail with the store
                log.warning("could not count the outbox: %r", exc)
        return self.backlog

    async def join(self, name: str, subscriber: Subscriber) -> None:
        topic = self.topics.get(name)
        if topic is None:
            topic = self.topics[name] = Topic(name)
        # Registered before the first await, so a concurrent leave never drops the topic under us.
        topic.subscribers.add(subscriber)
        if topic.subscribed:
            return
        async with topic.lock:
            if topic.subscribed:
                return
            try:
                await self.backend.subscribe(self.prefix + name)
                if is_stream(name):
                    # Read after subscribing: anything committed later reaches us live.
                    baseline = await self.source.last_seq(name)
                    topic.last_seq = max(baseline, topic.last_seq or 0)
            except BaseException:
                topic.subscribers.discard(subscriber)
                raise
            topic.subscribed = True

    async def leave(self, name: str, subscriber: Subscriber) -> None:
        topic = self.topics.get(name)
        if topic is None:
            return
        topic.subscribers.discard(subscriber)
        if topic.subscribers:
            return
        async with topic.lock:
            if topic.subscribers or not topic.subscribed:
                return
            topic.subscribed = False
            topic.last_seq = None
            try:
                await self.backend.unsubscribe(self.prefix + name)
            except Exception as exc:  # noqa: BLE001 - the broker is gone; nothing to undo
                log.warning("unsubscribe %s failed: %r", name, exc)
        if not topic.subscribers and self.topics.get(name) is topic and not topic.subscribed:
            del self.topics[name]

    async def publish(self, name: str, delivery: Delivery) -> None:
        """Deliver one event to this process's subscribers and hand it to the broker.

        A persisted event the broker refuses stays in the outbox (a row the
        store wrote with it) and a relay publishes it once the broker is back;
        receivers drop copies they already have by seq. Ephemeral events
        (typing) reach only this process's subscribers while the broker is away.
        """
        if self._inline:
            if not self._queued and self._delivered_inline(name, delivery):
                return
            self._queued += 1
            try:
                await self.backend.publish(self.prefix + name, pack(delivery))
            except Exception as exc:  # noqa: BLE001 - never expected in process; the listener's count stays right
                self._queued -= 1
                self._failed(name, exc)
            return
        topic = self.topics.get(name)
        if topic is not None and topic.subscribed and not self._deliver_now(topic, delivery):
            try:
                await self._deliver_in_order(topic, delivery)
            except Exception:  # the store failed the refill: the next event refills again
                log.exception("hub failed to deliver on %s", name)
        try:
            await self.backend.publish(self.prefix + name, pack(delivery, self.node))
        except Exception as exc:  # noqa: BLE001 - a broker outage must not fail the request
            self._failed(name, exc)
            if delivery.seq and self.outbox is not None and is_stream(name):
                self._keep(name, delivery)
            return
        if delivery.seq and self.outbox is not None and is_stream(name):
            self._confirm(name, delivery.seq)

    def _failed(self, name: str, exc: Exception) -> None:
        self.publish_failures += 1
        if self.on_publish_failure is not None:
            self.on_publish_failure()
        log.warning("publish to %s failed: %r", name, exc)

    def _delivered_inline(self, name: str, d: Delivery) -> bool:
        """Fan an event out now, unless it is ahead of one not yet published
        (False: the listener puts it in order, refilling from the store)."""
        topic = self.topics.get(name)
        if topic is None or not topic.subscribed:
            # Nobody here follows it (a topic gets its last_seq and its
            # subscription together, with no await between them).
            return True
        if d.seq and topic.last_seq is not None:
            if d.seq <= topic.last_seq:
                return True  # already delivered
            if d.seq > topic.last_seq + 1:
                return False
            topic.last_seq = d.seq
        self._fan_out(topic, d)
        return True

    def _deliver_now(self, topic: Topic, d: Delivery) -> bool:
        """The fast path: fan out the next event in order (or drop one already
        delivered) with no await; False when it must wait for a refill."""
        if d.seq and topic.last_seq is not None:
            if d.seq <= topic.last_seq:
                return True
            if d.seq > topic.last_seq + 1:
                return False
            topic.last_seq = d.seq
        self._fan_out(topic, d)
        return True

    async def _deliver_in_order(self, topic: Topic, d: Delivery) -> None:
        """The slow path: refill what is missing before `d` from the store, under
        the topic's order lock, so the listener, publishers and the relay
        interleaving on one topic refill one at a time. The fast path may
        deliver the next seq while a refill reads: the refill then skips
        everything up to `last_seq`, so each seq still goes out once, in order."""
        async with topic.order:
            last = topic.last_seq
            if last is None or d.seq <= last:
                return
            if d.seq > last + 1:
                try:
                    await self._refill(topic, upto=d.seq - 1)
                except Exception as exc:  # noqa: BLE001 - the store is away: try again soon
                    # The event itself is committed: the next refill brings it too,
                    # without waiting for more traffic on a quiet topic.
                    log.warning("refill of %s failed (%r); trying again shortly", topic.name, exc)
                    self._refill_later(topic)
                    return
                if topic.last_seq is None or d.seq <= topic.last_seq:
                    return  # resynced instead, or left meanwhile
            topic.last_seq = d.seq
            self._fan_out(topic, d)

    def _refill_later(self, topic: Topic) -> None:
        retry = self._retries.get(topic.name)
        if retry is None or retry.done():
            self._retries[topic.name] = asyncio.create_task(self._retry_refill(topic), name="hub-refill-retry")

    async def _retry_refill(self, topic: Topic) -> None:
        delay = REFILL_RETRY
        while topic.subscribed and topic.last_seq is not None:
            await asyncio.sleep(delay)
            try:
                async with topic.order:
                    await self._refill(topic, upto=None)
            except Exception as exc:  # noqa: BLE001 - still away
                log.warning("refill of %s failed again (%r)", topic.name, exc)
                delay = min(delay * 2, MAX_REFILL_RETRY)
            else:
                break
        self._retries.pop(topic.name, None)

    # ---- the outbox: confirmations and the relay ----------------------------------

    def _keep(self, stream: str, d: Delivery) -> None:
        kept = self._unsent.get(stream)
        if kept is not None and kept.seq >= d.seq:
            return
        if kept is None and len(self._unsent) >= MAX_UNSENT_STREAMS:
            return  # the relay publishes it after the grace
        self._unsent[stream] = d

    async def _publish_unsent(self) -> None:
        unsent, self._unsent = self._unsent, {}
        names = list(unsent)
        outcomes = await asyncio.gather(
            *(self.backend.publish(self.prefix + name, pack(unsent[name], self.node)) for name in names),
            return_exceptions=True,
        )
        for name, outcome in zip(names, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self._keep(name, unsent[name])
            else:
                self._confirm(name, unsent[name].seq)

    def _confirm(self, stream: str, seq: int) -> None:
        if self._stopped:
            return  # a late publish at shutdown: a relay confirms its row later
        if seq > self._published.get(stream, 0):
            self._published[stream] = seq
        if self._confirmer is None or self._confirmer.done():
            self._confirmer = asyncio.create_task(self._flush_confirmed(), name="hub-outbox-confirm")

    async def _flush_confirmed(self) -> None:
        assert self.outbox is not None
        await asyncio.sleep(CONFIRM_DELAY)
        while self._published:
            batch, self._published = self._published, {}
            try:
                await self.outbox.confirm(batch)
            except Exception as exc:  # noqa: BLE001 - the rows stay; a relay publishes them again (dropped by seq)
                log.warning("could not confirm %d published streams: %r", len(batch), exc)

    async def _relay_loop(self) -> None:
        assert self.outbox is not None
        failing = False
        while True:
            try:
                await asyncio.wait_for(self._relay_wake.wait(), RELAY_INTERVAL)
            except TimeoutError:
                pass
            self._relay_wake.clear()
            if self.problem is not None:
                continue  # the broker is away: nothing could be published
            try:
                while await self.outbox.relay(int(RELAY_GRACE * 1000), self._republish):
                    pass
                failing = False
            except Exception as exc:  # noqa: BLE001 - try again next round; log once per streak
                if not failing:
                    log.warning("outbox relay failed: %r", exc)
                failing = True

    async def _republish(self, rows: list[Pending]) -> None:
        """Publish events left in the outbox (by this process or a dead one):
        to this process's subscribers, then to the broker. Raises if the
        broker refused any, so the rows are kept."""
        for stream, seq, frame in rows:
            d = Delivery("", seq, 0, frame)
            topic = self.topics.get(stream)
            if topic is not None and topic.subscribed and not self._deliver_now(topic, d):
                await self._deliver_in_order(topic, d)
        outcomes = await asyncio.gather(
            *(self.backend.publish(self.prefix + s, pack(Delivery("", q, 0, f), self.node)) for s, q, f in rows),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    def local_subscribers(self, name: str) -> int:
        topic = self.topics.get(name)
        return len(topic.subscribers) if topic else 0

    async def _listen(self) -> None:
        while True:
            event = await self.backend.next_published()
            try:
                if is_gap(event):
                    await self.on_gap()
                    continue
                if not event.channel.startswith(self.prefix):
                    continue
                topic = self.topics.get(event.channel[len(self.prefix) :])
                if topic is not None and topic.subscribed:
                    d = unpack(event.message)
                    if d.origin and d.origin == self.node and not self._inline:
                        continue  # delivered here when it was published
                    await self._receive(topic, d)
            except Exception:
                log.exception("hub failed to deliver on %s", event.channel)
            finally:
                if self._inline:
                    self._queued -= 1

    async def _receive(self, topic: Topic, d: Delivery) -> None:
        if not self._deliver_now(topic, d):
            await self._deliver_in_order(topic, d)

    async def _refill(self, topic: Topic, upto: int | None) -> None:
        after = topic.last_seq
        if after is None:
            return
        missed = await self.source.between(topic.name, after, upto)
        if missed is None:
            for subscriber in tuple(topic.subscribers):
                subscriber.resync()
            topic.last_seq = await self.source.last_seq(topic.name)
            return
        for seq, frame in missed:
            if topic.last_seq is not None and seq <= topic.last_seq:
                continue
            topic.last_seq = seq
            self._fan_out(topic, Delivery("", seq, 0, frame))

    async def on_gap(self) -> None:
        """The broker lost messages (a reconnect): refill every topic from the store."""
        if self._unsent and (self._resender is None or self._resender.done()):
            # Not awaited: the listener goes on with the refill meanwhile.
            self._resender = asyncio.create_task(self._publish_unsent(), name="hub-publish-unsent")
        log.info("broker reconnected: refilling %d topics from the store", len(self.topics))
        for topic in list(self.topics.values()):
            if topic.subscribed and topic.last_seq is not None:
                async with topic.order:
                    await self._refill(topic, upto=None)
        # What is left in the outbox too, as soon as its grace is over.
        self._relay_wake.set()
        for listener in self.gap_listeners:
            listener()

    def _fan_out(self, topic: Topic, d: Delivery) -> None:
        if not d.data:
            d = Delivery(d.type, d.seq, d.exclude, d.frame, d.frame.encode())
        exclude = d.exclude
        sent = 0
        for subscriber in tuple(topic.subscribers):
            if exclude and subscriber.user_id == exclude:
                continue
            subscriber.deliver(d)
            sent += 1
        if self.on_fan_out is not None:
            self.on_fan_out(topic.name, d, sent)
