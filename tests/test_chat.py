"""The chat channel over real sockets."""

from __future__ import annotations

import asyncio
import json

import pytest

from realtime.store import messages
from tests.conftest import Server, chat, token, ws

SHAPE = {"id", "seq", "room_id", "sender", "content", "message_type", "created_at", "is_read"}


async def test_two_members_chat_and_both_see_the_full_message(server: Server) -> None:
    await server.room("r1", [1, 2])
    async with chat(server, "r1", 1) as a, chat(server, "r1", 2) as b:
        history = await a.expect("message_history")
        assert history.pop("epoch")  # added by epochs (test_epoch.py); the rest as before
        assert history == {"type": "message_history", "messages": [], "has_more": False, "last_seq": 0}
        await b.expect("message_history")
        await a.send({"type": "chat_message", "content": "hello", "client_msg_id": "c1"})
        for client in (a, b):
            frame = await client.expect("chat_message")
            message = frame["message"]
            assert SHAPE <= message.keys()
            assert message["content"] == "hello"
            assert message["message_type"] == "text"
            assert message["sender"] == {"id": 1, "name": "user1"}
            assert message["room_id"] == "r1"
            assert message["is_read"] is False
            assert message["client_msg_id"] == "c1"
            assert message["created_at"].endswith("Z")
            assert frame["seq"] == message["seq"] == 1


async def test_history_on_reconnect(server: Server) -> None:
    await server.room("r1", [1, 2])
    async with chat(server, "r1", 1) as a:
        await a.expect("message_history")
        for i in range(3):
            await a.send({"type": "chat_message", "content": f"m{i}"})
            await a.expect("chat_message")
    async with chat(server, "r1", 2) as b:
        history = await b.expect("message_history")
        assert [m["content"] for m in history["messages"]] == ["m0", "m1", "m2"]
        assert history["last_seq"] == 3
        assert history["has_more"] is False


@pytest.mark.settings(rate_burst=100)
async def test_history_is_the_last_fifty_and_fetch_history_pages_back(server: Server) -> None:
    await server.room("r1", [1])
    async with chat(server, "r1", 1) as a:
        await a.expect("message_history")
        await a.send([{"type": "chat_message", "content": f"m{i}"} for i in range(50)])
        await a.send([{"type": "chat_message", "content": f"m{i}"} for i in range(50, 60)])
        for _ in range(60):
            await a.expect("chat_message")
    async with chat(server, "r1", 1) as a:
        history = await a.expect("message_history")
        assert [m["content"] for m in history["messages"]] == [f"m{i}" for i in range(10, 60)]
        assert history["has_more"] is True
        first = history["messages"][0]["seq"]
        await a.send({"type": "fetch_history", "before_seq": first, "limit": 100})
        page = await a.expect("history_page")
        assert [m["content"] for m in page["messages"]] == [f"m{i}" for i in range(10)]
        assert page["has_more"] is False


async def test_typing_reaches_the_others_not_the_typist_and_expires(server: Server) -> None:
    await server.room("r1", [1, 2])
    async with chat(server, "r1", 1) as a, chat(server, "r1", 2) as b:
        await a.expect("message_history")
        await b.expect("message_history")
        await a.send({"type": "typing_start"})
        assert await b.expect("typing_start") == {"type": "typing_start", "user": {"id": 1, "name": "user1"}}
        await a.silent()
        # typing_timeout is 0.5 s in tests: the server stops it by itself.
        assert await b.expect("typing_stop", timeout=2) == {"type": "typing_stop", "user_id": 1}
        await a.silent()


async def test_typing_stops_on_send_and_on_disconnect(server: Server) -> None:
    await server.room("r1", [1, 2])
    async with chat(server, "r1", 2) as b:
        await b.expect("message_history")
        async with chat(server, "r1", 1) as a:
            await a.expect("message_history")
            await a.send({"type": "typing_start"})
            await b.expect("typing_start")
            await a.send({"type": "chat_message", "content": "done"})
            await b.expect("typing_stop")
            await b.expect("chat_message")
            await a.send({"type": "typing_start"})
            await b.expect("typing_start")
        await b.expect("typing_stop")


async def test_mark_read_is_stored_once_and_broadcast_once(server: Server) -> None:
    await server.room("r1", [1, 2])
    async with chat(server, "r1", 1) as a, chat(server, "r1", 2) as b:
        await a.expect("message_history")
        await b.expect("message_history")
        await a.send({"type": "chat_message", "content": "read me"})
        message = (await a.expect("chat_message"))["message"]
        await b.expect("chat_message")
        await a.send({"type": "mark_read", "message_id": message["id"]})  # own message: nothing
        await b.send({"type": "mark_read", "message_id": message["id"]})
        for client in (a, b):
            read = await client.expect("message_read")
            assert read["message_id"] == message["id"] and read["user_id"] == 2 and read["read_at"].endswith("Z")
        await b.send({"type": "mark_read", "message_id": message["id"]})
        await a.silent()
        await b.silent()
    async with chat(server, "r1", 1) as a:
        history = await a.expect("message_history")
        assert history["messages"][0]["is_read"] is True


