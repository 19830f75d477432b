"""The server API for consultations: the main backend books them and may start,
end or cancel them; each change reaches the participants' sockets as the same
frame a participant's action would send."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from msgspec import Meta, Struct
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..events.node import operations, topics
from ..events.node.node import Runtime
from ..events.protocol.consultation import MAX_REASON
from ..store import consultations
from .api import ApiError, RoomId, UserId, body, service

MAX_MINUTES = 24 * 60


class ConsultationBody(Struct):
    expert_id: UserId
    client_id: UserId
    id: RoomId | None = None
    scheduled_start: datetime | None = None
    duration_minutes: Annotated[int, Meta(ge=1, le=MAX_MINUTES)] = consultations.DEFAULT_MINUTES


class ReasonBody(Struct):
    reason: Annotated[str, Meta(min_length=1, max_length=MAX_REASON)] | None = None


def path_consultation(request: Request) -> str:
    consultation_id = request.path_params["consultation_id"]
    if not topics.ID.fullmatch(consultation_id):
        raise ApiError(404, "not_found", "no such consultation")
    return consultation_id


async def reason(request: Request) -> str | None:
    """The optional `{reason}` body; an empty body is fine."""
    if not (await request.body()).strip():
        return None
    return (await body(request, ReasonBody)).reason


def answer(c: consultations.Consultation, status: int = 200) -> Response:
    return JSONResponse({"consultation": c.record()}, status_code=status)


@service
async def post_consultation(request: Request, rt: Runtime) -> Response:
    data = await body(request, ConsultationBody)
    try:
        c = await operations.create_consultation(
            rt,
            data.expert_id,
            data.client_id,
            consultation_id=data.id,
            scheduled_start=data.scheduled_start,
            duration_minutes=data.duration_minutes,
        )
    except ValueError as exc:
        raise ApiError(400, "invalid_payload", str(exc)) from None
    return answer(c, 201)


@service
async def get_consultation(request: Request, rt: Runtime) -> Response:
    return answer(await operations.get_consultation(rt, path_consultation(request)))


@service
async def start(request: Request, rt: Runtime) -> Response:
    return answer(await operations.start_consultation(rt, path_consultation(request)))


@service
async def end(request: Request, rt: Runtime) -> Response:
    consultation_id = path_consultation(request)
    return answer(await operations.end_consultation(rt, consultation_id, await reason(request)))


@service
async def cancel(request: Request, rt: Runtime) -> Response:
    consultation_id = path_consultation(request)
    return answer(await operations.cancel_consultation(rt, consultation_id, await reason(request)))


routes = [
    Route("/api/consultations", post_consultation, methods=["POST"]),
    Route("/api/consultations/{consultation_id}", get_consultation, methods=["GET"]),
    Route("/api/consultations/{consultation_id}/start", start, methods=["POST"]),
    Route("/api/consultations/{consultation_id}/end", end, methods=["POST"]),
    Route("/api/consultations/{consultation_id}/cancel", cancel, methods=["POST"]),
]
