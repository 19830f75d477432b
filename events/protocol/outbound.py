"""Server frames that are not persisted events (those are built in `store.streams`).

Every builder returns the frame's text, serialized once, ready for any number
of sockets.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

_encode = msgspec.json.Encoder().encode


def encode(frame: dict[str, Any]) -> str:
    return _encode(frame).decode()


def error(code: str, message: str, request_type: str | None = None, client_msg_id: Any = None) -> str:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if request_type is not None:
        frame["request_type"] = request_type
    if client_msg_id is not None:
        frame["client_msg_id"] = client_msg_id
    return encode(frame)


def pong() -> str:
    return encode({"type": "pong", "ts": int(time.time() * 1000)})


def auth_ok(user: dict[str, Any]) -> str:
    return encode({"type": "auth_ok", "user": user})


def token_expiring(expires_at: int, grace_seconds: float) -> str:
    return encode({"type": "token_expiring", "expires_at": expires_at, "grace_seconds": grace_seconds})


def message_history(messages: list[dict[str, Any]], has_more: bool, last_seq: int, epoch: str) -> str:
    return encode(
        {"type": "message_history", "messages": messages, "has_more": has_more, "last_seq": last_seq, "epoch": epoch}
    )


def history_page(messages: list[dict[str, Any]], has_more: bool) -> str:
    return encode({"type": "history_page", "messages": messages, "has_more": has_more})


def resync_required(last_seq: int, epoch: str) -> str:
    return encode({"type": "resync_required", "last_seq": last_seq, "epoch": epoch})


def chat_message(message: dict[str, Any]) -> str:
    """A message frame for one socket (a repeated `client_msg_id` answered with the original)."""
    return encode({"type": "chat_message", "seq": message["seq"], "message": message})


def typing_start(user_id: int, name: str) -> str:
    return encode({"type": "typing_start", "user": {"id": user_id, "name": name}})


def typing_stop(user_id: int) -> str:
    return encode({"type": "typing_stop", "user_id": user_id})
