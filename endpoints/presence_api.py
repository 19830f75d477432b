"""The server API for who is connected: `GET /api/presence` (a room's members
with it open, a consultation's participants, or whether a user is online) and
`GET /api/users/{user_id}/sockets` (a user's open sockets). Every answer
covers every server process (with `BROKER_URL=redis://`)."""

from __future__ import annotations

from msgspec import Struct
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..events.node import operations
from ..events.node.node import Runtime
from .api import ApiError, RoomId, UserId, path_user, query, service


class PresenceQuery(Struct):
    """Exactly one of them."""

    room: RoomId | None = None
    consultation: RoomId | None = None
    user: UserId | None = None


@service
async def get_presence(request: Request, rt: Runtime) -> Response:
    asked = query(request, PresenceQuery)
    given = [value for value in (asked.room, asked.consultation, asked.user) if value is not None]
    if len(given) != 1:
        raise ApiError(400, "invalid_payload", "give exactly one of `room`, `consultation` and `user`")
    if asked.room is not None:
        present = await operations.room_presence(rt, asked.room)
        return JSONResponse({"room_id": asked.room, "user_ids": present})
    if asked.consultation is not None:
        participants = await operations.consultation_presence(rt, asked.consultation)
        return JSONResponse({"consultation_id": asked.consultation, "participants": participants})
    assert asked.user is not None
    return JSONResponse(await operations.user_presence(rt, asked.user))


@service
async def get_sockets(request: Request, rt: Runtime) -> Response:
    user_id = path_user(request)
    return JSONResponse({"user_id": user_id, "sockets": await operations.user_sockets(rt, user_id)})


routes = [
    Route("/api/presence", get_presence, methods=["GET"]),
    Route("/api/users/{user_id}/sockets", get_sockets, methods=["GET"]),
]
