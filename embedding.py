"""The realtime server inside another ASGI app, and its Python API.

    realtime = Realtime(settings)

    @asynccontextmanager
    async def lifespan(app):
        async with realtime.lifespan():  # the store, the broker, the scheduler
            yield

    app = Starlette(routes=[..., Mount("/realtime", app=realtime.app)], lifespan=lifespan)

    await realtime.put_user(42, "Minji")
    room = await realtime.create_room([42, 7])
    await realtime.publish(room["id"], "The consultation starts in 10 minutes")
    await realtime.notify([42], "payment", "Paid", "Order 7 is paid", action_url="/orders/7")
    await realtime.room_presence(room["id"])   # members with the room open, on any process

Every method checks its input as the server API's route does and then calls
the same operation (events/node/operations.py), so a change made from Python
reaches the sockets exactly as one made over HTTP.

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
from datetime import datetime
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta, Struct
from starlette.applications import Starlette

from .endpoints.api import RoomBody, UserBody, UserId
from .endpoints.consultation_api import ConsultationBody, ReasonBody
from .endpoints.notifications_api import NotificationBody, notification_problem
from .events.node import operations, topics
from .events.node.node import Runtime
from .events.protocol.chat import ChatMessage, FetchHistory
from .events.protocol.frames import has_nul
from .server import create_app
from .settings import Settings
from .store import consultations


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

    # ---- the Python API: what the server API offers, without HTTP ------------------
    # Each method checks its input as the matching route does (bad input raises
    # `ValueError` and stores nothing), then calls the same operation
    # (events/node/operations.py). An unknown room, user or consultation raises
    # `store.errors.NotFound`, a refused change `Conflict` or `AccessEnded`.

    async def put_user(
        self, user_id: int, name: str, role: str = "client", profile_image: str | None = None
    ) -> dict[str, Any]:
        """Create or update a user's profile (`PUT /api/users/{id}`)."""
        data = _checked(UserBody, {"name": name, "role": role, "profile_image": profile_image})
        return await operations.put_user(self.runtime, _user(user_id), data.name, data.role, data.profile_image)

    async def get_user(self, user_id: int) -> dict[str, Any] | None:
        return await operations.get_user(self.runtime, _user(user_id))

    async def disconnect_user(self, user_id: int, *, revoke: bool = False) -> int | None:
        """Close the user's sockets everywhere; with `revoke`, their tokens issued
        until now stop working too (returns that moment in ms)."""
        return await operations.disconnect_user(self.runtime, _user(user_id), revoke=revoke)

    async def create_room(
        self, member_ids: Iterable[int], room_id: str | None = None, consultation_id: str | None = None
    ) -> dict[str, Any]:
        """A chat room (`POST /api/rooms`): `{id, member_ids, consultation_id?}`."""
        fields = {"member_ids": list(member_ids), "id": room_id, "consultation_id": consultation_id}
        data = _checked(RoomBody, fields)
        return await operations.create_room(self.runtime, data.member_ids, data.id, data.consultation_id)

    async def room_members(self, room_id: str) -> list[int]:
        return await operations.room_members(self.runtime, _room(room_id))

    async def add_member(self, room_id: str, user_id: int) -> None:
        await operations.add_member(self.runtime, _room(room_id), _user(user_id))

    async def remove_member(self, room_id: str, user_id: int) -> None:
        """Remove a member; their sockets on the room close at once, on every process."""
        await operations.remove_member(self.runtime, _room(room_id), _user(user_id))

    async def publish(
        self,
        room_id: str,
        content: str,
        *,
        sender: dict[str, Any] | None = None,
        user_id: int | None = None,
        message_type: str = "text",
        file_url: str | None = None,
        file_name: str | None = None,
        client_msg_id: str | None = None,
    ) -> dict[str, Any]:
        """Post a chat message into a room as if it was sent there (`POST
        /api/rooms/{id}/messages`, which also takes the same fields): stored, then
        `chat_message` to every member's sockets, and a notification to the
        members away from the room. From `System` (user id 0), from a member
        (`user_id`, who must be in the room), or from `sender` (`{id, name,
        profile_image?}`). A repeated `client_msg_id` stores and sends nothing
        and returns the original."""
        fields = {
            "content": content,
            "message_type": message_type,
            "file_url": file_url,
            "file_name": file_name,
            "client_msg_id": client_msg_id,
        }
        frame = _checked(ChatMessage, fields)
        if user_id is not None and sender is not None:
            raise ValueError("give at most one of `user_id` and `sender`")
        if sender is not None:
            sender = msgspec.structs.asdict(_checked(Sender, sender))
            if sender["profile_image"] is None:
                del sender["profile_image"]
        posted = await operations.post_message(
            self.runtime,
            _room(room_id),
            frame.content,
            user_id=None if user_id is None else _user(user_id),
            sender=sender,
            message_type=frame.message_type,
            file_url=frame.file_url,
            file_name=frame.file_name,
            client_msg_id=frame.client_msg_id,
        )
        return posted.message

    async def history(
        self, room_id: str, before_seq: int | None = None, limit: int = 50
    ) -> tuple[list[dict[str, Any]], bool]:
        """A room's messages before `before_seq` (the newest without it), oldest
        first, and whether there are older (`GET /api/rooms/{id}/messages`)."""
        page = _checked(FetchHistory, {"before_seq": before_seq, "limit": limit})
        return await operations.history(self.runtime, _room(room_id), page.before_seq, page.limit)

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
        checked = _checked(NotificationBody, fields)
        if (problem := notification_problem(checked)) is not None:
            raise ValueError(problem)
        created = await self.runtime.notify(users, checked.type, checked.title, checked.body, checked.action_url)
        return [{"user_id": c.user_id, "seq": c.seq, "notification": c.notification} for c in created]

    async def create_consultation(
        self,
        expert_id: int,
        client_id: int,
        *,
        consultation_id: str | None = None,
        scheduled_start: datetime | None = None,
        duration_minutes: int = consultations.DEFAULT_MINUTES,
    ) -> dict[str, Any]:
        """Book a consultation (`POST /api/consultations`); a naive `scheduled_start` is UTC."""
        fields = {
            "expert_id": expert_id,
            "client_id": client_id,
            "id": consultation_id,
            "scheduled_start": scheduled_start,
            "duration_minutes": duration_minutes,
        }
        data = _checked(ConsultationBody, fields)
        c = await operations.create_consultation(
            self.runtime,
            data.expert_id,
            data.client_id,
            consultation_id=data.id,
            scheduled_start=data.scheduled_start,
            duration_minutes=data.duration_minutes,
        )
        return c.record()

    async def get_consultation(self, consultation_id: str) -> dict[str, Any]:
        return (await operations.get_consultation(self.runtime, _room(consultation_id))).record()

    async def start_consultation(self, consultation_id: str) -> dict[str, Any]:
        """Start it now; both participants' sockets get `consultation_started`."""
        return (await operations.start_consultation(self.runtime, _room(consultation_id))).record()

    async def end_consultation(self, consultation_id: str, reason: str | None = None) -> dict[str, Any]:
        data = _checked(ReasonBody, {"reason": reason})
        return (await operations.end_consultation(self.runtime, _room(consultation_id), data.reason)).record()

    async def cancel_consultation(self, consultation_id: str, reason: str | None = None) -> dict[str, Any]:
        data = _checked(ReasonBody, {"reason": reason})
        return (await operations.cancel_consultation(self.runtime, _room(consultation_id), data.reason)).record()

    async def room_presence(self, room_id: str) -> list[int]:
        """The room's members with a chat socket open on it, on any process (`GET /api/presence?room=`)."""
        return await operations.room_presence(self.runtime, _room(room_id))

    async def consultation_presence(self, consultation_id: str) -> list[dict[str, Any]]:
        """The consultation's participants present now, on any process
        (`GET /api/presence?consultation=`): `{id, name, type, joined_at}` each."""
        return await operations.consultation_presence(self.runtime, _room(consultation_id))

    async def user_presence(self, user_id: int) -> dict[str, Any]:
        """Whether the user is online, on any process (`GET /api/presence?user=`):
        `{user_id, online, sockets, channels}`."""
        return await operations.user_presence(self.runtime, _user(user_id))

    async def sockets(self, user_id: int) -> list[dict[str, Any]]:
        """The user's open sockets on every process, oldest first (`GET /api/users/{id}/sockets`):
        `{channel, access, opened_at}` each."""
        return await operations.user_sockets(self.runtime, _user(user_id))


