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

from collections import defaultdict
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ...settings import Settings
from ...store import messages, rooms, streams, users
from ...store.db import Db
from ...store.notifications import Created, Kind
from . import notify, topics
from .auth import Identity, TokenVerifier
from .chat_notices import ChatNotices
from .hub import Delivery, Hub
from .limits import TokenBucket
from .metrics import Metrics
from .presence import PresenceManager
from .redis_client import RedisClients
from .revocation import Revocations
from .session import SessionCookies
from .socket_slots import LocalSlots, SocketSlots


class Socket(Protocol):
    """What the Node needs of an open socket (endpoints/base.py is one); the Node imports no socket module."""

    user_id: int
    access: str | None

    def close_for(self, code: int, reason: str) -> None: ...


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
    # This app's Prometheus metrics (`GET /metrics`); create_app passes its own registry.
    metrics: Metrics = field(default_factory=Metrics)
    # The per-user socket limit across processes; the lifespan passes the one the broker calls for.
    slots: SocketSlots = field(default_factory=LocalSlots)
    # Revoked tokens, cached from the store.
    revocations: Revocations = field(default_factory=Revocations)
    # The WebSocket session cookie; None where it is off (see events/node/session.py).
    sessions: SessionCookies | None = None
    # The one Redis client factory of this process (presence, slots, tick locks); None with memory://.
    redis: RedisClients | None = None
    # Set by the shutdown drain (endpoints/drain.py): new sockets are refused, new frames answered `unavailable`.
    draining: bool = False
    # Frames whose handler is running (a store write and its echo in flight).
    handling: int = 0

    # ---- writing events: the only path from a change to every subscriber -----------

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
            stored = await users.get(self.db, identity.user_id)
        user: dict[str, Any] = {
            "id": identity.user_id,
            "name": identity.name or (stored and stored["name"]) or f"User {identity.user_id}",
            "role": identity.role or (stored and stored["role"]) or "client",
        }
        image = identity.profile_image or (stored and stored["profile_image"])
        if image:
            user["profile_image"] = image
        return user

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
