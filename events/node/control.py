"""Server-wide commands every process obeys: one `ctl` topic per process.

`POST /api/users/{id}/disconnect` must close that user's sockets wherever they
are, so it travels through the broker like any event; so do a revocation (which
every process must also remember), the end of a user's access to one
channel (a room member removed), and a change of a room's members (which
every process's membership cache forgets).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ...store.errors import StoreError
from . import topics
from .hub import Delivery
from .node import Runtime

log = logging.getLogger("realtime.control")

TOPIC = topics.CONTROL_TOPIC
REVOKED = 4001
FORBIDDEN = 4003
RETRY_AFTER = 1.0  # seconds before a revalidation the store could not answer runs again


class Control:
    user_id = 0  # never excluded, never a real user

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.checking: asyncio.Task[None] | None = None
        self.again = False

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
            elif delivery.type == "members":
                self.runtime.memberships.forget(delivery.frame)
            # Anything else comes from a newer process during a rolling deploy: not ours to guess.
        except ValueError:
            log.warning("malformed %s command on %s", delivery.type, TOPIC)

    def resync(self) -> None:
        """Commands are not persisted: nothing to catch up (see `after_gap`)."""

    def after_gap(self) -> None:
        """The broker came back: check every socket against the store, one pass
        at a time (a gap during a pass asks for one more)."""
        if self.checking is not None and not self.checking.done():
            self.again = True
            return
        self.checking = asyncio.ensure_future(self._check_until_settled())

    async def _check_until_settled(self) -> None:
        self.again = True
        while self.again:
            self.again = False
            try:
                await revalidate(self.runtime)
            except StoreError as exc:
                log.warning("revalidation after a broker outage waits for the store: %s", exc)
                self.again = True
                await asyncio.sleep(RETRY_AFTER)

    async def close(self) -> None:
        if self.checking is not None:
            self.checking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.checking


async def listen(runtime: Runtime) -> Control:
    control = Control(runtime)
    await runtime.hub.join(TOPIC, control)
    runtime.hub.gap_listeners.append(control.after_gap)
    return control


async def revalidate(runtime: Runtime) -> None:
    """After a broker outage: commands are not persisted, so one sent meanwhile
    (a revocation, a removed member, an ended consultation) never reached this
    process. Every open socket's grant is read again from the store instead.
    Raises `StoreError` if the store cannot answer (the caller tries again)."""
    runtime.revocations.forget()
    runtime.memberships.forget_all()
    closed = 0
    for sockets in list(runtime.sockets.values()):
        for endpoint in list(sockets):
            identity = getattr(endpoint, "identity", None)
            if identity is None:
                continue  # still in its handshake, which reads the store itself
            try:
                if await runtime.revocations.refuses(runtime.db, identity):
                    endpoint.close_for(REVOKED, "revoked")
                elif not await endpoint.still_allowed():
                    endpoint.close_for(FORBIDDEN, "access ended")
                else:
                    continue
            except StoreError:
                raise
            except Exception:
                log.exception("revalidating a %s socket failed", endpoint.channel)
                continue
            closed += 1
    if closed:
        log.info("broker back: %d socket(s) closed whose access had ended meanwhile", closed)


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
