"""Webhooks to the main backend (docs/webhooks.md): every event type reaches a
real receiver, signed; failures are retried, then parked; nothing is lost to a
restart; order per stream holds; two processes never send one stream at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from realtime import webhooks as signing
from realtime.settings import SettingsError, from_env
from realtime.store import reservations
from realtime.store.db import Db, WebhookTargets
from realtime.store.errors import Conflict
from tests.conftest import Client, Server, base_settings, chat, free_port, running, token, ws
from tests.procs import REDIS_URL, fresh_postgres, make_room, ready, require, servers, start
from tests.webhook_receiver import HANG, SECRET, Receiver, receiving

ROOT = Path(__file__).resolve().parent.parent
EXPERT, CLIENT = 10, 21


def hooked(tmp_path: Path, receiver: Receiver, **changes: Any) -> contextlib.AbstractAsyncContextManager[Server]:
    """A server whose webhooks go to `receiver`, with short windows and backoffs."""
    settings = base_settings(
        tmp_path,
        webhook_urls=(receiver.url,),
        webhook_secret=SECRET,
        webhook_timeout=1.0,
        webhook_backoff_max=0.2,
        webhook_presence_debounce=0.3,
        webhook_unread_window=0.3,
    )
    return running(replace(settings, **changes))


def hook_env(receiver: Receiver, **more: str) -> dict[str, str]:
    return {
        "WEBHOOK_URL": receiver.url,
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_TIMEOUT": "1",
        "WEBHOOK_BACKOFF_MAX_SECONDS": "0.2",
        "WEBHOOK_PRESENCE_DEBOUNCE_SECONDS": "0.3",
        "WEBHOOK_UNREAD_WINDOW_SECONDS": "0.3",
        "LOG_LEVEL": "warning",
        **more,
    }


async def metric(base: str, name: str, **labels: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{base}/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


async def metric_reaches(base: str, name: str, at_least: float, timeout: float = 10.0) -> None:
    """Until a metric is at least `at_least` (gauges of the outbox are counted every few seconds)."""
    deadline = time.monotonic() + timeout
    while (found := await metric(base, name)) < at_least:
        assert time.monotonic() < deadline, f"{name} is {found}, not {at_least} or more, after {timeout}s"
        await asyncio.sleep(0.2)


async def outbox_rows(db_url: str) -> list[dict[str, Any]]:
    db = Db(db_url)
    await db.connect()
    try:
        sql = "SELECT id, type, state, attempts, last_error, stream FROM webhook_outbox ORDER BY id"
        rows = await db.fetch_all(sql)
    finally:
        await db.disconnect()
    keys = ("id", "type", "state", "attempts", "last_error", "stream")
    return [dict(zip(keys, row, strict=True)) for row in rows]


async def say(client: Client, *contents: str) -> list[dict[str, Any]]:
    """Send chat messages and wait for their echoes; returns the messages."""
    await client.send([{"type": "chat_message", "content": text} for text in contents])
    out = []
    while len(out) < len(contents):
        frame = await client.recv()
        if frame["type"] == "chat_message":
            out.append(frame["message"])
    return out


def failing(type_: str, answers: list[int]) -> Callable[[dict[str, Any]], int]:
    """A receiver's answers: `answers` to the first deliveries holding a `type_` event, then 200."""
    left = list(answers)

    def answer(payload: dict[str, Any]) -> int:
        if left and any(event["type"] == type_ for event in payload["events"]):
            return left.pop(0)
        return 200

    return answer


def seqs_of(receiver: Receiver, room_id: str) -> list[int]:
    """The seqs of a room's `message.created` events, in the order they were taken."""
    return [e["data"]["message"]["seq"] for e in receiver.of("message.created") if e["stream"] == f"room:{room_id}"]


def consultation(server: Server, user_id: int) -> contextlib.AbstractAsyncContextManager[Client]:
    return ws(server.ws_url("/ws/consultation/c1/", token=token(user_id, name=f"user{user_id}")))


