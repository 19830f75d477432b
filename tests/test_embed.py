"""The realtime server mounted in a host app (`examples/embed.py`) under
uvicorn: its lifespan runs inside the host's, its sockets answer under the
prefix, and the host delivers notifications and messages from Python."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from realtime.embedding import Realtime
from realtime.store.errors import NotFound
from tests.conftest import SERVICE_KEY, base_settings, token, ws
from tests.conftest import serving as serve_app

ROOT = Path(__file__).resolve().parent.parent


def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("embed_example", ROOT / "examples" / "embed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    async with serve_app(app) as port:
        yield f"127.0.0.1:{port}"


@pytest.fixture
async def host(tmp_path: Path, database_url: str) -> AsyncIterator[tuple[str, Realtime]]:
    app, realtime = example().build(base_settings(tmp_path, database_url=database_url))
    with pytest.raises(RuntimeError, match="not running"):
        _ = realtime.runtime
    async with serving(app) as address:
        yield address, realtime
    # The host's shutdown ran the realtime app's: the API refuses again.
    with pytest.raises(RuntimeError, match="not running"):
        _ = realtime.runtime


async def test_sockets_and_routes_answer_under_the_prefix(host: tuple[str, Realtime]) -> None:
    address, _ = host
    headers = {"Authorization": f"Bearer {SERVICE_KEY}"}
    async with httpx.AsyncClient(base_url=f"http://{address}", headers=headers) as client:
        assert (await client.get("/")).text.startswith("the host app")
        assert (await client.get("/realtime/readyz")).json() == {"status": "ready"}
        assert (await client.get("/realtime/metrics")).status_code == 200
        assert (await client.get("/readyz")).status_code == 404
        response = await client.post("/realtime/api/rooms", json={"id": "r", "member_ids": [1, 2]})
        assert response.status_code == 201
    async with ws(f"ws://{address}/realtime/ws/chat/r/?token={token(1)}") as one:
        await one.expect("message_history")
        await one.send({"type": "chat_message", "content": "hi from a socket"})
        assert (await one.expect("chat_message"))["message"]["content"] == "hi from a socket"


async def test_the_host_notifies_and_posts_from_python(host: tuple[str, Realtime]) -> None:
    address, realtime = host
    async with httpx.AsyncClient(base_url=f"http://{address}/realtime") as client:
        headers = {"Authorization": f"Bearer {SERVICE_KEY}"}
        await client.post("/api/rooms", json={"id": "r", "member_ids": [1, 2]}, headers=headers)
    async with (
        ws(f"ws://{address}/realtime/ws/chat/r/?token={token(1)}") as chat,
        ws(f"ws://{address}/realtime/ws/notifications/?token={token(1)}") as inbox,
        ws(f"ws://{address}/realtime/ws/notifications/?token={token(2)}") as away,
    ):
        await chat.expect("message_history")
        await inbox.expect("bulk_update")
        await away.expect("bulk_update")

        created = await realtime.notify([1], "system", "Hello", "from the host", action_url="/welcome")
        assert [c["user_id"] for c in created] == [1]
        frame = await inbox.expect("new_notification")
        assert frame["notification"] == created[0]["notification"]
        assert frame["notification"]["action_url"] == "/welcome"

        message = await realtime.publish("r", "The consultation starts in 10 minutes")
        assert message["sender"] == {"id": 0, "name": "System"}
        assert (await chat.expect("chat_message"))["message"] == message
        # User 2 has no socket on the room: notified, as for any message.
        assert (await away.expect("new_notification"))["notification"]["type"] == "message"
        await inbox.silent()

        # A retry with the same client_msg_id returns the original and sends nothing.
        first = await realtime.publish("r", "once", client_msg_id="k1")
        assert (await chat.expect("chat_message"))["message"]["id"] == first["id"]
        again = await realtime.publish("r", "once", client_msg_id="k1")
        assert again["id"] == first["id"]
        await chat.silent()

        # Through the example's own routes (the host's HTTP API).
        async with httpx.AsyncClient(base_url=f"http://{address}") as client:
            paid = await client.post("/orders/77/paid", params={"user_id": 1})
            assert paid.status_code == 200
            assert (await inbox.expect("new_notification"))["notification"]["action_url"] == "/orders/77"
            posted = await client.post("/announce", json={"room_id": "r", "content": "maintenance at noon"})
            assert posted.status_code == 201
            assert (await chat.expect("chat_message"))["message"]["content"] == "maintenance at noon"
            assert (await client.post("/announce", json={"room_id": "nope", "content": "x"})).status_code == 404


async def test_bad_calls_raise_and_store_nothing(host: tuple[str, Realtime]) -> None:
    address, realtime = host
    async with httpx.AsyncClient(base_url=f"http://{address}/realtime") as client:
        headers = {"Authorization": f"Bearer {SERVICE_KEY}"}
        await client.post("/api/rooms", json={"id": "r", "member_ids": [1]}, headers=headers)
    async with (
        ws(f"ws://{address}/realtime/ws/chat/r/?token={token(1)}") as chat,
        ws(f"ws://{address}/realtime/ws/notifications/?token={token(1)}") as inbox,
    ):
        await chat.expect("message_history")
        await inbox.expect("bulk_update")
        bad_notifications: list[dict[str, Any]] = [
            {"type": "spam"},
            {"title": "   "},
            {"title": ""},
            {"action_url": "javascript:alert(1)"},
            {"user_ids": []},
            {"user_ids": [0]},
            {"body": "x" * 2001},
        ]
        for change in bad_notifications:
            call = {"user_ids": [1], "type": "system", "title": "t", "body": "b", **change}
            with pytest.raises(ValueError):
                await realtime.notify(**call)
        for bad in (
            {"content": "   "},
            {"content": "x", "message_type": "video"},
            {"content": "", "message_type": "image"},
        ):
            with pytest.raises(ValueError):
                await realtime.publish("r", **bad)
        with pytest.raises(ValueError):
            await realtime.publish("r", "x", message_type="file", file_url="javascript:alert(1)")
        with pytest.raises(NotFound):
            await realtime.publish("nope", "hello")
        await inbox.silent()
        await chat.silent()
    async with ws(f"ws://{address}/realtime/ws/chat/r/?token={token(1)}") as again:
        assert (await again.expect("message_history"))["messages"] == []
    async with ws(f"ws://{address}/realtime/ws/notifications/?token={token(1)}") as again:
        snapshot = await again.expect("bulk_update")
        assert snapshot["notifications"] == [] and snapshot["unread_count"] == 0
