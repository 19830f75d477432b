"""The shapes of the frames the server sends, as msgspec structs.

The builders (`events.protocol.outbound`, `store.streams`, the channel modules) write
frames as plain dicts, serialized once for any number of sockets; these structs
describe what they write, so that the AsyncAPI document (`endpoints.asyncapi`)
can give each frame a JSON Schema beside the client frames' own structs. The
tests check the frames a real session receives against the document, so a
builder and its struct cannot drift apart unnoticed.

Optional fields are `UNSET` by default: the server leaves them out rather than
sending `null` (only `request_rejected.reason` is sent as `null`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from . import errors
from .chat import MessageType

Timestamp = Annotated[
    str,
    Meta(
        pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$",
        description="ISO 8601 in UTC",
        extra_json_schema={"format": "date-time"},
    ),
]
UserId = Annotated[int, Meta(ge=1)]
Seq = Annotated[int, Meta(ge=1, description="the event's place in its stream (room or user)")]
Epoch = Annotated[
    str, Meta(description="the stream's epoch: a `since` from another epoch is answered with `resync_required`")
]
LastSeq = Annotated[int, Meta(ge=0, description="the stream's last seq this covers; resume with `?since=` it")]
ServerId = Annotated[str, Meta(min_length=1)]
# Enumerations carry a title: the AsyncAPI document makes each one component, and
# generated clients name their types after it (tests/test_asyncapi.py checks).
ErrorCode = Annotated[str, Meta(title="ErrorCode", extra_json_schema={"enum": list(errors.CODES)})]
Role = Annotated[Literal["expert", "client"], Meta(title="Role")]
NotificationType = Annotated[Literal["consultation", "message", "payment", "system"], Meta(title="NotificationType")]
ConsultationState = Annotated[
    Literal["waiting", "in_progress", "completed", "cancelled"], Meta(title="ConsultationState")
]
ReservationStatus = Annotated[Literal["pending", "accepted", "rejected", "cancelled"], Meta(title="ReservationStatus")]


class Record(Struct, kw_only=True, forbid_unknown_fields=True):
    """A nested object of a server frame."""


class ServerFrame(Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    """A frame the server sends; `type` is its tag."""


# ---- records -----------------------------------------------------------------------


class UserRef(Record):
    id: UserId
    name: str


class Profile(Record):
    """The user as the protocol shows it: token claims, then what the main backend said."""

    id: UserId
    name: str
    role: Role
    profile_image: str | UnsetType = UNSET


class Sender(Record):
    id: Annotated[int, Meta(ge=0)]
    name: str
    profile_image: str | UnsetType = UNSET


class ChatMessageRecord(Record):
    """`ChatMessage`: one message of a room; `is_read` once a member other than the sender read it."""

    id: ServerId
    seq: Seq
    room_id: str
    sender: Sender
    content: str
    message_type: MessageType
    created_at: Timestamp
    is_read: bool
    file_url: str | UnsetType = UNSET
    file_name: str | UnsetType = UNSET
    client_msg_id: str | UnsetType = UNSET


class NotificationRecord(Record):
    """`Notification`: one of a user's notifications."""

    id: ServerId
    type: NotificationType
    title: str
    body: str
    is_read: bool
    created_at: Timestamp
    action_url: str | UnsetType = UNSET
    count: Annotated[int, Meta(ge=1, description="chat notifications: the messages it stands for")] | UnsetType = UNSET


class Participant(Record):
    id: UserId
    name: str
    type: Role
    joined_at: Timestamp


class PendingExtension(Record):
    request_id: ServerId
    requested_by: UserId
    duration_minutes: Annotated[int, Meta(ge=1)]


class StatusData(Record):
    """A consultation as one participant sees it; `agora_token` is minted for that participant."""

    status: ConsultationState
    participants: list[Participant]
    duration_minutes: Annotated[int, Meta(ge=1)]
    scheduled_start: Timestamp | UnsetType = UNSET
    started_at: Timestamp | UnsetType = UNSET
    ends_at: Timestamp | UnsetType = UNSET
    ended_at: Timestamp | UnsetType = UNSET
    remaining_seconds: Annotated[int, Meta(ge=0)] | UnsetType = UNSET
    agora_channel: str | UnsetType = UNSET
    agora_token: str | UnsetType = UNSET
    pending_extension: PendingExtension | UnsetType = UNSET
    reason: str | UnsetType = UNSET