def reservation(server: Server, user_id: int) -> contextlib.AbstractAsyncContextManager[Client]:
    claims: dict[str, Any] = {"name": f"user{user_id}"}
    if user_id == EXPERT:
        claims["role"] = "expert"
    return ws(server.ws_url(f"/ws/reservation-chat/{EXPERT}/", token=token(user_id, **claims)))


def notifications(server: Server, user_id: int) -> contextlib.AbstractAsyncContextManager[Client]:
    return ws(server.ws_url("/ws/notifications/", token=token(user_id)))


def check_shape(event: dict[str, Any]) -> None:
    assert set(event) == {"id", "type", "stream", "created_at", "data"}, event
    assert event["id"].startswith("evt_") and event["created_at"].endswith("Z")


# ---- every event type, signed ------------------------------------------------------


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_chat_events_reach_the_receiver_signed(tmp_path: Path, store: str) -> None:
    async with contextlib.AsyncExitStack() as stack:
        url = f"sqlite:///{tmp_path}/test.db"
        if store == "postgres":
            require("postgres")
            url = await stack.enter_async_context(fresh_postgres())
        receiver = await stack.enter_async_context(receiving())
        server = await stack.enter_async_context(hooked(tmp_path, receiver, database_url=url))
        await server.room("r1", [1, 2, 3])
        async with notifications(server, 3) as online_elsewhere, chat(server, "r1", 1) as one:
            await online_elsewhere.expect("bulk_update")
            await one.expect("message_history")
            sent = await say(one, "hello", "are you there?")
            await receiver.wait_for(lambda r: len(r.of("message.created")) == 2)
            # User 2 has no socket: told once at once, then once for the rest of the window.
            await receiver.wait_for(lambda r: sum(e["data"]["count"] for e in r.of("message.unread")) == 2)
        created = receiver.of("message.created")
        assert [e["data"]["message"] for e in created] == sent
        assert {e["stream"] for e in created} == {"room:r1"}
        assert created[0]["data"]["room_id"] == "r1"
        unread = receiver.of("message.unread")
        # User 3 had a socket open (another channel): online, not told.
        assert {e["data"]["user_id"] for e in unread} == {2}
        assert unread[-1]["data"]["message"] == sent[-1] and unread[-1]["data"]["room_id"] == "r1"
        for event in receiver.events:
            check_shape(event)
        assert receiver.bad_signatures == 0 and not receiver.duplicates()
        assert await metric(server.http, "realtime_webhook_deliveries_total") >= 1


async def test_message_unread_is_coalesced_per_user_and_room_within_the_window(tmp_path: Path) -> None:
    async with receiving() as receiver, hooked(tmp_path, receiver, webhook_unread_window=1.0) as server:
        await server.room("r1", [1, 2])
        await server.room("r2", [1, 2])
        async with chat(server, "r1", 1) as one, chat(server, "r2", 1) as other_room:
            await one.expect("message_history")
            await other_room.expect("message_history")
            await say(one, "first")
            await receiver.wait_for(lambda r: len(r.of("message.unread")) == 1)
            await say(one, "a", "b", "c")
            await say(other_room, "elsewhere")
            await receiver.wait_for(lambda r: len(r.of("message.unread")) == 3)
            await asyncio.sleep(1.2)  # one window more: nothing else comes
        unread = [(e["data"]["room_id"], e["data"]["count"], e["data"]["message"]["content"]) for e in
                  receiver.of("message.unread")]  # fmt: skip
        assert sorted(unread) == [("r1", 1, "first"), ("r1", 3, "c"), ("r2", 1, "elsewhere")]
        assert {e["stream"] for e in receiver.of("message.unread")} == {"unread:2:r1", "unread:2:r2"}


