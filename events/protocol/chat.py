"""Chat frames from the client (`/ws/chat/{room_id}/`)."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from .frames import COMMON, ClientMsgId, Frame, Id, Sync
from .links import safe_url

MAX_CONTENT = 10_000
# Titled: the AsyncAPI document names it once (a component), and so do generated clients.
MessageType = Annotated[Literal["text", "image", "file"], Meta(title="MessageType")]


class ChatMessage(Frame):
    content: Annotated[str, Meta(max_length=MAX_CONTENT)] = ""
    message_type: MessageType = "text"
    file_url: Annotated[str, Meta(max_length=2048)] | None = None
    file_name: Annotated[str, Meta(max_length=255)] | None = None
    client_msg_id: ClientMsgId | None = None

    def __post_init__(self) -> None:
        if self.message_type == "text":
            if not self.content.strip():
                raise ValueError("a text message needs non-empty `content`")
        elif not self.file_url:
            raise ValueError(f"a `{self.message_type}` message needs `file_url`")
        if self.file_url is not None and not safe_url(self.file_url):
            raise ValueError("`file_url` must be an http(s) URL or a path on this server")


class TypingStart(Frame):
    pass


class TypingStop(Frame):
    pass


class MarkMessageRead(Frame):
    message_id: Id


class DeleteMessage(Frame):
    message_id: Id


class FetchHistory(Frame):
    before_seq: Annotated[int, Meta(ge=1, le=2**53)] | None = None
    limit: Annotated[int, Meta(ge=1, le=100)] = 50


CHAT: dict[str, type[Frame]] = {
    **COMMON,
    "sync": Sync,
    "chat_message": ChatMessage,
    "typing_start": TypingStart,
    "typing_stop": TypingStop,
    "mark_read": MarkMessageRead,
    "delete_message": DeleteMessage,
    "fetch_history": FetchHistory,
}
