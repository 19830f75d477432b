"""Chat notifications coalesced per user and room: one unread row per member,
updated in place (`notification_updated`), resumable, ended by a read."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from realtime.events.node.chat_notices import ChatNotices, Window
from realtime.store.errors import StoreUnavailable
from tests.conftest import Server, base_settings, chat, running, token, ws
from tests.store_checks import store_is_whole


def notes(server: Server, user_id: int, **query: Any) -> Any:
    query.setdefault("token", token(user_id, name=f"user{user_id}"))
    return ws(server.ws_url("/ws/notifications/", **query))


async def wait_for(server: Server, sql: str, params: tuple[Any, ...], wanted: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        row = await server.runtime.db.fetch_one(sql, params)
        got = tuple(row) if row is not None else None
        if got == wanted:
            return
        assert time.monotonic() < deadline, f"{sql}: {got} != {wanted}"
        await asyncio.sleep(0.05)


@pytest.mark.settings(chat_notification_window=1.0)
async def test_twenty_messages_into_a_thousand_member_room_leave_one_notification_each(server: Server) -> None:
    members = list(range(1, 1001))
    await server.room("big", members)
    db = server.runtime.db
    async with chat(server, "big", 1) as sender:
        await sender.expect("message_history")
        started = time.monotonic()
        for n in range(20):
            await sender.send({"type": "chat_message", "content": f"m{n}"})
            await sender.expect("chat_message")
            await asyncio.sleep(0.05)  # the rate limit's pace (20 a second)
        elapsed = time.monotonic() - started
        await wait_for(
            server,
            "SELECT COUNT(*), MIN(message_count), MAX(message_count), COUNT(DISTINCT user_id) "
            "FROM notifications WHERE room_id = ? AND read_seq IS NULL",
            ("big",),
            (999, 20, 20, 999),
        )
    # Every away member holds one notification whose text is the latest message.
    rows = await db.fetch_all("SELECT DISTINCT body FROM notifications WHERE room_id = ?", ("big",))
    assert [r[0] for r in rows] == ["m19"]
    # One event per member per window (the first at once), never one per message.
    windows = 2 + int(elapsed / server.settings.chat_notification_window)
    per_user = await db.fetch_one(
        "SELECT MAX(n), MIN(n) FROM (SELECT COUNT(*) AS n FROM stream_events "
        "WHERE stream LIKE 'user:%' GROUP BY stream) AS counts"
    )
    assert per_user is not None and 1 <= int(per_user[1]) and int(per_user[0]) <= min(windows, 19), per_user
    assert (await db.fetch_one("SELECT COUNT(*) FROM stream_events WHERE stream = 'user:1'"))[0] == 0
    await store_is_whole(db)


async def test_update_frame_resume_and_a_read_that_ends_the_coalescing(server: Server) -> None:
    await server.room("r", [1, 2])
    async with chat(server, "r", 1) as sender:
        await sender.expect("message_history")
        async with notes(server, 2) as away:
            assert (await away.expect("bulk_update"))["last_seq"] == 0
            await sender.send({"type": "chat_message", "content": "a"})
            first = await away.expect("new_notification")
            note = first["notification"]
            assert first["seq"] == 1 and note["count"] == 1 and note["body"] == "a" and not note["is_read"]
            await sender.send({"type": "chat_message", "content": "b"})
            update = await away.expect("notification_updated")
            assert update["seq"] == 2
            assert update["notification"] == {**note, "body": "b", "count": 2}
            await away.silent()
        # Resume: the update is replayed from its seq, exactly as it was sent.
        async with notes(server, 2, since=1) as again:
            assert await again.expect("notification_updated") == update
            await again.silent()
        async with notes(server, 2, since=0) as again:
            assert await again.expect("new_notification") == first
            assert await again.expect("notification_updated") == update
            await again.silent()
        async with notes(server, 2) as reader:
            snapshot = await reader.expect("bulk_update")
            assert snapshot["notifications"] == [{**note, "body": "b", "count": 2}]
            assert snapshot["unread_count"] == 1 and snapshot["last_seq"] == 2
            # Reading it ends the coalescing: the next message is a new notification.
            await reader.send({"type": "mark_read", "notification_id": note["id"]})
            assert (await reader.expect("notification_read"))["seq"] == 3
            await sender.send({"type": "chat_message", "content": "c"})
            fresh = await reader.expect("new_notification")
            assert fresh["seq"] == 4 and fresh["notification"]["id"] != note["id"]
            assert fresh["notification"]["count"] == 1 and fresh["notification"]["body"] == "c"
            await sender.send({"type": "chat_message", "content": "d"})
            more = await reader.expect("notification_updated")
            assert more["notification"]["id"] == fresh["notification"]["id"] and more["notification"]["count"] == 2
        async with notes(server, 2) as reader:
            snapshot = await reader.expect("bulk_update")
            assert [n["count"] for n in snapshot["notifications"]] == [2, 2]
            assert [n["is_read"] for n in snapshot["notifications"]] == [False, True]
            assert snapshot["unread_count"] == 1
    await store_is_whole(server.runtime.db)


async def test_a_member_back_in_the_room_before_the_flush_is_not_told(server: Server) -> None:
    await server.room("r", [1, 2])
    async with chat(server, "r", 1) as sender, notes(server, 2) as away:
        await sender.expect("message_history")
        await away.expect("bulk_update")
        await sender.send({"type": "chat_message", "content": "first"})
        await away.expect("new_notification")
        # Inside the window: gathered, and by the flush user 2 has the room open.
        await sender.send({"type": "chat_message", "content": "second"})
        async with chat(server, "r", 2) as back:
            await back.expect("message_history")
            await away.silent(server.settings.chat_notification_window + 0.5)


def message(sender: int, text: str) -> dict[str, Any]:
    return {"sender": {"id": sender, "name": f"u{sender}"}, "content": text}


def test_a_window_never_tells_a_user_of_its_own_messages() -> None:
    window = Window()
    for sender, text in ((1, "a"), (2, "b"), (2, "c")):
        window.add(message(sender, text))
    assert window.for_user(3) == (3, message(2, "c"))
    assert window.for_user(2) == (1, message(1, "a"))
    assert window.for_user(1) == (2, message(2, "c"))
    only = Window()
    only.add(message(5, "x"))
    assert only.for_user(5) == (0, None)


async def test_shutdown_writes_the_window_it_was_gathering(tmp_path: Path) -> None:
    settings = base_settings(tmp_path, chat_notification_window=60.0)
    async with running(settings) as server:
        await server.room("r", [1, 2])
        async with chat(server, "r", 1) as sender:
            await sender.expect("message_history")
            for text in ("first", "second", "third"):
                await sender.send({"type": "chat_message", "content": text})
                await sender.expect("chat_message")
        await wait_for(server, "SELECT COUNT(*) FROM notifications", (), (1,))
    # The first was told at once; the other two were waiting for the window's end.
    with contextlib.closing(sqlite3.connect(tmp_path / "test.db")) as conn:
        row = conn.execute("SELECT message_count, body FROM notifications WHERE user_id = 2").fetchone()
    assert row == (3, "third")


async def test_a_window_the_store_could_not_take_is_told_with_the_next() -> None:
    notices = ChatNotices(window=0.05)
    told: list[tuple[int, str]] = []
    failures = [StoreUnavailable("the store is away")]

    async def flush(window: Window) -> int:
        if failures:
            raise failures.pop()
        count, last = window.for_user(9)
        assert last is not None
        told.append((count, last["content"]))
        return 1

    def message(i: int) -> dict[str, Any]:
        return {"sender": {"id": 1}, "content": f"m{i}"}

    notices.add("r", message(1), flush)  # a quiet room: flushed at once, and the store fails it
    await asyncio.sleep(0.01)
    notices.add("r", message(2), flush)
    notices.add("r", message(3), flush)
    for _ in range(100):
        if told:
            break
        await asyncio.sleep(0.01)
    assert told == [(3, "m3")]
    await notices.close()
    notices.add("r", message(4), flush)  # shutting down: nothing more is gathered
    assert notices.pending == {}


async def test_a_window_that_told_nobody_ends_its_flusher_at_once_and_a_telling_one_waits() -> None:
    """Everybody was in the room: nothing was written, so there is nothing to pace
    and the room's flusher ends (the next message is looked at afresh). Somebody
    was told: the flusher waits out the window, gathering what comes meanwhile."""
    notices = ChatNotices(window=30.0)
    away: list[int] = []
    flushes: list[int] = []

    async def flush(window: Window) -> int:
        flushes.append(window.total)
        return len(away)

    message = {"sender": {"id": 1}, "content": "m"}
    notices.add("r", message, flush)
    for _ in range(100):
        if not notices.tasks:
            break
        await asyncio.sleep(0.01)
    assert flushes == [1] and not notices.tasks and notices.pending == {}
    away.append(9)
    notices.add("r", message, flush)
    await asyncio.sleep(0.05)
    notices.add("r", message, flush)  # gathered for the end of the window
    assert flushes == [1, 1] and len(notices.tasks) == 1 and notices.pending["r"].total == 1
    await notices.close()  # shutdown ends the wait: what was gathered is written now
    assert flushes == [1, 1, 1] and not notices.tasks