class ReservationRequestRecord(Record):
    """`ReservationRequest`: a client's request for a consultation with the expert."""

    id: ServerId
    client: UserRef
    child_name: str
    requested_date: Annotated[str, Meta(pattern=r"^\d{4}-\d{2}-\d{2}$")]
    requested_time: Annotated[str, Meta(pattern=r"^\d{2}:\d{2}$")]
    concern_summary: str
    status: ReservationStatus
    created_at: Timestamp
    reason: str | UnsetType = UNSET
    client_msg_id: str | UnsetType = UNSET


class ReservationMessageRecord(Record):
    """One message of the thread between the expert and one client."""

    id: ServerId
    expert_id: UserId
    client_id: UserId
    client: UserRef
    sender: Role
    message: str
    created_at: Timestamp
    client_msg_id: str | UnsetType = UNSET


# ---- every channel -----------------------------------------------------------------


class Pong(ServerFrame, tag="pong"):
    """The answer to `ping`."""

    ts: Annotated[int, Meta(description="the server's time in Unix milliseconds")]


class Error(ServerFrame, tag="error"):
    """A frame was refused; the connection stays usable."""

    code: ErrorCode
    message: str
    request_type: str | UnsetType = UNSET
    client_msg_id: str | int | UnsetType = UNSET


class AuthOk(ServerFrame, tag="auth_ok"):
    """The token of an `auth` frame was accepted."""

    user: Profile


class TokenExpiring(ServerFrame, tag="token_expiring"):
    """With TOKEN_EXPIRY=close: the token's `exp` passed; send a fresh `auth` within the grace period."""

    expires_at: int
    grace_seconds: float


class ResyncRequired(ServerFrame, tag="resync_required"):
    """Too much was missed to replay, or `since` belongs to another epoch: a fresh snapshot follows."""

    last_seq: LastSeq
    epoch: Epoch


# ---- chat ----------------------------------------------------------------------------


class MessageHistory(ServerFrame, tag="message_history"):
    """The snapshot on connect: the last messages, oldest first."""

    messages: list[ChatMessageRecord]
    has_more: bool
    last_seq: LastSeq
    epoch: Epoch


class HistoryPage(ServerFrame, tag="history_page"):
    """The answer to `fetch_history`, oldest first."""

    messages: list[ChatMessageRecord]
    has_more: bool


class ChatMessageEvent(ServerFrame, tag="chat_message"):
    """A message stored in the room, to every member's sockets."""

    seq: Seq
    message: ChatMessageRecord


class TypingStarted(ServerFrame, tag="typing_start"):
    """To the other members: this user started typing."""

    user: UserRef


class TypingStopped(ServerFrame, tag="typing_stop"):
    """To the other members: this user stopped typing (or sent, left, or went silent)."""

    user_id: UserId


class MessageRead(ServerFrame, tag="message_read"):
    """A member other than the sender read the message (once per reader)."""

    seq: Seq
    message_id: ServerId
    user_id: UserId
    read_at: Timestamp


class MessageDeleted(ServerFrame, tag="message_deleted"):
    """The sender deleted the message; it leaves the history."""

    seq: Seq
    message_id: ServerId


# ---- consultation ------------------------------------------------------------------


class ConsultationStatus(ServerFrame, tag="consultation_status"):
    """On connect, and every tick while in progress."""

    status_data: StatusData


class ParticipantJoined(ServerFrame, tag="participant_joined"):
    """A user's first live connection to the consultation (never to the user itself)."""

    participant: Participant


class ParticipantLeft(ServerFrame, tag="participant_left"):
    """A user's last connection closed, or all of them went silent for PRESENCE_TIMEOUT."""

    participant_id: UserId


class ConsultationStarted(ServerFrame, tag="consultation_started"):
    """The expert started it; `agora_token` is minted for the recipient."""

    started_at: Timestamp
    ends_at: Timestamp
    agora_channel: str | UnsetType = UNSET
    agora_token: str | UnsetType = UNSET


class ConsultationEnded(ServerFrame, tag="consultation_ended"):
    """Ended by the expert (`ended_by_expert`), the platform, or the clock (`time_up`)."""

    ended_at: Timestamp
    reason: str


class ConsultationCancelled(ServerFrame, tag="consultation_cancelled"):
    """Cancelled before it started."""

    reason: str | UnsetType = UNSET


class ExtensionRequested(ServerFrame, tag="extension_requested"):
    """To the other participant: more minutes asked for; answer with `respond_extension`."""

    request_id: ServerId
    requested_by: UserId
    duration_minutes: Annotated[int, Meta(ge=1, le=60)]


