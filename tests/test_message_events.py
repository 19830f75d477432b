"""A chat message is written once: its stream event refers to its row, and every
reader of the stream (replay, refill, the outbox relay) gets the frame the live
path sent, byte for byte (store/message_rows.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from realtime.store import messages, rooms, streams
from realtime.store.db import Db, Runner
from realtime.store.message_rows import FROM_ROW
from realtime.store.outbox import Outbox
from tests.conftest import Server, chat, token, ws

pytestmark = pytest.mark.anyio


async def raw_frames(client: Any, count: int) -> list[str]:
    return [await asyncio.wait_for(client.conn.recv(), 5) for _ in range(count)]


async def test_a_message_is_stored_once_and_replayed_byte_for_byte(server: Server) -> None:
    await server.room("r1", [1, 2])
    async with chat(server, "r1", 1) as a:
        await a.expect("message_history")
        await a.send({"type": "chat_message", "content": "first", "client_msg_id": "c1"})
        await a.send({"type": "chat_message", "content": '두 번째 "quoted"', "message_type": "text"})
        live = await raw_frames(a, 2)
        await a.send({"type": "mark_read", "message_id": "nope"})  # refused: no event
        await a.expect("error")
    db = server.runtime.db
    stored = await db.fetch_all("SELECT seq, frame FROM stream_events WHERE stream = 'room:r1' ORDER BY seq")
    assert [(int(seq), frame) for seq, frame in stored] == [(1, FROM_ROW), (2, FROM_ROW)]
    # Resuming, refilling and retrying all read the stream: the frames are the live ones.
    assert await streams.since(db, "room:r1", 0, 100) == [(1, live[0]), (2, live[1])]
    assert await streams.between(db, "room:r1", 1, 2) == [(2, live[1])]
    async with ws(server.ws_url("/ws/chat/r1/", token=token(2, name="user2"), since=0)) as b:
        assert await raw_frames(b, 2) == live


async def test_events_that_are_not_messages_keep_their_frames_between_messages(server: Server) -> None:
    await server.room("r1", [1, 2])
    async with chat(server, "r1", 1) as a, chat(server, "r1", 2) as b:
        await a.expect("message_history")
        await b.expect("message_history")
        await a.send({"type": "chat_message", "content": "read me"})
        message = (await a.expect("chat_message"))["message"]
        await b.expect("chat_message")
        await b.send({"type": "mark_read", "message_id": message["id"]})
        await a.expect("message_read")
        await b.expect("message_read")
        await a.send({"type": "chat_message", "content": "after"})
        await a.expect("chat_message")
    async with chat(server, "r1", 2, since=0) as late:
        assert [(await late.recv())["type"] for _ in range(3)] == ["chat_message", "message_read", "chat_message"]
        await late.silent()


async def test_a_message_row_that_is_gone_is_a_hole_and_a_resync(server: Server) -> None:
    await server.room("r1", [1, 2])
    async with chat(server, "r1", 1) as a:
        await a.expect("message_history")
        for n in range(3):
            await a.send({"type": "chat_message", "content": f"m{n}"})
            await a.expect("chat_message")

    async def lose(tx: Runner) -> None:
        await tx.execute("DELETE FROM messages WHERE room_id = 'r1' AND seq = 2")

    await server.runtime.db.write(lose)
    async with chat(server, "r1", 2, since=1) as late:
        assert (await late.expect("resync_required"))["last_seq"] == 3
        await late.expect("message_history")
    async with chat(server, "r1", 2, since=2) as current:
        assert (await current.expect("chat_message"))["seq"] == 3


async def test_an_event_written_with_its_frame_before_this_version_still_replays(server: Server) -> None:
    await server.room("r1", [1, 2])
    old = '{"type":"chat_message","seq":1,"message":{"content":"from an older version"}}'

    async def older(tx: Runner) -> None:
        await tx.execute("INSERT INTO streams (stream, last_seq) VALUES ('room:r1', 1)")
        await tx.execute(
            "INSERT INTO stream_events (stream, seq, frame, created_at) VALUES ('room:r1', 1, ?, '2026-01-01')", (old,)
        )

    await server.runtime.db.write(older)
    async with chat(server, "r1", 1) as a:
        await a.expect("message_history")
        await a.send({"type": "chat_message", "content": "new"})
        new = await a.expect("chat_message")
    async with ws(server.ws_url("/ws/chat/r1/", token=token(2, name="user2"), since=0)) as b:
        assert await raw_frames(b, 1) == [old]
        assert (await b.expect("chat_message"))["message"]["content"] == new["message"]["content"]


async def test_the_outbox_relays_a_message_with_the_frame_it_was_sent_with(tmp_path: Path) -> None:
    db = Db(f"sqlite:///{tmp_path}/relay.db")
    await db.connect()
    try:
        db.use_outbox()
        await rooms.create(db, "r1", [1])
        posted = await messages.post(db, "r1", {"id": 1, "name": "one", "profile_image": "p.png"}, "relayed")
        gone = await messages.post(db, "r1", {"id": 1, "name": "one"}, "lost")

        async def age(tx: Runner) -> None:
            await tx.execute("UPDATE stream_outbox SET created_ms = created_ms - 60000")
            await tx.execute("DELETE FROM messages WHERE seq = 2")

        await db.write(age)
        published: list[tuple[str, int, str]] = []

        async def keep(rows: list[tuple[str, int, str]]) -> None:
            published.extend(rows)

        assert await Outbox(db).relay(1000, keep) == 2
        # The message whose row is gone is dropped unpublished (never expected).
        assert published == [("room:r1", 1, posted.frame)]
        assert gone.seq == 2
        assert await Outbox(db).backlog() == 0
    finally:
        await db.disconnect()
