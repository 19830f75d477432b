"""The floor for Python: a bare `websockets` server doing the chat broadcast.

A room is a set of connections; a `chat_message` is serialized once and handed
to `websockets.broadcast`. No auth, no store, no seq across processes.

    python bench/peers/bare.py --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
from collections import defaultdict

from common import chat_message, content_of, history, user_from_query
from websockets.asyncio.server import ServerConnection, broadcast, serve

PATH = re.compile(r"^/ws/chat/([A-Za-z0-9_-]{1,64})/?$")

rooms: dict[str, set[ServerConnection]] = defaultdict(set)
seqs: dict[str, int] = defaultdict(int)


async def chat(ws: ServerConnection) -> None:
    assert ws.request is not None
    path, _, query = ws.request.path.partition("?")
    match = PATH.match(path)
    if match is None:
        await ws.close(4004, "no such room")
        return
    room_id = match.group(1)
    sender = user_from_query(query)
    members = rooms[room_id]
    members.add(ws)
    try:
        await ws.send(history(seqs[room_id]))
        async for text in ws:
            content = content_of(text) if isinstance(text, str) else None
            if content is None:
                continue
            seqs[room_id] += 1
            broadcast(members, chat_message(room_id, seqs[room_id], sender, content))
    finally:
        members.discard(ws)
        if not members:
            del rooms[room_id]


async def main(port: int) -> None:
    # The same frame limit as the project's uvicorn (--ws-max-size 262144); no compression.
    async with serve(chat, "127.0.0.1", port, max_size=262_144, compression=None, backlog=2048) as server:
        stopping = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, stopping.set)
        await stopping.wait()
        # As the project restarts: no new connections, then 1012 to every open one.
        server.close(close_connections=False)
        await asyncio.gather(*(ws.close(1012, "server restarting") for ws in set().union(*rooms.values())))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
