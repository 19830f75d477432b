"""The server API's chat messages: `POST /api/rooms/{id}/messages` delivers as
a socket's `chat_message` does (the same frame to the members, the members
away notified), once per `client_msg_id`; `GET` reads the history; bad input
is refused and leaves nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import SERVICE_KEY, Server, chat, token, ws

# What differs between two messages however they were sent.
OWN = ("id", "seq", "created_at", "content", "client_msg_id")


def comparable(frame: dict[str, Any]) -> dict[str, Any]:
    """A `chat_message` frame without what is the message's own."""
    message = {k: v for k, v in frame["message"].items() if k not in OWN}
    return {**{k: v for k, v in frame.items() if k not in ("seq", "message")}, "message": message}


def notes(server: Server, user_id: int) -> Any:
    return ws(server.ws_url("/ws/notifications/", token=token(user_id)))


@pytest.mark.settings(chat_notification_window=0.1)
async def test_a_posted_message_is_delivered_as_a_socket_sent_one(server: Server) -> None:
    await server.room("r", [1, 2, 3])
    await server.user(2, "Minji")
    async with (
        chat(server, "r", 1) as reader,
        # No name in the token: the socket shows the stored profile, as the API does.
        ws(server.ws_url("/ws/chat/r/", token=token(2))) as writer,
        notes(server, 3) as away,
        server.api() as api,
    ):
        await reader.expect("message_history")
        await writer.expect("message_history")
        await away.expect("bulk_update")

        await writer.send({"type": "chat_message", "content": "from the socket", "client_msg_id": "s1"})
        by_socket = await reader.expect("chat_message")
        await writer.expect("chat_message")
        assert (await away.expect("new_notification"))["notification"]["type"] == "message"

        response = await api.post("/api/rooms/r/messages", json={"content": "over HTTP", "user_id": 2})
        assert response.status_code == 201, response.text
        by_api = await reader.expect("chat_message")
        assert by_api["message"] == response.json()["message"]
        assert by_api["message"]["content"] == "over HTTP"
        assert by_api["seq"] == by_socket["seq"] + 1
        assert comparable(by_api) == comparable(by_socket)
        assert by_api["message"]["sender"] == {"id": 2, "name": "Minji"}
        # The sender's own sockets get it too, as they would their own message.
        assert (await writer.expect("chat_message"))["message"]["id"] == by_api["message"]["id"]
        # User 3 is away from the room: told as for any message (the same notification, updated).
        told = await away.expect("notification_updated")
        assert told["notification"]["type"] == "message"


async def test_the_system_posts_and_a_repeat_answers_the_original(server: Server) -> None:
    await server.room("r", [1])
    async with chat(server, "r", 1) as reader, server.api() as api:
        await reader.expect("message_history")
        body = {"content": "maintenance at noon", "client_msg_id": "k1"}
        first = await api.post("/api/rooms/r/messages", json=body)
        assert first.status_code == 201
        message = first.json()["message"]
        assert message["sender"] == {"id": 0, "name": "System"} and message["client_msg_id"] == "k1"
        assert (await reader.expect("chat_message"))["message"] == message
        again = await api.post("/api/rooms/r/messages", json={**body, "content": "changed"})
        assert again.status_code == 200
        assert again.json()["message"] == message
        await reader.silent()
        image = {"message_type": "image", "file_url": "/files/a.png", "file_name": "a.png"}
        posted = await api.post("/api/rooms/r/messages", json=image)
        assert posted.status_code == 201
        assert {k: posted.json()["message"][k] for k in image} == image
        assert (await reader.expect("chat_message"))["message"]["file_url"] == "/files/a.png"
        listed = (await api.get("/api/rooms/r/messages")).json()
        assert [m["content"] for m in listed["messages"]] == ["maintenance at noon", ""]


