"""Who may do what: every endpoint, five kinds of user, every client frame
type, with the expected outcome of each cell written down below, then the
cross-user attempts (another room's message, another user's notification,
another expert's request, another consultation's extension).

Roles: `owner` (the room member who wrote the message, the consultation's
expert, the reservation path's expert, the notifications' user), `member` (the
other room member, the consultation's client, a client with a pending request),
`stranger`, `other_expert` (an expert of another id) and `same_expert_client`
(another client of the owner expert). Outcomes: `4003` (refused at connect),
`error:<code>`, `event:<type>` (the frame the actor then receives), `pong`,
`auth_ok`, `history_page`, or `ok` (no error, nothing sent back). A cell that
ends in a refusal or an error must leave the store exactly as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from websockets.exceptions import ConnectionClosed

from realtime.store import consultations, messages, notifications, reservations
from realtime.store.db import Runner
from tests.conftest import Client, Server, token, ws

ROLES = ("owner", "member", "stranger", "other_expert", "same_expert_client")
REFUSED = dict.fromkeys(ROLES[2:], "4003")

CHAT = {  # room r1: owner 1 (expert, wrote the message), member 2
    "ping": {"owner": "pong", "member": "pong", **REFUSED},
    "auth": {"owner": "auth_ok", "member": "auth_ok", **REFUSED},
    "sync": {"owner": "event:chat_message", "member": "event:chat_message", **REFUSED},
    "chat_message": {"owner": "event:chat_message", "member": "event:chat_message", **REFUSED},
    "typing_start": {"owner": "ok", "member": "ok", **REFUSED},
    "typing_stop": {"owner": "ok", "member": "ok", **REFUSED},
    "mark_read": {"owner": "ok", "member": "event:message_read", **REFUSED},
    "delete_message": {"owner": "event:message_deleted", "member": "error:forbidden", **REFUSED},
    "fetch_history": {"owner": "history_page", "member": "history_page", **REFUSED},
}
CONSULTATION = {  # expert 1 (owner), client 2 (member); each cell on a fresh consultation
    "ping": {"owner": "pong", "member": "pong", **REFUSED},
    "auth": {"owner": "auth_ok", "member": "auth_ok", **REFUSED},
    "presence_update": {"owner": "ok", "member": "ok", **REFUSED},
    "start_consultation": {"owner": "event:consultation_started", "member": "error:forbidden", **REFUSED},
    "end_consultation": {"owner": "event:consultation_ended", "member": "error:forbidden", **REFUSED},
    "cancel_consultation": {"owner": "event:consultation_cancelled", "member": "event:consultation_cancelled"}
    | REFUSED,
    "request_extension": {"owner": "ok", "member": "ok", **REFUSED},
    # The open request was made by the client: only the expert answers it.
    "respond_extension": {"owner": "event:consultation_extended", "member": "error:forbidden", **REFUSED},
}
CLIENT_VIEW = {"member": "", "stranger": "", "other_expert": "", "same_expert_client": ""}
RESERVATION = {  # path /10/: expert 10 (owner); everybody else gets a client view of their own
    "ping": {"owner": "pong"} | dict.fromkeys(CLIENT_VIEW, "pong"),
    "auth": {"owner": "auth_ok"} | dict.fromkeys(CLIENT_VIEW, "auth_ok"),
    "reservation_request": {"owner": "error:forbidden"} | dict.fromkeys(CLIENT_VIEW, "event:request_created"),
    # The pending request is the member's: another client's id is not theirs to see.
    "cancel_request": {"owner": "error:forbidden", "member": "event:request_cancelled"}
    | dict.fromkeys(ROLES[2:], "error:not_found"),
    "client_message": {"owner": "error:forbidden"} | dict.fromkeys(CLIENT_VIEW, "event:client_message"),
    "accept_request": {"owner": "event:request_accepted"} | dict.fromkeys(CLIENT_VIEW, "error:forbidden"),
    "reject_request": {"owner": "event:request_rejected"} | dict.fromkeys(CLIENT_VIEW, "error:forbidden"),
    "expert_message": {"owner": "event:expert_message"} | dict.fromkeys(CLIENT_VIEW, "error:forbidden"),
}
NOTIFICATIONS = {  # path /ws/notifications/1/: only user 1
    "ping": {"owner": "pong"} | dict.fromkeys(ROLES[1:], "4003"),
    "auth": {"owner": "auth_ok"} | dict.fromkeys(ROLES[1:], "4003"),
    "sync": {"owner": "event:new_notification"} | dict.fromkeys(ROLES[1:], "4003"),
    "mark_read": {"owner": "event:notification_read"} | dict.fromkeys(ROLES[1:], "4003"),
    "mark_all_read": {"owner": "event:bulk_update"} | dict.fromkeys(ROLES[1:], "4003"),
}

Actor = tuple[int, str | None]  # user id, role claim
Cell = Callable[[str, str], Awaitable[tuple[str, dict[str, Any]]]]  # (frame type, role) -> (path, frame)


def day(offset: int) -> str:
    return (datetime.now(UTC).date() + timedelta(days=offset)).isoformat()


async def fingerprint(server: Server) -> tuple[Any, ...]:
    """Everything a frame could change, in one read."""
    row = await server.runtime.db.fetch_one(
        "SELECT (SELECT COUNT(*) FROM messages), (SELECT COUNT(*) FROM messages WHERE deleted_at IS NULL), "
        "(SELECT COUNT(*) FROM message_reads), (SELECT COUNT(*) FROM stream_events), "
        "(SELECT COUNT(*) FROM consultations WHERE status = 'waiting'), "
        "(SELECT COUNT(*) FROM consultation_extensions WHERE status = 'open'), "
        "(SELECT COUNT(*) FROM reservation_requests WHERE status = 'pending'), "
        "(SELECT COUNT(*) FROM reservation_messages), (SELECT COUNT(*) FROM notifications WHERE read_seq IS NULL)"
    )
    assert row is not None
    return tuple(row)


async def outcome(server: Server, path: str, actor: Actor, frame: dict[str, Any], expected: str) -> str:
    user_id, role = actor
    url = server.ws_url(path, token=token(user_id, name=f"user{user_id}", role=role))
    async with ws(url) as client:
        try:
            first = await client.recv()
        except ConnectionClosed:
            return str(client.conn.close_code)
        assert first["type"] in ("message_history", "consultation_status", "reservation_state", "bulk_update"), first
        if frame["type"] == "auth":
            frame = {**frame, "token": token(user_id, role=role)}
        await client.send(frame)
        await client.send({"type": "ping"})
        seen = await until_pong(client, twice=frame["type"] == "ping")
        errors = [f["code"] for f in seen if f["type"] == "error"]
        if errors:
            return f"error:{errors[0]}"
        wanted = expected.removeprefix("event:")
        if expected.startswith("event:") and wanted not in {f["type"] for f in seen}:
            with contextlib.suppress(TimeoutError):  # a broadcast comes through the hub, maybe after the pong
                while (await client.recv(3))["type"] != wanted:
                    pass
                seen.append({"type": wanted})
        types = {f["type"] for f in seen}
        for direct in ("pong", "auth_ok", "history_page"):
            if direct == expected and direct in types:
                return direct
        return expected if expected.startswith("event:") and wanted in types else "ok"


async def until_pong(client: Client, twice: bool = False) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    pongs = 0
    while pongs < (2 if twice else 1):
        try:
            frame = await client.recv()
        except ConnectionClosed:  # the frame ended the channel (a consultation's end): no pong
            break
        seen.append(frame)
        pongs += frame["type"] == "pong"
    return seen


async def run_matrix(
    server: Server, table: dict[str, dict[str, str]], actors: dict[str, Actor], cell: Cell, kinds: set[str]
) -> None:
    assert set(table) == kinds, "every client frame type of the endpoint has a row"
    wrong = []
    for frame_type, row in table.items():
        assert set(row) == set(ROLES), frame_type
        for role, expected in row.items():
            path, frame = await cell(frame_type, role)
            before = await fingerprint(server)
            got = await outcome(server, path, actors[role], frame, expected)
            if got != expected:
                wrong.append(f"{frame_type} as {role}: expected {expected}, got {got}")
            elif got == "4003" or got.startswith("error:"):
                if await fingerprint(server) != before:
                    wrong.append(f"{frame_type} as {role}: refused, yet the store changed")
    assert not wrong, "\n".join(wrong)


async def test_chat_matrix(server: Server) -> None:
    from realtime.endpoints.chat import ChatEndpoint

    db = server.runtime.db
    await server.room("r1", [1, 2])
    await server.room("r4", [4, 6])
    await server.room("r5", [1, 5])
    actors = {"owner": (1, "expert"), "member": (2, "client"), "stranger": (3, None)}
    actors |= {"other_expert": (4, "expert"), "same_expert_client": (5, "client")}

    async def cell(frame_type: str, role: str) -> tuple[str, dict[str, Any]]:
        posted = await messages.post(db, "r1", {"id": 1, "name": "user1"}, "a message of the owner")
        fields: dict[str, Any] = {
            "sync": {"since": 0},
            "chat_message": {"content": "hello"},
            "mark_read": {"message_id": posted.message["id"]},
            "delete_message": {"message_id": posted.message["id"]},
        }.get(frame_type, {})
        return "/ws/chat/r1/", {"type": frame_type, **fields}

    await run_matrix(server, CHAT, actors, cell, set(ChatEndpoint.kinds))


async def test_consultation_matrix(server: Server) -> None:
    from realtime.endpoints.consultation import ConsultationEndpoint

    db = server.runtime.db
    await consultations.create(db, "other", 4, 6)
    await consultations.create(db, "same-expert", 1, 5)
    actors = {"owner": (1, "expert"), "member": (2, "client"), "stranger": (3, None)}
    actors |= {"other_expert": (4, "expert"), "same_expert_client": (5, "client")}
    count = 0

    async def cell(frame_type: str, role: str) -> tuple[str, dict[str, Any]]:
        nonlocal count
        count += 1
        cid = f"c{count}"
        await consultations.create(db, cid, 1, 2)
        fields: dict[str, Any] = {}
        if frame_type in ("end_consultation", "request_extension", "respond_extension"):
            await consultations.start(db, cid, None)
        if frame_type == "request_extension":
            fields = {"duration_minutes": 10}
        if frame_type == "respond_extension":
            ext = await consultations.request_extension(db, cid, 2, 10)
            fields = {"request_id": ext.id, "accept": True}
        return f"/ws/consultation/{cid}/", {"type": frame_type, **fields}

    await run_matrix(server, CONSULTATION, actors, cell, set(ConsultationEndpoint.kinds))
    # The client answering an extension of another consultation, the expert one of another expert's.
    await consultations.start(db, "other", None)
    foreign = await consultations.request_extension(db, "other", 6, 5)
    await consultations.create(db, "mine", 1, 2)
    await consultations.start(db, "mine", None)
    for user_id in (1, 2):
        frame = {"type": "respond_extension", "request_id": foreign.id, "accept": True}
        assert await outcome(server, "/ws/consultation/mine/", (user_id, None), frame, "") == "error:not_found"
    still = await consultations.open_extension(db, "other")
    assert still is not None and still.id == foreign.id
    assert await outcome(server, "/ws/consultation/nope/", (1, None), {"type": "ping"}, "") == "4004"


async def pending_cancelled(tx: Runner) -> None:
    await tx.execute("UPDATE reservation_requests SET status = 'cancelled' WHERE status = 'pending'")


async def test_reservation_matrix(server: Server) -> None:
    from realtime.endpoints.reservation import ReservationEndpoint

    db = server.runtime.db
    await server.user(10, "Dr. Kim", "expert")
    await server.user(11, "Dr. Lee", "expert")
    actors = {"owner": (10, "expert"), "member": (21, "client"), "stranger": (3, None)}
    actors |= {"other_expert": (11, "expert"), "same_expert_client": (22, "client")}

    async def cell(frame_type: str, role: str) -> tuple[str, dict[str, Any]]:
        await db.write(pending_cancelled)  # at most five pending per client: start each cell clean
        saved = await reservations.create_request(db, 10, {"id": 21, "name": "user21"}, "Seoyun", day(3), "10:00", "")
        request_id = saved.record["id"]
        fields: dict[str, Any] = {
            "reservation_request": {"child_name": "Jun", "requested_date": day(4), "requested_time": "09:30"},
            "cancel_request": {"request_id": request_id},
            "client_message": {"message": "hello"},
            "accept_request": {"request_id": request_id},
            "reject_request": {"request_id": request_id, "reason": "busy"},
            "expert_message": {"client_id": 21, "message": "hi"},
        }.get(frame_type, {})
        return "/ws/reservation-chat/10/", {"type": frame_type, **fields}

    await run_matrix(server, RESERVATION, actors, cell, set(ReservationEndpoint.kinds))
    # Another expert's request and another expert's client, from expert 10's own channel.
    foreign = await reservations.create_request(db, 11, {"id": 23, "name": "user23"}, "Min", day(3), "11:00", "")
    await reservations.post_message(db, 11, 23, "client", "to Dr. Lee", "user23")
    path, owner = "/ws/reservation-chat/10/", (10, "expert")
    for frame in (
        {"type": "accept_request", "request_id": foreign.record["id"]},
        {"type": "reject_request", "request_id": foreign.record["id"]},
        {"type": "expert_message", "client_id": 23, "message": "poaching"},
    ):
        assert await outcome(server, path, owner, frame, "") == "error:not_found", frame
    frame = {"type": "accept_request", "request_id": foreign.record["id"]}
    assert await outcome(server, "/ws/reservation-chat/11/", (10, "expert"), frame, "") == "error:forbidden"
    row = await db.fetch_one("SELECT status FROM reservation_requests WHERE id = ?", (foreign.record["id"],))
    assert row is not None and row[0] == "pending"
    assert await db.fetch_all("SELECT id FROM reservation_messages WHERE client_id = 23 AND sender = 'expert'") == []


async def test_reservation_clients_never_see_each_other(server: Server) -> None:
    path = "/ws/reservation-chat/10/"
    async with (
        ws(server.ws_url(path, token=token(21, name="Alice"))) as alice,
        ws(server.ws_url(path, token=token(22, name="Bob"))) as bob,
        ws(server.ws_url(path, token=token(10, name="Dr. Kim", role="expert"))) as expert,
    ):
        for client in (alice, bob, expert):
            await client.expect("reservation_state")
        await alice.send(
            {"type": "reservation_request", "child_name": "A", "requested_date": day(2), "requested_time": "10:00"}
        )
        await alice.send({"type": "client_message", "message": "private"})
        request = (await alice.expect("request_created"))["request"]
        await expert.expect("reservation_request")
        await expert.send({"type": "accept_request", "request_id": request["id"]})
        await expert.send({"type": "expert_message", "client_id": 21, "message": "see you"})
        await bob.send({"type": "ping"})
        await bob.expect("pong")
        await bob.silent(0.5)
    async with ws(server.ws_url(path, token=token(22, name="Bob"))) as bob:
        state = await bob.expect("reservation_state")
        assert state["requests"] == [] and state["messages"] == []


async def test_notifications_matrix(server: Server) -> None:
    from realtime.endpoints.notifications import NotificationsEndpoint

    db = server.runtime.db
    actors = {"owner": (1, None), "member": (2, None), "stranger": (3, None)}
    actors |= {"other_expert": (4, "expert"), "same_expert_client": (5, "client")}

    async def cell(frame_type: str, role: str) -> tuple[str, dict[str, Any]]:
        created = await notifications.create(db, [1], "system", "t", "b")
        fields = {"sync": {"since": 0}, "mark_read": {"notification_id": created[0].notification["id"]}}
        return "/ws/notifications/1/", {"type": frame_type, **fields.get(frame_type, {})}

    await run_matrix(server, NOTIFICATIONS, actors, cell, set(NotificationsEndpoint.kinds))
    # User 2 on its own socket, with user 1's notification id: not found, and it stays unread.
    theirs = (await notifications.create(db, [1], "system", "secret", "for user 1"))[0].notification["id"]
    await notifications.create(db, [2], "system", "mine", "for user 2")
    frame = {"type": "mark_read", "notification_id": theirs}
    assert await outcome(server, "/ws/notifications/", (2, None), frame, "") == "error:not_found"
    row = await db.fetch_one("SELECT read_seq FROM notifications WHERE id = ?", (theirs,))
    assert row is not None and row[0] is None
    async with ws(server.ws_url("/ws/notifications/", token=token(2))) as mine:
        snapshot = await mine.expect("bulk_update")
        assert [n["title"] for n in snapshot["notifications"]] == ["mine"]
        await mine.send({"type": "sync", "since": 0})
        replay = await until_pong_after(mine)
        assert {f["notification"]["title"] for f in replay if f["type"] == "new_notification"} == {"mine"}
    # Only the exact decimal id is user 1's: no zero, no sign, no padding, no other digits.
    for spelling in ("0", "-1", "01", "+1", "1.0", "%201", "%EF%BC%91", "1%00"):
        path = f"/ws/notifications/{spelling}/"
        assert await outcome(server, path, (1, None), {"type": "ping"}, "") == "4003", path
    assert await outcome(server, "/ws/notifications/%31/", (1, None), {"type": "ping"}, "pong") == "pong"


async def until_pong_after(client: Client) -> list[dict[str, Any]]:
    await client.send({"type": "ping"})
    return await until_pong(client)


async def test_chat_never_crosses_rooms(server: Server) -> None:
    """User 1 is in both rooms and wrote in both; from r1 nothing of r2 is reachable."""
    db = server.runtime.db
    await server.room("r1", [1, 2])
    await server.room("r2", [1, 3])
    theirs = await messages.post(db, "r2", {"id": 1, "name": "user1"}, "in r2")
    await messages.post(db, "r2", {"id": 3, "name": "user3"}, "also in r2")
    await messages.post(db, "r1", {"id": 2, "name": "user2"}, "in r1")
    path = "/ws/chat/r1/"
    for frame in (
        {"type": "mark_read", "message_id": theirs.message["id"]},
        {"type": "delete_message", "message_id": theirs.message["id"]},
    ):
        assert await outcome(server, path, (1, None), frame, "") == "error:not_found", frame
    async with (
        ws(server.ws_url(path, token=token(1))) as client,
        ws(server.ws_url("/ws/chat/r2/", token=token(3))) as r2,
    ):
        history = await client.expect("message_history")
        await r2.expect("message_history")
        await client.send([{"type": "fetch_history", "limit": 100}, {"type": "sync", "since": 0}])
        await client.send({"type": "typing_start"})
        frames = [history, *await until_pong_after(client)]
        listed = [m for f in frames for m in f.get("messages", [])] + [f["message"] for f in frames if "message" in f]
        assert len(listed) == 3 and {m["room_id"] for m in listed} == {"r1"}
        await r2.silent(0.3)  # no typing, no message of r1 reached r2
    row = await db.fetch_one("SELECT deleted_at FROM messages WHERE id = ?", (theirs.message["id"],))
    assert row is not None and row[0] is None
