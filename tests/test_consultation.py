"""The consultation channel and its server API over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from realtime.events.node.agora import PRIVILEGE_JOIN_CHANNEL, PRIVILEGE_PUBLISH_AUDIO_STREAM, parse_token
from realtime.store import consultations
from tests.conftest import SERVICE_KEY, Client, Server, base_settings, next_of, running, token, ws

EXPERT, CLIENT, STRANGER = 1, 2, 3
APP_ID = "970CA35de60c44645bbae8a215061b33"
APP_CERT = "5CFd2fd1755d40ecb72977518be15d3b"
# Ticks fall on wall-clock multiples of the interval: this one never comes
# during a test, so no periodic frame gets between the frames a test expects.
NO_TICKS = 1e7


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, **changes: Any) -> AsyncIterator[Server]:
    changes.setdefault("status_interval", NO_TICKS)
    changes.setdefault("presence_timeout", 60.0)
    async with running(base_settings(tmp_path, **changes)) as srv:
        yield srv


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[Server]:
    async with serving(tmp_path) as server:
        yield server


async def book(server: Server, cid: str = "c1", **fields: Any) -> dict[str, Any]:
    async with server.api() as api:
        response = await api.post(
            "/api/consultations", json={"id": cid, "expert_id": EXPERT, "client_id": CLIENT, **fields}
        )
    assert response.status_code == 201, response.text
    return response.json()["consultation"]


async def stored(server: Server, cid: str = "c1") -> dict[str, Any]:
    async with server.api() as api:
        response = await api.get(f"/api/consultations/{cid}")
    assert response.status_code == 200, response.text
    return response.json()["consultation"]


def room(server: Server, user_id: int, cid: str = "c1") -> contextlib.AbstractAsyncContextManager[Client]:
    return ws(server.ws_url(f"/ws/consultation/{cid}/", token=token(user_id, name=f"user{user_id}")))


async def status_of(client: Client) -> dict[str, Any]:
    return (await client.expect("consultation_status"))["status_data"]


async def both_in(server: Server, cid: str = "c1") -> tuple[contextlib.AsyncExitStack, Client, Client]:
    """Expert and client connected, each past its snapshot and the other's join."""
    stack = contextlib.AsyncExitStack()
    expert = await stack.enter_async_context(room(server, EXPERT, cid))
    await status_of(expert)
    client = await stack.enter_async_context(room(server, CLIENT, cid))
    await status_of(client)
    await expert.expect("participant_joined")
    return stack, expert, client


async def error_of(client: Client, request_type: str, code: str) -> None:
    frame = await client.expect("error")
    assert frame["code"] == code, frame
    assert frame["request_type"] == request_type, frame


async def still_usable(client: Client) -> None:
    await client.send({"type": "ping"})
    await client.expect("pong")


# ---- joining ----------------------------------------------------------------------


async def test_whole_lifecycle_between_expert_and_client(srv: Server) -> None:
    await book(srv)
    async with room(srv, EXPERT) as expert:
        alone = await status_of(expert)
        assert alone["status"] == "waiting"
        assert [(p["id"], p["name"], p["type"]) for p in alone["participants"]] == [(EXPERT, "user1", "expert")]
        assert alone["participants"][0]["joined_at"].endswith("Z")
        for absent in ("started_at", "ends_at", "remaining_seconds", "agora_token", "agora_channel"):
            assert absent not in alone
        async with room(srv, CLIENT) as client:
            status = await status_of(client)
            assert [(p["id"], p["type"]) for p in status["participants"]] == [(EXPERT, "expert"), (CLIENT, "client")]
            joined = await expert.expect("participant_joined")
            assert joined["participant"] == status["participants"][1]
            await client.silent()

            await expert.send({"type": "start_consultation"})
            started = [await c.expect("consultation_started") for c in (expert, client)]
            assert started[0] == started[1]
            assert set(started[0]) == {"type", "started_at", "ends_at"}  # no Agora configured: no token, no channel
            assert when(started[0]["ends_at"]) - when(started[0]["started_at"]) == timedelta(minutes=50)

            async with room(srv, CLIENT) as second_tab:
                running_status = await status_of(second_tab)
                assert running_status["status"] == "in_progress"
                assert running_status["started_at"] == started[0]["started_at"]
                assert running_status["ends_at"] == started[0]["ends_at"]
                assert 2990 <= running_status["remaining_seconds"] <= 3000
                assert "agora_token" not in running_status and "agora_channel" not in running_status

            await expert.send({"type": "end_consultation"})
            ended = [await c.expect("consultation_ended") for c in (expert, client)]
            assert ended[0] == ended[1]
            assert ended[0]["reason"] == "ended_by_expert" and ended[0]["ended_at"].endswith("Z")
            # Nobody belongs on a finished consultation's channel: closed after the event.
            for c in (expert, client):
                assert await c.closed() == 4003
    record = await stored(srv)
    assert record["status"] == "completed" and record["end_reason"] == "ended_by_expert"
    async with room(srv, CLIENT) as client:
        final = await status_of(client)
        assert final["status"] == "completed" and final["reason"] == "ended_by_expert"
        assert final["participants"] == []
        assert await client.closed() == 4003