async def test_consultation_events(tmp_path: Path) -> None:
    async with receiving() as receiver, hooked(tmp_path, receiver) as server:
        async with server.api() as api:
            booked = {"id": "c1", "expert_id": EXPERT, "client_id": CLIENT, "duration_minutes": 30}
            assert (await api.post("/api/consultations", json=booked)).status_code == 201
            assert (await api.post("/api/consultations/c1/start")).status_code == 200
            async with consultation(server, EXPERT) as expert, consultation(server, CLIENT) as client:
                await expert.expect("consultation_status")
                await client.expect("consultation_status")
                await client.send({"type": "request_extension", "duration_minutes": 10})
                asked = await _next(expert, "extension_requested")
                await expert.send({"type": "respond_extension", "request_id": asked["request_id"], "accept": True})
                await _next(client, "consultation_extended")
            response = await api.post("/api/consultations/c1/end", json={"reason": "done"})
            assert response.status_code == 200
            booked = {"id": "c2", "expert_id": EXPERT, "client_id": CLIENT}
            assert (await api.post("/api/consultations", json=booked)).status_code == 201
            assert (await api.post("/api/consultations/c2/cancel", json={"reason": "ill"})).status_code == 200
        await receiver.wait_types("consultation.started", "consultation.extended")
        await receiver.wait_for(lambda r: len(r.of("consultation.ended")) == 2)
        c1 = [e for e in receiver.events if e["stream"] == "consultation:c1"]
        assert [e["type"] for e in c1] == ["consultation.started", "consultation.extended", "consultation.ended"]
        started, extended, ended = (e["data"] for e in c1)
        assert started["consultation"]["status"] == "in_progress" and started["consultation"]["id"] == "c1"
        assert extended["extension"]["duration_minutes"] == 10 and extended["extension"]["requested_by"] == CLIENT
        assert extended["consultation"]["duration_minutes"] == 40
        assert ended["consultation"]["status"] == "completed" and ended["consultation"]["end_reason"] == "done"
        (cancelled,) = [e for e in receiver.events if e["stream"] == "consultation:c2"]
        assert cancelled["type"] == "consultation.ended"
        assert cancelled["data"]["consultation"]["status"] == "cancelled"


async def _next(client: Client, type_: str) -> dict[str, Any]:
    """The next frame of `type_`, past the periodic status and presence frames."""
    while True:
        frame = await client.recv()
        if frame["type"] == type_:
            return frame


async def test_reservation_and_notification_events(tmp_path: Path) -> None:
    async with receiving() as receiver, hooked(tmp_path, receiver) as server:
        async with reservation(server, EXPERT) as expert, reservation(server, CLIENT) as client:
            await expert.expect("reservation_state")
            await client.expect("reservation_state")
            asks = []
            for child in ("A", "B", "C"):
                await client.send(
                    {
                        "type": "reservation_request",
                        "child_name": child,
                        "requested_date": "2030-01-02",
                        "requested_time": "10:00",
                        "concern_summary": "sleep",
                    }
                )
                asks.append((await _next(client, "request_created"))["request"])
            await expert.send({"type": "accept_request", "request_id": asks[0]["id"]})
            await expert.send({"type": "reject_request", "request_id": asks[1]["id"], "reason": "full"})
            await client.send({"type": "cancel_request", "request_id": asks[2]["id"]})
            answers = {"request_accepted", "request_rejected", "request_cancelled"}
            while answers:
                answers.discard((await client.recv())["type"])
        async with server.api() as api:
            note = {"user_id": 7, "type": "system", "title": "Hi", "body": "there"}
            assert (await api.post("/api/notifications", json=note)).status_code == 201
        await receiver.wait_types(
            "reservation.requested", "reservation.accepted", "reservation.rejected", "reservation.cancelled"
        )
        await receiver.wait_for(lambda r: any(e["data"]["user_id"] == 7 for e in r.of("notification.created")))
        for ask, answer in zip(asks, ("accepted", "rejected", "cancelled"), strict=True):
            stream = [e for e in receiver.events if e["stream"] == f"reservation:{ask['id']}"]
            assert [e["type"] for e in stream] == ["reservation.requested", f"reservation.{answer}"]
            assert stream[0]["data"] == {"expert_id": EXPERT, "request": ask}
            assert stream[1]["data"]["request"]["status"] == answer
        assert receiver.of("reservation.rejected")[0]["data"]["request"]["reason"] == "full"
        (mine,) = [e for e in receiver.of("notification.created") if e["data"]["user_id"] == 7]
        assert mine["stream"] == "user:7"
        assert {"title": "Hi", "body": "there", "type": "system"}.items() <= mine["data"]["notification"].items()
        # The expert's notifications of the requests, and the client's of the answers, are there too.
        told = {e["data"]["user_id"] for e in receiver.of("notification.created")}
        assert {EXPERT, CLIENT, 7} <= told


