"""What else an attacker tries: floods of tiny frames, frames at the size limit
and one byte over, sockets that never authenticate, half-sent HTTP requests,
odd `since` values, ids in other scripts or percent-encoded, NUL characters
through the server API, and a reconnect racing live events."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from realtime.store import messages
from realtime.store.db import Runner
from tests.conftest import Client, Server, base_settings, chat, running, token, ws

LIMIT = 64 * 1024


def padded(limit: int, filler: str = "x", **frame: Any) -> str:
    """A frame whose UTF-8 text is exactly `limit` bytes long."""
    base = len(json.dumps({**frame, "pad": ""}, ensure_ascii=False).encode())
    width = len(filler.encode())
    count, rest = divmod(limit - base, width)
    text = json.dumps({**frame, "pad": filler * count + "y" * rest}, ensure_ascii=False)
    assert len(text.encode()) == limit
    return text


@pytest.mark.settings(rate_limit=1e6, rate_burst=1e6)
async def test_ten_thousand_tiny_frames_are_all_answered_in_order(server: Server) -> None:
    await server.room("r1", [1, 2])
    async with chat(server, "r1", 1) as client, chat(server, "r1", 2) as other:
        await client.expect("message_history")
        await other.expect("message_history")
        started = time.monotonic()
        for index in range(10_000):
            await client.send(
                {"type": "fetch_history", "limit": 1 + index % 100} if index % 1000 == 0 else '{"type":"ping"}'
            )
        replies = [(await client.recv(10))["type"] for _ in range(10_000)]
        assert replies.count("pong") == 9_990 and replies.count("history_page") == 10
        assert time.monotonic() - started < 30
        await client.send({"type": "chat_message", "content": "still here"})
        assert (await other.expect("chat_message"))["message"]["content"] == "still here"


async def test_a_flood_at_the_default_limits_is_cut_off_and_others_are_untouched(server: Server) -> None:
    await server.room("r1", [1, 2])
    async with chat(server, "r1", 1) as flooder, chat(server, "r1", 2) as other:
        await flooder.expect("message_history")
        await other.expect("message_history")
        try:
            for index in range(10_000):
                await flooder.send({"type": "chat_message", "content": f"spam {index}"})
        except ConnectionClosed:
            pass
        assert await flooder.closed(10) == 1008
        await other.send({"type": "ping"})
        while (await other.recv())["type"] != "pong":
            pass
    stored = await server.runtime.db.fetch_one("SELECT COUNT(*) FROM messages")
    assert stored is not None and 0 < stored[0] <= 40 + 20  # the burst, and what refilled meanwhile
    async with chat(server, "r1", 2) as again:
        await again.expect("message_history")
        await again.send({"type": "chat_message", "content": "the room still works"})
        await again.expect("chat_message")


async def test_frames_at_the_limit_pass_and_one_byte_over_closes(server: Server) -> None:
    await server.room("r1", [1])
    for filler in ("x", "가", "😀"):
        async with chat(server, "r1", 1) as client:
            await client.expect("message_history")
            await client.send(padded(LIMIT, filler, type="ping"))
            await client.expect("pong")
            await client.send(padded(LIMIT + 1, filler, type="ping"))
            assert await client.closed() == 1009
    async with ws(server.ws_url("/ws/chat/r1/")) as client:  # before authentication the same limit holds
        await client.send(padded(LIMIT, type="auth", token=token(1)))
        await client.expect("auth_ok")
    async with ws(server.ws_url("/ws/chat/r1/")) as client:
        await client.send(padded(LIMIT + 1, type="auth", token=token(1)))
        assert await client.closed() == 1009


NESTED = ["[" * 1000 + "]" * 1000, "[" * 30_000 + "]" * 30_000, '{"a":' * 5000 + "1" + "}" * 5000]
NUL_FRAMES = {
    "/ws/chat/r1/": {"type": "chat_message", "content": "a\u0000b", "client_msg_id": "n"},
    "/ws/consultation/c1/": {"type": "cancel_consultation", "reason": "\u0000", "client_msg_id": "n"},
    "/ws/reservation-chat/10/": {"type": "client_message", "message": "a\u0000", "client_msg_id": "n"},
    "/ws/notifications/": {"type": "mark_read", "notification_id": "\u0000", "client_msg_id": "n"},
}


async def test_deep_nesting_and_nul_are_bad_input_on_every_endpoint(server: Server) -> None:
    await server.room("r1", [1])
    async with server.api() as api:
        await api.post("/api/consultations", json={"id": "c1", "expert_id": 1, "client_id": 2})
    for path, frame in NUL_FRAMES.items():
        async with ws(server.ws_url(path, token=token(1))) as client:
            await client.recv()  # the snapshot
            for text in NESTED:
                await client.send(text)
                assert (await client.expect("error"))["code"] == "invalid_json", path
            await client.send(frame)
            error = await client.expect("error")
            assert (error["code"], error["request_type"], error["client_msg_id"]) == (
                "invalid_payload",
                frame["type"],
                "n",
            )
            await client.send({"type": "ping"})
            await client.expect("pong")
    row = await server.runtime.db.fetch_one(
        "SELECT (SELECT COUNT(*) FROM messages), (SELECT COUNT(*) FROM reservation_messages), "
        "(SELECT status FROM consultations WHERE id = 'c1')"
    )
    assert row is not None and tuple(row) == (0, 0, "waiting")


def half_request(port: int) -> socket.socket:
    raw = socket.create_connection(("127.0.0.1", port))
    raw.sendall(b"GET /ws/chat/r1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nX-Slow: ")
    return raw


async def test_slowloris_sockets_cannot_crowd_out_real_users(tmp_path: Path) -> None:
    async with running(base_settings(tmp_path, auth_timeout=1.0, max_pending_auth=5)) as srv:
        await srv.room("r1", [1])
        half_open = [await asyncio.to_thread(half_request, srv.port) for _ in range(50)]
        silent: list[Client] = []
        try:
            for _ in range(8):
                silent.append(Client(await connect(srv.ws_url("/ws/chat/r1/"), open_timeout=5, close_timeout=1)))
            async with chat(srv, "r1", 1) as user:  # a token in the URL: never waits with them
                await user.expect("message_history")
                await user.send({"type": "ping"})
                await user.expect("pong")
            codes = [await client.closed(3) for client in silent]
            assert sorted(codes) == [1013] * 3 + [4001] * 5, codes
            async with ws(srv.ws_url("/ws/chat/r1/")) as late:  # the waiting room is free again
                await late.send({"type": "auth", "token": token(1)})
                await late.expect("auth_ok")
        finally:
            for client in silent:
                await client.close()
            for raw in half_open:
                raw.close()


async def first_frames(server: Server, path: str, count: int, **query: Any) -> list[dict[str, Any]]:
    async with ws(server.ws_url(path, token=token(1), **query)) as client:
        return [await client.recv() for _ in range(count)]


async def test_odd_since_values(server: Server) -> None:
    await server.room("r1", [1])
    for content in ("a", "b"):
        await messages.post(server.runtime.db, "r1", {"id": 1, "name": "u"}, content)
    chat_path = "/ws/chat/r1/"
    for value in ("-1", "99999999999999999999", "1e3", "%31", "", "0x1", "%EF%BC%91", "1.0", "+1"):
        frames = await first_frames(server, chat_path, 2, since=value)
        assert [f["type"] for f in frames] == ["error", "message_history"], (value, frames)
        assert frames[0]["code"] == "invalid_payload"
    frames = await first_frames(server, chat_path, 2, since="9007199254740993")
    assert [f["type"] for f in frames] == ["resync_required", "message_history"]
    assert frames[0]["last_seq"] == 2
    assert [f["type"] for f in await first_frames(server, chat_path, 2, since=0)] == ["chat_message"] * 2
    async with ws(server.ws_url(chat_path) + f"?since=1&since=-5&token={token(1)}") as client:
        assert (await client.expect("chat_message"))["seq"] == 2  # the first `since` counts
    async with chat(server, "r1", 1) as client:
        await client.expect("message_history")
        await client.send({"type": "sync", "since": 2**53})
        await client.expect("resync_required")
        await client.expect("message_history")
        for since in (2**53 + 1, -1, 1.5, "1", None):
            await client.send({"type": "sync", "since": since})
            assert (await client.expect("error"))["code"] == "invalid_payload", since
    notes = await first_frames(server, "/ws/notifications/", 2, since="-1")
    assert [f["type"] for f in notes] == ["error", "bulk_update"]


async def handshake(server: Server, path: str) -> str:
    """What a socket on `path` gets: its first frame's type, a close code, or an HTTP status."""
    try:
        async with ws(server.ws_url(path, token=token(10, role="expert"))) as client:
            try:
                return str((await client.recv())["type"])
            except ConnectionClosed:
                return str(client.conn.close_code)
    except InvalidStatus as exc:
        return f"http {exc.response.status_code}"