async def test_strangers_are_refused_and_unknown_ids_are_4004(srv: Server) -> None:
    await book(srv)
    async with room(srv, STRANGER) as stranger:
        assert await stranger.closed() == 4003
    for cid in ("nope", "x" * 65, "bad.id"):
        async with room(srv, EXPERT, cid) as lost:
            assert await lost.closed() == 4004
    async with ws(srv.ws_url("/ws/consultation/c1/")) as anonymous:
        await anonymous.send({"type": "presence_update"})
        assert await anonymous.closed() == 4001
    # The trailing slash is optional, and a token may come in the first frame.
    async with ws(srv.ws_url("/ws/consultation/c1")) as late:
        await late.send({"type": "auth", "token": token(EXPERT, name="user1")})
        assert (await late.expect("auth_ok"))["user"]["id"] == EXPERT
        assert (await status_of(late))["status"] == "waiting"


async def test_the_client_cannot_start_or_end(srv: Server) -> None:
    await book(srv)
    stack, expert, client = await both_in(srv)
    async with stack:
        await client.send({"type": "start_consultation"})
        await error_of(client, "start_consultation", "forbidden")
        await expert.silent()
        assert (await stored(srv))["status"] == "waiting"
        await expert.send({"type": "start_consultation"})
        for c in (expert, client):
            await c.expect("consultation_started")
        await client.send({"type": "end_consultation"})
        await error_of(client, "end_consultation", "forbidden")
        await expert.silent()
        assert (await stored(srv))["status"] == "in_progress"
        await still_usable(client)


async def test_illegal_transitions_are_conflicts_and_change_nothing(srv: Server) -> None:
    await book(srv)
    stack, expert, client = await both_in(srv)
    async with stack:
        for frame in ({"type": "end_consultation"}, {"type": "request_extension", "duration_minutes": 5}):
            await expert.send(frame)
            await error_of(expert, frame["type"], "conflict")
        assert (await stored(srv))["status"] == "waiting"
        await expert.send({"type": "start_consultation"})
        for c in (expert, client):
            await c.expect("consultation_started")
        before = await stored(srv)
        await expert.send({"type": "start_consultation"})
        await error_of(expert, "start_consultation", "conflict")
        for c in (client, expert):
            await c.send({"type": "cancel_consultation", "reason": "too late"})
            await error_of(c, "cancel_consultation", "conflict")
        assert await stored(srv) == before
        await expert.send({"type": "end_consultation"})
        for c in (expert, client):
            await c.expect("consultation_ended")
            assert await c.closed() == 4003
        after = await stored(srv)
    # After the end there is no socket to send from (the API's 409s: test_api_transitions_reach_the_sockets).
    async with room(srv, EXPERT) as late:
        assert (await status_of(late))["status"] == "completed"
        for frame in ({"type": "end_consultation"}, {"type": "start_consultation"}, {"type": "cancel_consultation"}):
            with contextlib.suppress(Exception):
                await late.send(frame)
        assert await late.closed() == 4003
    assert await stored(srv) == after


async def test_either_participant_cancels_before_the_start(srv: Server) -> None:
    await book(srv, "c1")
    await book(srv, "c2")
    stack, expert, client = await both_in(srv, "c1")
    async with stack:
        await client.send({"type": "cancel_consultation", "reason": "child is ill"})
        for c in (expert, client):
            assert await c.expect("consultation_cancelled") == {
                "type": "consultation_cancelled",
                "reason": "child is ill",
            }
            assert await c.closed() == 4003
    record = await stored(srv, "c1")
    assert record["status"] == "cancelled" and record["end_reason"] == "child is ill"
    stack, expert, client = await both_in(srv, "c2")
    async with stack:
        await expert.send({"type": "cancel_consultation"})
        for c in (expert, client):
            assert await c.expect("consultation_cancelled") == {"type": "consultation_cancelled"}


