"""SIGTERM on a real `uvicorn server:app` process: new sockets refused, the
writes already taken committed and echoed, later frames answered
`unavailable`, then 1012 to clients that resume and a dropped connection
(no close frame) to the others; a restarted process serves what was stored."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import signal
import socket
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from realtime.events.node.node import Runtime
from realtime.transport.drain import Drain
from realtime.transport.uvicorn import drop_connection
from tests.conftest import Client, base_settings, token, ws
from tests.procs import Proc, ready, start

pytestmark = pytest.mark.timeout(120)

ROOM = "deploy"


def env(tmp_path: Path, **more: str) -> dict[str, str]:
    return {
        "DATABASE_URL": f"sqlite:///{tmp_path}/realtime.db",
        "UPLOAD_DIR": str(tmp_path / "uploads"),
        # The traffic below is faster than a person types.
        "RATE_LIMIT": "2000",
        "RATE_BURST": "2000",
        **more,
    }


async def make_room(proc: Proc, members: list[int]) -> None:
    async with proc.api() as api:
        response = await api.post("/api/rooms", json={"id": ROOM, "member_ids": members})
        assert response.status_code == 201, response.text


def chat_url(proc: Proc, user_id: int, **query: Any) -> str:
    return proc.ws_url(f"/ws/chat/{ROOM}/", token=token(user_id, name=f"user{user_id}"), **query)


async def stalled_reader(proc: Proc, room: str, user_id: int) -> asyncio.StreamWriter:
    """A seed-style socket (no `resume`) whose client stops reading after its
    first bytes, with a small receive buffer: what the server then writes to
    it piles up in the server's transport."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proc.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws/chat/{room}/?token={token(user_id)} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{proc.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    # The first bytes of `message_history`: the socket has joined its room.
    assert await asyncio.wait_for(reader.read(2), 5)
    return writer


async def flood(proc: Proc, room: str, user_id: int, count: int) -> None:
    """`count` large messages into `room`, each committed (echoed) before the next."""
    async with ws(proc.ws_url(f"/ws/chat/{room}/", token=token(user_id), resume=1)) as sender:
        await sender.expect("message_history")
        for i in range(count):
            await sender.send({"type": "chat_message", "content": f"{i:05d}" + "x" * 9000})
            await sender.expect("chat_message")


def stopped(proc: Proc) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except Exception:
        proc.kill()
        raise


async def test_sigterm_refuses_new_sockets_then_closes_each_kind_its_way(tmp_path: Path) -> None:
    # A large outbound queue: the stalled reader is never cut off as a slow consumer.
    proc = start(env(tmp_path, DRAIN_TIMEOUT="4", OUTBOUND_QUEUE="10000"), tmp_path / "server.log")
    try:
        await ready(proc)
        await make_room(proc, [1, 2, 3])
        async with proc.api() as api:
            assert (await api.post("/api/rooms", json={"id": "flood", "member_ids": [4, 5]})).status_code == 201
        # Megabytes the stalled reader will never take: its connection cannot close by itself.
        stuck = await stalled_reader(proc, "flood", 4)
        await flood(proc, "flood", 5, 800)
        async with (
            ws(chat_url(proc, 1, resume=1)) as own,
            ws(chat_url(proc, 2)) as seed_style,
            ws(chat_url(proc, 3, since=0)) as resuming,
        ):
            for client in (own, seed_style):
                await client.expect("message_history")
            await resuming.send({"type": "ping"})  # `since` replays (nothing yet) instead of a history
            await resuming.expect("pong")
            proc.terminate()
            assert await own.closed() == 1012
            assert own.conn.close_reason == "server restarting"
            assert await resuming.closed() == 1012
            assert await seed_style.closed() == 1006
            # No close frame: the connection just went away, which a browser reports as unclean.
            assert seed_style.conn.protocol.close_rcvd is None
            # The drain waits for the stalled reader's connection to close: new sockets are refused meanwhile.
            with pytest.raises(InvalidStatus) as refused:
                async with ws(chat_url(proc, 1, resume=1)):
                    pass
            assert refused.value.response.status_code == 503
            async with httpx.AsyncClient() as client:
                readyz = await client.get(f"{proc.http}/readyz")
            assert readyz.status_code == 503 and "draining" in readyz.text
            assert proc.popen.poll() is None
            # It never drains: at DRAIN_TIMEOUT its connection is aborted, and the process exits.
            assert proc.wait(15) in (0, -15)
            stuck.close()
    finally:
        proc.kill()
    log = proc.output()
    assert "draining: new sockets refused" in log
    assert "2 socket(s) closed with 1012, 2 dropped" in log, log
    assert "1 socket(s) still open after 4s: connections aborted" in log, log
    assert "Application shutdown complete" in log


