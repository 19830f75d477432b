"""The floor under uvicorn: a bare ASGI app (no framework, no auth, no store)
doing the chat broadcast, served by the same uvicorn and flags as the project.

Beside `bare.py` (the `websockets` server) it shows what uvicorn's own HTTP
and handshake path costs: the part of the project's connect that is
uvicorn's, not the app's. A room is a set of the sockets' `send`s; each
`chat_message` is serialized once and awaited on every member in turn.

    uvicorn uvicorn_bare:app --app-dir bench/peers --loop asyncio --ws websockets-sansio
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from common import chat_message, content_of, history, user_from_query

PATH = re.compile(r"^/ws/chat/([A-Za-z0-9_-]{1,64})/?$")

Send = Callable[[dict[str, Any]], Awaitable[None]]
rooms: dict[str, set[Send]] = defaultdict(set)
seqs: dict[str, int] = defaultdict(int)


async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "websocket":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    match = PATH.match(scope["path"])
    await receive()  # websocket.connect
    if match is None:
        await send({"type": "websocket.close", "code": 4004})
        return
    room_id = match.group(1)
    sender = user_from_query(scope.get("query_string", b"").decode("latin-1"))
    await send({"type": "websocket.accept"})
    members = rooms[room_id]
    members.add(send)
    try:
        await send({"type": "websocket.send", "text": history(seqs[room_id])})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            content = content_of(message.get("text") or "")
            if content is None:
                continue
            seqs[room_id] += 1
            frame = {"type": "websocket.send", "text": chat_message(room_id, seqs[room_id], sender, content)}
            for member in list(members):
                try:
                    await member(frame)
                except Exception:  # noqa: BLE001 - a member that went away meanwhile
                    members.discard(member)
    finally:
        members.discard(send)
        if not members:
            del rooms[room_id]
