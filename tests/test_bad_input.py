"""Bad input on the chat socket: a clear error frame, the socket still usable,
nothing stored."""

from __future__ import annotations

import pytest

from tests.conftest import Server, chat

CASES = [
    ("{", "invalid_json", None),
    ("not json at all", "invalid_json", None),
    ("42", "invalid_payload", None),
    ('"chat_message"', "invalid_payload", None),
    ("[[]]", "invalid_payload", None),
    ('{"content": "no type"}', "invalid_payload", None),
    ('{"type": 7}', "invalid_payload", None),
    ('{"type": "shout"}', "unknown_type", "shout"),
    ('{"type": "start_consultation"}', "unknown_type", "start_consultation"),
    ('{"type": "chat_message"}', "invalid_payload", "chat_message"),
    ('{"type": "chat_message", "content": "   "}', "invalid_payload", "chat_message"),
    ('{"type": "chat_message", "content": 5}', "invalid_payload", "chat_message"),
    ('{"type": "chat_message", "content": "x", "message_type": "video"}', "invalid_payload", "chat_message"),
    ('{"type": "chat_message", "content": "", "message_type": "image"}', "invalid_payload", "chat_message"),
    (
        '{"type": "chat_message", "content": "x", "message_type": "file", "file_url": "javascript:alert(1)"}',
        "invalid_payload",
        "chat_message",
    ),
    ('{"type": "chat_message", "content": "x", "client_msg_id": 12}', "invalid_payload", "chat_message"),
    ('{"type": "chat_message", "content": "x", "client_msg_id": ""}', "invalid_payload", "chat_message"),
    ('{"type": "chat_message", "content": "' + "y" * 10_001 + '"}', "invalid_payload", "chat_message"),
    ('{"type": "mark_read"}', "invalid_payload", "mark_read"),
    ('{"type": "mark_read", "message_id": null}', "invalid_payload", "mark_read"),
    ('{"type": "mark_read", "message_id": "missing"}', "not_found", "mark_read"),
    ('{"type": "delete_message", "message_id": ["a"]}', "invalid_payload", "delete_message"),
    ('{"type": "fetch_history", "limit": 0}', "invalid_payload", "fetch_history"),
    ('{"type": "fetch_history", "limit": 101}', "invalid_payload", "fetch_history"),
    ('{"type": "fetch_history", "limit": true}', "invalid_payload", "fetch_history"),
    ('{"type": "fetch_history", "before_seq": -1}', "invalid_payload", "fetch_history"),
    ('{"type": "sync", "since": "1"}', "invalid_payload", "sync"),
    ('{"type": "sync", "since": 1e300}', "invalid_payload", "sync"),
    ('{"type": "auth"}', "invalid_payload", "auth"),
    ("[" + ",".join(['{"type":"ping"}'] * 51) + "]", "invalid_payload", None),
]


@pytest.mark.parametrize(("text", "code", "request_type"), CASES, ids=[c[0][:40] for c in CASES])
async def test_bad_frames_get_an_error_and_the_socket_stays_usable(
    server: Server, text: str, code: str, request_type: str | None
) -> None:
    await server.room("r1", [1])
    async with chat(server, "r1", 1) as client:
        await client.expect("message_history")
        await client.send(text)
        error = await client.expect("error")
        assert error["code"] == code
        assert error["message"]
        assert error.get("request_type") == request_type
        await client.send({"type": "ping"})
        await client.expect("pong")
        await client.send({"type": "fetch_history"})
        assert (await client.expect("history_page"))["messages"] == []


async def test_client_msg_id_is_echoed_in_the_error(server: Server) -> None:
    await server.room("r1", [1])
    async with chat(server, "r1", 1) as client:
        await client.expect("message_history")
        await client.send({"type": "chat_message", "content": 3, "client_msg_id": "abc"})
        assert (await client.expect("error"))["client_msg_id"] == "abc"


async def test_binary_frames_get_an_error(server: Server) -> None:
    await server.room("r1", [1])
    async with chat(server, "r1", 1) as client:
        await client.expect("message_history")
        await client.send(b'{"type": "ping"}')
        assert (await client.expect("error"))["code"] == "invalid_payload"
        await client.send({"type": "ping"})
        await client.expect("pong")


async def test_extra_fields_are_ignored(server: Server) -> None:
    await server.room("r1", [1])
    async with chat(server, "r1", 1) as client:
        await client.expect("message_history")
        await client.send({"type": "chat_message", "content": "ok", "extra": {"deep": [1, 2]}})
        assert (await client.expect("chat_message"))["message"]["content"] == "ok"
