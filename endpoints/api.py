"""The server API for the platform's main backend: users, rooms, members.

Every route needs `Authorization: Bearer <SERVICE_KEY>`; without a configured
key they answer 503, so an unconfigured server never exposes them.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..events.node import control, topics
from ..events.node.node import Runtime
from ..events.protocol.frames import has_nul
from ..store import revocations, rooms, users
from ..store.db import new_id
from ..store.errors import StoreError, StoreUnavailable

UserId = Annotated[int, Meta(ge=1, le=2**63 - 1)]
RoomId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
MAX_BODY = 1024 * 1024

B = TypeVar("B", bound=Struct)
Endpoint = Callable[[Request], Awaitable[Response]]


class UserBody(Struct, forbid_unknown_fields=False):
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    role: Literal["expert", "client"] = "client"
    profile_image: Annotated[str, Meta(max_length=2048)] | None = None


class RoomBody(Struct):
    member_ids: Annotated[list[UserId], Meta(max_length=10_000)]
    id: RoomId | None = None
    consultation_id: RoomId | None = None


class DisconnectBody(Struct, forbid_unknown_fields=True):
    revoke: bool = False


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


RETRY_AFTER = "2"  # seconds: about how long the store's writer takes to reconnect


def unavailable(exc: StoreUnavailable) -> JSONResponse:
    """503 with `Retry-After`: the store is away for now; the caller retries."""
    response = error(503, "unavailable", str(exc))
    response.headers["Retry-After"] = RETRY_AFTER
    return response


def service(handler: Callable[[Request, Runtime], Awaitable[Response]]) -> Endpoint:
    """Check the service key, then map bad input and store errors to statuses."""

    async def endpoint(request: Request) -> Response:
        runtime: Runtime = request.app.state.runtime
        key = runtime.settings.service_key
        if not key:
            return error(503, "unavailable", "the server API is off: SERVICE_KEY is not set")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
            return error(401, "unauthorized", "Authorization: Bearer <SERVICE_KEY> required")
        try:
            return await handler(request, runtime)
        except ApiError as exc:
            return error(exc.status, exc.code, str(exc))
        except StoreUnavailable as exc:
            return unavailable(exc)
        except StoreError as exc:
            status = {"not_found": 404, "forbidden": 403, "conflict": 409}.get(exc.code, 400)
            return error(status, exc.code, str(exc))

    return endpoint


async def body(request: Request, kind: type[B]) -> B:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ApiError(413, "too_large", f"body over {MAX_BODY} bytes")
    try:
        data = msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "invalid_payload", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_json", str(exc)) from None
    if b"\\u0000" in raw and has_nul(msgspec.to_builtins(data)):
        raise ApiError(400, "invalid_payload", "text must not contain NUL characters (\\u0000)")
    return data


def path_user(request: Request) -> int:
    raw = request.path_params["user_id"]
    if not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) < 2**63:
        raise ApiError(404, "not_found", "user ids are positive integers")
    return int(raw)


def path_room(request: Request) -> str:
    room_id = request.path_params["room_id"]
    if not topics.ID.fullmatch(room_id):
        raise ApiError(404, "not_found", "no such room")
    return room_id


@service
async def put_user(request: Request, rt: Runtime) -> Response:
    user_id = path_user(request)
    data = await body(request, UserBody)
    await users.upsert(rt.db, user_id, data.name, data.role, data.profile_image)
    return JSONResponse({"user": {"id": user_id, **msgspec.to_builtins(data)}})


@service
async def post_room(request: Request, rt: Runtime) -> Response:
    data = await body(request, RoomBody)
    room_id = data.id or new_id()
    await rooms.create(rt.db, room_id, data.member_ids, data.consultation_id)
    room: dict[str, Any] = {"id": room_id, "member_ids": sorted(set(data.member_ids))}
    if data.consultation_id:
        room["consultation_id"] = data.consultation_id
    return JSONResponse({"room": room}, status_code=201)


@service
async def put_member(request: Request, rt: Runtime) -> Response:
    await rt.add_member(path_room(request), path_user(request))
    return Response(status_code=204)


@service
async def delete_member(request: Request, rt: Runtime) -> Response:
    room_id, user_id = path_room(request), path_user(request)
    await rt.remove_member(room_id, user_id)
    # Committed first: a frame of theirs that gets past this is refused by the store.
    await control.end_access(rt, user_id, topics.chat_access(room_id))
    return Response(status_code=204)


@service
async def disconnect_user(request: Request, rt: Runtime) -> Response:
    user_id = path_user(request)
    # The body is optional: no body is `{"revoke": false}`.
    data = await body(request, DisconnectBody) if (await request.body()).strip() else DisconnectBody()
    if not data.revoke:
        await control.disconnect(rt, user_id)
        return JSONResponse({"user_id": user_id, "revoked": False}, status_code=202)
    before = await revocations.revoke(rt.db, user_id, int(time.time() * 1000))
    await control.revoke(rt, user_id, before)
    # The moment, for the caller: `iat` is in whole seconds, so a token minted
    # in the same second is refused too; the backend mints new ones after it.
    return JSONResponse({"user_id": user_id, "revoked": True, "revoked_before": before}, status_code=202)


routes = [
    Route("/api/users/{user_id}/disconnect", disconnect_user, methods=["POST"]),
    Route("/api/users/{user_id}", put_user, methods=["PUT"]),
    Route("/api/rooms", post_room, methods=["POST"]),
    Route("/api/rooms/{room_id}/members/{user_id}", put_member, methods=["PUT"]),
    Route("/api/rooms/{room_id}/members/{user_id}", delete_member, methods=["DELETE"]),
]