# ---- presence -----------------------------------------------------------------------


async def test_two_tabs_are_one_participant(srv: Server) -> None:
    await book(srv)
    async with room(srv, EXPERT) as expert:
        await status_of(expert)
        async with room(srv, CLIENT) as tab1:
            await status_of(tab1)
            assert (await expert.expect("participant_joined"))["participant"]["id"] == CLIENT
            async with room(srv, CLIENT) as tab2:
                status = await status_of(tab2)
                assert sorted(p["id"] for p in status["participants"]) == [EXPERT, CLIENT]
                await expert.silent()
                await tab1.silent()
            await expert.silent()  # one tab is still open
            await tab1.send({"type": "presence_update"})
            await expert.silent()
        assert await expert.expect("participant_left") == {"type": "participant_left", "participant_id": CLIENT}
        async with room(srv, CLIENT) as again:
            await status_of(again)
            assert (await expert.expect("participant_joined"))["participant"]["id"] == CLIENT


async def test_a_silent_socket_leaves_after_the_timeout_and_comes_back(tmp_path: Path) -> None:
    async with serving(tmp_path, presence_timeout=0.5, status_interval=0.2) as srv:
        await book(srv)
        stack, expert, client = await both_in(srv)
        async with stack:

            async def keep_alive() -> None:
                while True:
                    await expert.send({"type": "presence_update"})
                    await asyncio.sleep(0.1)

            beat = asyncio.create_task(keep_alive())
            try:
                began = time.monotonic()
                left = await expert.expect("participant_left", timeout=3)
                assert left["participant_id"] == CLIENT
                assert time.monotonic() - began >= 0.4
                await client.silent(0.2)  # not told about itself
                await client.send({"type": "presence_update"})
                back = await expert.expect("participant_joined", timeout=3)
                assert back["participant"]["id"] == CLIENT
                await expert.silent(0.3)  # the expert itself kept talking: it never left
            finally:
                beat.cancel()


async def test_ping_keeps_a_participant_present(tmp_path: Path) -> None:
    async with serving(tmp_path, presence_timeout=0.5, status_interval=0.2) as srv:
        await book(srv)
        stack, expert, client = await both_in(srv)
        async with stack:
            for _ in range(10):
                await client.send({"type": "ping"})
                await client.expect("pong")
                await expert.send({"type": "ping"})
                await expert.expect("pong")
                await asyncio.sleep(0.1)
            await expert.silent(0.1)


# ---- extensions ---------------------------------------------------------------------


async def test_extension_accepted_then_rejected(srv: Server) -> None:
    await book(srv)
    stack, expert, client = await both_in(srv)
    async with stack:
        await expert.send({"type": "start_consultation"})
        started = await expert.expect("consultation_started")
        assert await client.expect("consultation_started") == started

        await client.send({"type": "request_extension", "duration_minutes": 10})
        asked = await expert.expect("extension_requested")
        assert asked["requested_by"] == CLIENT and asked["duration_minutes"] == 10 and asked["request_id"]
        await client.silent()
        await expert.send({"type": "request_extension", "duration_minutes": 5})
        await error_of(expert, "request_extension", "conflict")
        await client.send({"type": "respond_extension", "request_id": asked["request_id"], "accept": True})
        await error_of(client, "respond_extension", "forbidden")
        async with room(srv, EXPERT) as other_tab:
            pending = (await status_of(other_tab))["pending_extension"]
            assert pending == {"request_id": asked["request_id"], "requested_by": CLIENT, "duration_minutes": 10}

        await expert.send({"type": "respond_extension", "request_id": asked["request_id"], "accept": True})
        extended = [await c.expect("consultation_extended") for c in (expert, client)]
        assert extended[0] == extended[1]
        assert extended[0]["duration_minutes"] == 10
        assert when(extended[0]["ends_at"]) == when(started["ends_at"]) + timedelta(minutes=10)
        record = await stored(srv)
        assert record["ends_at"] == extended[0]["ends_at"] and record["duration_minutes"] == 60
        await expert.send({"type": "respond_extension", "request_id": asked["request_id"], "accept": False})
        await error_of(expert, "respond_extension", "conflict")

        await expert.send({"type": "request_extension", "duration_minutes": 5})
        second = await client.expect("extension_requested")
        assert second["requested_by"] == EXPERT and second["request_id"] != asked["request_id"]
        await client.send({"type": "respond_extension", "request_id": second["request_id"], "accept": False})
        for c in (expert, client):
            assert await c.expect("extension_rejected") == {
                "type": "extension_rejected",
                "request_id": second["request_id"],
            }
        assert await stored(srv) == record
        await client.send({"type": "respond_extension", "request_id": "no-such-request", "accept": True})
        await error_of(client, "respond_extension", "not_found")
        async with room(srv, EXPERT) as later:
            assert "pending_extension" not in await status_of(later)