class ConsultationExtended(ServerFrame, tag="consultation_extended"):
    """The extension was accepted: the new `ends_at`."""

    request_id: ServerId
    ends_at: Timestamp
    duration_minutes: Annotated[int, Meta(ge=1, le=60, description="the minutes added")]


class ExtensionRejected(ServerFrame, tag="extension_rejected"):
    """The extension was declined."""

    request_id: ServerId


# ---- reservation chat --------------------------------------------------------------


class ReservationState(ServerFrame, tag="reservation_state"):
    """The snapshot on connect: the expert's pending requests and threads, or a client's own."""

    requests: list[ReservationRequestRecord]
    messages: list[ReservationMessageRecord]


class ReservationRequested(ServerFrame, tag="reservation_request"):
    """To the expert: a client asked for a consultation."""

    request: ReservationRequestRecord


class RequestCreated(ServerFrame, tag="request_created"):
    """To the client: its request was stored."""

    request: ReservationRequestRecord


class RequestAccepted(ServerFrame, tag="request_accepted"):
    """The expert accepted the request (to both sides)."""

    request: ReservationRequestRecord


class RequestRejected(ServerFrame, tag="request_rejected"):
    """The expert rejected the request (to both sides); `reason` may be null."""

    request: ReservationRequestRecord
    reason: str | None


class RequestCancelled(ServerFrame, tag="request_cancelled"):
    """The client withdrew its request (to both sides)."""

    request_id: ServerId


class ClientMessageEvent(ServerFrame, tag="client_message"):
    """A client's message to the expert (to both sides)."""

    id: ServerId
    client_id: UserId
    client: UserRef
    message: str
    created_at: Timestamp
    client_msg_id: str | UnsetType = UNSET


class ExpertMessageEvent(ServerFrame, tag="expert_message"):
    """The expert's message to one client (to both sides)."""

    id: ServerId
    expert_id: UserId
    client_id: UserId
    message: str
    created_at: Timestamp
    client_msg_id: str | UnsetType = UNSET


# ---- notifications -----------------------------------------------------------------


class BulkUpdate(ServerFrame, tag="bulk_update"):
    """The snapshot on connect (`last_seq`), or the event after `mark_all_read` (`seq`).
    `unread_count` counts every unread notification, not only the listed ones."""

    notifications: list[NotificationRecord]
    unread_count: Annotated[int, Meta(ge=0)]
    seq: Seq | UnsetType = UNSET
    last_seq: LastSeq | UnsetType = UNSET
    epoch: Epoch | UnsetType = UNSET  # with `last_seq`


class NewNotification(ServerFrame, tag="new_notification"):
    """A new notification, to every socket of its user."""

    seq: Seq
    notification: NotificationRecord


class NotificationUpdated(ServerFrame, tag="notification_updated"):
    """An unread chat notification now stands for more messages: the same `id`,
    the latest sender and text, `count` added up; to every socket of its user."""

    seq: Seq
    notification: NotificationRecord


class NotificationRead(ServerFrame, tag="notification_read"):
    """A notification was marked read, to every socket of its user."""

    seq: Seq
    notification_id: ServerId


# ---- who sends what ----------------------------------------------------------------

COMMON: tuple[type[ServerFrame], ...] = (Pong, Error, AuthOk, TokenExpiring)

# What the server sends on each channel (`BaseEndpoint.channel`).
SENDS: dict[str, tuple[type[ServerFrame], ...]] = {
    "chat": (
        *COMMON,
        MessageHistory,
        ResyncRequired,
        HistoryPage,
        ChatMessageEvent,
        TypingStarted,
        TypingStopped,
        MessageRead,
        MessageDeleted,
    ),
    "consultation": (
        *COMMON,
        ConsultationStatus,
        ParticipantJoined,
        ParticipantLeft,
        ConsultationStarted,
        ConsultationEnded,
        ConsultationCancelled,
        ExtensionRequested,
        ConsultationExtended,
        ExtensionRejected,
    ),
    "reservation": (
        *COMMON,
        ReservationState,
        ReservationRequested,
        RequestCreated,
        RequestAccepted,
        RequestRejected,
        RequestCancelled,
        ClientMessageEvent,
        ExpertMessageEvent,
    ),
    "notifications": (*COMMON, BulkUpdate, ResyncRequired, NewNotification, NotificationUpdated, NotificationRead),
}

