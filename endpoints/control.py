"""Server-wide commands every process obeys: one `ctl` topic per process.

`POST /api/users/{id}/disconnect` must close that user's sockets wherever they
are, so it travels through the broker like any event.
"""

from __future__ import annotations

from endpoints.runtime import Runtime
from events.bus import Delivery

TOPIC = "ctl"
REVOKED = 4001


class Control:
    user_id = 0  # never excluded, never a real user

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def deliver(self, delivery: Delivery) -> None:
        if delivery.type == "disconnect":
            self.runtime.close_user(int(delivery.frame), REVOKED, "revoked")

    def resync(self) -> None:
        """Commands are not persisted: nothing to catch up."""


async def listen(runtime: Runtime) -> None:
    await runtime.hub.join(TOPIC, Control(runtime))


async def disconnect(runtime: Runtime, user_id: int) -> None:
    await runtime.hub.publish(TOPIC, Delivery("disconnect", 0, 0, str(user_id)))