# ---- the tick -----------------------------------------------------------------------


async def test_periodic_status_and_time_up(tmp_path: Path) -> None:
    async with serving(tmp_path, status_interval=0.2) as srv:
        await book(srv, duration_minutes=1)
        await book(srv, "waiting-one")
        stack, expert, client = await both_in(srv)
        async with stack, room(srv, EXPERT, "waiting-one") as idle:
            await status_of(idle)
            await expert.send({"type": "start_consultation"})
            for c in (expert, client):
                await c.expect("consultation_started")
            for c in (expert, client):
                periodic = await status_of(c)
                assert periodic["status"] == "in_progress"
                assert 0 < periodic["remaining_seconds"] <= 60
                assert sorted(p["id"] for p in periodic["participants"]) == [EXPERT, CLIENT]
            # Move the end into the past, as if the minute had gone by.
            past = consultations.iso(datetime.now(UTC) - timedelta(seconds=1))
            await srv.runtime.db.write(
                lambda tx: tx.execute("UPDATE consultations SET ends_at = ? WHERE id = ?", (past, "c1"))
            )
            for c in (expert, client):
                ended = await next_of(c, "consultation_ended", timeout=3)
                assert ended["reason"] == "time_up"
                # Time is up for the channel too: nothing after the event, then 4003.
                assert await c.closed() == 4003
            await asyncio.sleep(0.5)
            await idle.silent(0.1)  # no status for a waiting one
        record = await stored(srv)
        assert record["status"] == "completed" and record["end_reason"] == "time_up"


# ---- Agora ----------------------------------------------------------------------------


async def test_agora_tokens_are_minted_for_each_recipient(tmp_path: Path) -> None:
    async with serving(tmp_path, agora_app_id=APP_ID, agora_app_certificate=APP_CERT) as srv:
        await book(srv)
        stack, expert, client = await both_in(srv)
        async with stack:
            await expert.send({"type": "start_consultation"})
            started = {user: await c.expect("consultation_started") for user, c in ((EXPERT, expert), (CLIENT, client))}
            assert started[EXPERT]["agora_token"] != started[CLIENT]["agora_token"]
            for user, frame in started.items():
                assert frame["agora_channel"] == "consultation-c1"
                parsed = parse_token(frame["agora_token"])
                assert parsed.verify(APP_CERT) and parsed.app_id == APP_ID
                assert parsed.uid == str(user)
                assert parsed.channel_name == "consultation-c1"
                assert {PRIVILEGE_JOIN_CHANNEL, PRIVILEGE_PUBLISH_AUDIO_STREAM} <= parsed.privileges.keys()
                until_end = (when(frame["ends_at"]) - datetime.now(UTC)).total_seconds()
                assert abs(parsed.expire - (until_end + 600)) < 5
            async with room(srv, CLIENT) as again:
                status = await status_of(again)
                assert status["agora_channel"] == "consultation-c1"
                assert parse_token(status["agora_token"]).uid == str(CLIENT)
            await expert.send({"type": "end_consultation"})
            await expert.expect("consultation_ended")
            async with room(srv, CLIENT) as after:
                final = await status_of(after)
                assert "agora_token" not in final and "agora_channel" not in final


async def test_periodic_status_carries_each_recipients_token(tmp_path: Path) -> None:
    changes = {"agora_app_id": APP_ID, "agora_app_certificate": APP_CERT, "status_interval": 0.2}
    async with serving(tmp_path, **changes) as srv:
        await book(srv)
        stack, expert, client = await both_in(srv)
        async with stack:
            await expert.send({"type": "start_consultation"})
            for user, c in ((EXPERT, expert), (CLIENT, client)):
                await c.expect("consultation_started")
                periodic = await status_of(c)
                assert parse_token(periodic["agora_token"]).uid == str(user)


