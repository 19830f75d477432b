"""Client frames: one typed struct per `type`, validated in one place.

`decode` turns a text frame into typed frames or `BadFrame`s carrying the
protocol's error code. A frame may be one object or an array of objects
(handled in order, as if sent one by one). Unknown fields are ignored so that
newer clients keep working.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from events import errors

MAX_CONTENT = 10_000
MAX_BATCH = 50

Id = Annotated[str, Meta(min_length=1, max_length=64)]
ClientMsgId = Annotated[str, Meta(min_length=1, max_length=64)]
Seq = Annotated[int, Meta(ge=0, le=2**53)]


class Frame(Struct, kw_only=True, frozen=True):
    """A validated client frame; `type` is taken from the registry key."""


class Ping(Frame):
    pass


class Auth(Frame):
    token: Annotated[str, Meta(min_length=1, max_length=8192)]


class Sync(Frame):
    since: Seq


class ChatMessage(Frame):
    content: Annotated[str, Meta(max_length=MAX_CONTENT)] = ""
    message_type: Literal["text", "image", "file"] = "text"
    file_url: Annotated[str, Meta(max_length=2048)] | None = None
    file_name: Annotated[str, Meta(max_length=255)] | None = None
    client_msg_id: ClientMsgId | None = None

    def __post_init__(self) -> None:
        if self.message_type == "text":
            if not self.content.strip():
                raise ValueError("a text message needs non-empty `content`")
        elif not self.file_url:
            raise ValueError(f"a `{self.message_type}` message needs `file_url`")
        if self.file_url is not None and not _safe_url(self.file_url):
            raise ValueError("`file_url` must be an http(s) URL or a path on this server")


def _safe_url(url: str) -> bool:
    # Other members' clients render it: no javascript:, data: or other schemes.
    return url.startswith(("https://", "http://")) or (url.startswith("/") and not url.startswith("//"))


class TypingStart(Frame):
    pass


class TypingStop(Frame):
    pass


class MarkRead(Frame):
    message_id: Id


class DeleteMessage(Frame):
    message_id: Id


class FetchHistory(Frame):
    before_seq: Annotated[int, Meta(ge=1, le=2**53)] | None = None
    limit: Annotated[int, Meta(ge=1, le=100)] = 50


COMMON: dict[str, type[Frame]] = {"ping": Ping, "auth": Auth}
CHAT: dict[str, type[Frame]] = {
    **COMMON,
    "sync": Sync,
    "chat_message": ChatMessage,
    "typing_start": TypingStart,
    "typing_stop": TypingStop,
    "mark_read": MarkRead,
    "delete_message": DeleteMessage,
    "fetch_history": FetchHistory,
}


@dataclass(frozen=True, slots=True)
class BadFrame:
    code: str
    message: str
    request_type: str | None = None
    client_msg_id: Any = None


@dataclass(frozen=True, slots=True)
class Decoded:
    type: str
    frame: Frame
    client_msg_id: str | None


_json = msgspec.json.Decoder()


def decode(text: str, kinds: Mapping[str, type[Frame]]) -> list[Decoded | BadFrame]:
    try:
        raw = _json.decode(text)
    except msgspec.DecodeError as exc:
        return [BadFrame(errors.INVALID_JSON, f"invalid JSON: {exc}")]
    if isinstance(raw, list):
        if len(raw) > MAX_BATCH:
            return [BadFrame(errors.INVALID_PAYLOAD, f"at most {MAX_BATCH} frames in one array")]
        return [decode_one(item, kinds) for item in raw]
    return [decode_one(raw, kinds)]


def decode_one(raw: Any, kinds: Mapping[str, type[Frame]]) -> Decoded | BadFrame:
    if not isinstance(raw, dict):
        return BadFrame(errors.INVALID_PAYLOAD, "a frame must be a JSON object")
    type_ = raw.get("type")
    cmid = raw.get("client_msg_id")
    cmid = cmid if isinstance(cmid, str | int) and not isinstance(cmid, bool) else None
    if not isinstance(type_, str):
        return BadFrame(errors.INVALID_PAYLOAD, "a frame needs a string `type`", None, cmid)
    kind = kinds.get(type_)
    if kind is None:
        return BadFrame(errors.UNKNOWN_TYPE, f"unknown type {type_[:64]!r}", type_[:64], cmid)
    try:
        frame = msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        return BadFrame(errors.INVALID_PAYLOAD, str(exc), type_, cmid)
    return Decoded(type_, frame, getattr(frame, "client_msg_id", None))
