"""The realtime server inside another ASGI app, and its Python API.

    realtime = Realtime(settings)

    @asynccontextmanager
    async def lifespan(app):
        async with realtime.lifespan():  # the store, the broker, the scheduler
            yield

    app = Starlette(routes=[..., Mount("/realtime", app=realtime.app)], lifespan=lifespan)

    await realtime.notify([42], "payment", "Paid", "Order 7 is paid", action_url="/orders/7")
    await realtime.publish("room-1", "The consultation starts in 10 minutes")

Starlette runs only the outermost app's lifespan, never a mounted app's: the
host enters the realtime app's lifespan from its own (`Realtime.lifespan`, or
`realtime_lifespan(app)` for an app from `server.create_app`). Sockets are then
under the prefix (`/realtime/ws/chat/{room_id}/`), and so are the server API,
`/healthz`, `/readyz`, `/metrics` and `/asyncapi.json`. The host keeps its own
logging unless it asks otherwise. See `examples/embed.py`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from starlette.applications import Starlette

from .endpoints.notifications_api import NotificationBody
from .events.node.node import Runtime
from .events.protocol.chat import ChatMessage
from .events.protocol.notifications import safe_url
from .server import create_app
from .settings import Settings
from .store.errors import NotFound

SYSTEM = {"id": 0, "name": "System"}


@asynccontextmanager
async def realtime_lifespan(app: Starlette) -> AsyncIterator[None]:
    """Run a realtime app's lifespan (from `create_app`) inside a host app's lifespan."""
    async with app.router.lifespan_context(app):
        yield


class Realtime:
    def __init__(self, settings: Settings, *, configure_logging: bool = False) -> None:
        # The host app's process: its garbage collector is the host's to tune.
        self.app = create_app(settings, configure_logging=configure_logging, tune_gc=False)
        self._started = False

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        async with realtime_lifespan(self.app):
            self._started = True
            try:
                yield
            finally:
                self._started = False

    @property
    def runtime(self) -> Runtime:
        if not self._started:
            raise RuntimeError("the realtime app is not running: enter `Realtime.lifespan()` from the host's lifespan")
        runtime: Runtime = self.app.state.runtime
        return runtime

    async def notify(
        self,
        user_ids: Iterable[int],
        type: str,  # the protocol's field name
        title: str,
        body: str,
        action_url: str | None = None,
    ) -> list[dict[str, Any]]:
        """Store one notification per user and send `new_notification` to each
        user's sockets on every process; returns the stored notifications
        (`{user_id, seq, notification}`). Checks as `POST /api/notifications`
        does: bad input raises `ValueError` and stores nothing."""
        users = list(user_ids)
        fields = {"type": type, "title": title, "body": body, "user_ids": users, "action_url": action_url}
        try:
            checked = msgspec.convert(fields, NotificationBody)
        except msgspec.ValidationError as exc:
            raise ValueError(str(exc)) from None
        if not checked.title.strip():
            raise ValueError("`title` must not be blank")
        if checked.action_url is not None and not safe_url(checked.action_url):
            raise ValueError("`action_url` must be an http(s) URL or a path on the site")
        created = await self.runtime.notify(users, checked.type, checked.title, checked.body, checked.action_url)
        return [{"user_id": c.user_id, "seq": c.seq, "notification": c.notification} for c in created]

    async def publish(
        self,
        room_id: str,
        content: str,
        *,
        sender: dict[str, Any] | None = None,
        message_type: str = "text",
        file_url: str | None = None,
        file_name: str | None = None,
        client_msg_id: str | None = None,
    ) -> dict[str, Any]:
        """Post a chat message into a room as if it was sent there: stored, then
        `chat_message` to every member's sockets, and a notification to the
        members away from the room. From `System` (user id 0) unless `sender`
        (`{id, name, profile_image?}`) says otherwise. A repeated
        `client_msg_id` stores and sends nothing and returns the original.
        Bad input raises `ValueError`, an unknown room `store.errors.NotFound`."""
        fields = {
            "content": content,
            "message_type": message_type,
            "file_url": file_url,
            "file_name": file_name,
            "client_msg_id": client_msg_id,
        }
        try:
            frame = msgspec.convert(fields, ChatMessage)
        except msgspec.ValidationError as exc:
            raise ValueError(str(exc)) from None
        rt = self.runtime
        if not await rt.room_exists(room_id):
            raise NotFound("no such room")
        author = dict(sender or SYSTEM)
        posted = await rt.post_message(
            room_id,
            author,
            frame.content,
            frame.message_type,
            frame.file_url,
            frame.file_name,
            frame.client_msg_id,
        )
        return posted.message
