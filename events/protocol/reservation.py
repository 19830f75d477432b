"""Reservation chat frames (`/ws/reservation-chat/{expert_id}/`): what clients and
the expert send, and the server frames built from store records.

Reservation frames are not stream events (no `seq`): a reconnecting socket gets
the whole state back in `reservation_state` instead.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Annotated, Any

from msgspec import Meta

from .frames import COMMON, ClientMsgId, Frame, Id
from .outbound import encode

MAX_CHILD_NAME = 100
MAX_SUMMARY = 2_000
MAX_MESSAGE = 2_000
MAX_REASON = 500

DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
TIME = re.compile(r"(\d{2}):(\d{2})")

UserId = Annotated[int, Meta(ge=1, le=2**63 - 1)]
Message = Annotated[str, Meta(min_length=1, max_length=MAX_MESSAGE)]


def _future_date(value: str) -> None:
    # fromisoformat alone also takes "20300101" and week dates: the protocol says YYYY-MM-DD.
    if not DATE.fullmatch(value):
        raise ValueError("`requested_date` must be YYYY-MM-DD")
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"`requested_date` {value!r} is not a real date") from None
    if day <= datetime.now(UTC).date():
        raise ValueError("`requested_date` must be after today (UTC)")


def _clock_time(value: str) -> None:
    match = TIME.fullmatch(value)
    if match is None or int(match[1]) > 23 or int(match[2]) > 59:
        raise ValueError("`requested_time` must be a real time HH:MM (00:00-23:59)")


def _not_blank(value: str, field: str) -> None:
    if not value.strip():
        raise ValueError(f"`{field}` must not be blank")


# ---- client frames ---------------------------------------------------------------


class ReservationRequest(Frame):
    child_name: Annotated[str, Meta(max_length=4 * MAX_CHILD_NAME)]
    requested_date: Annotated[str, Meta(max_length=10)]
    requested_time: Annotated[str, Meta(max_length=5)]
    concern_summary: Annotated[str, Meta(max_length=MAX_SUMMARY)] = ""
    client_msg_id: ClientMsgId | None = None

    def __post_init__(self) -> None:
        # Checked stripped (the store keeps it stripped): padding is not a name.
        if not 1 <= len(self.child_name.strip()) <= MAX_CHILD_NAME:
            raise ValueError(f"`child_name` must be 1-{MAX_CHILD_NAME} characters")
        _future_date(self.requested_date)
        _clock_time(self.requested_time)


class CancelRequest(Frame):
    request_id: Id


class ClientMessage(Frame):
    message: Message
    client_msg_id: ClientMsgId | None = None

    def __post_init__(self) -> None:
        _not_blank(self.message, "message")


class AcceptRequest(Frame):
    request_id: Id


class RejectRequest(Frame):
    request_id: Id
    reason: Annotated[str, Meta(max_length=MAX_REASON)] | None = None


class ExpertMessage(Frame):
    client_id: UserId
    message: Message
    client_msg_id: ClientMsgId | None = None

    def __post_init__(self) -> None:
        _not_blank(self.message, "message")


RESERVATION: dict[str, type[Frame]] = {
    **COMMON,
    "reservation_request": ReservationRequest,
    "cancel_request": CancelRequest,
    "client_message": ClientMessage,
    "accept_request": AcceptRequest,
    "reject_request": RejectRequest,
    "expert_message": ExpertMessage,
}


# ---- server frames ---------------------------------------------------------------


def reservation_state(requests: list[dict[str, Any]], messages: list[dict[str, Any]]) -> str:
    return encode({"type": "reservation_state", "requests": requests, "messages": messages})


def request_event(type_: str, request: dict[str, Any]) -> str:
    """`reservation_request`, `request_created` or `request_accepted`: `{request}`."""
    return encode({"type": type_, "request": request})


def request_rejected(request: dict[str, Any]) -> str:
    return encode({"type": "request_rejected", "request": request, "reason": request.get("reason")})


def request_cancelled(request_id: str) -> str:
    return encode({"type": "request_cancelled", "request_id": request_id})


def client_message(message: dict[str, Any]) -> str:
    frame: dict[str, Any] = {
        "type": "client_message",
        "id": message["id"],
        "client_id": message["client_id"],
        "client": message["client"],
        "message": message["message"],
        "created_at": message["created_at"],
    }
    if "client_msg_id" in message:
        frame["client_msg_id"] = message["client_msg_id"]
    return encode(frame)


def expert_message(message: dict[str, Any]) -> str:
    frame: dict[str, Any] = {
        "type": "expert_message",
        "id": message["id"],
        "expert_id": message["expert_id"],
        "client_id": message["client_id"],
        "message": message["message"],
        "created_at": message["created_at"],
    }
    if "client_msg_id" in message:
        frame["client_msg_id"] = message["client_msg_id"]
    return encode(frame)
