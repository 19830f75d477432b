"""What every endpoint of one app shares: settings, store, hub, token verifier,
and the registry of this process's open sockets."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Protocol

from events.node.auth import Identity, TokenVerifier
from events.node.chat_notices import ChatNotices
from events.node.chat_presence import ChatPresence
from events.node.hub import Hub
from events.node.limits import TokenBucket
from events.node.metrics import Metrics
from events.node.presence import MemoryPresence, Presence
from events.node.revocation import Revocations
from events.node.session import SessionCookies
from events.node.socket_slots import LocalSlots, SocketSlots
from settings import Settings
from store import users
from store.db import Db


class Socket(Protocol):
    """What the Node needs of an open socket (endpoints/base.py is one); the Node imports no socket module."""

    user_id: int
    access: str

    def close_for(self, code: int, reason: str) -> None: ...


class AddressLimit(Protocol):
    """The count of connections not yet accepted per client address (the guard's)."""

    counts: dict[str, int]

    def take(self, host: str) -> bool: ...

    def release(self, host: str) -> None: ...


class NoAddressLimit:
    """For a Node built without the guard's counter (tests, embedding): no limit."""

    counts: dict[str, int] = {}

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
    # (MAX_PENDING_PER_IP): the connection guard and the endpoints share it.
    # The app factory passes the guard's counter (MAX_PENDING_PER_IP).
    pending_per_address: AddressLimit = field(default_factory=NoAddressLimit)
    # Consultation presence; the lifespan passes the one the broker calls for.
    presence: Presence = field(default_factory=MemoryPresence)
    # Who has a chat socket open on which room (chat notifications); the lifespan passes it.
    chat_presence: ChatPresence = field(default_factory=ChatPresence)
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
    # Set by the shutdown drain (endpoints/drain.py): new sockets are refused, new frames answered `unavailable`.
    draining: bool = False
    # Frames whose handler is running (a store write and its echo in flight).
    handling: int = 0

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