class Sender:
    """A client that sends numbered chat messages back to back and records what
    came back: echoes (its own messages) and `error` frames, by client_msg_id."""

    def __init__(self, client: Client, user_id: int, name: str) -> None:
        self.client = client
        self.user_id = user_id
        self.name = name
        self.sent: list[str] = []
        self.echoed: set[str] = set()
        self.errors: dict[str, str] = {}

    async def send_until_closed(self) -> None:
        for i in itertools.count():
            msg_id = f"{self.name}-{i}"
            try:
                await self.client.send({"type": "chat_message", "content": msg_id, "client_msg_id": msg_id})
            except Exception:  # the server went away: what was sent is what counts
                return
            self.sent.append(msg_id)
            await asyncio.sleep(0.003)

    async def read_until_closed(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                frame = await self.client.recv(timeout=30)
                if frame["type"] == "chat_message" and frame["message"]["sender"]["id"] == self.user_id:
                    self.echoed.add(frame["message"]["client_msg_id"])
                elif frame["type"] == "error":
                    self.errors[frame["client_msg_id"]] = frame["code"]


async def test_sigterm_during_traffic_keeps_every_acknowledged_message(tmp_path: Path) -> None:
    settings = env(tmp_path)
    first = start(settings, tmp_path / "first.log")
    try:
        await ready(first)
        await make_room(first, [1, 2, 3])
        async with (
            ws(chat_url(first, 1, resume=1)) as own,
            ws(chat_url(first, 2)) as seed_style,
            ws(chat_url(first, 3, resume=1)) as listener,
        ):
            for client in (own, seed_style, listener):
                await client.expect("message_history")
            senders = [Sender(own, 1, "own"), Sender(seed_style, 2, "seed")]
            heard: list[dict[str, Any]] = []

            async def listen() -> None:
                with contextlib.suppress(Exception):
                    while True:
                        frame = await listener.recv(timeout=30)
                        if frame["type"] == "chat_message":
                            heard.append(frame)

            tasks = [asyncio.ensure_future(s.send_until_closed()) for s in senders]
            tasks += [asyncio.ensure_future(s.read_until_closed()) for s in senders]
            tasks.append(asyncio.ensure_future(listen()))
            # Traffic flowing both ways, then the deploy's SIGTERM in the middle of it.
            for _ in range(200):
                if all(len(s.echoed) >= 20 for s in senders):
                    break
                await asyncio.sleep(0.05)
            first.terminate()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
            assert own.conn.close_code == 1012 and listener.conn.close_code == 1012
            assert seed_style.conn.close_code == 1006 and seed_style.conn.protocol.close_rcvd is None
        assert first.wait(20) in (0, -15)
    finally:
        first.kill()

    with sqlite3.connect(tmp_path / "realtime.db") as db:
        stored = {row[0]: row[1] for row in db.execute("SELECT content, seq FROM messages WHERE room_id = ?", (ROOM,))}
    for sender in senders:
        assert len(sender.echoed) >= 20, (sender.name, len(sender.echoed))
        mine = {content for content in stored if content.startswith(sender.name + "-")}
        # Every echoed message is stored; nothing stored went unacknowledged.
        assert sender.echoed <= mine, sorted(sender.echoed - mine)
        assert mine <= sender.echoed, sorted(mine - sender.echoed)
        # What was refused says so, and is not stored.
        assert set(sender.errors.values()) <= {"unavailable"}, sender.errors
        assert not set(sender.errors) & mine
        # The rest of what was sent: neither echoed nor refused, so the client knows it was not taken.
        assert set(sender.sent) >= sender.echoed | set(sender.errors)

    # The next process on the same port and file: the listener resumes and has every stored message.
    second = start(settings, tmp_path / "second.log", first.port)
    try:
        await ready(second)
        last = max((f["seq"] for f in heard), default=0)
        async with ws(chat_url(second, 3, resume=1, since=last)) as listener:
            with contextlib.suppress(TimeoutError):
                while True:
                    frame = await listener.recv(timeout=1)
                    if frame["type"] == "chat_message":
                        heard.append(frame)
        assert sorted(f["seq"] for f in heard) == sorted(stored.values())
    finally:
        stopped(second)


async def test_a_write_taken_before_the_drain_commits_and_a_frame_read_during_it_is_refused(tmp_path: Path) -> None:
    """Deterministic order: a write held up by a store lock is taken before
    SIGTERM; a frame read while the drain waits for it gets `unavailable`; the
    held write then commits and is echoed before the 1012."""
    proc = start(env(tmp_path, STORE_BUSY_TIMEOUT="8", DRAIN_TIMEOUT="10"), tmp_path / "server.log")
    try:
        await ready(proc)
        await make_room(proc, [1, 2])
        async with ws(chat_url(proc, 1, resume=1)) as taken, ws(chat_url(proc, 2, resume=1)) as late:
            await taken.expect("message_history")
            await late.expect("message_history")
            lock = sqlite3.connect(tmp_path / "realtime.db", isolation_level=None)
            lock.execute("BEGIN EXCLUSIVE")
            await taken.send({"type": "chat_message", "content": "taken", "client_msg_id": "taken"})
            await asyncio.sleep(0.3)  # its handler now waits for the lock
            proc.terminate()
            async with httpx.AsyncClient() as http:
                for _ in range(100):
                    if (await http.get(f"{proc.http}/readyz")).status_code == 503:
                        break
                    await asyncio.sleep(0.05)
            await late.send({"type": "chat_message", "content": "late", "client_msg_id": "late"})
            refused = await late.expect("error")
            assert (refused["code"], refused["client_msg_id"]) == ("unavailable", "late")
            lock.rollback()
            lock.close()
            echo = await taken.expect("chat_message")
            assert echo["message"]["client_msg_id"] == "taken"
            assert await taken.closed(timeout=10) == 1012
        assert proc.wait(20) in (0, -15)
    finally:
        proc.kill()
    with sqlite3.connect(tmp_path / "realtime.db") as db:
        stored = [row[0] for row in db.execute("SELECT content FROM messages WHERE room_id = ?", (ROOM,))]
    assert stored == ["taken"]


def test_drop_connection_closes_uvicorns_transport_and_declines_elsewhere() -> None:
    class Transport:
        closed = 0

        def is_closing(self) -> bool:
            return self.closed > 0

        def close(self) -> None:
            self.closed += 1

    class Protocol:
        def __init__(self) -> None:
            self.transport = Transport()

        async def send(self, message: dict[str, Any]) -> None:
            pass

    protocol = Protocol()
    assert drop_connection(protocol.send) is True
    assert drop_connection(protocol.send) is True  # already closing: closed once
    assert protocol.transport.closed == 1
    # A plain function (another server, TestClient), or a protocol without a transport: a clean close instead.
    assert drop_connection(lambda message: None) is False
    assert drop_connection(None) is False
    bare = Protocol()
    bare.transport = None  # type: ignore[assignment]
    assert drop_connection(bare.send) is False


async def test_the_drain_stays_off_without_uvicorns_signal_handlers(tmp_path: Path) -> None:
    # Here (pytest's main thread) SIGTERM has its default handler: nothing to chain onto.
    runtime = Runtime(base_settings(tmp_path), None, None, None)  # type: ignore[arg-type]
    before = signal.getsignal(signal.SIGTERM)
    drain = Drain(runtime, 1.0)
    assert drain.install() is False
    assert signal.getsignal(signal.SIGTERM) is before
    drain.uninstall()
    assert signal.getsignal(signal.SIGTERM) is before
