"""transport/: the plain path's writer against ASGI `send`s of every shape, and
the fast-path adapter's choice (the server matrix is tests/test_servers.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import Any

import pytest

from realtime.transport import server_of
from realtime.transport.asgi import RAW_SEND, Outbound, RawSend
from realtime.transport.uvicorn import direct_writer, drop_connection, protocol_of, why_not
from tests.conftest import Client, base_settings, chat, running, token, ws

pytestmark = pytest.mark.anyio


class NotACoroutine:
    """What granian's `send` returns: an awaitable that is no coroutine (no `.send`)."""

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done

    def __await__(self) -> Generator[Any, None, None]:
        return self.done.__await__()


class Peer:
    """A server's `send`: every message recorded once the peer 'reads' it."""

    def __init__(self, blocked: bool = False, awaitable: bool = False) -> None:
        self.got: list[dict[str, Any]] = []
        self.open = asyncio.Event()
        if not blocked:
            self.open.set()
        self.awaitable = awaitable
        self.tasks: set[asyncio.Task[None]] = set()

    def send(self, message: dict[str, Any]) -> Any:
        if self.awaitable:
            future = asyncio.get_running_loop().create_future()

            async def later() -> None:
                await self.open.wait()
                self.got.append(message)
                if not future.done():  # cancelled with the writer that awaited it
                    future.set_result(None)

            task = asyncio.ensure_future(later())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return NotACoroutine(future)
        return self._send(message)

    async def _send(self, message: dict[str, Any]) -> None:
        await self.open.wait()
        self.got.append(message)


@pytest.mark.parametrize("awaitable", [False, True], ids=["coroutine", "awaitable"])
async def test_frames_go_out_in_order_then_the_close(awaitable: bool) -> None:
    peer = Peer(awaitable=awaitable)
    out = Outbound(peer.send, limit=100)
    for i in range(10):
        out.push(f"f{i}")
    out.close(4003, "gone")
    await out.drained(timeout=2)
    assert [m.get("text") for m in peer.got[:-1]] == [f"f{i}" for i in range(10)]
    assert peer.got[-1] == {"type": "websocket.close", "code": 4003, "reason": "gone"}
    assert out.sent == 10 and out.closed


@pytest.mark.parametrize("awaitable", [False, True], ids=["coroutine", "awaitable"])
async def test_a_reader_that_stops_is_cut_off_with_1013_at_the_limit(awaitable: bool) -> None:
    peer = Peer(blocked=True, awaitable=awaitable)
    out = Outbound(peer.send, limit=4)
    lost: list[bool] = []
    out.on_closed = lambda: lost.append(True)
    for i in range(4 + 2):  # one taken by the writer (waiting in `send`), four queued, then one too many
        out.push(f"f{i}")
        await asyncio.sleep(0)
    assert out.closed and lost == [True]
    assert out.dropped == 5
    peer.open.set()
    await out.drained(timeout=2)
    await asyncio.sleep(0.01)
    assert {"type": "websocket.close", "code": 1013, "reason": "slow consumer"} in peer.got, peer.got
    out.push("after")
    await asyncio.sleep(0.01)
    # At most the frame the server had already taken went out; the queued ones were dropped.
    assert [m["text"] for m in peer.got if m["type"] == "websocket.send"] in ([], ["f0"]), peer.got


async def test_a_failed_send_closes_the_outbound_side_and_says_so() -> None:
    async def broken(message: dict[str, Any]) -> None:
        raise RuntimeError("the server refused")

    out = Outbound(broken, limit=10)
    lost: list[bool] = []
    out.on_closed = lambda: lost.append(True)
    out.push("x")
    await out.drained(timeout=2)
    assert out.closed and lost == [True]


