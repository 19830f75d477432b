"""Chat frames from the client (`/ws/chat/{room_id}/`)."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import unquote

from msgspec import Meta

from .frames import COMMON, ClientMsgId, Frame, Id, Sync

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
        if self.file_url is not None and not _safe_url(self.file_url):
            raise ValueError("`file_url` must be an http(s) URL or a path on this server")


def _safe_url(url: str) -> bool:
    # Other members' clients render it: no javascript:, data: or other schemes,
    # and no path that a browser resolves to another host.
    if _unclean(url):
        return False
    if url.startswith(("https://", "http://")):
        return True
    return _local_path(url)


def _unclean(url: str) -> bool:
    # Browsers read `\` as `/`, and drop tabs and newlines: `/\evil` and `/\t/evil` are `//evil`.
    return "\\" in url or not url.isprintable()


def _local_path(url: str) -> bool:
    """A path on this server: `/x`, never the scheme-relative `//host` in any spelling,
    even for a client that percent-decodes it (once or more) before following it."""
    for _ in range(3):
        if not url.startswith("/") or url.startswith("//") or _unclean(url):
            return False
        decoded = unquote(url)
        if decoded == url:
            return True
        url = decoded
    return False  # still encoded three times over: nobody means that


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