async def test_without_agora_settings_one_line_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with serving(tmp_path):
        pass
    lines = [line for line in capsys.readouterr().err.splitlines() if "AGORA_APP_ID" in line]
    assert len(lines) == 1 and "not set" in lines[0]


# ---- bad input -------------------------------------------------------------------------

BAD = [
    ("{", "invalid_json", None),
    ("[1]", "invalid_payload", None),
    ('{"type": "chat_message", "content": "x"}', "unknown_type", "chat_message"),
    ('{"type": "request_extension"}', "invalid_payload", "request_extension"),
    ('{"type": "request_extension", "duration_minutes": 0}', "invalid_payload", "request_extension"),
    ('{"type": "request_extension", "duration_minutes": 61}', "invalid_payload", "request_extension"),
    ('{"type": "request_extension", "duration_minutes": "5"}', "invalid_payload", "request_extension"),
    ('{"type": "request_extension", "duration_minutes": 5.5}', "invalid_payload", "request_extension"),
    ('{"type": "request_extension", "duration_minutes": true}', "invalid_payload", "request_extension"),
    ('{"type": "respond_extension", "accept": true}', "invalid_payload", "respond_extension"),
    ('{"type": "respond_extension", "request_id": "r"}', "invalid_payload", "respond_extension"),
    ('{"type": "respond_extension", "request_id": "", "accept": true}', "invalid_payload", "respond_extension"),
    ('{"type": "respond_extension", "request_id": 5, "accept": true}', "invalid_payload", "respond_extension"),
    ('{"type": "respond_extension", "request_id": "r", "accept": 1}', "invalid_payload", "respond_extension"),
    ('{"type": "respond_extension", "request_id": "r", "accept": "yes"}', "invalid_payload", "respond_extension"),
    ('{"type": "cancel_consultation", "reason": 5}', "invalid_payload", "cancel_consultation"),
    ('{"type": "cancel_consultation", "reason": "' + "r" * 501 + '"}', "invalid_payload", "cancel_consultation"),
    ('{"type": "auth", "token": ""}', "invalid_payload", "auth"),
]


@pytest.mark.parametrize(("text", "code", "request_type"), BAD)
async def test_bad_input_is_answered_and_changes_nothing(
    srv: Server, text: str, code: str, request_type: str | None
) -> None:
    await book(srv)
    stack, expert, client = await both_in(srv)
    async with stack:
        await expert.send({"type": "start_consultation"})
        for c in (expert, client):
            await c.expect("consultation_started")
        before = await stored(srv)
        await client.send(text)
        frame = await client.expect("error")
        assert frame["code"] == code, frame
        assert frame.get("request_type") == request_type
        await still_usable(client)
        await expert.silent(0.1)
        assert await stored(srv) == before
        # Still a working participant: a good request goes through.
        await client.send({"type": "request_extension", "duration_minutes": 60})
        assert (await expert.expect("extension_requested"))["duration_minutes"] == 60


async def test_frame_arrays_are_handled_in_order(srv: Server) -> None:
    await book(srv)
    stack, expert, client = await both_in(srv)
    async with stack:
        await expert.send([{"type": "request_extension", "duration_minutes": 0}, {"type": "ping"}])
        await error_of(expert, "request_extension", "invalid_payload")
        await expert.expect("pong")
        # The end succeeds only if the start was handled first.
        await expert.send([{"type": "presence_update"}, {"type": "start_consultation"}, {"type": "end_consultation"}])
        for c in (expert, client):
            await c.expect("consultation_started")
            await c.expect("consultation_ended")


# ---- the server API ----------------------------------------------------------------------


async def test_api_creates_with_defaults_and_checks_its_input(srv: Server) -> None:
    async with srv.api() as api:
        created = await api.post("/api/consultations", json={"expert_id": EXPERT, "client_id": CLIENT})
        assert created.status_code == 201
        record = created.json()["consultation"]
        assert record["id"] and record["status"] == "waiting" and record["duration_minutes"] == 50
        assert record["expert_id"] == EXPERT and record["client_id"] == CLIENT
        dated = await api.post(
            "/api/consultations",
            json={"id": "dated", "expert_id": 5, "client_id": 6, "scheduled_start": "2030-01-02T03:04:05+09:00"},
        )
        assert dated.status_code == 201
        assert dated.json()["consultation"]["scheduled_start"] == "2030-01-01T18:04:05.000Z"
        again = await api.post("/api/consultations", json={"id": "dated", "expert_id": 5, "client_id": 6})
        assert again.status_code == 409
        for bad in (
            b"{",
            b"[]",
            b'{"client_id": 2}',
            b'{"expert_id": 1, "client_id": 1}',
            b'{"expert_id": 0, "client_id": 2}',
            b'{"expert_id": 1, "client_id": 2, "duration_minutes": 0}',
            b'{"expert_id": 1, "client_id": 2, "duration_minutes": 1441}',
            b'{"expert_id": 1, "client_id": 2, "id": "a b"}',
            b'{"expert_id": 1, "client_id": 2, "scheduled_start": "tomorrow"}',
            b'{"expert_id": "1", "client_id": 2}',
        ):
            response = await api.post("/api/consultations", content=bad)
            assert response.status_code == 400, (bad, response.text)
        assert (await api.get("/api/consultations/nope")).status_code == 404