async def test_a_refused_close_code_becomes_a_normal_close() -> None:
    got: list[dict[str, Any]] = []

    async def picky(message: dict[str, Any]) -> None:
        if message["type"] == "websocket.close" and message["code"] != 1000 and message["code"] < 3000:
            raise ValueError("invalid close code")
        got.append(message)

    out = Outbound(picky, limit=10)
    out.close(1011, "server error")
    await out.drained(timeout=2)
    assert got == [{"type": "websocket.close", "code": 1000, "reason": "1011 server error"}]


async def test_the_uvicorn_adapter_applies_to_nothing_else() -> None:
    async def plain(message: dict[str, Any]) -> None: ...

    class Lookalike:
        """Named like uvicorn's protocol, which the old check by class name accepted."""

        async def send(self, message: dict[str, Any]) -> None: ...

    Lookalike.__name__ = "WebSocketsSansIOProtocol"
    for send in (plain, Lookalike().send, None):
        assert protocol_of(send) is None and direct_writer(send) is None
    assert "not uvicorn" in why_not(Lookalike().send)
    assert server_of(plain) == "other"


async def test_raw_send_keeps_the_servers_send_for_a_mounted_app() -> None:
    seen: dict[str, Any] = {}

    async def server_send(message: dict[str, Any]) -> None: ...

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(scope)

    async def host_middleware(scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def wrapped(message: dict[str, Any]) -> None:
            await send(message)

        await inner(scope, receive, wrapped)

    await RawSend(host_middleware)({"type": "websocket"}, None, server_send)
    assert seen[RAW_SEND] is server_send
    seen.clear()
    await RawSend(host_middleware)({"type": "http"}, None, server_send)
    assert RAW_SEND not in seen


async def test_on_an_untested_uvicorn_the_fast_path_stays_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The adapter reads uvicorn's internals: on a version it was not tested with it
    declines, and the sockets work through plain ASGI `send`."""
    from realtime.transport import uvicorn as adapter

    for version, fast in (((0, 1), False), (adapter.VERSION, True)):
        monkeypatch.setattr(adapter, "VERSION", version)
        (tmp_path / str(fast)).mkdir()
        async with running(base_settings(tmp_path / str(fast))) as srv:
            await srv.room("r1", [1, 2])
            async with chat(srv, "r1", 1) as a, chat(srv, "r1", 2) as b:
                await a.expect("message_history")
                await b.expect("message_history")
                assert [e.out.fast for s in srv.runtime.sockets.values() for e in s] == [fast, fast]
                await a.send({"type": "chat_message", "content": "either way"})
                for client in (a, b):
                    assert (await client.expect("chat_message"))["message"]["content"] == "either way"


# ---- the fast path holds the frames of one turn and writes them together ---------------


@contextlib.asynccontextmanager
async def member(srv: Any, user_id: int, compressed: bool) -> AsyncIterator[tuple[Client, Any, list[bytes]]]:
    """A chat member of room r1; its endpoint on the server; every write to its transport."""
    url = srv.ws_url("/ws/chat/r1/", token=token(user_id, name=f"user{user_id}"))
    async with ws(url, compression="deflate" if compressed else None) as client:
        await client.expect("message_history")
        endpoint = next(iter(srv.runtime.sockets[user_id]))
        assert endpoint.out.fast
        transport = endpoint.scope[RAW_SEND].__self__.transport
        writes: list[bytes] = []
        write = transport.write

        def counted(data: bytes) -> None:
            writes.append(bytes(data))
            write(data)

        transport.write = counted
        yield client, endpoint, writes


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "deflate"])
async def test_frames_of_one_turn_go_out_in_one_write_in_order_and_before_a_close(
    tmp_path: Path, compressed: bool
) -> None:
    async with running(base_settings(tmp_path)) as srv:
        await srv.room("r1", [1])
        async with member(srv, 1, compressed) as (client, endpoint, writes):
            sent = endpoint.out.sent
            for i in range(5):
                endpoint.out.push(json.dumps({"type": "pong", "n": i}))
            endpoint.out.close(4003, "gone")  # through uvicorn's own `send`, after the held frames
            assert writes == []  # held until the turn ends
            assert [(await client.expect("pong"))["n"] for _ in range(5)] == [0, 1, 2, 3, 4]
            assert await client.closed() == 4003
            assert len(writes) == 2  # the five frames, then the close frame
            assert endpoint.out.sent == sent + 5


async def test_a_fan_out_of_several_events_in_one_turn_is_one_write_per_member(tmp_path: Path) -> None:
    async with running(base_settings(tmp_path)) as srv:
        await srv.room("r1", [1, 2])
        async with member(srv, 1, False) as (a, _, writes_a), member(srv, 2, True) as (b, _, writes_b):
            for i in range(3):  # the memory broker fans out in the publisher's stack: one turn
                await srv.runtime.publish("room:r1", "typing_start", json.dumps({"type": "typing_start", "n": i}))
            for client in (a, b):
                assert [(await client.expect("typing_start"))["n"] for _ in range(3)] == [0, 1, 2]
            assert len(writes_a) == 1 and len(writes_b) == 1


async def test_turn_after_turn_a_socket_gets_each_turns_own_frames(tmp_path: Path) -> None:
    async with running(base_settings(tmp_path)) as srv:
        await srv.room("r1", [1])
        async with member(srv, 1, False) as (client, endpoint, writes):
            for turn in range(3):
                for n in range(2):
                    endpoint.out.push(json.dumps({"type": "pong", "n": 10 * turn + n}))
                await asyncio.sleep(0)  # the held frames go out
            got = [(await client.expect("pong"))["n"] for _ in range(6)]
            assert got == [0, 1, 10, 11, 20, 21]
            assert len(writes) == 3


async def test_a_socket_holding_many_frames_writes_them_at_the_hold_limit(tmp_path: Path) -> None:
    from realtime.transport.uvicorn import HOLD_LIMIT

    async with running(base_settings(tmp_path)) as srv:
        await srv.room("r1", [1])
        async with member(srv, 1, False) as (client, endpoint, writes):
            for i in range(HOLD_LIMIT + 3):
                endpoint.out.push(json.dumps({"type": "pong", "n": i}))
            assert len(writes) == 1  # the first HOLD_LIMIT frames, at once
            got = [(await client.expect("pong"))["n"] for _ in range(HOLD_LIMIT + 3)]
            assert got == list(range(HOLD_LIMIT + 3))
            assert len(writes) == 2


async def test_dropping_a_connection_writes_what_it_holds_first(tmp_path: Path) -> None:
    async with running(base_settings(tmp_path)) as srv:
        await srv.room("r1", [1])
        async with member(srv, 1, False) as (client, endpoint, _):
            for i in range(3):
                endpoint.out.push(json.dumps({"type": "pong", "n": i}))
            assert drop_connection(endpoint.scope[RAW_SEND])
            assert [(await client.expect("pong"))["n"] for _ in range(3)] == [0, 1, 2]
            assert await client.closed() == 1006  # no close frame


async def test_frames_held_for_a_connection_that_is_gone_are_dropped_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(base_settings(tmp_path)) as srv:
        await srv.room("r1", [1, 2])
        async with member(srv, 1, False) as (gone, endpoint, writes), member(srv, 2, False) as (other, _, _):
            endpoint.out.push(json.dumps({"type": "pong", "n": 0}))
            endpoint.scope[RAW_SEND].__self__.transport.abort()
            await asyncio.sleep(0.05)
            assert writes == []
            assert await gone.closed() == 1006
            # The server goes on for everybody else.
            await other.send({"type": "chat_message", "content": "still here"})
            assert (await other.expect("chat_message"))["message"]["content"] == "still here"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("realtime")]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_the_fast_paths_text_frame_is_the_one_websockets_makes(size: int) -> None:
    from websockets.frames import Frame, Opcode

    from realtime.transport.uvicorn import text_frame

    data = ("é" * size).encode()[:size]
    assert text_frame(data) == Frame(Opcode.TEXT, data).serialize(mask=False, extensions=[])
