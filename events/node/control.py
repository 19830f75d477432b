"""Server-wide commands every process obeys: one `ctl` topic per process.

`POST /api/users/{id}/disconnect` must close that user's sockets wherever they
are, so it travels through the broker like any event; so do a revocation (which
every process must also remember) and the end of a user's access to one
channel (a room member removed).
"""

from __future__ import annotations

import logging

from events.node import topics
from events.node.hub import Delivery
from events.node.node import Runtime

log = logging.getLogger("realtime.control")

TOPIC = topics.CONTROL_TOPIC
REVOKED = 4001
FORBIDDEN = 4003


class Control:
    user_id = 0  # never excluded, never a real user

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def deliver(self, delivery: Delivery) -> None:
        try:
            if delivery.type == "disconnect":
                self.runtime.close_user(int(delivery.frame), REVOKED, "revoked")
            elif delivery.type == "revoke":
                user, before = delivery.frame.split(":", 1)
                self.runtime.revocations.learn(int(user), int(before))
                self.runtime.close_user(int(user), REVOKED, "revoked")
            elif delivery.type == "access":
                user, access = delivery.frame.split(":", 1)
                self.runtime.close_access(int(user), access, FORBIDDEN, "access ended")
            # Anything else comes from a newer process during a rolling deploy: not ours to guess.
        except ValueError:
            log.warning("malformed %s command on %s", delivery.type, TOPIC)

    def resync(self) -> None:
        """Commands are not persisted: nothing to catch up."""


async def listen(runtime: Runtime) -> None:
    await runtime.hub.join(TOPIC, Control(runtime))


async def disconnect(runtime: Runtime, user_id: int) -> None:
    await runtime.hub.publish(TOPIC, Delivery("disconnect", 0, 0, str(user_id)))


async def revoke(runtime: Runtime, user_id: int, before_ms: int) -> None:
    """After the revocation is stored: every process refuses the old tokens and closes the sockets."""
    # This process knows at once, whatever the broker's delay.
    runtime.revocations.learn(user_id, before_ms)
    await runtime.hub.publish(TOPIC, Delivery("revoke", 0, 0, f"{user_id}:{before_ms}"))


async def end_access(runtime: Runtime, user_id: int, access: str) -> None:
    """After the store has taken the access away: close the user's sockets on that channel everywhere."""
    await runtime.hub.publish(TOPIC, Delivery("access", 0, 0, f"{user_id}:{access}"))
