"""What every endpoint of one app shares: settings, store, hub, token verifier,
and the registry of this process's open sockets."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from endpoints.auth import Identity, TokenVerifier
from events.bus import Hub
from settings import Settings
from store import users
from store.db import Db

if TYPE_CHECKING:
    from endpoints.base import BaseEndpoint


@dataclass
class Runtime:
    settings: Settings
    db: Db
    hub: Hub
    verifier: TokenVerifier
    sockets: dict[int, set[BaseEndpoint]] = field(default_factory=lambda: defaultdict(set))

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

    def open_sockets(self) -> int:
        return sum(len(s) for s in self.sockets.values())