async def test_bad_posts_are_refused_and_leave_nothing(server: Server) -> None:
    await server.room("r", [1])
    async with chat(server, "r", 1) as reader, server.api() as api:
        await reader.expect("message_history")
        bad: list[tuple[bytes, str]] = [
            (b"{", "invalid_json"),
            (b"[]", "invalid_payload"),
            (b'{"content": ""}', "invalid_payload"),
            (b'{"content": "   "}', "invalid_payload"),
            (b'{"content": "x", "message_type": "video"}', "invalid_payload"),
            (b'{"message_type": "image"}', "invalid_payload"),
            (b'{"message_type": "file", "file_url": "javascript:alert(1)"}', "invalid_payload"),
            (b'{"content": "x", "user_id": 0}', "invalid_payload"),
            (b'{"content": "x", "user_id": "1"}', "invalid_payload"),
            (b'{"content": "x", "sender": {"id": 1, "name": "x"}}', "invalid_payload"),
            (b'{"content": "x", "type": "chat_message"}', "invalid_payload"),
            (b'{"content": "x", "client_msg_id": ""}', "invalid_payload"),
            (b'{"content": "a\\u0000b"}', "invalid_payload"),
            (b'{"content": "' + b"x" * 10_001 + b'"}', "invalid_payload"),
        ]
        for raw, code in bad:
            response = await api.post("/api/rooms/r/messages", content=raw)
            assert response.status_code == 400, raw
            assert response.json()["error"] == code, response.text
        too_large = await api.post("/api/rooms/r/messages", content=b'{"content": "' + b"x" * 1024 * 1024 + b'"}')
        assert too_large.status_code == 413
        for path, status, code in (
            ("/api/rooms/nope/messages", 404, "not_found"),
            ("/api/rooms/a%20b/messages", 404, "not_found"),
        ):
            response = await api.post(path, json={"content": "x"})
            assert (response.status_code, response.json()["error"]) == (status, code)
        stranger = await api.post("/api/rooms/r/messages", json={"content": "not mine", "user_id": 2})
        assert (stranger.status_code, stranger.json()["error"]) == (403, "forbidden")
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {SERVICE_KEY}"}):
            async with httpx.AsyncClient(base_url=server.http, headers=headers) as anonymous:
                assert (await anonymous.post("/api/rooms/r/messages", json={"content": "x"})).status_code == 401
                assert (await anonymous.get("/api/rooms/r/messages")).status_code == 401
        await reader.silent()
        # The socket is still usable, and nothing was stored.
        await reader.send({"type": "fetch_history"})
        assert (await reader.expect("history_page"))["messages"] == []
        assert (await api.get("/api/rooms/r/messages")).json() == {"messages": [], "has_more": False}


async def test_history_pages_and_bad_queries(server: Server) -> None:
    await server.room("r", [1])
    async with server.api() as api:
        for n in range(5):
            assert (await api.post("/api/rooms/r/messages", json={"content": f"m{n}"})).status_code == 201
        newest = (await api.get("/api/rooms/r/messages", params={"limit": 2})).json()
        assert [m["content"] for m in newest["messages"]] == ["m3", "m4"] and newest["has_more"]
        before = newest["messages"][0]["seq"]
        older = (await api.get("/api/rooms/r/messages", params={"before_seq": before, "limit": 10})).json()
        assert [m["content"] for m in older["messages"]] == ["m0", "m1", "m2"] and not older["has_more"]
        # Blank values are none; names the route does not take are ignored.
        everything = await api.get("/api/rooms/r/messages?before_seq=&limit=&other=1")
        assert [m["content"] for m in everything.json()["messages"]] == [f"m{n}" for n in range(5)]
        for bad in (
            "before_seq=0",
            "before_seq=-1",
            "before_seq=abc",
            "before_seq=9007199254740993",
            "limit=0",
            "limit=101",
            "limit=5.0",
            "limit=1e1",
            "limit=true",
            "limit=1&limit=2",
        ):
            response = await api.get(f"/api/rooms/r/messages?{bad}")
            assert (response.status_code, response.json()["error"]) == (400, "invalid_payload"), bad
        assert (await api.get("/api/rooms/nope/messages")).status_code == 404
        assert (await api.get("/api/rooms/nope/messages?limit=0")).status_code == 400
