"""The shapes of the server API's answers, as msgspec structs.

The routes answer with plain dicts (the records the store and the Node give
back); these structs describe them for the OpenAPI document
(`endpoints.openapi`), beside the request structs the routes decode with.
Records a socket also receives are the protocol's own (`events.protocol.schema`).
The tests check real answers against the document, so a route and its struct
cannot drift apart unnoticed. Optional fields are `UNSET`: left out, not `null`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from ..events.protocol.schema import ChatMessageRecord, Participant, Role, Timestamp
from .api import RoomId, UserId


class Answer(Struct, kw_only=True, forbid_unknown_fields=True):
    """An object the server API answers with."""


class ErrorAnswer(Answer):
    """Any refusal: a machine-readable code and a sentence for people."""

    error: Annotated[
        str,
        Meta(
            description="`invalid_json`, `invalid_payload`, `unauthorized`, `forbidden`, `not_found`, `conflict`, "
            "`too_large`, `unavailable`"
        ),
    ]
    message: str


class User(Answer):
    id: UserId
    name: str
    role: Role
    profile_image: str | None


class UserAnswer(Answer):
    user: User


class DisconnectAnswer(Answer):
    user_id: UserId
    revoked: bool
    revoked_before: (
        Annotated[int, Meta(description="with `revoke`: tokens issued up to this moment (Unix ms) are refused")]
        | UnsetType
    ) = UNSET


class Room(Answer):
    id: RoomId
    member_ids: list[UserId]
    consultation_id: RoomId | UnsetType = UNSET


class RoomAnswer(Answer):
    room: Room


class MessageAnswer(Answer):
    """The message as stored and as the room's sockets got it in `chat_message`."""

    message: ChatMessageRecord


class HistoryAnswer(Answer):
    """Oldest first; `has_more`: there are older ones (ask again with `before_seq` the first one's `seq`)."""

    messages: list[ChatMessageRecord]
    has_more: bool


class Consultation(Answer):
    id: RoomId
    expert_id: UserId
    client_id: UserId
    status: Literal["waiting", "in_progress", "completed", "cancelled"]
    duration_minutes: Annotated[int, Meta(ge=1)]
    created_at: Timestamp
    scheduled_start: Timestamp | UnsetType = UNSET
    started_at: Timestamp | UnsetType = UNSET
    ends_at: Timestamp | UnsetType = UNSET
    ended_at: Timestamp | UnsetType = UNSET
    end_reason: str | UnsetType = UNSET


class ConsultationAnswer(Answer):
    consultation: Consultation


class NotificationCreated(Answer):
    user_id: UserId
    id: str
    seq: Annotated[int, Meta(ge=1, description="its place in the user's stream")]


class NotificationsAnswer(Answer):
    count: Annotated[int, Meta(ge=0)]
    notifications: list[NotificationCreated]


class RoomPresence(Answer):
    """`?room=`: the room's members with a chat socket open on it."""

    room_id: RoomId
    user_ids: list[UserId]


class ConsultationPresence(Answer):
    """`?consultation=`: the participants present, by the time they joined."""

    consultation_id: RoomId
    participants: list[Participant]


class UserPresence(Answer):
    """`?user=`: whether the user has any socket open, how many, on which channels."""

    user_id: UserId
    online: bool
    sockets: Annotated[int, Meta(ge=0)]
    channels: list[Literal["chat", "consultation", "reservation", "notifications"]]


class OpenSocket(Answer):
    """One open socket. All three are `null` for a socket held by a process that does not describe its sockets."""

    channel: Literal["chat", "consultation", "reservation", "notifications"] | None
    access: Annotated[
        str | None,
        Meta(description="what its access is to (`chat:<room_id>`, `consultation:<id>`); null where none is checked"),
    ]
    opened_at: Annotated[float | None, Meta(description="when it was opened, Unix seconds")]


class UserSockets(Answer):
    """Every process's, oldest first."""

    user_id: UserId
    sockets: list[OpenSocket]