async def test_api_routes_need_the_service_key(srv: Server, tmp_path: Path) -> None:
    await book(srv)
    async with httpx.AsyncClient(base_url=srv.http) as anonymous:
        for path in ("/api/consultations", "/api/consultations/c1/start", "/api/consultations/c1/cancel"):
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                assert (await anonymous.post(path, json={}, headers=headers)).status_code == 401
    assert (await stored(srv))["status"] == "waiting"
    (tmp_path / "nokey").mkdir()
    async with running(base_settings(tmp_path / "nokey", service_key=None)) as bare:
        async with httpx.AsyncClient(base_url=bare.http) as client:
            response = await client.post(
                "/api/consultations/c1/start", headers={"Authorization": f"Bearer {SERVICE_KEY}"}
            )
            assert response.status_code == 503


async def test_api_transitions_reach_the_sockets(srv: Server) -> None:
    await book(srv, "c1")
    await book(srv, "c2")
    stack, expert, client = await both_in(srv, "c1")
    async with stack, srv.api() as api:
        for missing in ("nope/start", "nope/end", "nope/cancel", "bad.id/start"):
            assert (await api.post(f"/api/consultations/{missing}")).status_code == 404
        assert (await api.post("/api/consultations/c1/end")).status_code == 409
        response = await api.post("/api/consultations/c1/start")
        assert response.status_code == 200
        record = response.json()["consultation"]
        assert record["status"] == "in_progress"
        for c in (expert, client):
            frame = await c.expect("consultation_started")
            assert frame["started_at"] == record["started_at"] and frame["ends_at"] == record["ends_at"]
        assert (await api.post("/api/consultations/c1/start")).status_code == 409
        assert (await api.post("/api/consultations/c1/cancel")).status_code == 409
        assert (await api.post("/api/consultations/c1/end", content=b'{"reason": 5}')).status_code == 400
        assert (await stored(srv))["status"] == "in_progress"
        response = await api.post("/api/consultations/c1/end", json={"reason": "payment_failed"})
        assert response.status_code == 200 and response.json()["consultation"]["status"] == "completed"
        for c in (expert, client):
            assert (await c.expect("consultation_ended"))["reason"] == "payment_failed"
        assert (await api.post("/api/consultations/c1/end")).status_code == 409
        response = await api.post("/api/consultations/c2/end")
        assert response.status_code == 409
        response = await api.post("/api/consultations/c2/cancel", json={"reason": "no-show"})
        assert response.status_code == 200
        assert response.json()["consultation"]["status"] == "cancelled"
        assert (await api.post("/api/consultations/c2/cancel")).status_code == 409
    async with room(srv, CLIENT, "c2") as late:
        status = await status_of(late)
        assert status["status"] == "cancelled" and status["reason"] == "no-show"


async def test_api_end_without_a_body_and_cancel_reaches_sockets(srv: Server) -> None:
    await book(srv, "c3")
    stack, expert, client = await both_in(srv, "c3")
    async with stack, srv.api() as api:
        assert (await api.post("/api/consultations/c3/cancel")).status_code == 200
        for c in (expert, client):
            assert await c.expect("consultation_cancelled") == {"type": "consultation_cancelled"}
    await book(srv, "c4")
    stack, expert, client = await both_in(srv, "c4")
    async with stack, srv.api() as api:
        assert (await api.post("/api/consultations/c4/start")).status_code == 200
        for c in (expert, client):
            await c.expect("consultation_started")
        assert (await api.post("/api/consultations/c4/end")).status_code == 200
        for c in (expert, client):
            assert (await c.expect("consultation_ended"))["reason"] == "ended_by_platform"
