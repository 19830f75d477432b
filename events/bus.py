"""The per-process hub between the endpoints and the broker.

One broker subscription per topic per process, however many local sockets
follow the topic; one listener task reads the broker and fans each event out to
the local subscribers, whose frame text was serialized once by the publisher.

Topics named after a stream (`room:…`, `user:…`) carry `seq`. For those the hub
keeps the last seq it delivered and guarantees order and no gaps per process:
an event that arrives ahead of a missing one (another process committed first
but published later), or a broker reconnect (the backend reports `GAP`), makes
it read the missing events from the store before going on.

broadcaster's `Broadcast` is not used for the fan-out: it loses a subscription
when two sockets join a new channel at once and gives every subscriber an
unbounded queue. The hub drives a `BroadcastBackend` directly instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from broadcaster._backends.base import BroadcastBackend
from broadcaster._backends.memory import MemoryBackend

log = logging.getLogger("realtime.bus")

# A pseudo-channel a broker backend emits after a reconnect: events may be
# missing. The NUL keeps it apart from every topic name.
GAP = "\x00gap"
# Persisted events kept for republishing while the broker refuses them.
MAX_UNSENT = 100_000


@dataclass(frozen=True, slots=True)
class Delivery:
    type: str
    seq: int  # 0: not a persisted event
    exclude: int  # a user id whose sockets skip it (the typist), 0: nobody
    frame: str
    data: bytes = b""  # `frame` encoded, once for every local recipient


def pack(d: Delivery) -> str:
    return f"{d.type}\t{d.seq}\t{d.exclude}\t{d.frame}"


def unpack(message: str) -> Delivery:
    type_, seq, exclude, frame = message.split("\t", 3)
    return Delivery(type_, int(seq), int(exclude), frame)


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


def is_stream(topic: str) -> bool:
    return topic.startswith(("room:", "user:"))


class Topic:
    __slots__ = ("last_seq", "lock", "name", "subscribed", "subscribers")

    def __init__(self, name: str) -> None:
        self.name = name
        self.subscribers: set[Subscriber] = set()
        self.lock = asyncio.Lock()
        self.subscribed = False
        self.last_seq: int | None = None  # None: not a stream, or not yet known


class Hub:
    def __init__(self, backend: BroadcastBackend, source: StreamSource, prefix: str = "") -> None:
        self.backend = backend
        self.source = source
        # Broker channels are `prefix + topic`: deployments (and test runs) that
        # share one Redis but not one store never hear each other.
        self.prefix = prefix
        self.topics: dict[str, Topic] = {}
        # With the in-process broker, publishing is delivering: an event is fanned
        # out in the publisher's stack, unless events are still queued before it
        # or it is ahead of one not yet published (then the listener orders them).
        self._inline = isinstance(backend, MemoryBackend)
        self._queued = 0
        self._listener: asyncio.Task[None] | None = None
        self._unsent: deque[tuple[str, Delivery]] = deque()
        self._republisher: asyncio.Task[None] | None = None
        self.publish_failures = 0
        self.on_publish_failure: Callable[[], None] | None = None
        # Called once per event fanned out: (topic, event, local recipients).
        self.on_fan_out: Callable[[str, Delivery, int], None] | None = None

    async def start(self) -> None:
        await self.backend.connect()
        self._listener = asyncio.create_task(self._listen(), name="hub-listener")

    async def stop(self) -> None:
        if self._republisher is not None:
            self._republisher.cancel()
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
        """Hand one event to the broker.

        A persisted event that cannot be published now is kept and published
        again until the broker takes it: it is committed, so every process must
        see it, even one that never noticed the broker was away (a dropped
        publishing connection gives the listeners no gap). Receivers drop the
        copies they already have by seq. Ephemeral events (typing) are dropped.
        """
        if self._inline:
            if not self._queued and self._delivered_inline(name, delivery):
                return
            self._queued += 1
        elif self._unsent:
            if delivery.seq:
                self._keep(name, delivery)
            return
        try:
            await self.backend.publish(self.prefix + name, pack(delivery))
        except Exception as exc:  # noqa: BLE001 - a broker outage must not fail the request
            self.publish_failures += 1
            if self.on_publish_failure is not None:
                self.on_publish_failure()
            log.warning("publish to %s failed: %r", name, exc)
            if delivery.seq:
                self._keep(name, delivery)

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

    def _keep(self, name: str, delivery: Delivery) -> None:
        if len(self._unsent) >= MAX_UNSENT:
            # Receivers still catch up from the store at their next gap or event.
            self._unsent.popleft()
        self._unsent.append((name, delivery))
        if self._republisher is None or self._republisher.done():
            self._republisher = asyncio.create_task(self._republish(), name="hub-republish")

    async def _republish(self) -> None:
        delay = 0.05
        while self._unsent:
            name, delivery = self._unsent[0]
            try:
                await self.backend.publish(self.prefix + name, pack(delivery))
            except Exception:  # noqa: BLE001 - still away: wait and try again
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self._unsent.popleft()
            delay = 0.05

    def local_subscribers(self, name: str) -> int:
        topic = self.topics.get(name)
        return len(topic.subscribers) if topic else 0

    async def _listen(self) -> None:
        while True:
            event = await self.backend.next_published()
            try:
                if event.channel == GAP:
                    await self._refill_all()
                    continue
                if not event.channel.startswith(self.prefix):
                    continue
                topic = self.topics.get(event.channel[len(self.prefix) :])
                if topic is not None and topic.subscribed:
                    await self._receive(topic, unpack(event.message))
            except Exception:
                log.exception("hub failed to deliver on %s", event.channel)
            finally:
                if self._inline:
                    self._queued -= 1

    async def _receive(self, topic: Topic, d: Delivery) -> None:
        if d.seq and topic.last_seq is not None:
            if d.seq <= topic.last_seq:
                return  # already delivered (refilled earlier)
            if d.seq > topic.last_seq + 1:
                await self._refill(topic, upto=d.seq - 1)
            topic.last_seq = d.seq
        self._fan_out(topic, d)

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

    async def _refill_all(self) -> None:
        log.info("broker reconnected: refilling %d topics from the store", len(self.topics))
        for topic in list(self.topics.values()):
            if topic.subscribed and topic.last_seq is not None:
                await self._refill(topic, upto=None)

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
