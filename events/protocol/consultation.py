"""Consultation frames (`/ws/consultation/{consultation_id}/`): what the client
sends, and builders for what the server sends (each serialized once)."""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import Meta

from .frames import COMMON, Frame, Id
from .outbound import encode

MAX_REASON = 500


class PresenceUpdate(Frame):
    pass


class RequestExtension(Frame):
    duration_minutes: Annotated[int, Meta(ge=1, le=60)]


class RespondExtension(Frame):
    request_id: Id
    accept: bool


class StartConsultation(Frame):
    pass


class EndConsultation(Frame):
    pass


class CancelConsultation(Frame):
    reason: Annotated[str, Meta(max_length=MAX_REASON)] | None = None


CONSULTATION: dict[str, type[Frame]] = {
    **COMMON,
    "presence_update": PresenceUpdate,
    "request_extension": RequestExtension,
    "respond_extension": RespondExtension,
    "start_consultation": StartConsultation,
    "end_consultation": EndConsultation,
    "cancel_consultation": CancelConsultation,
}


# ---- server frames -------------------------------------------------------------


def consultation_status(status_data: dict[str, Any]) -> str:
    return encode({"type": "consultation_status", "status_data": status_data})


def participant_joined(participant: dict[str, Any]) -> str:
    return encode({"type": "participant_joined", "participant": participant})


def participant_left(user_id: int) -> str:
    return encode({"type": "participant_left", "participant_id": user_id})


def consultation_started(started_at: str, ends_at: str, agora_channel: str | None) -> str:
    """Without the recipient's `agora_token`: each socket adds its own."""
    frame: dict[str, Any] = {"type": "consultation_started", "started_at": started_at, "ends_at": ends_at}
    if agora_channel is not None:
        frame["agora_channel"] = agora_channel
    return encode(frame)


def consultation_ended(ended_at: str, reason: str) -> str:
    return encode({"type": "consultation_ended", "ended_at": ended_at, "reason": reason})


def consultation_cancelled(reason: str | None) -> str:
    frame: dict[str, Any] = {"type": "consultation_cancelled"}
    if reason is not None:
        frame["reason"] = reason
    return encode(frame)


def extension_requested(request_id: str, requested_by: int, duration_minutes: int) -> str:
    return encode(
        {
            "type": "extension_requested",
            "request_id": request_id,
            "requested_by": requested_by,
            "duration_minutes": duration_minutes,
        }
    )


def consultation_extended(request_id: str, ends_at: str, duration_minutes: int) -> str:
    return encode(
        {
            "type": "consultation_extended",
            "request_id": request_id,
            "ends_at": ends_at,
            "duration_minutes": duration_minutes,
        }
    )


def extension_rejected(request_id: str) -> str:
    return encode({"type": "extension_rejected", "request_id": request_id})
