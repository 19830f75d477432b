"""Reservation chat over real sockets: one expert, two clients, and every frame
reaching exactly whom it should."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.conftest import Client, Server, token, ws
from tests.procs import REDIS_URL, fresh_postgres, require, servers

EXPERT = 10
ALICE = 21
BOB = 22
REQUEST_SHAPE = {
    "id",
    "client",
    "child_name",
    "requested_date",
    "requested_time",
    "concern_summary",
    "status",
    "created_at",
}


def day(offset: int) -> str:
    return (datetime.now(UTC).date() + timedelta(days=offset)).isoformat()


def request(**changes: Any) -> dict[str, Any]:
    frame = {
        "type": "reservation_request",
        "child_name": "Seoyun",
        "requested_date": day(3),
        "requested_time": "14:30",
        "concern_summary": "sleep problems",
    }
    return {**frame, **changes}


def rsv(server: Server, user_id: int, expert_id: int = EXPERT, **claims: Any) -> Any:
    claims.setdefault("name", "Dr. Kim" if user_id == EXPERT else f"user{user_id}")
    if user_id == EXPERT:
        claims.setdefault("role", "expert")
    return ws(server.ws_url(f"/ws/reservation-chat/{expert_id}/", token=token(user_id, **claims)))


@contextlib.asynccontextmanager
async def cast(server: Server) -> AsyncIterator[tuple[Client, Client, Client, Client, Client]]:
    """Two expert tabs, two tabs of Alice, one of Bob; each past its `reservation_state`."""
    async with (
        rsv(server, EXPERT) as e1,
        rsv(server, EXPERT) as e2,
        rsv(server, ALICE) as a1,
        rsv(server, ALICE) as a2,
        rsv(server, BOB) as b,
    ):
        for c in (e1, e2, a1, a2, b):
            await c.expect("reservation_state")
        yield e1, e2, a1, a2, b


async def quiet(*clients: Client) -> None:
    for c in clients:
        await c.silent()


async def error_of(client: Client, request_type: str, code: str) -> dict[str, Any]:
    frame = await client.expect("error")
    assert frame["code"] == code and frame["request_type"] == request_type, frame
    # The socket stays usable.
    await client.send({"type": "ping"})
    await client.expect("pong")
    return frame


async def test_a_request_reaches_the_expert_and_only_its_own_client(server: Server) -> None:
    async with cast(server) as (e1, e2, a1, a2, b):
        await a1.send(request(client_msg_id="r1"))
        for expert in (e1, e2):
            got = (await expert.expect("reservation_request"))["request"]
            assert REQUEST_SHAPE <= got.keys()
            assert got["client"] == {"id": ALICE, "name": f"user{ALICE}"}
            assert got["status"] == "pending" and got["child_name"] == "Seoyun"
            assert got["requested_date"] == day(3) and got["requested_time"] == "14:30"
            assert got["concern_summary"] == "sleep problems" and got["created_at"].endswith("Z")
            assert "reason" not in got
        for tab in (a1, a2):
            created = (await tab.expect("request_created"))["request"]
            assert created == got
        await quiet(b, e1, e2, a1, a2)


async def test_the_expert_accepts_and_rejects_and_only_that_client_hears(server: Server) -> None:
    async with cast(server) as (e1, e2, a1, a2, b):
        await a1.send(request())
        mine = (await e1.expect("reservation_request"))["request"]
        await e2.expect("reservation_request")
        await b.send(request(child_name="Jiho"))
        theirs = (await e1.expect("reservation_request"))["request"]
        await e2.expect("reservation_request")
        for c in (a1, a2):
            await c.expect("request_created")
        await b.expect("request_created")

        await e1.send({"type": "accept_request", "request_id": mine["id"]})
        for c in (a1, a2, e1, e2):
            accepted = (await c.expect("request_accepted"))["request"]
            assert accepted["id"] == mine["id"] and accepted["status"] == "accepted"
        await quiet(b)

        await e2.send({"type": "reject_request", "request_id": theirs["id"], "reason": "  fully booked  "})
        for c in (b, e1, e2):
            rejected = await c.expect("request_rejected")
            assert rejected["reason"] == "fully booked"
            assert rejected["request"]["status"] == "rejected" and rejected["request"]["reason"] == "fully booked"
        await quiet(a1, a2)

        await e1.send({"type": "accept_request", "request_id": mine["id"]})
        await error_of(e1, "accept_request", "conflict")
        await e1.send({"type": "reject_request", "request_id": theirs["id"]})
        await error_of(e1, "reject_request", "conflict")
        await e1.send({"type": "accept_request", "request_id": "nope"})
        await error_of(e1, "accept_request", "not_found")
        await e1.send({"type": "reject_request", "request_id": "nope"})
        await error_of(e1, "reject_request", "not_found")
        await quiet(e2, a1, a2, b)


async def test_a_reject_without_reason_says_so(server: Server) -> None:
    async with cast(server) as (e1, e2, a1, a2, b):
        await a1.send(request())
        mine = (await e1.expect("reservation_request"))["request"]
        await e2.expect("reservation_request")
        await a1.expect("request_created")
        await a2.expect("request_created")
        await e1.send({"type": "reject_request", "request_id": mine["id"]})
        for c in (a1, a2, e1, e2):
            rejected = await c.expect("request_rejected")
            assert rejected["reason"] is None and "reason" not in rejected["request"]
        await quiet(b)


async def test_messages_stay_between_the_expert_and_one_client(server: Server) -> None:
    async with cast(server) as (e1, e2, a1, a2, b):
        await a1.send({"type": "client_message", "message": "hello doctor", "client_msg_id": "m1"})
        for c in (e1, e2, a1, a2):
            got = await c.expect("client_message")
            assert got["client_id"] == ALICE and got["client"] == {"id": ALICE, "name": f"user{ALICE}"}
            assert got["message"] == "hello doctor" and got["created_at"].endswith("Z")
            assert got["client_msg_id"] == "m1"
        await quiet(b)

        await e1.send({"type": "expert_message", "client_id": ALICE, "message": "hello Alice"})
        for c in (a1, a2, e1, e2):
            got = await c.expect("expert_message")
            assert got["expert_id"] == EXPERT and got["message"] == "hello Alice" and got["created_at"].endswith("Z")
        await quiet(b)

        # Bob has not written or asked yet: the expert cannot start a thread with him.
        await e1.send({"type": "expert_message", "client_id": BOB, "message": "hi"})
        await error_of(e1, "expert_message", "not_found")
        await b.send({"type": "client_message", "message": "me too"})
        for c in (e1, e2, b):
            assert (await c.expect("client_message"))["client_id"] == BOB
        await e2.send({"type": "expert_message", "client_id": BOB, "message": "hello Bob"})
        for c in (b, e1, e2):
            assert (await c.expect("expert_message"))["message"] == "hello Bob"
        await quiet(a1, a2)


async def test_a_client_cannot_act_as_the_expert_nor_touch_another_client(server: Server) -> None:
    async with cast(server) as (e1, e2, a1, a2, b):
        await b.send(request())
        theirs = (await e1.expect("reservation_request"))["request"]
        await e2.expect("reservation_request")
        await b.expect("request_created")
        await b.send({"type": "client_message", "message": "hi"})
        for c in (e1, e2, b):
            await c.expect("client_message")

        await a1.send({"type": "accept_request", "request_id": theirs["id"]})
        await error_of(a1, "accept_request", "forbidden")
        await a1.send({"type": "reject_request", "request_id": theirs["id"], "reason": "no"})
        await error_of(a1, "reject_request", "forbidden")
        await a1.send({"type": "expert_message", "client_id": BOB, "message": "psst"})
        await error_of(a1, "expert_message", "forbidden")
        # Another client's request id is not even found.
        await a1.send({"type": "cancel_request", "request_id": theirs["id"]})
        await error_of(a1, "cancel_request", "not_found")
        await quiet(e1, e2, a2, b)

    async with rsv(server, EXPERT) as e:
        state = await e.expect("reservation_state")
        assert [r["id"] for r in state["requests"]] == [theirs["id"]]
        assert state["requests"][0]["status"] == "pending"


async def test_the_expert_cannot_send_client_frames_on_their_own_channel(server: Server) -> None:
    async with cast(server) as (e1, e2, a1, a2, b):
        await e1.send(request())
        await error_of(e1, "reservation_request", "forbidden")
        await e1.send({"type": "client_message", "message": "hi"})
        await error_of(e1, "client_message", "forbidden")
        await e1.send({"type": "cancel_request", "request_id": "x"})
        await error_of(e1, "cancel_request", "forbidden")
        await e1.send({"type": "expert_message", "client_id": EXPERT, "message": "me"})
        await error_of(e1, "expert_message", "forbidden")
        await quiet(e2, a1, a2, b)


async def test_a_client_cancels_its_own_pending_request(server: Server) -> None:
    async with cast(server) as (e1, e2, a1, a2, b):
        await a1.send(request())
        mine = (await e1.expect("reservation_request"))["request"]
        await e2.expect("reservation_request")
        await a1.expect("request_created")
        await a2.expect("request_created")
        await a2.send({"type": "cancel_request", "request_id": mine["id"]})
        for c in (e1, e2, a1, a2):
            assert await c.expect("request_cancelled") == {"type": "request_cancelled", "request_id": mine["id"]}
        await quiet(b)
        await a1.send({"type": "cancel_request", "request_id": mine["id"]})
        await error_of(a1, "cancel_request", "conflict")
        await e1.send({"type": "accept_request", "request_id": mine["id"]})
        await error_of(e1, "accept_request", "conflict")
        await quiet(e2, a2, b)


async def test_every_validation_rule_answers_and_stores_nothing(server: Server) -> None:
    long_name = "x" * 101
    bad_requests = [
        request(requested_date=day(0)),
        request(requested_date=day(-1)),
        request(requested_date="2031-02-30"),
        request(requested_date="2031/01/01"),
        request(requested_date="20310101"),
        request(requested_date=20310101),
        request(requested_time="24:00"),
        request(requested_time="12:60"),
        request(requested_time="9:00"),
        request(requested_time="09:00:00"),
        request(child_name="   "),
        request(child_name=""),
        request(child_name=long_name),
        request(concern_summary="y" * 2001),
        {k: v for k, v in request().items() if k != "child_name"},
        {k: v for k, v in request().items() if k != "requested_date"},
    ]
    async with cast(server) as (e1, e2, a1, a2, b):
        for bad in bad_requests:
            await a1.send(bad)
            await error_of(a1, "reservation_request", "invalid_payload")
        for message in ("", "   ", "z" * 2001, None, 5):
            await a1.send({"type": "client_message", "message": message})
            await error_of(a1, "client_message", "invalid_payload")
        await e1.send({"type": "reject_request", "request_id": "x", "reason": "r" * 501})
        await error_of(e1, "reject_request", "invalid_payload")
        await e1.send({"type": "expert_message", "client_id": ALICE, "message": "  "})
        await error_of(e1, "expert_message", "invalid_payload")
        await e1.send({"type": "expert_message", "client_id": "21", "message": "hi"})
        await error_of(e1, "expert_message", "invalid_payload")
        await e1.send({"type": "accept_request"})
        await error_of(e1, "accept_request", "invalid_payload")
        await a1.send({"type": "nope"})
        assert (await a1.expect("error"))["code"] == "unknown_type"
        await a1.send("{not json")
        assert (await a1.expect("error"))["code"] == "invalid_json"
        await quiet(e1, e2, a2, b)

        # Edge values that are valid: one day ahead, 00:00, 100 characters, 2,000-character text.
        await a1.send(request(requested_date=day(1), requested_time="00:00", child_name="  " + "n" * 100 + " "))
        edge = (await a1.expect("request_created"))["request"]
        assert edge["child_name"] == "n" * 100
        await a1.send(request(requested_time="23:59", concern_summary="s" * 2000))
        await a1.expect("request_created")
        await a1.send({"type": "client_message", "message": "m" * 2000})
        await a1.expect("client_message")

        # At most five pending requests per client with this expert.
        for _ in range(3):
            await a1.send(request())
            await a1.expect("request_created")
        await a1.send(request())
        await error_of(a1, "reservation_request", "conflict")
        # Another client has its own allowance.
        await b.send(request())
        await b.expect("request_created")

    async with rsv(server, ALICE) as a:
        state = await a.expect("reservation_state")
        assert len(state["requests"]) == 5
        assert len(state["messages"]) == 1


async def test_a_repeated_client_msg_id_stores_nothing_and_answers_the_sender(server: Server) -> None:
    async with cast(server) as (e1, e2, a1, a2, b):
        await a1.send(request(client_msg_id="same"))
        first = (await a1.expect("request_created"))["request"]
        for c in (e1, e2):
            await c.expect("reservation_request")
        await a2.expect("request_created")
        await a1.send(request(client_msg_id="same", child_name="Other"))
        again = (await a1.expect("request_created"))["request"]
        assert again == first and again["client_msg_id"] == "same"
        await quiet(e1, e2, a2, b)

        await a1.send({"type": "client_message", "message": "once", "client_msg_id": "m"})
        sent = await a1.expect("client_message")
        for c in (e1, e2, a2):
            await c.expect("client_message")
        await a1.send({"type": "client_message", "message": "once", "client_msg_id": "m"})
        assert await a1.expect("client_message") == sent
        await quiet(e1, e2, a2, b)

        await e1.send({"type": "expert_message", "client_id": ALICE, "message": "reply", "client_msg_id": "m"})
        answer = await e1.expect("expert_message")
        for c in (e2, a1, a2):
            await c.expect("expert_message")
        await e1.send({"type": "expert_message", "client_id": ALICE, "message": "reply", "client_msg_id": "m"})
        assert await e1.expect("expert_message") == answer
        await quiet(e2, a1, a2, b)

        # Another client may use the same client_msg_id: it is per sender.
        await b.send(request(client_msg_id="same"))
        assert (await b.expect("request_created"))["request"]["id"] != first["id"]

    async with rsv(server, ALICE) as a:
        state = await a.expect("reservation_state")
        assert [r["id"] for r in state["requests"]] == [first["id"]]
        assert [m["message"] for m in state["messages"]] == ["once", "reply"]


async def test_reconnects_get_their_own_state_back(server: Server) -> None:
    async with cast(server) as (e1, _e2, a1, a2, b):
        for client, child in ((a1, "A1"), (a1, "A2"), (b, "B1")):
            await client.send(request(child_name=child))
            await e1.expect("reservation_request")
        accepted = (await a2.expect("request_created"))["request"]
        assert accepted["child_name"] == "A1"
        await e1.send({"type": "accept_request", "request_id": accepted["id"]})
        await e1.expect("request_accepted")
        await a1.send({"type": "client_message", "message": "from Alice"})
        await e1.expect("client_message")
        await b.send({"type": "client_message", "message": "from Bob"})
        await e1.expect("client_message")
        await e1.send({"type": "expert_message", "client_id": BOB, "message": "to Bob"})
        await e1.expect("expert_message")

    async with rsv(server, EXPERT) as e:
        state = await e.expect("reservation_state")
        assert [r["child_name"] for r in state["requests"]] == ["A2", "B1"]
        assert all(r["status"] == "pending" for r in state["requests"])
        assert [(m["client_id"], m["sender"], m["message"]) for m in state["messages"]] == [
            (ALICE, "client", "from Alice"),
            (BOB, "client", "from Bob"),
            (BOB, "expert", "to Bob"),
        ]
    async with rsv(server, ALICE) as a:
        state = await a.expect("reservation_state")
        assert [(r["child_name"], r["status"]) for r in state["requests"]] == [("A1", "accepted"), ("A2", "pending")]
        assert [m["message"] for m in state["messages"]] == ["from Alice"]
        assert all(r["client"]["id"] == ALICE for r in state["requests"])
    async with rsv(server, BOB) as b:
        state = await b.expect("reservation_state")
        assert [r["child_name"] for r in state["requests"]] == ["B1"]
        assert [m["message"] for m in state["messages"]] == ["from Bob", "to Bob"]


async def test_who_gets_which_view_and_who_is_refused(server: Server) -> None:
    await server.user(30, "Dr. Park", "expert")
    await server.user(40, "Plain", "client")
    # The expert of path 10 is just a client on the channel of expert 30.
    async with (
        rsv(server, EXPERT, expert_id=30) as other,
        rsv(server, 30, expert_id=30, role="expert", name="Dr. Park") as park,
    ):
        await other.expect("reservation_state")
        await park.expect("reservation_state")
        await other.send(request())
        assert (await park.expect("reservation_request"))["request"]["client"]["id"] == EXPERT
        await other.expect("request_created")
    # Without a role anywhere, the user of the path is its expert.
    async with rsv(server, 50, expert_id=50, name="Dr. Lee") as lee:
        assert (await lee.expect("reservation_state")) == {"type": "reservation_state", "requests": [], "messages": []}
        await lee.send({"type": "accept_request", "request_id": "nope"})
        await error_of(lee, "accept_request", "not_found")
    async with rsv(server, 60, expert_id=60, role="client") as self_client:
        assert await self_client.closed() == 4003
    async with rsv(server, ALICE, expert_id=40) as a:
        assert await a.closed() == 4004
    for path in ("abc", "0", "-1", "99999999999999999999"):
        async with rsv(server, ALICE, expert_id=path) as a:  # type: ignore[arg-type]
            assert await a.closed() == 4004
    async with ws(server.ws_url(f"/ws/reservation-chat/{EXPERT}/", token="garbage")) as anon:
        assert await anon.closed() == 4001


async def test_requests_and_answers_notify(server: Server) -> None:
    def notes(user_id: int) -> Any:
        return ws(server.ws_url("/ws/notifications/", token=token(user_id)))

    async with cast(server) as (e1, _e2, a1, _a2, b), notes(EXPERT) as en, notes(ALICE) as an, notes(BOB) as bn:
        for c in (en, an, bn):
            await c.expect("bulk_update")
        await a1.send(request(child_name="Seoyun"))
        mine = (await e1.expect("reservation_request"))["request"]
        note = (await en.expect("new_notification"))["notification"]
        assert note["type"] == "consultation" and note["is_read"] is False
        assert "user21" in note["body"] and "Seoyun" in note["body"]
        await quiet(an, bn)

        await b.send(request())
        theirs = (await e1.expect("reservation_request"))["request"]
        await en.expect("new_notification")
        await e1.send({"type": "accept_request", "request_id": mine["id"]})
        accepted = (await an.expect("new_notification"))["notification"]
        assert accepted["type"] == "consultation"
        await e1.send({"type": "reject_request", "request_id": theirs["id"], "reason": "booked"})
        rejected = (await bn.expect("new_notification"))["notification"]
        assert rejected["type"] == "consultation" and "booked" in rejected["body"]
        assert accepted["title"] != rejected["title"]
        await quiet(en, an, bn)


async def test_privacy_holds_across_two_processes(tmp_path: Path) -> None:
    require("redis")
    require("postgres")
    async with fresh_postgres() as db_url:
        env = {"DATABASE_URL": db_url, "BROKER_URL": REDIS_URL}
        async with servers(2, env, tmp_path) as (one, two):

            def on(proc: Any, user_id: int, **claims: Any) -> Any:
                claims.setdefault("name", f"user{user_id}")
                url = proc.ws_url(f"/ws/reservation-chat/{EXPERT}/", token=token(user_id, **claims))
                return ws(url)

            async with (
                on(one, EXPERT, role="expert") as e,
                on(two, ALICE) as a,
                on(one, ALICE) as a_other,
                on(two, BOB) as b,
            ):
                for c in (e, a, a_other, b):
                    await c.expect("reservation_state")
                await a.send(request())
                mine = (await e.expect("reservation_request"))["request"]
                await a.expect("request_created")
                await a_other.expect("request_created")
                await e.send({"type": "accept_request", "request_id": mine["id"]})
                for c in (a, a_other, e):
                    await c.expect("request_accepted")
                await e.send({"type": "expert_message", "client_id": ALICE, "message": "see you"})
                for c in (a, a_other, e):
                    assert (await c.expect("expert_message"))["message"] == "see you"
                await quiet(b)
