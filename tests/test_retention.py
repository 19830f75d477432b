"""Retention: stream events pruned by age and by count per stream, read
notifications by age, in the background; a resume from before what is kept
gets `resync_required` and a fresh snapshot; old databases are upgraded."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from realtime.settings import SettingsError, from_env
from realtime.store.migrate import SCHEMA, schema_statements
from tests.conftest import Server, base_settings, chat, running, token, ws

FAST = {"retention_interval": 0.2}


def notes(server: Server, user_id: int, **query: Any) -> Any:
    query.setdefault("token", token(user_id, name=f"user{user_id}"))
    return ws(server.ws_url("/ws/notifications/", **query))


async def notify(server: Server, user_id: int, title: str) -> dict[str, Any]:
    async with server.api() as api:
        response = await api.post(
            "/api/notifications", json={"user_id": user_id, "type": "system", "title": title, "body": "b"}
        )
    assert response.status_code == 201, response.text
    return response.json()["notifications"][0]


async def seqs(server: Server, stream: str) -> list[int]:
    rows = await server.runtime.db.fetch_all("SELECT seq FROM stream_events WHERE stream = ? ORDER BY seq", (stream,))
    return [int(r[0]) for r in rows]


async def until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def send(client: Any, text: str) -> int:
    await client.send({"type": "chat_message", "content": text})
    return int((await client.expect("chat_message"))["seq"])


@pytest.mark.settings(stream_retention_seconds=1, **FAST)
async def test_old_events_are_pruned_and_an_old_since_gets_a_snapshot(server: Server) -> None:
    await server.room("r", [1, 2])
    async with chat(server, "r", 1) as sender:
        await sender.expect("message_history")
        for text in ("a", "b", "c"):
            last = await send(sender, text)
    await notify(server, 9, "one")
    await notify(server, 9, "two")

    async def pruned() -> bool:
        return await seqs(server, "room:r") == [] and await seqs(server, "user:9") == []

    await until(pruned)
    # Chat: a since from before what is kept is a resync and the history.
    async with chat(server, "r", 2, since=1) as late:
        resync = await late.expect("resync_required")
        assert resync.pop("epoch")  # added by epochs (test_epoch.py); the rest as before
        assert resync == {"type": "resync_required", "last_seq": last}
        history = await late.expect("message_history")
        assert [m["content"] for m in history["messages"]] == ["a", "b", "c"]
        # ... and the socket goes on live.
        async with chat(server, "r", 1) as sender:
            await sender.expect("message_history")
            await sender.send({"type": "chat_message", "content": "d"})
            assert (await late.expect("chat_message"))["seq"] == last + 1
    # A since at the stream's end needs nothing kept: no resync.
    async with chat(server, "r", 2, since=last + 1) as current:
        await current.silent()
    # Notifications: the same, with the notifications themselves still listed.
    async with notes(server, 9, since=0) as late:
        resync = await late.expect("resync_required")
        assert resync.pop("epoch")
        assert resync == {"type": "resync_required", "last_seq": 2}
        snapshot = await late.expect("bulk_update")
        assert [n["title"] for n in snapshot["notifications"]] == ["two", "one"]
        assert snapshot["unread_count"] == 2 and snapshot["last_seq"] == 2
        await late.send({"type": "sync", "since": 1})
        assert (await late.expect("resync_required"))["last_seq"] == 2
        await late.expect("bulk_update")


@pytest.mark.settings(stream_retention_events=3, **FAST)
async def test_each_stream_keeps_its_newest_events(server: Server) -> None:
    await server.room("r", [1, 2])
    async with chat(server, "r", 1) as sender:
        await sender.expect("message_history")
        for n in range(6):
            await send(sender, f"m{n}")
    for n in range(8):
        await notify(server, 7, f"n{n}")
    await notify(server, 8, "only one")

    async def pruned() -> bool:
        return await seqs(server, "room:r") == [4, 5, 6] and await seqs(server, "user:7") == [6, 7, 8]

    await until(pruned)
    assert await seqs(server, "user:8") == [1]
    async with chat(server, "r", 2, since=3) as resumed:
        assert [(await resumed.expect("chat_message"))["seq"] for _ in range(3)] == [4, 5, 6]
        await resumed.silent()
    async with chat(server, "r", 2, since=2) as late:
        assert (await late.expect("resync_required"))["last_seq"] == 6
        await late.expect("message_history")
    async with notes(server, 7, since=5) as resumed:
        replay = [await resumed.expect("new_notification") for _ in range(3)]
        assert [(f["seq"], f["notification"]["title"]) for f in replay] == [(6, "n5"), (7, "n6"), (8, "n7")]
        await resumed.silent()
    async with notes(server, 7, since=4) as late:
        assert (await late.expect("resync_required"))["last_seq"] == 8
        assert (await late.expect("bulk_update"))["unread_count"] == 8


@pytest.mark.settings(read_notification_retention_seconds=1, **FAST)
async def test_read_notifications_are_pruned_by_age_unread_ones_kept(server: Server) -> None:
    read = await notify(server, 1, "read")
    await notify(server, 1, "unread")
    async with notes(server, 1) as reader:
        await reader.expect("bulk_update")
        await reader.send({"type": "mark_read", "notification_id": read["id"]})
        await reader.expect("notification_read")
    db = server.runtime.db

    async def pruned() -> bool:
        rows = await db.fetch_all("SELECT title FROM notifications WHERE user_id = 1")
        return [r[0] for r in rows] == ["unread"]

    await until(pruned)
    await asyncio.sleep(0.5)  # more passes: the unread one stays
    async with notes(server, 1) as again:
        snapshot = await again.expect("bulk_update")
        assert [n["title"] for n in snapshot["notifications"]] == ["unread"] and snapshot["unread_count"] == 1


async def test_a_pass_deletes_in_bounded_batches(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from realtime.events.node import retention as service

    monkeypatch.setattr(service, "BATCH", 7)
    await server.room("r", [1, 2])
    async with chat(server, "r", 1) as sender:
        await sender.expect("message_history")
        for n in range(30):
            await send(sender, f"m{n}")
    writer = server.runtime.db.writer
    pruner = server.app.state.pruner
    pruner.settings = base_settings(Path("."), stream_retention_events=2)
    jobs = writer.jobs
    counts = await pruner.prune()
    assert counts["events over the per-stream count"] == 28
    assert await seqs(server, "room:r") == [29, 30]
    # 28 rows at 7 a statement: 4 full batches and the short one that ends the drain,
    # plus one statement for each other kind.
    assert writer.jobs - jobs == 5 + 3
    assert (await pruner.prune())["events over the per-stream count"] == 0


BAD = [
    ("STREAM_RETENTION_SECONDS", "0", "seconds from 1 to 315360000"),
    ("STREAM_RETENTION_SECONDS", "week", "seconds from 1 to 315360000"),
    ("STREAM_RETENTION_EVENTS", "-5", "events per stream from 1 to 100000000"),
    ("READ_NOTIFICATION_RETENTION_SECONDS", "1e3", "seconds from 1 to 315360000"),
    ("RETENTION_INTERVAL_SECONDS", "0", "seconds from 0.1 to 86400"),
    ("RETENTION_INTERVAL_SECONDS", "nan", "seconds from 0.1 to 86400"),
    ("CHAT_NOTIFICATION_WINDOW_SECONDS", "120", "seconds from 0.05 to 60"),
]


@pytest.mark.parametrize(("name", "value", "says"), BAD)
def test_a_bad_retention_setting_names_itself_its_unit_and_range(name: str, value: str, says: str) -> None:
    with pytest.raises(SettingsError) as caught:
        from_env({"JWT_SECRET": "s" * 40, name: value})
    message = str(caught.value)
    assert message.startswith(f"{name}: ") and says in message and "\n" not in message, message


def test_retention_defaults() -> None:
    settings = from_env({"JWT_SECRET": "s" * 40})
    assert settings.stream_retention_seconds == 7 * 86_400
    assert settings.stream_retention_events == 10_000
    assert settings.read_notification_retention_seconds == 30 * 86_400
    assert settings.chat_notification_window == 1.0


# ---- upgrading a database made before retention --------------------------------------

# The schema as it was: everything before the retention section.
OLD_SCHEMA = schema_statements(SCHEMA.read_text().split("-- Retention")[0])
OLD_EVENT = ("user:5", 1, '{"type":"new_notification","seq":1}')


async def make_old_database(url: str) -> None:
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        for stmt in OLD_SCHEMA:
            conn.execute(stmt)
        conn.execute("INSERT INTO streams (stream, last_seq) VALUES ('user:5', 1)")
        conn.execute("INSERT INTO stream_events (stream, seq, frame) VALUES (?, ?, ?)", OLD_EVENT)
        conn.commit()
        conn.close()
        return
    pg = await asyncpg.connect(url)
    try:
        for stmt in OLD_SCHEMA:
            await pg.execute(stmt)
        await pg.execute("INSERT INTO streams (stream, last_seq) VALUES ('user:5', 1)")
        await pg.execute("INSERT INTO stream_events (stream, seq, frame) VALUES ($1, $2, $3)", *OLD_EVENT)
    finally:
        await pg.close()


async def test_an_old_database_is_upgraded_in_place(tmp_path: Path, database_url: str) -> None:
    await make_old_database(database_url)
    settings = base_settings(tmp_path, database_url=database_url, stream_retention_seconds=2, **FAST)
    async with running(settings) as server:
        # The event from before has no time: the pruner gives it one, so it ages out from now.
        await until(lambda: _stamped(server))
        await server.room("r", [1, 5])
        async with chat(server, "r", 1) as sender:
            await sender.expect("message_history")
            await send(sender, "hello")
        db = server.runtime.db

        async def notified() -> bool:
            row = await db.fetch_one("SELECT body, message_count FROM notifications WHERE user_id = 5")
            return row is not None and tuple(row) == ("hello", 1)

        await until(notified)
    # The second start finds every column in place; the old event ages out.
    async with running(settings) as server:
        await until(lambda: _aged_out(server))
        db = server.runtime.db
        assert (await db.fetch_one("SELECT COUNT(*) FROM stream_events WHERE created_at IS NULL"))[0] == 0


async def _stamped(server: Server) -> bool:
    row = await server.runtime.db.fetch_one("SELECT created_at FROM stream_events WHERE stream = 'user:5' AND seq = 1")
    assert row is not None, "the old event was pruned before it was stamped"
    return row[0] is not None


async def _aged_out(server: Server) -> bool:
    return 1 not in await seqs(server, "user:5")


async def test_a_hole_in_the_kept_events_is_a_resync_not_a_silent_gap(server: Server) -> None:
    await server.room("r", [1, 2])
    async with chat(server, "r", 1) as sender:
        await sender.expect("message_history")
        for n in range(4):
            await send(sender, f"m{n}")

    # As a clock step between two nodes could leave it: seq 3 pruned, 2 and 4 kept.
    async def punch(tx: Any) -> None:
        await tx.execute("DELETE FROM stream_events WHERE stream = 'room:r' AND seq = 3")

    await server.runtime.db.write(punch)
    async with chat(server, "r", 2, since=1) as late:
        assert (await late.expect("resync_required"))["last_seq"] == 4
        await late.expect("message_history")
    async with chat(server, "r", 2, since=3) as current:
        assert (await current.expect("chat_message"))["seq"] == 4
        await current.silent()


@pytest.mark.settings(rate_limit=1000.0, rate_burst=1000.0)
async def test_two_pruners_on_one_database_delete_each_row_once(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from realtime.events.node import retention as service
    from realtime.events.node.retention import Pruner
    from realtime.store.db import Db

    monkeypatch.setattr(service, "BATCH", 7)
    await server.room("r", [1, 2])
    async with chat(server, "r", 1) as sender:
        await sender.expect("message_history")
        for n in range(60):
            await send(sender, f"m{n}")
    settings = base_settings(tmp_path, stream_retention_events=2)
    other = Db(server.settings.database_url)
    await other.connect()
    try:
        here, there = Pruner(settings, server.runtime.db), Pruner(settings, other)
        counts = await asyncio.gather(here.prune(), there.prune())
    finally:
        await other.disconnect()
    # However the two interleaved (on PostgreSQL one may find the other's lock and stop), together
    # they deleted exactly the 58 extra events, and the newest two are kept.
    assert sum(c["events over the per-stream count"] for c in counts) == 58
    assert await seqs(server, "room:r") == [59, 60]