async def test_presence_is_debounced(tmp_path: Path) -> None:
    async with receiving() as receiver, hooked(tmp_path, receiver, webhook_presence_debounce=0.5) as server:
        async with notifications(server, 5):
            pass
        async with notifications(server, 5):  # a reload: back within the debounce
            await asyncio.sleep(1.0)
        await receiver.wait_types("user.offline")
        async with notifications(server, 6):  # a blink, shorter than the debounce: nothing
            pass
        await asyncio.sleep(1.0)
        events = [(e["type"], e["data"]["user_id"]) for e in receiver.events if e["type"].startswith("user.")]
        assert events == [("user.online", 5), ("user.offline", 5)]
        offline = receiver.of("user.offline")[0]
        assert offline["stream"] == "presence:5"
        assert offline["data"]["online_since"] == receiver.of("user.online")[0]["data"]["at"]


async def test_a_user_left_online_by_a_stopped_process_goes_offline_after_the_next_start(tmp_path: Path) -> None:
    async with receiving() as receiver:
        async with hooked(tmp_path, receiver) as server:
            async with notifications(server, 5):
                await receiver.wait_types("user.online")
                # As if the process died with the socket open: its close is never looked at.
                server.runtime.webhooks.presence.changed = lambda user_id: None
        assert not receiver.of("user.offline")
        async with hooked(tmp_path, receiver):
            await receiver.wait_types("user.offline")
        assert [e["type"] for e in receiver.events if e["stream"] == "presence:5"] == ["user.online", "user.offline"]


# ---- failures ----------------------------------------------------------------------


async def test_retries_while_the_receiver_answers_500_then_delivers_once(tmp_path: Path) -> None:
    async with receiving() as receiver, hooked(tmp_path, receiver) as server:
        receiver.answer = failing("message.created", [500, 500, 503])
        await server.room("r1", [1])
        async with chat(server, "r1", 1) as one:
            await one.expect("message_history")
            (sent,) = await say(one, "hello")
        await receiver.wait_for(lambda r: r.of("message.created"))
        assert [e["data"]["message"] for e in receiver.of("message.created")] == [sent]
        tried = [e["id"] for e in receiver.tried if e["type"] == "message.created"]
        assert len(tried) == 4 and len(set(tried)) == 1  # three failed attempts, then the one taken
        assert await metric(server.http, "realtime_webhook_failures_total", reason="http_5xx") == 3
        assert not receiver.duplicates()


async def test_timeouts_4xx_and_redirects_are_retried_and_posting_never_waits(tmp_path: Path) -> None:
    async with receiving() as receiver, hooked(tmp_path, receiver, webhook_timeout=0.5) as server:
        receiver.answer = failing("message.created", [HANG, 400, 302])  # a redirect is not followed
        await server.room("r1", [1])
        async with chat(server, "r1", 1) as one:
            await one.expect("message_history")
            sent = await say(one, "one")
            await receiver.wait_for(lambda r: r.in_flight == 1, what="a hanging request")
            # The receiver hangs on the first: the next is stored and echoed all the same.
            sent += await say(one, "two")
            assert not receiver.of("message.created")
        await receiver.wait_for(lambda r: len(r.of("message.created")) == 2)
        assert [e["data"]["message"] for e in receiver.of("message.created")] == sent
        assert await metric(server.http, "realtime_webhook_failures_total", reason="timeout") == 1
        assert await metric(server.http, "realtime_webhook_failures_total", reason="http_4xx") == 1
        assert await metric(server.http, "realtime_webhook_failures_total", reason="http_3xx") == 1