S = TypeVar("S", bound=msgspec.Struct)


class Sender(Struct, forbid_unknown_fields=True):
    """`publish(sender=...)`: who a message is shown from (id 0: the system)."""

    id: Annotated[int, Meta(ge=0, le=2**63 - 1)]
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    profile_image: Annotated[str, Meta(max_length=2048)] | None = None


def _checked(kind: type[S], fields: dict[str, Any]) -> S:
    """`fields` as the route's struct, or `ValueError` with msgspec's reason (or
    for a NUL character, which the routes refuse too: PostgreSQL text cannot hold one)."""
    if has_nul(fields):
        raise ValueError("text must not contain NUL characters (\\u0000)")
    try:
        return msgspec.convert(fields, kind)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None


def _user(user_id: int) -> int:
    try:
        return msgspec.convert(user_id, UserId)
    except msgspec.ValidationError:
        raise ValueError(f"user ids are integers from 1 to 2**63-1, not {user_id!r}") from None


def _room(room_id: str) -> str:
    """A room or consultation id as the routes take it (`[A-Za-z0-9_-]{1,64}`)."""
    if not isinstance(room_id, str) or not topics.ID.fullmatch(room_id):
        raise ValueError(f"ids are 1 to 64 of A-Z a-z 0-9 _ -, not {room_id!r}")
    return room_id