async def test_ids_in_other_scripts_or_encodings_name_nothing(server: Server) -> None:
    await server.room("r1", [10])
    async with server.api() as api:
        await api.post("/api/consultations", json={"id": "c1", "expert_id": 10, "client_id": 2})
    assert await handshake(server, "/ws/chat/%72%31/") == "message_history"  # the same room, percent-encoded
    assert await handshake(server, "/ws/reservation-chat/%31%30/") == "reservation_state"
    for path in (
        "/ws/chat/r%00/",
        "/ws/chat/r1%20/",
        "/ws/chat/%EF%BD%921/",  # a fullwidth r
        "/ws/chat/" + "a" * 65 + "/",
        "/ws/chat/r1'--/",
        "/ws/consultation/c1%00/",
        "/ws/consultation/%EF%BD%831/",
        "/ws/reservation-chat/%EF%BC%91%EF%BC%90/",  # a fullwidth 10
        "/ws/reservation-chat/0/",
        "/ws/reservation-chat/-10/",
        "/ws/reservation-chat/10.0/",
        "/ws/reservation-chat/1e1/",
        "/ws/reservation-chat/99999999999999999999/",
        "/ws/reservation-chat/%20/",
    ):
        assert await handshake(server, path) == "4004", path
    for path in ("/ws/chat/r1%2F..%2Fr2/", "/ws/chat/..%2Fr1/", "/ws/chat/r1/%2e%2e/"):
        assert await handshake(server, path) in ("4004", "http 403", "http 404"), path


