"""The Node: the one object of a process that owns the messaging core, modelled
on Centrifuge's Node (and Phoenix's PubSub/Presence split). It holds the store
writer (`db`), the hub with its broker and outbox relay (`hub`), presence,
the streams, and the registry of this process's open sockets; the sockets, the
HTTP API and the Python API (embedding.py) write events through its methods
(`publish`, `commit`, `post_message`, `notify`) and nothing else writes and
publishes by hand.

`Runtime` is the same class under the name the endpoints, the tests and
`app.state.runtime` have always used."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ...settings import Settings
from ...store import messages, rooms, streams
from ...store.db import Db
from ...store.notifications import Created, Kind
from . import notify, topics
from .auth import Identity, TokenVerifier
from .chat_notices import ChatNotices
from .hub import Delivery, Hub, Topic
from .limits import TokenBucket
from .memberships import Memberships
from .metrics import Metrics
from .notification_texts import NotificationTexts
from .presence import PresenceManager
from .profiles import ProfileReads
from .redis_client import RedisClients
from .revocation import Revocations
from .session import SessionCookies
from .socket_slots import LocalSlots, SocketSlots
from .sweep import SocketSweep
from .webhooks import Webhooks

# Streams whose epoch is kept (`stream_epoch`); past that the cache starts over.
MAX_EPOCHS = 10_000


class Socket(Protocol):
    """What the Node needs of an open socket (endpoints/base.py is one); the Node imports no socket module."""

    user_id: int
    access: str | None

    def close_for(self, code: int, reason: str) -> None: ...

    def describe(self) -> dict[str, Any]: ...


class AddressLimit(Protocol):
    """The count of connections not yet accepted per client address (the guard's)."""

    counts: dict[str, int]

    def take(self, host: str) -> bool: ...

    def release(self, host: str) -> None: ...


class NoAddressLimit:
    """For a Node built without the guard's counter (tests, embedding): no limit."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def take(self, host: str) -> bool:
        return True

    def release(self, host: str) -> None:
        pass


@dataclass
class Node:
    settings: Settings
    db: Db
    hub: Hub
    verifier: TokenVerifier
    sockets: dict[int, set[Socket]] = field(default_factory=lambda: defaultdict(set))
    # One frame budget per user across their sockets in this process.
    user_buckets: dict[int, TokenBucket] = field(default_factory=dict)
    pending_auth: int = 0
    # Connections not yet accepted or authenticated, per client address
    # (MAX_PENDING_PER_IP): the connection guard and the endpoints share it;
    # the app factory passes the guard's counter.
    pending_per_address: AddressLimit = field(default_factory=NoAddressLimit)
    # The one presence manager (consultations and chat rooms); the lifespan passes the one the broker calls for.
    presence: PresenceManager = field(default_factory=PresenceManager)
    # Chat notifications gathered per room and window; the lifespan passes the configured window.
    chat_notices: ChatNotices = field(default_factory=ChatNotices)
    # The texts of the notifications the server writes itself; the lifespan passes the configured ones.
    texts: NotificationTexts = field(default_factory=NotificationTexts.default)
    # This app's Prometheus metrics (`GET /metrics`); create_app passes its own registry.
    metrics: Metrics = field(default_factory=Metrics)
    # The per-user socket limit across processes; the lifespan passes the one the broker calls for.
    slots: SocketSlots = field(default_factory=LocalSlots)
    # Revoked tokens, cached from the store.
    revocations: Revocations = field(default_factory=Revocations)
    # Room members, cached from the store for the connect path (see memberships.py).
    memberships: Memberships = field(default_factory=Memberships)
    # Stored profiles of sockets opening in the same turn, read by one statement (see profiles.py).
    profiles: ProfileReads = field(default_factory=ProfileReads)
    # Full collections paced by closed sockets (sweep.py), in a process the server owns; None leaves them to Python.
    sweep: SocketSweep | None = None
    # The WebSocket session cookie; None where it is off (see events/node/session.py).
    sessions: SessionCookies | None = None
    # The one Redis client factory of this process (presence, slots, tick locks); None with memory://.
    redis: RedisClients | None = None
    # Webhooks to the main backend (events/node/webhooks.py); None without WEBHOOK_URL.
    webhooks: Webhooks | None = None
    # Set by the shutdown drain (endpoints/drain.py): new sockets are refused, new frames answered `unavailable`.
    draining: bool = False
    # Frames whose handler is running (a store write and its echo in flight).
    handling: int = 0
    # Sockets authenticating, joining and catching up at once (endpoints/base.py): CONNECTS_AT_ONCE.
    admission: asyncio.Semaphore = field(init=False)
    # stream -> (the hub's topic when the epoch was read, the epoch): see `stream_epoch`.
    _epochs: dict[str, tuple[Topic, str]] = field(default_factory=dict)

    # ---- writing events: the only path from a change to every subscriber -----------

    def __post_init__(self) -> None:
        self.admission = asyncio.Semaphore(self.settings.connects_at_once)

    async def publish(self, stream: str, type_: str, frame: str, seq: int = 0, exclude: int = 0) -> None:
        """Send one event on a topic (`topics`): to this process's subscribers and,
        through the broker, every other's. `seq` is the committed position of a
        stream event (0: not persisted); `exclude` a user whose sockets skip it."""
        await self.hub.publish(stream, Delivery(type_, seq, exclude, frame))

    async def commit(self, stream: str, type_: str, write: Awaitable[tuple[int, str] | None]) -> int | None:
        """Store, then publish: `write` commits one stream event and returns its
        (seq, frame), or None when nothing changed (then nothing is sent)."""
        event = await write
        if event is None:
            return None
        seq, frame = event
        await self.publish(stream, type_, frame, seq)
        return seq

    async def post_message(
        self,
        room_id: str,
        sender: dict[str, Any],
        content: str,
        message_type: str = "text",
        file_url: str | None = None,
        file_name: str | None = None,
        client_msg_id: str | None = None,
        *,
        from_member: bool = False,
    ) -> messages.Posted:
        """A chat message, from a socket, an upload or the Python API: stored (a
        repeated `client_msg_id` stores and sends nothing), published on the
        room's stream, and the members away from the room notified, off the hot
        path and not tied to the caller (a sender may close right after sending)."""
        posted = await self.store_message(
            room_id, sender, content, message_type, file_url, file_name, client_msg_id, from_member=from_member
        )
        await self.announce_message(room_id, posted)
        return posted

    def store_message(
        self,
        room_id: str,
        sender: dict[str, Any],
        content: str,
        message_type: str = "text",
        file_url: str | None = None,
        file_name: str | None = None,
        client_msg_id: str | None = None,
        *,
        from_member: bool = False,
    ) -> Awaitable[messages.Posted]:
        """The first half of `post_message`, for a caller that must know the
        message is stored before it is sent (an upload keeps its file then);
        await the result."""
        return messages.post(
            self.db,
            room_id,
            sender,
            content,
            message_type,
            file_url,
            file_name,
            client_msg_id,
            from_member=from_member,
        )

    async def announce_message(self, room_id: str, posted: messages.Posted) -> None:
        """The second half of `post_message`: publish a new message and notify the members away."""
        stream = topics.chat(room_id)
        if posted.frame is not None:
            await self.publish(stream, "chat_message", posted.frame, posted.seq)
            notify.chat_message(self, room_id, posted.message)
            if self.webhooks is not None:
                self.webhooks.message_posted(room_id, posted.message)
            return
        # A retry of a message already stored. Its first publish may never have
        # happened (the commit's answer was lost, so the caller was told
        # `unavailable`): the stored event goes out again, and every socket
        # drops a seq it already has.
        stored = await streams.between(self.db, stream, posted.seq - 1, posted.seq)
        if stored:
            await self.publish(stream, "chat_message", stored[0][1], posted.seq)

    async def room_exists(self, room_id: str) -> bool:
        return await rooms.exists(self.db, room_id)

    async def add_member(self, room_id: str, user_id: int) -> None:
        """Stored, then every process's membership cache forgets the room (this one before returning)."""
        await rooms.add_member(self.db, room_id, user_id)
        await self._members_changed(room_id)

    async def remove_member(self, room_id: str, user_id: int) -> None:
        """Stored, then every process's membership cache forgets the room. The caller
        ends the user's access next (`control.end_access`), which closes their sockets."""
        await rooms.remove_member(self.db, room_id, user_id)
        await self._members_changed(room_id)

    async def _members_changed(self, room_id: str) -> None:
        self.memberships.forget(room_id)
        await self.publish(topics.CONTROL_TOPIC, "members", room_id)

    # ---- what this process knows of the streams it follows ---------------------------

    def stream_head(self, stream: str) -> int | None:
        """The last seq this process has delivered on a stream it follows (its hub
        reads the store's when it starts following one, and delivers every later
        event in order); None when no socket here follows the stream."""
        topic = self.hub.topics.get(stream)
        if topic is None or not topic.subscribed:
            return None
        return topic.last_seq

    async def stream_epoch(self, stream: str) -> str:
        """The stream's epoch (store/streams.py), read once while this process
        follows the stream: it never changes while the stream's row lives, and
        the row is not taken away under a stream that is being followed."""
        topic = self.hub.topics.get(stream)
        cached = self._epochs.get(stream)
        if cached is not None and topic is not None and cached[0] is topic and topic.subscribed:
            return cached[1]
        epoch = await streams.epoch(self.db, stream)
        if topic is not None and topic.subscribed and self.hub.topics.get(stream) is topic:
            if len(self._epochs) >= MAX_EPOCHS:
                self._epochs.clear()
            self._epochs[stream] = (topic, epoch)
        return epoch

    async def notify(
        self,
        user_ids: Iterable[int],
        type_: Kind,
        title: str,
        body: str,
        action_url: str | None = None,
    ) -> list[Created]:
        """Store one notification per user in one write, then `new_notification` on each user's stream."""
        return await notify.notify(self, user_ids, type_, title, body, action_url)

    async def profile(self, identity: Identity) -> dict[str, Any]:
        """The user as the protocol shows it: token claims first, then what the
        main backend told us (`PUT /api/users/{id}`), then a placeholder name."""
        stored = None
        if identity.name is None or identity.role is None:
            stored = await self.profiles.get(self.db, identity.user_id)
        user: dict[str, Any] = {
            "id": identity.user_id,
            "name": identity.name or (stored and stored["name"]) or f"User {identity.user_id}",
            "role": identity.role or (stored and stored["role"]) or "client",
        }
        image = identity.profile_image or (stored and stored["profile_image"])
        if image:
            user["profile_image"] = image
        return user

    async def online_users(self, user_ids: Iterable[int]) -> set[int]:
        """Those of `user_ids` with a socket open (any channel) on any process;
        with Redis, its errors are raised."""
        wanted = set(user_ids)
        here = {u for u in wanted if self.sockets.get(u)}
        elsewhere = wanted - here
        if not elsewhere:
            return here
        return here | await self.slots.online(elsewhere)

    def sockets_changed(self, user_id: int) -> None:
        """A user's first socket in this process opened, or its last one closed."""
        if self.webhooks is not None:
            self.webhooks.sockets_changed(user_id)

    def user_bucket(self, user_id: int) -> TokenBucket:
        bucket = self.user_buckets.get(user_id)
        if bucket is None:
            # Twice one socket's budget: a second tab works, a swarm of them does not.
            rate, burst = self.settings.rate_limit * 2, self.settings.rate_burst * 2
            bucket = self.user_buckets[user_id] = TokenBucket(rate, burst)
        return bucket

    def close_user(self, user_id: int, code: int, reason: str) -> int:
        """Close this process's sockets of one user; returns how many."""
        sockets = list(self.sockets.get(user_id, ()))
        for endpoint in sockets:
            endpoint.close_for(code, reason)
        return len(sockets)

    def close_access(self, user_id: int, access: str, code: int, reason: str) -> int:
        """Close this process's sockets of one user on one channel (`BaseEndpoint.access`)."""
        sockets = [s for s in self.sockets.get(user_id, ()) if s.access == access]
        for endpoint in sockets:
            endpoint.close_for(code, reason)
        return len(sockets)

    def open_sockets(self) -> int:
        return sum(len(s) for s in self.sockets.values())


# The name the endpoints, the tests and `app.state.runtime` have always used.
Runtime = Node
