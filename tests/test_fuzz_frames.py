"""Generated frames on every endpoint and every client frame type: wrong types,
missing and extra fields, edge numbers, deep nesting, long and odd strings,
binary and batched frames. Each answer is a protocol `error` or a normal frame,
the only closes are 1009 (an oversized frame) and 4001 (a bad `auth`), `ping`
still gets `pong` after every example, and the store stays whole: no half-written
rows, and exactly what the sockets were told is stored (`tests/fuzzing.py` has
the strategies and the harness)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from realtime.endpoints.chat import ChatEndpoint
from realtime.endpoints.consultation import ConsultationEndpoint
from realtime.endpoints.notifications import NotificationsEndpoint
from realtime.endpoints.reservation import ReservationEndpoint
from realtime.store import consultations, messages, reservations
from tests.conftest import Client, Server, token
from tests.fuzzing import COMMON, FUZZ, LIMIT, Actor, Arena, Payload, cmids, day, fixed, payloads, ref, to_text, words

EXAMPLES = 250
FAST = {"rate_limit": 1e6, "rate_burst": 1e6, "status_interval": 1e7, "presence_timeout": 600.0}

FILES = st.sampled_from(["https://cdn.example/a.png", "/files/x.bin"])


class ChatArena(Arena):
    endpoint = ChatEndpoint
    templates = {
        "chat_message": fixed({"content": words}, client_msg_id=cmids, message_type=st.just("text"))
        | fixed({"content": st.text(max_size=9), "message_type": st.sampled_from(["image", "file"]), "file_url": FILES})
        | fixed({"content": words, "message_type": st.just("file"), "file_url": FILES, "file_name": words}),
        "mark_read": fixed({"message_id": ref("message")}),
        "delete_message": fixed({"message_id": ref("message")}),
        "typing_start": st.just({}),
        "typing_stop": st.just({}),
        "fetch_history": fixed({}, before_seq=st.integers(1, 100), limit=st.integers(1, 100)),
        "sync": fixed({"since": st.integers(0, 60) | st.just(2**53)}),
        **COMMON,
    }
    events = frozenset({"message_history", "history_page", "chat_message", "typing_start", "typing_stop"})
    events |= {"message_read", "message_deleted", "resync_required"}

    async def start(self) -> None:
        await self.server.room("r1", [1, 2])
        await self.server.room("r2", [1, 3])
        foreign = await messages.post(self.db, "r2", {"id": 3, "name": "c"}, "another room's")
        self.foreign = foreign.message["id"]
        self.messages: dict[str, int] = {}
        self.deleted: set[str] = set()
        self.reads: set[tuple[str, int]] = set()
        self.actors = [Actor(1, "/ws/chat/r1/", "message_history"), Actor(2, "/ws/chat/r1/", "message_history")]
        await super().start()

    def pools(self) -> dict[str, list[Any]]:
        return {"message": [*self.messages, self.foreign, "nope"]}

    def learn(self, frame: dict[str, Any]) -> None:
        listed = frame.get("messages") or ([frame["message"]] if frame["type"] == "chat_message" else [])
        for message in listed:
            assert message["room_id"] == "r1", frame  # never another room's
            self.messages[message["id"]] = message["seq"]
        if frame["type"] == "message_deleted":
            self.deleted.add(frame["message_id"])
        if frame["type"] == "message_read":
            self.reads.add((frame["message_id"], frame["user_id"]))

    async def told_is_stored(self) -> None:
        assert self.messages, "valid frames got through too"
        rows = await self.db.fetch_all("SELECT id, seq, deleted_at FROM messages WHERE room_id = ?", ("r1",))
        assert {row[0]: int(row[1]) for row in rows} == self.messages
        assert {row[0] for row in rows if row[2] is not None} == self.deleted
        reads = await self.db.fetch_all(
            "SELECT r.message_id, r.user_id FROM message_reads r JOIN messages m ON m.id = r.message_id "
            "WHERE m.room_id = ?",
            ("r1",),
        )
        assert {(row[0], int(row[1])) for row in reads} == self.reads
        others = await self.db.fetch_all("SELECT id, deleted_at FROM messages WHERE room_id = ?", ("r2",))
        assert [tuple(row) for row in others] == [(self.foreign, None)]  # nothing reached another room


class ConsultationArena(Arena):
    endpoint = ConsultationEndpoint
    templates = {
        "start_consultation": st.just({}),
        "request_extension": fixed({"duration_minutes": st.integers(1, 60)}),
        "respond_extension": fixed({"request_id": ref("extension"), "accept": st.booleans()}),
        "presence_update": st.just({}),
        "end_consultation": st.just({}),
        "cancel_consultation": fixed({}, reason=st.text(max_size=40)),
        **COMMON,
    }
    events = frozenset({"consultation_status", "participant_joined", "participant_left", "consultation_started"})
    events |= {"consultation_ended", "consultation_cancelled", "extension_requested", "consultation_extended"}
    events |= {"extension_rejected"}

    async def start(self) -> None:
        await consultations.create(self.db, "other", 5, 6)
        await consultations.start(self.db, "other", None)
        self.foreign = (await consultations.request_extension(self.db, "other", 5, 10)).id
        self.count = 0
        self.told: dict[str, set[str]] = {}
        self.extended: set[str] = set()
        self.rejected: set[str] = set()
        self.requests: list[str] = []
        await self.book()

    async def book(self) -> None:
        self.count += 1
        self.cid = f"c{self.count}"
        self.told[self.cid] = set()
        await consultations.create(self.db, self.cid, 1, 2)
        path = f"/ws/consultation/{self.cid}/"
        self.actors = [Actor(1, path, "consultation_status"), Actor(2, path, "consultation_status")]
        await Arena.start(self)

    async def step(self, who: int, payload: Payload) -> None:
        await super().step(who, payload)
        if self.told[self.cid] & {"consultation_ended", "consultation_cancelled"}:
            await self.settle(0.25)  # over: read what is left, then go on with a new consultation
            for actor in self.actors:
                assert actor.client is not None
                await actor.client.close()
            await self.book()

    def pools(self) -> dict[str, list[Any]]:
        return {"extension": [*self.requests, self.foreign, "nope"]}

    def may_close(self, code: int | None) -> bool:
        # An ended or cancelled consultation closes its sockets (4003) after telling them.
        return code == 4003 and bool(self.told[self.cid] & {"consultation_ended", "consultation_cancelled"})

    def learn(self, frame: dict[str, Any]) -> None:
        self.told[self.cid].add(frame["type"])
        pending = frame.get("status_data", {}).get("pending_extension")
        for request_id in (frame.get("request_id"), pending and pending["request_id"]):
            if request_id and request_id not in self.requests:
                self.requests.append(request_id)
        if frame["type"] == "consultation_extended":
            self.extended.add(frame["request_id"])
        if frame["type"] == "extension_rejected":
            self.rejected.add(frame["request_id"])

    async def told_is_stored(self) -> None:
        assert any("consultation_started" in told for told in self.told.values()), "valid frames got through too"
        rows = await self.db.fetch_all(
            "SELECT e.id, e.status, e.duration_minutes, c.id FROM consultation_extensions e "
            "JOIN consultations c ON c.id = e.consultation_id WHERE c.id <> 'other'"
        )
        assert {row[0] for row in rows if row[1] == "accepted"} == self.extended
        assert {row[0] for row in rows if row[1] == "rejected"} == self.rejected
        for cid, told in self.told.items():
            c = await consultations.get(self.db, cid)
            assert c is not None
            assert (c.status == "completed") == ("consultation_ended" in told), (c, told)
            assert (c.status == "cancelled") == ("consultation_cancelled" in told), (c, told)
            assert (c.started_at is not None) == ("consultation_started" in told), (c, told)
            added = sum(int(row[2]) for row in rows if row[3] == cid and row[1] == "accepted")
            assert c.duration_minutes == consultations.DEFAULT_MINUTES + added, c
        other = await consultations.open_extension(self.db, "other")
        assert other is not None and other.id == self.foreign  # another consultation's request untouched


class ReservationArena(Arena):
    endpoint = ReservationEndpoint
    templates = {
        "reservation_request": fixed(
            {
                "child_name": words,
                "requested_date": st.sampled_from([day(1), day(30), day(0), day(-1), "2030-02-30"]),
                "requested_time": st.sampled_from(["00:00", "23:59", "24:00", "12:60", "9:00"]),
                "concern_summary": st.text(max_size=30),
            },
            client_msg_id=cmids,
        ),
        "cancel_request": fixed({"request_id": ref("request")}),
        "client_message": fixed({"message": words}, client_msg_id=cmids),
        "accept_request": fixed({"request_id": ref("request")}),
        "reject_request": fixed({"request_id": ref("request")}, reason=st.text(max_size=20)),
        "expert_message": fixed(
            {"client_id": st.sampled_from([21, 22, 10, 23, 99]), "message": words}, client_msg_id=cmids
        ),
        **COMMON,
    }
    events = frozenset({"reservation_state", "reservation_request", "request_created", "request_cancelled"})
    events |= {"client_message", "expert_message", "request_accepted", "request_rejected"}

    async def start(self) -> None:
        saved = await reservations.create_request(self.db, 11, {"id": 23, "name": "x"}, "kid", day(5), "10:00", "")
        self.foreign = saved.record["id"]
        self.requests: dict[str, str] = {}
        self.messages: set[str] = set()
        path = "/ws/reservation-chat/10/"
        self.actors = [Actor(10, path, "reservation_state", role="expert")]
        self.actors += [Actor(21, path, "reservation_state"), Actor(22, path, "reservation_state")]
        await super().start()

    def pools(self) -> dict[str, list[Any]]:
        return {"request": [*self.requests, self.foreign, "nope"]}

    def learn(self, frame: dict[str, Any]) -> None:
        for request in [*frame.get("requests", []), *([frame["request"]] if "request" in frame else [])]:
            self.requests[request["id"]] = request["status"]
        if frame["type"] == "request_cancelled":
            self.requests[frame["request_id"]] = "cancelled"
        for message in [*frame.get("messages", []), *([frame] if frame["type"].endswith("_message") else [])]:
            assert message.get("expert_id", 10) == 10, frame
            self.messages.add(message["id"])

    async def told_is_stored(self) -> None:
        assert self.requests and self.messages, "valid frames got through too"
        rows = await self.db.fetch_all("SELECT id, status FROM reservation_requests WHERE expert_id = 10")
        assert {row[0]: row[1] for row in rows} == self.requests
        rows = await self.db.fetch_all("SELECT id FROM reservation_messages")
        assert {row[0] for row in rows} == self.messages
        row = await self.db.fetch_one("SELECT status FROM reservation_requests WHERE id = ?", (self.foreign,))
        assert row is not None and row[0] == "pending"  # another expert's request untouched


class NotificationArena(Arena):
    endpoint = NotificationsEndpoint
    templates = {
        "mark_read": fixed({"notification_id": ref("notification")}),
        "mark_all_read": st.just({}),
        "sync": fixed({"since": st.integers(0, 60) | st.just(2**53)}),
        **COMMON,
    }
    events = frozenset({"bulk_update", "new_notification", "notification_read", "resync_required"})

    async def start(self) -> None:
        for user_id in (1, 1, 1, 2):
            await self.notify(user_id, "seed")
        row = await self.db.fetch_one("SELECT id FROM notifications WHERE user_id = 2")
        assert row is not None
        self.foreign = row[0]
        self.known: set[str] = set()
        self.read: set[str] = set()
        self.actors = [Actor(1, "/ws/notifications/", "bulk_update"), Actor(1, "/ws/notifications/1/", "bulk_update")]
        await super().start()

    async def notify(self, user_id: int, title: str) -> None:
        async with self.server.api() as api:
            body = {"user_id": user_id, "type": "message", "title": title, "body": ""}
            assert (await api.post("/api/notifications", json=body)).status_code == 201

    def pools(self) -> dict[str, list[Any]]:
        return {"notification": [*sorted(self.known), self.foreign, "nope"]}

    def learn(self, frame: dict[str, Any]) -> None:
        listed = [*frame.get("notifications", []), *([frame["notification"]] if "notification" in frame else [])]
        for note in listed:
            self.known.add(note["id"])
            if note["is_read"]:
                self.read.add(note["id"])
        if frame["type"] == "notification_read":
            self.read.add(frame["notification_id"])

    async def told_is_stored(self) -> None:
        assert self.read, "valid frames got through too"
        rows = await self.db.fetch_all("SELECT id, read_seq FROM notifications WHERE user_id = 1")
        assert {row[0] for row in rows} == self.known
        assert {row[0] for row in rows if row[1] is not None} == self.read
        row = await self.db.fetch_one("SELECT read_seq FROM notifications WHERE id = ?", (self.foreign,))
        assert row is not None and row[0] is None  # another user's notification untouched


@pytest.fixture
async def arenas(server: Server) -> AsyncIterator[dict[type[Arena], Arena]]:
    """One arena per test function, kept across its examples, checked at the end."""
    made: dict[type[Arena], Arena] = {}
    yield made
    for arena in made.values():
        await arena.finish()
        assert arena.examples > 0


async def arena_of(kind: type[Arena], made: dict[type[Arena], Arena], server: Server) -> Arena:
    if kind not in made:
        made[kind] = kind(server)
        await made[kind].start()
    return made[kind]


@pytest.mark.settings(**FAST)
@settings(FUZZ, max_examples=EXAMPLES)
@given(who=st.integers(0, 5), payload=payloads(ChatArena.templates))
async def test_chat(server: Server, arenas: dict[type[Arena], Arena], who: int, payload: Payload) -> None:
    await (await arena_of(ChatArena, arenas, server)).step(who, payload)


@pytest.mark.settings(**FAST)
@settings(FUZZ, max_examples=EXAMPLES)
@given(who=st.integers(0, 5), payload=payloads(ConsultationArena.templates))
async def test_consultation(server: Server, arenas: dict[type[Arena], Arena], who: int, payload: Payload) -> None:
    await (await arena_of(ConsultationArena, arenas, server)).step(who, payload)


@pytest.mark.settings(**FAST)
@settings(FUZZ, max_examples=EXAMPLES)
@given(who=st.integers(0, 5), payload=payloads(ReservationArena.templates))
async def test_reservation_as_expert_and_clients(
    server: Server, arenas: dict[type[Arena], Arena], who: int, payload: Payload
) -> None:
    await (await arena_of(ReservationArena, arenas, server)).step(who, payload)


@pytest.mark.settings(**FAST)
@settings(FUZZ, max_examples=120)
@given(who=st.integers(0, 5), payload=payloads(NotificationArena.templates), notify=st.integers(0, 5))
async def test_notifications(
    server: Server, arenas: dict[type[Arena], Arena], who: int, payload: Payload, notify: int
) -> None:
    arena = await arena_of(NotificationArena, arenas, server)
    if notify == 0:  # the main backend keeps notifying meanwhile
        await arena.notify(1, "more")  # type: ignore[attr-defined]
    await arena.step(who, payload)


GOOD = token(1)
FIRST = {
    "auth": fixed({"token": st.sampled_from([GOOD, "x", token(1, exp=1), "a.b.c"]) | st.text(max_size=30)}),
    "ping": st.just({}),
    "chat_message": fixed({"content": words}),
}


@settings(FUZZ, max_examples=60)
@given(payload=payloads(FIRST))
async def test_first_frame_before_auth(server: Server, payload: Payload) -> None:
    """An unauthenticated socket's first frame: `auth_ok` for a good `auth`, else 4001 (1009 over the limit)."""
    if await server.runtime.db.fetch_one("SELECT 1 FROM rooms WHERE id = 'r1'") is None:
        await server.room("r1", [1])
    text = payload.body if payload.kind != "json" else to_text(payload.body, payload.raw)
    async with connect(server.ws_url("/ws/chat/r1/"), open_timeout=5, close_timeout=1, max_size=None) as conn:
        client = Client(conn)
        await client.send(text)
        try:
            first = await client.recv()
        except ConnectionClosed:
            oversized = isinstance(text, str) and len(text.encode()) > LIMIT
            assert conn.close_code == (1009 if oversized else 4001), (conn.close_code, str(text)[:300])
            return
        assert first["type"] == "auth_ok" and isinstance(text, str) and GOOD in text, first
        assert first["user"]["id"] == 1
        await client.expect("message_history")
        await client.send({"type": "ping"})
        await client.expect("pong")


def test_every_endpoint_is_fuzzed() -> None:
    from realtime.server import SOCKETS

    arenas = (ChatArena, ConsultationArena, ReservationArena, NotificationArena)
    assert {endpoint for _, endpoint in SOCKETS} == {arena.endpoint for arena in arenas}
    for arena in arenas:
        assert set(arena.templates) == set(arena.endpoint.kinds), arena