async def test_server_api_text_with_nul_is_refused(server: Server) -> None:
    """PostgreSQL text cannot hold NUL: a clear 400 on both stores, never a 500."""
    async with server.api() as api:
        assert (await api.put("/api/users/1", json={"name": "Kim\u0000"})).status_code == 400
        note = {"user_id": 1, "type": "system", "title": "t\u0000", "body": "b"}
        assert (await api.post("/api/notifications", json=note)).status_code == 400
        await api.post("/api/consultations", json={"id": "c1", "expert_id": 1, "client_id": 2})
        assert (await api.post("/api/consultations/c1/cancel", json={"reason": "\u0000"})).status_code == 400
        assert (
            await api.put("/api/users/1", json={"name": "Kim", "x": "\u0000 is an ignored field"})
        ).status_code == 200
    row = await server.runtime.db.fetch_one(
        "SELECT (SELECT COUNT(*) FROM notifications), (SELECT status FROM consultations WHERE id = 'c1')"
    )
    assert row is not None and tuple(row) == (0, "waiting")


async def cancel_all(tx: Runner) -> None:
    await tx.execute("UPDATE reservation_requests SET status = 'cancelled' WHERE status = 'pending'")


@pytest.mark.settings(rate_limit=1e6, rate_burst=1e6)
async def test_a_reconnecting_tab_gets_its_snapshot_before_live_events(server: Server) -> None:
    """Events published while a socket opens wait for its `reservation_state`."""
    day = (datetime.now(UTC).date() + timedelta(days=2)).isoformat()
    path = "/ws/reservation-chat/10/"
    async with ws(server.ws_url(path, token=token(21))) as writer:
        await writer.expect("reservation_state")
        for round_ in range(15):
            burst = [{"type": "client_message", "message": f"m{round_}-{i}"} for i in range(20)]
            burst.append(
                {"type": "reservation_request", "child_name": "A", "requested_date": day, "requested_time": "10:00"}
            )
            await writer.send(burst)
            async with (
                ws(server.ws_url(path, token=token(21))) as tab,
                ws(server.ws_url(path, token=token(10))) as expert,
            ):
                assert (await tab.recv())["type"] == "reservation_state"
                assert (await expert.recv())["type"] == "reservation_state"
            await server.runtime.db.write(cancel_all)
            while True:
                frame = await writer.recv()
                if frame["type"] == "request_created":
                    break