async def test_a_receiver_that_is_down_holds_up_only_its_own_url(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    async with receiving() as receiver, hooked(tmp_path, receiver, webhook_urls=(dead, receiver.url)) as server:
        await server.room("r1", [1])
        async with chat(server, "r1", 1) as one:
            await one.expect("message_history")
            await say(one, "hello")
        await receiver.wait_for(lambda r: r.of("message.created"))
        await asyncio.sleep(0.5)
        assert await metric(server.http, "realtime_webhook_failures_total", reason="connection") >= 1
        rows = await outbox_rows(server.settings.database_url)
        assert rows and all(row["state"] == "pending" for row in rows)
        assert {row["type"] for row in rows} >= {"message.created"}
        await metric_reaches(server.http, "realtime_webhook_backlog", len(rows))


async def test_parked_after_the_retry_window_and_the_stream_goes_on(tmp_path: Path) -> None:
    async with receiving() as receiver, hooked(tmp_path, receiver, webhook_retry_window=1.0) as server:
        receiver.answer = lambda payload: 500
        await server.room("r1", [1])
        async with chat(server, "r1", 1) as one:
            await one.expect("message_history")
            await say(one, "lost")
            parked = []
            deadline = time.monotonic() + 10
            while not parked and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                rows = await outbox_rows(server.settings.database_url)
                parked = [row for row in rows if row["type"] == "message.created" and row["state"] == "parked"]
            assert parked, rows
            assert parked[0]["last_error"] == "HTTP 500" and parked[0]["attempts"] >= 2
            receiver.answer = None
            (kept,) = await say(one, "kept")
        await receiver.wait_for(lambda r: r.of("message.created"))
        assert [e["data"]["message"] for e in receiver.of("message.created")] == [kept]
        assert await metric(server.http, "realtime_webhook_parked_events_total") >= 1
        await metric_reaches(server.http, "realtime_webhook_parked", 1)
        rows = await outbox_rows(server.settings.database_url)
        assert [row["state"] for row in rows if row["type"] == "message.created"] == ["parked"]


async def test_a_bad_signature_is_refused_by_the_receiver(tmp_path: Path) -> None:
    async with receiving(secret="another-secret-of-at-least-32-bytes!!") as receiver:
        async with hooked(tmp_path, receiver, webhook_retry_window=1.0) as server:
            await server.room("r1", [1])
            async with chat(server, "r1", 1) as one:
                await one.expect("message_history")
                await say(one, "hello")
                await receiver.wait_for(lambda r: r.bad_signatures >= 2, what="refused deliveries")
        assert not receiver.events


# ---- order, restarts, several processes -------------------------------------------


async def test_order_per_stream_is_kept_through_random_failures(tmp_path: Path) -> None:
    chance = random.Random(7)
    async with receiving() as receiver, hooked(tmp_path, receiver, rate_burst=200) as server:
        receiver.answer = lambda payload: 500 if chance.random() < 0.3 else 200
        await server.room("r1", [1, 2])
        await server.room("r2", [1, 2])
        async with chat(server, "r1", 1) as a, chat(server, "r2", 2) as b:
            await a.expect("message_history")
            await b.expect("message_history")
            for i in range(10):
                await say(a, *(f"a{i}.{j}" for j in range(3)))
                await say(b, f"b{i}")
        await receiver.wait_for(lambda r: len(r.of("message.created")) == 40, timeout=30)
        for room, count in (("r1", 30), ("r2", 10)):
            assert seqs_of(receiver, room) == list(range(1, count + 1))
        assert not receiver.duplicates()


async def killed_once_tried(receiver: Receiver, env: dict[str, str], tmp_path: Path, text: str) -> dict[str, Any]:
    """A server process that stores `text` in room r1 and is killed (SIGKILL) as
    soon as the receiver has seen a delivery of it tried; the message sent."""
    proc = start(env, tmp_path / "one.log")
    try:
        await ready(proc)
        await make_room(proc, "r1", [1, 2])
        async with ws(proc.ws_url("/ws/chat/r1/", token=token(1))) as one:
            await one.expect("message_history")
            (sent,) = await say(one, text)
            await receiver.wait_for(lambda r: any(e["type"] == "message.created" for e in r.tried))
            proc.kill()
    finally:
        proc.kill()
    return sent


async def restarted_until_delivered(receiver: Receiver, env: dict[str, str], tmp_path: Path, timeout: float) -> None:
    """A new process on the same database, run until a `message.created` is delivered."""
    again = start(env, tmp_path / "two.log")
    try:
        await ready(again)
        await receiver.wait_for(lambda r: r.of("message.created"), timeout=timeout)
    finally:
        again.terminate()
        again.wait(15)


async def test_no_event_is_lost_across_a_kill_and_restart(tmp_path: Path) -> None:
    async with receiving() as receiver:
        receiver.answer = lambda payload: 503
        env = hook_env(receiver, DATABASE_URL=f"sqlite:///{tmp_path}/store.db")
        # Committed, and tried (answered 503): the process dies before it is delivered.
        sent = await killed_once_tried(receiver, env, tmp_path, "survives")
        assert not receiver.events
        receiver.answer = None
        await restarted_until_delivered(receiver, env, tmp_path, timeout=15)
        assert [e["data"]["message"] for e in receiver.of("message.created")] == [sent]


async def test_two_processes_never_send_a_stream_at_once(tmp_path: Path, pg_url: str) -> None:
    require("redis")
    rooms = [f"r{i}" for i in range(12)]
    async with receiving() as receiver:
        receiver.hold = 0.05  # each delivery takes a while: a second one of the stream would overlap
        env = hook_env(receiver, DATABASE_URL=pg_url, BROKER_URL=REDIS_URL, RATE_BURST="400")
        async with servers(2, env, tmp_path) as procs:
            for room in rooms:
                await make_room(procs[0], room, [1, 2])
            async with contextlib.AsyncExitStack() as stack:
                sockets = []
                for room in rooms:
                    for user, proc in ((1, procs[0]), (2, procs[1])):
                        client = await stack.enter_async_context(
                            ws(proc.ws_url(f"/ws/chat/{room}/", token=token(user)))
                        )
                        await client.expect("message_history")
                        sockets.append(client)
                for round_ in range(5):
                    await asyncio.gather(*(say(client, f"m{round_}") for client in sockets))
                total = len(sockets) * 5
                await receiver.wait_for(lambda r: len(r.of("message.created")) >= total, timeout=60)
            assert receiver.overlaps == 0
            assert not receiver.duplicates()
            for room in rooms:
                assert seqs_of(receiver, room) == list(range(1, 11))
            counts = [await metric(proc.http, "realtime_webhook_deliveries_total") for proc in procs]
            assert all(count > 0 for count in counts), counts  # every process works the queue


async def test_presence_across_two_processes_is_told_once(tmp_path: Path, pg_url: str) -> None:
    require("redis")
    async with receiving() as receiver:
        env = hook_env(receiver, DATABASE_URL=pg_url, BROKER_URL=REDIS_URL, WEBHOOK_PRESENCE_DEBOUNCE_SECONDS="1")
        async with servers(2, env, tmp_path) as (one, two):
            async with ws(one.ws_url("/ws/notifications/", token=token(5))) as first:
                await first.expect("bulk_update")
                async with ws(two.ws_url("/ws/notifications/", token=token(5))) as second:
                    await second.expect("bulk_update")
                    await first.close()  # gone from one process, still on the other
                    await asyncio.sleep(1.5)
                await receiver.wait_types("user.offline", timeout=10)
            await asyncio.sleep(1.5)
        kinds = [e["type"] for e in receiver.events if e["stream"] == "presence:5"]
        assert kinds == ["user.online", "user.offline"]


async def test_two_answers_racing_on_postgres_make_one_event(pg_url: str) -> None:
    """The answer locks the request's row: of two processes answering at once,
    one wins, the other gets `conflict`, and the stream has one answer after its request."""
    one, two = Db(pg_url), Db(pg_url)
    await one.connect()
    await two.connect()
    try:
        for db in (one, two):
            db.use_webhooks(WebhookTargets(("http://backend.example/hook",)))
        for attempt in range(5):
            client = {"id": CLIENT, "name": "client"}
            child = f"child{attempt}"
            saved = await reservations.create_request(one, EXPERT, client, child, "2030-01-02", "10:00", "sleep")
            request_id = saved.record["id"]
            outcomes = await asyncio.gather(
                reservations.answer(one, EXPERT, request_id, "accepted"),
                reservations.answer(two, EXPERT, request_id, "rejected"),
                return_exceptions=True,
            )
            assert sum(isinstance(outcome, Conflict) for outcome in outcomes) == 1, outcomes
            rows = await one.fetch_all(
                "SELECT type FROM webhook_outbox WHERE stream = ? ORDER BY id", (f"reservation:{request_id}",)
            )
            kinds = [row[0] for row in rows]
            assert kinds[0] == "reservation.requested" and len(kinds) == 2, kinds
    finally:
        await one.disconnect()
        await two.disconnect()


# ---- settings, signatures -------------------------------------------------------------


GOOD = {"JWT_SECRET": "s" * 40, "WEBHOOK_URL": "https://backend.example/hooks", "WEBHOOK_SECRET": "w" * 32}


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({**GOOD, "WEBHOOK_URL": "ftp://backend.example/hooks"}, "WEBHOOK_URL"),
        ({**GOOD, "WEBHOOK_URL": "backend.example/hooks"}, "WEBHOOK_URL"),
        ({**GOOD, "WEBHOOK_URL": "https:///hooks"}, "WEBHOOK_URL"),
        ({**GOOD, "WEBHOOK_URL": "https://backend.example:x/hooks"}, "WEBHOOK_URL"),
        ({**GOOD, "WEBHOOK_URL": "https://a.example/h,https://a.example/h"}, "WEBHOOK_URL"),
        ({**GOOD, "WEBHOOK_SECRET": ""}, "WEBHOOK_SECRET"),
        ({**GOOD, "WEBHOOK_SECRET": "short"}, "WEBHOOK_SECRET"),
        ({**GOOD, "WEBHOOK_TIMEOUT": "0"}, "WEBHOOK_TIMEOUT"),
        ({**GOOD, "WEBHOOK_TIMEOUT": "soon"}, "WEBHOOK_TIMEOUT"),
        ({**GOOD, "WEBHOOK_RETRY_WINDOW_SECONDS": "0.5"}, "WEBHOOK_RETRY_WINDOW_SECONDS"),
        ({**GOOD, "WEBHOOK_BACKOFF_MAX_SECONDS": "-1"}, "WEBHOOK_BACKOFF_MAX_SECONDS"),
        ({**GOOD, "WEBHOOK_UNREAD_WINDOW_SECONDS": "nan"}, "WEBHOOK_UNREAD_WINDOW_SECONDS"),
        ({**GOOD, "WEBHOOK_PRESENCE_DEBOUNCE_SECONDS": "7200"}, "WEBHOOK_PRESENCE_DEBOUNCE_SECONDS"),
    ],
)
def test_bad_webhook_settings_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        from_env(env)


