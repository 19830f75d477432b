"""The broker seam: what the hub (events/node/hub.py) needs of a broker, and
the in-process broker for one process (`BROKER_URL=memory://`).

broadcaster is dropped rather than used through its public API: the hub never
used its `Broadcast` (it loses a subscription when two sockets join a new
channel at once and gives every subscriber an unbounded queue), and its Redis
backend was replaced by events/node/redis_broker.py, whose listener survives
connection loss. What was left of it was an abstract base class and a
twenty-line memory queue; the Protocol below says more (a broker's health and
its gaps) and costs nothing.

A broker delivers `Event`s from the channels it was asked to subscribe. After
losing its link it re-subscribes, then yields a `GAP` event in order with the
messages, so the hub's `on_gap` refills every topic from the store before the
messages that follow it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import ClassVar, Protocol

# A pseudo-channel a broker yields after a reconnect: events may be missing.
# The NUL keeps it apart from every topic name.
GAP = "\x00gap"


@dataclass(frozen=True, slots=True)
class Event:
    channel: str
    message: str


class Broker(Protocol):
    # True: publishing is delivering, in this process only and without loss
    # (the hub then fans out in the publisher's stack and keeps no outbox).
    inline: ClassVar[bool] = False

    @property
    def problem(self) -> str | None:
        """Why messages may not flow right now (readiness, `realtime_broker_up`), or None."""
        return None

    async def connect(self) -> None: ...

    async def disconnect(self) -> None: ...

    async def subscribe(self, channel: str) -> None: ...

    async def unsubscribe(self, channel: str) -> None: ...

    async def publish(self, channel: str, message: str) -> None:
        """Raises when the broker did not take it (the outbox keeps persisted events)."""
        ...

    async def next_published(self) -> Event:
        """The next message of a subscribed channel, or `Event(GAP, "")` after a reconnect."""
        ...


def is_gap(event: Event) -> bool:
    return event.channel == GAP


class MemoryBroker:
    """One process's broker: a queue. It cannot fail, so it never reports a problem or a gap."""

    inline: ClassVar[bool] = True
    problem: None = None

    def __init__(self) -> None:
        self._subscribed: set[str] = set()
        self._published: asyncio.Queue[Event] = asyncio.Queue()

    async def connect(self) -> None:
        pass

    async def disconnect(self) -> None:
        pass

    async def subscribe(self, channel: str) -> None:
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)

    async def publish(self, channel: str, message: str) -> None:
        self._published.put_nowait(Event(channel, message))

    async def next_published(self) -> Event:
        while True:
            event = await self._published.get()
            if event.channel in self._subscribed:
                return event
