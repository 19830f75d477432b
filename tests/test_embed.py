"""The realtime server mounted in a host app (`examples/embed.py`) under
uvicorn: its lifespan runs inside the host's, its sockets answer under the
prefix, and the host delivers notifications and messages from Python."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from realtime.embedding import Realtime
from realtime.store.errors import Forbidden, NotFound
from tests.conftest import SERVICE_KEY, base_settings, token, ws
from tests.conftest import serving as serve_app

ROOT = Path(__file__).resolve().parent.parent
SERVICE = {"Authorization": f"Bearer {SERVICE_KEY}"}


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
        # The OpenAPI document names the prefix its routes are under.
        assert (await client.get("/realtime/openapi.json")).json()["servers"] == [{"url": "/realtime"}]
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
            # A room the host made from Python, announced into.
            booked = await client.post("/bookings/b7/confirmed", json={"expert_id": 1, "client_id": 2})
            assert booked.status_code == 201 and booked.json()["room"]["member_ids"] == [1, 2]
            assert (
                await client.post("/bookings/b8/confirmed", json={"expert_id": 1, "client_id": 1})
            ).status_code == 400
            async with ws(f"ws://{address}/realtime/ws/chat/b7/?token={token(2)}") as booked_chat:
                await booked_chat.expect("message_history")
                posted = await client.post("/announce", json={"room_id": "b7", "content": "see you at 3"})
                assert posted.status_code == 201
                assert (await booked_chat.expect("chat_message"))["message"]["content"] == "see you at 3"
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
            {"action_url": "/\\evil.example/x"},
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


async def test_the_python_api_covers_users_rooms_members_consultations_and_presence(
    host: tuple[str, Realtime],
) -> None:
    """Everything the server API does, from Python, reaching the sockets the same way."""
    address, realtime = host
    assert await realtime.put_user(1, "Dr. Kim", "expert") == {
        "id": 1,
        "name": "Dr. Kim",
        "role": "expert",
        "profile_image": None,
    }
    await realtime.put_user(2, "Minji")
    assert (await realtime.get_user(2))["name"] == "Minji"
    assert await realtime.get_user(99) is None
    room = await realtime.create_room([2, 1, 2], room_id="r2")
    assert room == {"id": "r2", "member_ids": [1, 2]}
    assert await realtime.room_members("r2") == [1, 2]
    assert await realtime.room_presence("r2") == []

    async with ws(f"ws://{address}/realtime/ws/chat/r2/?token={token(1)}") as kim:
        await kim.expect("message_history")
        assert await realtime.room_presence("r2") == [1]
        [socket] = await realtime.sockets(1)
        assert socket["channel"] == "chat" and socket["access"] == "chat:r2" and socket["opened_at"] > 0
        online = {"user_id": 1, "online": True, "sockets": 1, "channels": ["chat"]}
        assert await realtime.user_presence(1) == online
        assert await realtime.user_presence(2) == {"user_id": 2, "online": False, "sockets": 0, "channels": []}
        # The same answers as the server API's routes.
        async with httpx.AsyncClient(base_url=f"http://{address}/realtime", headers=SERVICE) as api:
            assert (await api.get("/api/users/1/sockets")).json() == {"user_id": 1, "sockets": [socket]}
            assert (await api.get("/api/presence", params={"user": 1})).json() == online

        # As a member: their stored profile, delivered as a socket message is.
        message = await realtime.publish("r2", "hello from the backend", user_id=2, client_msg_id="m1")
        assert message["sender"]["id"] == 2 and message["sender"]["name"] == "Minji"
        assert (await kim.expect("chat_message"))["message"] == message
        # Not a member: refused, nothing stored or sent.
        with pytest.raises(Forbidden):
            await realtime.publish("r2", "not mine", user_id=3)
        await realtime.add_member("r2", 3)
        assert await realtime.room_members("r2") == [1, 2, 3]
        await realtime.publish("r2", "now mine", user_id=3)
        assert (await kim.expect("chat_message"))["message"]["content"] == "now mine"
        messages, more = await realtime.history("r2")
        assert [m["content"] for m in messages] == ["hello from the backend", "now mine"] and not more
        older, more = await realtime.history("r2", before_seq=messages[1]["seq"], limit=1)
        assert [m["content"] for m in older] == ["hello from the backend"] and not more

        # Removing a member closes their socket on the room at once.
        await realtime.remove_member("r2", 1)
        assert await kim.closed() == 4003
    assert await realtime.room_members("r2") == [2, 3]

    booked = await realtime.create_consultation(1, 2, consultation_id="c1", duration_minutes=30)
    assert booked["status"] == "waiting" and booked["duration_minutes"] == 30
    async with ws(f"ws://{address}/realtime/ws/consultation/c1/?token={token(1, name='Dr. Kim')}") as expert:
        assert (await expert.expect("consultation_status"))["status_data"]["status"] == "waiting"
        [present] = await realtime.consultation_presence("c1")
        assert present["id"] == 1
        started = await realtime.start_consultation("c1")
        assert started["status"] == "in_progress"
        await expert.expect("consultation_started")
        ended = await realtime.end_consultation("c1", "the backend ended it")
        assert ended["status"] == "completed"
        assert (await expert.expect("consultation_ended"))["reason"] == "the backend ended it"
    assert (await realtime.get_consultation("c1"))["status"] == "completed"
    cancelled = await realtime.create_consultation(1, 2)
    assert (await realtime.cancel_consultation(cancelled["id"]))["status"] == "cancelled"

    revoked_before = await realtime.disconnect_user(2, revoke=True)
    assert isinstance(revoked_before, int)
    assert await realtime.disconnect_user(2) is None


async def test_bad_python_api_calls_raise_and_change_nothing(host: tuple[str, Realtime]) -> None:
    _, realtime = host
    await realtime.create_room([1], room_id="r3")
    bad_calls: list[Any] = [
        realtime.put_user(0, "x"),
        realtime.put_user(1, ""),
        realtime.put_user(1, "x", role="admin"),
        realtime.create_room(["one"]),  # type: ignore[list-item]
        realtime.create_room([1], room_id="no spaces"),
        realtime.add_member("r3", -1),
        realtime.add_member("../r3", 1),
        realtime.history("r3", limit=0),
        realtime.history("r3", before_seq=0),
        realtime.create_consultation(1, 1),
        realtime.create_consultation(1, 2, duration_minutes=0),
        realtime.end_consultation("c1", "x" * 10_000),
        realtime.publish("r3", "x", user_id=1, sender={"id": 1, "name": "x"}),
        realtime.history("r3", limit=101),
        realtime.history("r3", limit=True),
        realtime.user_presence(0),
        realtime.sockets("1"),  # type: ignore[arg-type]
        # NUL characters, refused as the routes refuse them (PostgreSQL text cannot hold one).
        realtime.publish("r3", "a\x00b"),
        realtime.put_user(1, "Min\x00ji"),
        realtime.notify([1], "system", "t", "b\x00"),
        realtime.create_room([1], consultation_id="c\x00"),
        # A `sender` is `{id, name, profile_image?}`.
        realtime.publish("r3", "x", sender={"name": "Bot"}),
        realtime.publish("r3", "x", sender={"id": "7", "name": "Bot"}),
        realtime.publish("r3", "x", sender={"id": 7, "name": ""}),
        realtime.publish("r3", "x", sender={"id": -1, "name": "Bot"}),
        realtime.publish("r3", "x", sender={"id": 7, "name": "Bot", "role": "admin"}),
        realtime.publish("r3", "x", sender={"id": 7, "name": "B\x00t"}),
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            await call
    for missing in (
        realtime.room_members("nope"),
        realtime.history("nope"),
        realtime.room_presence("nope"),
        realtime.get_consultation("nope"),
        realtime.start_consultation("nope"),
        realtime.consultation_presence("nope"),
    ):
        with pytest.raises(NotFound):
            await missing
    assert await realtime.get_user(1) is None
    assert await realtime.room_members("r3") == [1]
    assert await realtime.history("r3") == ([], False)
    # A valid `sender` is shown as given.
    message = await realtime.publish("r3", "hi", sender={"id": 7, "name": "Bot"})
    assert message["sender"] == {"id": 7, "name": "Bot"}


async def test_a_failed_start_stops_what_had_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A host whose realtime start-up fails half way keeps running: nothing of ours may run on in it."""
    from realtime.events.node import control

    async def broken(runtime: object) -> None:
        raise RuntimeError("control topic refused")

    monkeypatch.setattr(control, "listen", broken)
    settings = base_settings(
        tmp_path, webhook_urls=("http://127.0.0.1:9/hook",), webhook_secret="s" * 32, chat_notification_window=0.05
    )
    before = set(asyncio.all_tasks())
    realtime = Realtime(settings)
    with pytest.raises(RuntimeError, match="control topic refused"):
        async with realtime.lifespan():
            pass
    await asyncio.sleep(0.05)
    left = [t for t in asyncio.all_tasks() - before if not t.done()]
    assert left == [], left