async def test_delete_by_sender_only(server: Server) -> None:
    await server.room("r1", [1, 2])
    async with chat(server, "r1", 1) as a, chat(server, "r1", 2) as b:
        await a.expect("message_history")
        await b.expect("message_history")
        await a.send({"type": "chat_message", "content": "oops"})
        message = (await a.expect("chat_message"))["message"]
        await b.expect("chat_message")
        await b.send({"type": "delete_message", "message_id": message["id"]})
        refused = await b.expect("error")
        assert refused["code"] == "forbidden" and refused["request_type"] == "delete_message"
        await a.silent()
        await a.send({"type": "delete_message", "message_id": "nope"})
        assert (await a.expect("error"))["code"] == "not_found"
        await a.send({"type": "delete_message", "message_id": message["id"]})
        for client in (a, b):
            deleted = await client.expect("message_deleted")
            assert deleted["message_id"] == message["id"]
    async with chat(server, "r1", 2) as b:
        assert (await b.expect("message_history"))["messages"] == []


async def test_non_member_and_unknown_room_are_refused(server: Server) -> None:
    await server.room("r1", [1])
    async with chat(server, "r1", 2) as c:
        assert await c.closed() == 4003
    async with chat(server, "nope", 1) as c:
        assert await c.closed() == 4004
    async with chat(server, "bad%20id", 1) as c:
        assert await c.closed() == 4004


async def test_same_client_msg_id_stores_one_message(server: Server) -> None:
    await server.room("r1", [1, 2])
    async with chat(server, "r1", 1) as a, chat(server, "r1", 2) as b:
        await a.expect("message_history")
        await b.expect("message_history")
        await a.send({"type": "chat_message", "content": "once", "client_msg_id": "same"})
        first = await a.expect("chat_message")
        await b.expect("chat_message")
        await a.send({"type": "chat_message", "content": "once", "client_msg_id": "same"})
        again = await a.expect("chat_message")
        assert again["message"]["id"] == first["message"]["id"]
        await b.silent()
    async with chat(server, "r1", 2) as b:
        assert len((await b.expect("message_history"))["messages"]) == 1


async def test_a_retry_publishes_a_stored_message_whose_first_publish_was_lost(server: Server) -> None:
    """A commit whose answer was lost: stored, never published, the sender told
    `unavailable`. Its retry reaches every member once, and the sender once."""
    await server.room("r1", [1, 2])
    async with chat(server, "r1", 1) as a, chat(server, "r1", 2) as b:
        await a.expect("message_history")
        await b.expect("message_history")
        sender = {"id": 1, "name": "user1"}
        stored = await messages.post(server.runtime.db, "r1", sender, "lost", client_msg_id="lost-1")
        await b.silent()
        await a.send({"type": "chat_message", "content": "lost", "client_msg_id": "lost-1"})
        echo = await a.expect("chat_message")
        heard = await b.expect("chat_message")
        assert echo["message"]["id"] == heard["message"]["id"] == stored.message["id"]
        assert heard["seq"] == stored.seq
        await a.silent()
        await b.silent()


async def test_since_returns_exactly_the_missed_events(server: Server) -> None:
    await server.room("r1", [1, 2])
    async with chat(server, "r1", 1) as a:
        await a.expect("message_history")
        async with chat(server, "r1", 2) as b:
            await b.expect("message_history")
            await a.send({"type": "chat_message", "content": "seen"})
            seen = await b.expect("chat_message")
            await a.expect("chat_message")
        for i in range(5):
            await a.send({"type": "chat_message", "content": f"missed{i}"})
            await a.expect("chat_message")
        async with chat(server, "r1", 2, since=seen["seq"]) as b:
            replay = [await b.expect("chat_message") for _ in range(5)]
            assert [f["message"]["content"] for f in replay] == [f"missed{i}" for i in range(5)]
            assert [f["seq"] for f in replay] == list(range(seen["seq"] + 1, seen["seq"] + 6))
            await b.silent()
            await a.send({"type": "chat_message", "content": "live"})
            assert (await b.expect("chat_message"))["message"]["content"] == "live"
            await b.send({"type": "sync", "since": seen["seq"] + 4})
            assert (await b.expect("chat_message"))["message"]["content"] == "missed4"
            assert (await b.expect("chat_message"))["message"]["content"] == "live"
            await b.silent()


async def test_since_beyond_the_stream_asks_for_a_resync(server: Server) -> None:
    await server.room("r1", [1])
    async with chat(server, "r1", 1, since=999) as a:
        assert (await a.expect("resync_required"))["last_seq"] == 0
        await a.expect("message_history")
    async with chat(server, "r1", 1, since="abc") as a:
        assert (await a.expect("error"))["code"] == "invalid_payload"
        await a.expect("message_history")


