"""The server API for consultations: the main backend books them and may start,
end or cancel them; each change reaches the participants' sockets as the same
frame a participant's action would send."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from msgspec import Meta, Struct
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..events.node import consultation_rules, topics
from ..events.node.node import Runtime
from ..events.protocol.consultation import MAX_REASON
from ..store import consultations
from ..store.db import new_id
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
    if data.expert_id == data.client_id:
        raise ApiError(400, "invalid_payload", "expert_id and client_id must be different users")
    scheduled = None
    if data.scheduled_start is not None:
        start = data.scheduled_start
        # A time without an offset is taken as UTC, as every time in this protocol.
        scheduled = consultations.iso(start if start.tzinfo else start.replace(tzinfo=UTC))
    c = await consultations.create(
        rt.db, data.id or new_id(), data.expert_id, data.client_id, scheduled, data.duration_minutes
    )
    return answer(c, 201)


@service
async def get_consultation(request: Request, rt: Runtime) -> Response:
    c = await consultations.get(rt.db, path_consultation(request))
    if c is None:
        raise ApiError(404, "not_found", "no such consultation")
    return answer(c)


@service
async def start(request: Request, rt: Runtime) -> Response:
    c = await consultations.start(rt.db, path_consultation(request), None)
    await consultation_rules.announce_started(rt, c)
    return answer(c)


@service
async def end(request: Request, rt: Runtime) -> Response:
    consultation_id = path_consultation(request)
    c = await consultations.end(rt.db, consultation_id, None, await reason(request) or "ended_by_platform")
    await consultation_rules.announce_ended(rt, c)
    return answer(c)


@service
async def cancel(request: Request, rt: Runtime) -> Response:
    consultation_id = path_consultation(request)
    c = await consultations.cancel(rt.db, consultation_id, None, await reason(request))
    await consultation_rules.announce_cancelled(rt, c)
    return answer(c)


routes = [
    Route("/api/consultations", post_consultation, methods=["POST"]),
    Route("/api/consultations/{consultation_id}", get_consultation, methods=["GET"]),
    Route("/api/consultations/{consultation_id}/start", start, methods=["POST"]),
    Route("/api/consultations/{consultation_id}/end", end, methods=["POST"]),
    Route("/api/consultations/{consultation_id}/cancel", cancel, methods=["POST"]),
]
