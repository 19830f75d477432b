"""`file_url` is rendered as a link by the other members' clients: an http(s)
URL or a path on this server, never something a browser reads as another host."""

from __future__ import annotations

import json

import pytest

from realtime.events.protocol.chat import ChatMessage
from realtime.events.protocol.links import safe_url
from tests.conftest import Server, chat

# Each of these a browser (or a client that decodes the URL first) may follow to another host.
BAD = [
    "//evil.example/x",
    "/\\evil.example/x",
    "\\\\evil.example/x",
    "\\/evil.example/x",
    "/%5cevil.example/x",
    "/%5Cevil.example/x",
    "/%2fevil.example/x",
    "/%2F%2Fevil.example/x",
    "%2f%2fevil.example/x",
    "/%252fevil.example/x",
    "/\t/evil.example/x",
    "/\n/evil.example/x",
    "/%09/evil.example/x",
    " //evil.example/x",
    "/files/a\\b.png",
    "https://cdn.example\\@evil.example/x",
    "javascript:alert(1)",
    "data:text/html,hi",
    "evil.example/x",
]
GOOD = ["/files/0123456789abcdef01234567.png", "https://cdn.example/a.png", "http://cdn.example/a%20b.png", "/a/b%20c"]


@pytest.mark.parametrize("url", BAD)
async def test_a_file_url_that_leaves_the_server_is_refused(server: Server, url: str) -> None:
    await server.room("r1", [1])
    async with chat(server, "r1", 1) as client:
        await client.expect("message_history")
        frame = {"type": "chat_message", "content": "x", "message_type": "file", "file_url": url}
        await client.send(json.dumps(frame))
        error = await client.expect("error")
        assert error["code"] == "invalid_payload" and error["request_type"] == "chat_message", error
        await client.send({"type": "ping"})
        await client.expect("pong")
        await client.send({"type": "fetch_history"})
        assert (await client.expect("history_page"))["messages"] == []


@pytest.mark.parametrize("url", GOOD)
def test_links_and_paths_on_this_server_are_taken(url: str) -> None:
    assert ChatMessage(content="x", message_type="file", file_url=url).file_url == url


def test_one_check_for_every_link_a_client_renders() -> None:
    """A notification's `action_url` is a link as `file_url` is: the same check."""
    assert not any(safe_url(url) for url in BAD)
    assert all(safe_url(url) for url in GOOD)
