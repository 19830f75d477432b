"""What both peers share: the user from the token (payload read, signature NOT
checked: the peers do no auth) and the frames, shaped like the project's."""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs


def user_from_query(query: str) -> dict[str, Any]:
    """`{id, name}` from `?token=`'s claims, unverified; a stranger without one."""
    raw = parse_qs(query).get("token", [""])[0]
    try:
        payload = raw.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return {"id": int(claims["user_id"]), "name": str(claims.get("name") or "")}
    except (IndexError, ValueError, KeyError, TypeError):
        return {"id": 0, "name": "anonymous"}


def dumps(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def history(last_seq: int) -> str:
    return dumps({"type": "message_history", "messages": [], "has_more": False, "last_seq": last_seq})


def chat_message(room_id: str, seq: int, sender: dict[str, Any], content: str) -> str:
    """The project's `chat_message` frame, serialized once for the whole room."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    message = {
        "id": secrets.token_hex(12),
        "seq": seq,
        "room_id": room_id,
        "sender": sender,
        "content": content,
        "message_type": "text",
        "created_at": now,
        "is_read": False,
    }
    return dumps({"type": "chat_message", "seq": seq, "message": message})


def content_of(text: str) -> str | None:
    """The content of a client's `chat_message`, or None for anything else."""
    try:
        frame = json.loads(text)
    except ValueError:
        return None
    if not isinstance(frame, dict) or frame.get("type") != "chat_message":
        return None
    content = frame.get("content")
    return content if isinstance(content, str) else None