# Path parameters of the socket routes.
PARAMETERS: dict[str, str] = {
    "room_id": "A chat room id, `[A-Za-z0-9_-]{1,64}`; the user must be a member (else 4003; unknown 4004).",
    "consultation_id": "A consultation id, `[A-Za-z0-9_-]{1,64}`; only its expert and its client may join.",
    "expert_id": "The expert's user id: the expert gets the expert view, any other user a client view of its own.",
    "user_id": "Must be the token's user, else 4003.",
}

CLOSE_CODES: dict[int, str] = {
    1000: "normal close",
    1006: "(never sent: what a client reports when the connection ends without a close frame) a server restart, "
    "to a socket opened without `?since=` or `?resume=1`: the platform's client reconnects only after an unclean close",
    1008: "policy: sustained rate-limit abuse, Origin not allowed, too many sockets for the user",
    1009: "frame larger than MAX_FRAME_BYTES",
    1011: "unexpected server error (never for bad input)",
    1012: "server restarting (graceful shutdown), to sockets opened with `?since=` or `?resume=1`; "
    "reconnect, with `?since=` where it applies (other sockets end without a close frame)",
    1013: "try again later: the socket fell OUTBOUND_QUEUE frames behind (resume with `?since=`), "
    "or too many sockets are waiting to authenticate",
    4001: "not authenticated: missing, invalid or expired token; revoked",
    4003: "authenticated but not allowed on this channel",
    4004: "no such consultation, room or expert",
}

ERRORS: dict[str, str] = {
    errors.INVALID_JSON: "the frame is not JSON",
    errors.UNKNOWN_TYPE: "no frame of this `type` on this channel",
    errors.INVALID_PAYLOAD: "missing, ill-typed or out-of-range fields",
    errors.NOT_FOUND: "what the frame names does not exist (or is someone else's)",
    errors.FORBIDDEN: "this user may not do that here",
    errors.RATE_LIMITED: "too many frames; slow down (sustained abuse closes with 1008)",
    errors.CONFLICT: "not in this state (starting twice, answering an answered request, a limit reached)",
    errors.UNAVAILABLE: "the store is away for now (connection lost, locked, disk full) or the server is restarting: "
    "nothing of the frame was acknowledged; send it again later, with the same `client_msg_id`",
}

# What each client frame asks for (the structs in `events/` say what it holds);
# `channel.type` where one type means different things on two channels.
CLIENT_FRAMES: dict[str, str] = {
    "ping": "→ `pong`; also counts as presence on a consultation.",
    "auth": "The token, as the first frame of a socket opened without one (→ `auth_ok`, or close 4001); "
    "later, a fresh token for the same user.",
    "sync": "Resume on an open socket: the events after `since`, or `resync_required` and a snapshot.",
    "chat_message": "Post a message (→ `chat_message` to every member's sockets); a repeated `client_msg_id` "
    "stores nothing and answers the original.",
    "typing_start": "→ `typing_start` to the other members; the server ends it after TYPING_TIMEOUT.",
    "typing_stop": "→ `typing_stop` to the other members.",
    "chat.mark_read": "Mark a message read (→ `message_read` once per reader; one's own messages change nothing).",
    "delete_message": "Delete one's own message (→ `message_deleted`).",
    "fetch_history": "Older messages (→ `history_page`).",
    "presence_update": "Still here (or `ping`): without either for PRESENCE_TIMEOUT the participant leaves.",
    "request_extension": "Ask the other participant for more minutes, while in progress (→ `extension_requested`).",
    "respond_extension": "Answer the other participant's request (→ `consultation_extended` or `extension_rejected`).",
    "start_consultation": "The expert starts a waiting consultation (→ `consultation_started`).",
    "end_consultation": "The expert ends a consultation in progress (→ `consultation_ended`).",
    "cancel_consultation": "Either participant cancels before the start (→ `consultation_cancelled`).",
    "reservation_request": "A client asks for a consultation on a future date "
    "(→ `reservation_request` to the expert, `request_created` to the client).",
    "cancel_request": "A client withdraws its pending request (→ `request_cancelled`).",
    "client_message": "A client writes to the expert (→ `client_message` to both sides).",
    "accept_request": "The expert accepts a pending request (→ `request_accepted`).",
    "reject_request": "The expert rejects a pending request (→ `request_rejected`).",
    "expert_message": "The expert writes to a client who wrote or asked (→ `expert_message` to both sides).",
    "notifications.mark_read": "Mark one of one's notifications read (→ `notification_read` to all one's sockets).",
    "mark_all_read": "Mark every notification read (→ `bulk_update` to all one's sockets).",
}