async def test_json_array_frames_are_handled_in_order(server: Server) -> None:
    await server.room("r1", [1])
    async with chat(server, "r1", 1) as a:
        await a.expect("message_history")
        await a.send([{"type": "ping"}, {"type": "chat_message", "content": "x"}, {"type": "nope"}])
        await a.expect("pong")
        # Replies are direct; the message comes back through the room's broadcast.
        rest = [await a.recv(), await a.recv()]
        assert sorted(f["type"] for f in rest) == ["chat_message", "error"]
        assert next(f for f in rest if f["type"] == "error")["code"] == "unknown_type"


async def test_fifty_sockets_joining_a_new_room_at_once_all_receive(server: Server) -> None:
    members = list(range(1, 51))
    await server.room("crowd", members)
    clients = [chat(server, "crowd", m) for m in members]
    opened = await asyncio.gather(*(c.__aenter__() for c in clients))
    try:
        await asyncio.gather(*(c.expect("message_history") for c in opened))
        await opened[0].send({"type": "chat_message", "content": "all of you"})
        frames = await asyncio.gather(*(c.expect("chat_message") for c in opened))
        assert all(f["message"]["content"] == "all of you" for f in frames)
    finally:
        await asyncio.gather(*(c.__aexit__(None, None, None) for c in clients))


async def test_ping_pong(server: Server) -> None:
    await server.room("r1", [1])
    async with chat(server, "r1", 1) as a:
        await a.expect("message_history")
        await a.send({"type": "ping"})
        assert isinstance((await a.expect("pong"))["ts"], int)


async def test_slow_reader_is_cut_off_while_others_keep_receiving(tmp_path) -> None:
    from tests.conftest import base_settings, running, slow_chat

    async with running(base_settings(tmp_path, outbound_queue=8, rate_limit=10_000, rate_burst=10_000)) as srv:
        await srv.room("r1", [1, 2, 3])
        async with (
            slow_chat(srv, "r1", 3) as slow,
            chat(srv, "r1", 1) as a,
            chat(srv, "r1", 2) as b,
        ):
            await slow.expect("message_history")
            await a.expect("message_history")
            await b.expect("message_history")
            big = "x" * 9000
            for i in range(2000):
                await a.send({"type": "chat_message", "content": f"{i}:{big}"})
                await a.expect("chat_message")
                assert (await b.expect("chat_message"))["message"]["content"].startswith(f"{i}:")
                if srv.runtime.hub.local_subscribers("room:r1") == 2:
                    break
            assert srv.runtime.hub.local_subscribers("room:r1") == 2, "slow reader was never cut off"
            await a.send({"type": "chat_message", "content": "after"})
            assert (await b.expect("chat_message"))["message"]["content"] == "after"
            assert await slow.closed(timeout=10) == 1013


async def test_frame_over_the_limit_closes_with_1009(server: Server) -> None:
    await server.room("r1", [1])
    async with chat(server, "r1", 1) as a:
        await a.expect("message_history")
        await a.send(json.dumps({"type": "chat_message", "content": "x" * (65 * 1024)}))
        assert await a.closed() == 1009


async def test_chat_works_through_plain_asgi_sends_too(tmp_path) -> None:
    """Under another WebSocket implementation there is no direct write: every
    frame goes through ASGI `send`, and nothing changes for the clients."""
    from tests.conftest import base_settings, running

    async with running(base_settings(tmp_path), ws_impl="wsproto") as srv:
        await srv.room("r1", [1, 2])
        async with chat(srv, "r1", 1) as a, chat(srv, "r1", 2) as b:
            await a.expect("message_history")
            await b.expect("message_history")
            assert all(not e.out.fast for s in srv.runtime.sockets.values() for e in s)
            await a.send({"type": "chat_message", "content": "via asgi"})
            for client in (a, b):
                assert (await client.expect("chat_message"))["message"]["content"] == "via asgi"


async def test_compressed_and_plain_clients_get_the_same_frames(server: Server) -> None:
    """A plain connection gets the frame bytes made once for every plain
    connection; a compressed one gets its own. Both read the same frames."""
    await server.room("r1", [1, 2, 3])
    plain_url = server.ws_url("/ws/chat/r1/", token=token(2))
    async with (
        chat(server, "r1", 1) as sender,
        ws(plain_url, compression=None) as plain,
        chat(server, "r1", 3) as deflated,
    ):
        for client in (sender, plain, deflated):
            await client.expect("message_history")
        # uvicorn's sans-I/O protocol: every socket has the direct write.
        assert all(e.out.fast for s in server.runtime.sockets.values() for e in s)
        for i in range(3):
            await sender.send({"type": "chat_message", "content": f"same {i} " + "é" * i})
        for i in range(3):
            frames = [await client.expect("chat_message") for client in (sender, plain, deflated)]
            assert frames[0] == frames[1] == frames[2]
            assert frames[0]["message"]["content"] == f"same {i} " + "é" * i
