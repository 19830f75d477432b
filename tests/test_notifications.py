"""Notifications over real sockets: live and on connect, reads across tabs,
resume, the server API (one user and a batch), and the chat trigger."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from tests.conftest import SERVICE_KEY, Client, Server, base_settings, chat, running, token, ws
from tests.procs import REDIS_URL, fresh_postgres, require, servers
from tests.test_file_url import BAD as LEAVES_THE_SERVER

SHAPE = {"id", "type", "title", "body", "is_read", "created_at"}


def notes(server: Any, user_id: int, path_user: int | str | None = None, **query: Any) -> Any:
    query.setdefault("token", token(user_id, name=f"user{user_id}"))
    path = "/ws/notifications/" if path_user is None else f"/ws/notifications/{path_user}/"
    return ws(server.ws_url(path, **query))


async def post(server: Any, **payload: Any) -> dict[str, Any]:
    payload.setdefault("type", "system")
    payload.setdefault("title", "Hello")
    payload.setdefault("body", "Welcome")
    async with server.api() as api:
        response = await api.post("/api/notifications", json=payload)
    assert response.status_code == 201, response.text
    return response.json()


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def error_of(client: Client, request_type: str, code: str) -> None:
    frame = await client.expect("error")
    assert frame["code"] == code and frame["request_type"] == request_type, frame
    await client.send({"type": "ping"})
    await client.expect("pong")


async def test_live_and_on_connect(server: Server) -> None:
    async with notes(server, 1) as a, notes(server, 2) as other:
        first = await a.expect("bulk_update")
        assert first.pop("epoch")  # added by epochs (test_epoch.py); the rest as before
        assert first == {"type": "bulk_update", "notifications": [], "unread_count": 0, "last_seq": 0}
        await other.expect("bulk_update")
        answer = await post(server, user_id=1, type="payment", title="Paid", body="50,000 KRW", action_url="/pay/1")
        assert answer["count"] == 1 and answer["notifications"][0]["user_id"] == 1
        live = await a.expect("new_notification")
        note = live["notification"]
        assert SHAPE <= note.keys()
        assert note["type"] == "payment" and note["title"] == "Paid" and note["body"] == "50,000 KRW"
        assert note["action_url"] == "/pay/1" and note["is_read"] is False and note["created_at"].endswith("Z")
        assert note["id"] == answer["notifications"][0]["id"] and live["seq"] == 1
        await other.silent()
        await post(server, user_id=1, title="Second")
        await a.expect("new_notification")
    async with notes(server, 1, path_user=1) as a:
        snapshot = await a.expect("bulk_update")
        assert [n["title"] for n in snapshot["notifications"]] == ["Second", "Paid"]
        assert snapshot["unread_count"] == 2 and snapshot["last_seq"] == 2
        assert "action_url" not in snapshot["notifications"][0]


async def test_snapshot_is_the_newest_fifty_with_the_full_unread_count(server: Server) -> None:
    for i in range(55):
        await post(server, user_id=1, title=f"n{i}")
    async with notes(server, 1) as a:
        snapshot = await a.expect("bulk_update")
        assert [n["title"] for n in snapshot["notifications"]] == [f"n{i}" for i in range(54, 4, -1)]
        assert snapshot["unread_count"] == 55


async def test_a_read_on_one_tab_is_seen_on_the_other(server: Server) -> None:
    await post(server, user_id=1, title="one")
    await post(server, user_id=1, title="two")
    async with notes(server, 1) as tab1, notes(server, 1, path_user=1) as tab2, notes(server, 2) as other:
        listed = (await tab1.expect("bulk_update"))["notifications"]
        await tab2.expect("bulk_update")
        await other.expect("bulk_update")
        target = listed[1]["id"]
        await tab1.send({"type": "mark_read", "notification_id": target})
        for tab in (tab1, tab2):
            assert await tab.expect("notification_read") == {
                "type": "notification_read",
                "seq": 3,
                "notification_id": target,
            }
        await other.silent()
        # Reading it again changes nothing and tells nobody.
        await tab2.send({"type": "mark_read", "notification_id": target})
        await tab1.silent()
        await tab2.silent()
    async with notes(server, 1) as a:
        snapshot = await a.expect("bulk_update")
        assert snapshot["unread_count"] == 1
        assert [(n["title"], n["is_read"]) for n in snapshot["notifications"]] == [("two", False), ("one", True)]


async def test_mark_all_read_sends_a_fresh_bulk_update_to_every_tab(server: Server) -> None:
    for i in range(3):
        await post(server, user_id=1, title=f"n{i}")
    async with notes(server, 1) as tab1, notes(server, 1) as tab2:
        assert (await tab1.expect("bulk_update"))["unread_count"] == 3
        await tab2.expect("bulk_update")
        await tab2.send({"type": "mark_all_read"})
        for tab in (tab1, tab2):
            update = await tab.expect("bulk_update")
            assert update["unread_count"] == 0 and update["seq"] == 4
            assert [n["is_read"] for n in update["notifications"]] == [True, True, True]
        # Nothing left unread: only the asker hears back.
        await tab1.send({"type": "mark_all_read"})
        again = await tab1.expect("bulk_update")
        assert again["unread_count"] == 0 and len(again["notifications"]) == 3
        await tab2.silent()
        await post(server, user_id=1, title="later")
        for tab in (tab1, tab2):
            assert (await tab.expect("new_notification"))["notification"]["is_read"] is False
    async with notes(server, 1) as a:
        assert (await a.expect("bulk_update"))["unread_count"] == 1


async def test_another_users_notification_cannot_be_touched(server: Server) -> None:
    theirs = (await post(server, user_id=2))["notifications"][0]["id"]
    async with notes(server, 1) as a, notes(server, 2) as b:
        await a.expect("bulk_update")
        await b.expect("bulk_update")
        await a.send({"type": "mark_read", "notification_id": theirs})
        await error_of(a, "mark_read", "not_found")
        await a.send({"type": "mark_read", "notification_id": "nope"})
        await error_of(a, "mark_read", "not_found")
        await a.send({"type": "mark_read"})
        await error_of(a, "mark_read", "invalid_payload")
        await a.send({"type": "mark_read", "notification_id": 5})
        await error_of(a, "mark_read", "invalid_payload")
        await a.send({"type": "mark_read", "notification_id": "x" * 65})
        await error_of(a, "mark_read", "invalid_payload")
        await a.send({"type": "sync", "since": -1})
        await error_of(a, "sync", "invalid_payload")
        await a.send({"type": "delete_everything"})
        assert (await a.expect("error"))["code"] == "unknown_type"
        # mark_all_read marks only one's own.
        await a.send({"type": "mark_all_read"})
        assert (await a.expect("bulk_update"))["notifications"] == []
        await b.silent()
    async with notes(server, 2) as b:
        snapshot = await b.expect("bulk_update")
        assert snapshot["unread_count"] == 1 and snapshot["notifications"][0]["is_read"] is False


async def test_someone_elses_path_is_refused(server: Server) -> None:
    for path_user in (2, "abc", "01", "1x"):
        async with notes(server, 1, path_user=path_user) as a:
            assert await a.closed() == 4003
    async with notes(server, 1, path_user=1) as a:
        await a.expect("bulk_update")
    async with ws(server.ws_url("/ws/notifications/1/", token="garbage")) as a:
        assert await a.closed() == 4001


async def test_resume_with_since_gets_exactly_the_missed_events(server: Server) -> None:
    await post(server, user_id=1, title="before")
    async with notes(server, 1) as a:
        seen = (await a.expect("bulk_update"))["last_seq"]
        assert seen == 1
    first = (await post(server, user_id=1, title="missed1"))["notifications"][0]["id"]
    await post(server, user_id=1, title="missed2")
    async with notes(server, 1) as reader:
        await reader.expect("bulk_update")
        await reader.send({"type": "mark_read", "notification_id": first})
        await reader.expect("notification_read")
    async with notes(server, 1, since=seen) as a:
        replay = [await a.recv() for _ in range(3)]
        assert [(f["type"], f["seq"]) for f in replay] == [
            ("new_notification", 2),
            ("new_notification", 3),
            ("notification_read", 4),
        ]
        assert replay[0]["notification"]["title"] == "missed1"
        assert replay[2]["notification_id"] == first
        await a.silent()
        await post(server, user_id=1, title="live")
        assert (await a.expect("new_notification"))["seq"] == 5
        await a.send({"type": "sync", "since": 3})
        assert (await a.expect("notification_read"))["seq"] == 4
        assert (await a.expect("new_notification"))["seq"] == 5
        await a.silent()
    async with notes(server, 1, since=99) as a:
        resync = await a.expect("resync_required")
        assert resync.pop("epoch")
        assert resync == {"type": "resync_required", "last_seq": 5}
        assert (await a.expect("bulk_update"))["last_seq"] == 5
    async with notes(server, 1, since="x") as a:
        assert (await a.expect("error"))["code"] == "invalid_payload"
        assert (await a.expect("bulk_update"))["unread_count"] == 3


async def test_a_batch_to_a_thousand_users_is_one_write(server: Server) -> None:
    await post(server, user_id=7, title="earlier")
    await post(server, user_id=7, title="earlier")
    recipients = list(range(1, 1001))
    writer = server.runtime.db.writer
    async with notes(server, 7) as seven, notes(server, 1000) as last, notes(server, 1001) as outsider:
        await seven.expect("bulk_update")
        await last.expect("bulk_update")
        await outsider.expect("bulk_update")
        jobs = writer.jobs
        answer = await post(server, user_ids=[*recipients, 7, 500], type="system", title="Maintenance", body="tonight")
        assert writer.jobs == jobs + 1
        assert answer["count"] == 1000
        assert sorted(n["user_id"] for n in answer["notifications"]) == recipients
        seqs = {n["user_id"]: n["seq"] for n in answer["notifications"]}
        assert seqs[7] == 3 and all(seq == 1 for user, seq in seqs.items() if user != 7)
        got = await seven.expect("new_notification")
        assert got["seq"] == 3 and got["notification"]["title"] == "Maintenance"
        assert (await last.expect("new_notification"))["seq"] == 1
        await outsider.silent()
    db = server.runtime.db
    assert (await db.fetch_one("SELECT COUNT(*) FROM notifications"))[0] == 1002
    assert (await db.fetch_one("SELECT COUNT(*) FROM notifications WHERE title = 'Maintenance'"))[0] == 1000
    events = await db.fetch_one("SELECT COUNT(*) FROM stream_events WHERE frame LIKE '%Maintenance%'")
    assert events[0] == 1000
    rows = await db.fetch_all("SELECT stream, last_seq FROM streams WHERE stream LIKE 'user:%'")
    assert {r[0]: int(r[1]) for r in rows} == {f"user:{u}": 3 if u == 7 else 1 for u in recipients}
    async with notes(server, 500, since=0) as a:
        replay = await a.expect("new_notification")
        assert replay["seq"] == 1 and replay["notification"]["id"] == next(
            n["id"] for n in answer["notifications"] if n["user_id"] == 500
        )


async def test_server_api_refuses_bad_requests(server: Server) -> None:
    good = {"user_id": 1, "type": "system", "title": "t", "body": "b"}
    async with httpx.AsyncClient(base_url=server.http) as anonymous:
        assert (await anonymous.post("/api/notifications", json=good)).status_code == 401
        wrong = {"Authorization": "Bearer wrong"}
        assert (await anonymous.post("/api/notifications", json=good, headers=wrong)).status_code == 401
    bad_bodies: list[Any] = [
        {**good, "type": "spam"},
        {**good, "title": ""},
        {**good, "title": "   "},
        {**good, "title": "t" * 201},
        {**good, "body": "b" * 2001},
        {k: v for k, v in good.items() if k != "body"},
        {k: v for k, v in good.items() if k != "user_id"},
        {**good, "user_ids": [2]},
        {**good, "user_id": 0},
        {**good, "user_id": "1"},
        {**{k: v for k, v in good.items() if k != "user_id"}, "user_ids": []},
        {**{k: v for k, v in good.items() if k != "user_id"}, "user_ids": [1, -2]},
        {**{k: v for k, v in good.items() if k != "user_id"}, "user_ids": list(range(1, 10_002))},
        # Every URL a chat message's `file_url` may not be either (tests/test_file_url.py).
        *({**good, "action_url": url} for url in LEAVES_THE_SERVER),
        [good],
    ]
    async with server.api() as api:
        for bad in bad_bodies:
            response = await api.post("/api/notifications", json=bad)
            assert response.status_code == 400, (bad if not isinstance(bad, dict) else list(bad), response.text)
            assert response.json()["error"] == "invalid_payload"
        response = await api.post("/api/notifications", content=b"{nope")
        assert response.status_code == 400 and response.json()["error"] == "invalid_json"
        huge = json.dumps({**good, "body": "b" * (1024 * 1024)})
        response = await api.post("/api/notifications", content=huge)
        assert response.status_code == 413
        assert (await api.get("/api/notifications")).status_code == 405
        at_limit = {**{k: v for k, v in good.items() if k != "user_id"}, "user_ids": list(range(1, 10_001))}
        response = await api.post("/api/notifications", json=at_limit)
        assert response.status_code == 201 and response.json()["count"] == 10_000
    async with notes(server, 1) as a:
        snapshot = await a.expect("bulk_update")
        assert snapshot["unread_count"] == 1, "a refused request stored something"


async def test_server_api_is_off_without_a_service_key(tmp_path: Path) -> None:
    async with running(base_settings(tmp_path, service_key=None)) as bare:
        async with httpx.AsyncClient(base_url=bare.http) as client:
            headers = {"Authorization": f"Bearer {SERVICE_KEY}"}
            body = {"user_id": 1, "type": "system", "title": "t", "body": "b"}
            assert (await client.post("/api/notifications", json=body, headers=headers)).status_code == 503


async def test_chat_messages_notify_members_away_from_the_room(server: Server) -> None:
    await server.room("r1", [1, 2, 3])
    async with (
        chat(server, "r1", 1) as sender,
        chat(server, "r1", 2) as here,
        notes(server, 1) as sender_notes,
        notes(server, 2) as here_notes,
        notes(server, 3) as away_notes,
    ):
        for c in (sender, here):
            await c.expect("message_history")
        for c in (sender_notes, here_notes, away_notes):
            await c.expect("bulk_update")
        await sender.send({"type": "chat_message", "content": "are you there?"})
        await here.expect("chat_message")
        note = (await away_notes.expect("new_notification"))["notification"]
        assert note["type"] == "message" and "user1" in note["title"] and note["body"] == "are you there?"
        await here_notes.silent()
        await sender_notes.silent()

        await here.close()

        async def left() -> bool:
            return not any(s.channel == "chat" for s in server.runtime.sockets.get(2, ()))

        await until(left)
        await sender.send({"type": "chat_message", "content": "x" * 300})
        # User 2's first chat notification is new; user 3's unread one is updated in place.
        fresh = (await here_notes.expect("new_notification"))["notification"]
        updated = (await away_notes.expect("notification_updated"))["notification"]
        assert updated["id"] == note["id"] and updated["count"] == 2 and fresh["count"] == 1
        for body in (fresh["body"], updated["body"]):
            assert len(body) == 100 and body.endswith("…")
        await sender_notes.silent()
        # A repeated client_msg_id is not a new message: it is not counted.
        await sender.send({"type": "chat_message", "content": "once", "client_msg_id": "c"})
        assert (await away_notes.expect("notification_updated"))["notification"]["count"] == 3
        await sender.send({"type": "chat_message", "content": "once", "client_msg_id": "c"})
        await away_notes.silent(1.5)


async def test_a_member_removed_from_the_room_is_not_notified(server: Server) -> None:
    await server.room("r1", [1, 2])
    async with chat(server, "r1", 1) as sender, notes(server, 2) as removed:
        await sender.expect("message_history")
        await removed.expect("bulk_update")
        await sender.send({"type": "chat_message", "content": "first"})
        assert (await removed.expect("new_notification"))["notification"]["body"] == "first"
        async with server.api() as api:
            assert (await api.delete("/api/rooms/r1/members/2")).status_code == 204
        await sender.send({"type": "chat_message", "content": "secret"})
        await sender.expect("chat_message")
        await sender.expect("chat_message")
        await removed.silent(0.5)


async def test_triggers_and_reads_cross_processes(tmp_path: Path) -> None:
    require("redis")
    require("postgres")
    async with fresh_postgres() as db_url:
        env = {"DATABASE_URL": db_url, "BROKER_URL": REDIS_URL}
        async with servers(2, env, tmp_path) as (one, two):
            async with one.api() as api:
                assert (await api.post("/api/rooms", json={"id": "x", "member_ids": [1, 2, 3]})).status_code == 201
            async with (
                ws(one.ws_url("/ws/chat/x/", token=token(2))) as here,
                ws(two.ws_url("/ws/chat/x/", token=token(1, name="Sender"))) as sender,
                notes(one, 2) as two_on_one,
                notes(two, 2) as two_on_two,
                notes(one, 3) as away,
            ):
                for c in (here, sender):
                    await c.expect("message_history")
                for c in (two_on_one, two_on_two, away):
                    await c.expect("bulk_update")
                # User 2's chat socket is on the other process: still present.
                await sender.send({"type": "chat_message", "content": "hi"})
                await here.expect("chat_message")
                note = (await away.expect("new_notification"))["notification"]
                assert note["title"].startswith("Sender")
                await two_on_one.silent(0.5)
                await two_on_two.silent(0.1)

                await here.close()
                redis = Redis.from_url(REDIS_URL)
                key = "rt:" + hashlib.sha256(db_url.encode()).hexdigest()[:12] + ":chat:x"

                async def left() -> bool:
                    members = await redis.zrangebyscore(key, time.time(), "+inf")
                    return not any(m.startswith(b"2:") for m in members)

                try:
                    await until(left)
                finally:
                    await redis.aclose()
                await sender.send({"type": "chat_message", "content": "gone?"})
                for c in (two_on_one, two_on_two):
                    assert (await c.expect("new_notification"))["notification"]["body"] == "gone?"
                # User 3 has not read "hi": the same notification now counts two messages.
                again = (await away.expect("notification_updated"))["notification"]
                assert again["id"] == note["id"] and again["count"] == 2 and again["body"] == "gone?"

                # A read on one process reaches the tab on the other.
                nid = (await post(two, user_id=2, title="api"))["notifications"][0]["id"]
                for c in (two_on_one, two_on_two):
                    assert (await c.expect("new_notification"))["notification"]["id"] == nid
                await two_on_two.send({"type": "mark_read", "notification_id": nid})
                for c in (two_on_one, two_on_two):
                    assert (await c.expect("notification_read"))["notification_id"] == nid