def test_good_webhook_settings() -> None:
    settings = from_env({**GOOD, "WEBHOOK_URL": " https://a.example/h , http://user:pw@b.example:8080/h?k=1 "})
    assert settings.webhook_urls == ("https://a.example/h", "http://user:pw@b.example:8080/h?k=1")
    assert from_env({"JWT_SECRET": "s" * 40}).webhook_urls == ()


def test_a_bad_webhook_setting_stops_uvicorn_with_one_line_that_hides_credentials() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "JWT_SECRET": "x" * 40,
        "WEBHOOK_URL": "ftp://user:hunter2@backend.example/h?key=k3y",
        "WEBHOOK_SECRET": "w" * 40,
    }
    command = [sys.executable, "-m", "uvicorn", "server:app", "--port", "0"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0, shlex.join(command)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "WEBHOOK_URL" in lines[0], result.stderr
    assert "hunter2" not in result.stderr and "k3y" not in result.stderr


def test_verify_takes_what_was_signed_and_refuses_the_rest() -> None:
    body = json.dumps({"events": [{"id": "evt_1"}]}).encode()
    headers = signing.sign(SECRET, body, "dlv_1")
    lowered = {key.lower(): value for key, value in headers.items()}
    assert signing.verify(SECRET, headers, body) == {"events": [{"id": "evt_1"}]}
    assert signing.verify(SECRET.encode(), lowered, body.decode())["events"]
    rotated = {**headers, signing.SIGNATURE_HEADER: f"v1={'0' * 64}, {headers[signing.SIGNATURE_HEADER]}"}
    assert signing.verify(SECRET, rotated, body)
    old = signing.sign(SECRET, body, "dlv_1", timestamp=int(time.time()) - 600)
    refused = [
        (SECRET[:-1] + "x", headers, body),
        (SECRET, headers, body + b" "),
        (SECRET, old, body),
        (SECRET, {**headers, signing.TIMESTAMP_HEADER: str(int(time.time()) + 1)}, body),
        (SECRET, {**headers, signing.TIMESTAMP_HEADER: "soon"}, body),
        (SECRET, {k: v for k, v in headers.items() if k != signing.SIGNATURE_HEADER}, body),
        (SECRET, {**headers, signing.SIGNATURE_HEADER: "v1=é"}, body),
    ]
    for secret, hdrs, content in refused:
        with pytest.raises(signing.WebhookVerificationError):
            signing.verify(secret, hdrs, content)
    assert signing.verify(SECRET, old, body, tolerance=900)
    not_events = b'{"x": 1}'
    with pytest.raises(signing.WebhookVerificationError):
        signing.verify(SECRET, signing.sign(SECRET, not_events, "d"), not_events)


async def test_without_webhook_url_nothing_is_queued(tmp_path: Path) -> None:
    async with running(base_settings(tmp_path)) as server:
        assert server.runtime.webhooks is None
        await server.room("r1", [1, 2])
        async with chat(server, "r1", 1) as one:
            await one.expect("message_history")
            await say(one, "hello")
        assert await outbox_rows(server.settings.database_url) == []


async def test_a_restarted_sole_process_takes_back_a_killed_predecessors_lease(tmp_path: Path) -> None:
    """Killed in the middle of a delivery (its lease taken, the POST unanswered), the
    one process of a memory:// deployment delivers at once after a restart, not
    after the lease's time (WEBHOOK_TIMEOUT + 30 s)."""
    async with receiving() as receiver:
        receiver.hold = 30.0  # the first POST stays unanswered until the process is gone
        env = hook_env(receiver, DATABASE_URL=f"sqlite:///{tmp_path}/store.db")
        sent = await killed_once_tried(receiver, env, tmp_path, "mid-delivery")
        receiver.hold = 0.0
        await restarted_until_delivered(receiver, env, tmp_path, timeout=10)
        assert [e["data"]["message"] for e in receiver.of("message.created")] == [sent]
