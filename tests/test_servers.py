"""The server matrix: the socket behaviour that matters, under every ASGI
server we support, each a real process on a free port (one per server for the
whole module): uvicorn with its sans-I/O and wsproto WebSocket protocols,
hypercorn, granian, and the app mounted in a host app (examples/embed.py)
under uvicorn, with and without `transport.raw_send` around the host.

And which of them the uvicorn fast path is in effect under, read from the
`realtime_transport_sockets` metric and the server's log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SECRET, SERVICE_KEY, free_port, slow_chat, token, ws, ws_url

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parent.parent
MAX_FRAME = 64 * 1024


def _command(kind: str, port: int) -> list[str]:
    py = [sys.executable, "-m"]
    uvicorn = [*py, "uvicorn", "--host", "127.0.0.1", "--port", str(port), "--ws-max-size", str(MAX_FRAME * 4)]
    guarded = ["--http", "realtime.transport.guard:http_protocol"]
    return {
        "uvicorn-sansio": [*uvicorn, "server:app", "--ws", "websockets-sansio", *guarded],
        "uvicorn-wsproto": [*uvicorn, "server:app", "--ws", "wsproto", *guarded],
        "hypercorn": [*py, "hypercorn", "server:app_from_env()", "--bind", f"127.0.0.1:{port}"],
        "granian": [*py, "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port), "server:app"],
        "daphne": [*py, "daphne", "-b", "127.0.0.1", "-p", str(port), "server:app"],
        "hosted": [*uvicorn, "examples.embed:app", "--ws", "websockets-sansio"],
        "hosted-bare": [*uvicorn, "examples.embed:bare", "--ws", "websockets-sansio"],
    }[kind]


# Where the realtime app is, and whether the uvicorn fast path should be in effect.
PREFIX = {"hosted": "/realtime", "hosted-bare": "/realtime"}
FAST = {"uvicorn-sansio": True, "hosted": True}
# daphne (autobahn) takes no close code of 1xxx but 1000.
CLOSES_1000 = {"daphne"}
# Servers whose `send` never waits for the peer: the outbound queue cannot see a slow reader.
UNBOUNDED = {"daphne": "daphne buffers every frame sent, however slow the reader: no backpressure to see"}
MATRIX = ["uvicorn-sansio", "uvicorn-wsproto", "hypercorn", "granian", "daphne", "hosted"]


@dataclass
class Running:
    kind: str
    port: int
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def prefix(self) -> str:
        return PREFIX.get(self.kind, "")

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    def ws_url(self, path: str, **query: Any) -> str:
        return ws_url(self.port, path, self.prefix, **query)

    def api(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.http, headers={"Authorization": f"Bearer {SERVICE_KEY}"})

    async def room(self, room_id: str, members: list[int]) -> None:
        async with self.api() as client:
            response = await client.post("/api/rooms", json={"id": room_id, "member_ids": members})
            assert response.status_code == 201, response.text

    async def metric(self, name: str, **labels: str) -> float:
        async with self.api() as client:
            text = (await client.get("/metrics")).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                if all(f'{key}="{value}"' in line for key, value in labels.items()):
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _start(kind: str, tmp: Path) -> Running:
    port = free_port()
    env = {
        **os.environ,
        "JWT_SECRET": SECRET,
        "SERVICE_KEY": SERVICE_KEY,
        "PYTHONUNBUFFERED": "1",
        "DATABASE_URL": f"sqlite:///{tmp}/{kind}.db",
        "BROKER_URL": "memory://",
        "OUTBOUND_QUEUE": "8",
        "RATE_LIMIT": "10000",
        "RATE_BURST": "10000",
        "MAX_FRAME_BYTES": str(MAX_FRAME),
        "LOG_LEVEL": "info",
    }
    log = tmp / f"{kind}.log"
    popen = subprocess.Popen(_command(kind, port), cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    running = Running(kind, port, popen, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise AssertionError(f"{kind} exited with {popen.returncode}:\n{running.output()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{running.http}/readyz", timeout=2).status_code == 200:
                return running
        time.sleep(0.1)
    popen.kill()
    raise AssertionError(f"{kind} not ready in 30s:\n{running.output()}")


def _stop(running: Running) -> None:
    running.popen.terminate()
    try:
        running.popen.wait(10)
    except subprocess.TimeoutExpired:
        running.popen.kill()
        running.popen.wait(5)


@pytest.fixture(scope="module", params=MATRIX)
def srv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    running = _start(request.param, tmp_path_factory.mktemp(request.param))
    try:
        yield running
    finally:
        _stop(running)


def chat(srv: Running, room_id: str, user_id: int, **query: Any) -> Any:
    query.setdefault("token", token(user_id, name=f"user{user_id}"))
    return ws(srv.ws_url(f"/ws/chat/{room_id}/", **query))


async def test_chat_round_trip_and_ping(srv: Running) -> None:
    await srv.room("round", [1])
    async with chat(srv, "round", 1) as a:
        await a.expect("message_history")
        await a.send({"type": "ping"})
        assert isinstance((await a.expect("pong"))["ts"], int)
        await a.send({"type": "chat_message", "content": "안녕하세요", "client_msg_id": "c1"})
        frame = await a.expect("chat_message")
        assert frame["message"]["content"] == "안녕하세요"


async def test_fan_out_reaches_every_socket_in_order(srv: Running) -> None:
    await srv.room("fan", [1, 2, 3, 4])
    async with chat(srv, "fan", 1) as a, chat(srv, "fan", 2) as b, chat(srv, "fan", 3) as c, chat(srv, "fan", 4) as d:
        for client in (a, b, c, d):
            await client.expect("message_history")
        for i in range(20):
            await a.send({"type": "chat_message", "content": f"m{i}"})
        for client in (a, b, c, d):
            got = [(await client.expect("chat_message"))["message"]["content"] for _ in range(20)]
            assert got == [f"m{i}" for i in range(20)]


async def test_auth_by_first_frame_and_resume_with_since(srv: Running) -> None:
    """The seed client's flows: a token in the first frame, then a reconnect with `?since=`."""
    await srv.room("seed", [1, 2])
    async with ws(srv.ws_url("/ws/chat/seed/")) as a:
        await a.send({"type": "auth", "token": token(1, name="user1")})
        await a.expect("auth_ok")
        await a.expect("message_history")
        await a.send({"type": "chat_message", "content": "seen"})
        seen = (await a.expect("chat_message"))["seq"]
    async with chat(srv, "seed", 2) as b:
        await b.expect("message_history")
        await b.send({"type": "chat_message", "content": "while away"})
        await b.expect("chat_message")
    async with chat(srv, "seed", 1, since=seen) as again:
        replayed = await again.expect("chat_message")
        assert replayed["message"]["content"] == "while away"
        assert replayed["seq"] == seen + 1


async def test_close_codes_reach_the_client(srv: Running) -> None:
    async with chat(srv, "nowhere", 1, token="garbage") as bad:
        assert await bad.closed() == 4001
    await srv.room("closed", [1])
    async with chat(srv, "closed", 2) as stranger:
        assert await stranger.closed() in (4003, 4004)


async def test_frame_over_the_limit_closes_with_1009(srv: Running) -> None:
    await srv.room("big", [1])
    async with chat(srv, "big", 1) as a:
        await a.expect("message_history")
        await a.send(json.dumps({"type": "chat_message", "content": "x" * (MAX_FRAME + 1024)}))
        if srv.kind in CLOSES_1000:
            # The server refuses the code: a normal close (transport/asgi.py), not a socket left open.
            assert await a.closed() == 1000
        else:
            assert await a.closed() == 1009


async def test_slow_reader_is_cut_off_with_1013_while_others_keep_receiving(
    srv: Running, request: pytest.FixtureRequest
) -> None:
    if srv.kind in UNBOUNDED:
        request.applymarker(pytest.mark.xfail(strict=True, reason=UNBOUNDED[srv.kind]))
    await srv.room("slow", [1, 2, 3])
    async with slow_chat(srv, "slow", 3) as slow, chat(srv, "slow", 1) as a, chat(srv, "slow", 2) as b:  # type: ignore[arg-type]
        for client in (slow, a, b):
            await client.expect("message_history")
        big = "x" * 9000

        async def say(i: int) -> None:
            await a.send({"type": "chat_message", "content": f"{i}:{big}"})
            await a.expect("chat_message")
            assert (await b.expect("chat_message"))["message"]["content"].startswith(f"{i}:")

        cut = False
        for i in range(2000):
            await say(i)
            if i % 25 == 24:
                # A fan-out is counted once per recipient: 2, not 3, once the slow reader is gone.
                before = await srv.metric("realtime_frames_out_total", type="chat_message")
                await say(i)
                if await srv.metric("realtime_frames_out_total", type="chat_message") - before == 2:
                    cut = True
                    break
        assert cut, f"the slow reader was never cut off under {srv.kind}"
        await a.send({"type": "chat_message", "content": "after"})
        assert (await b.expect("chat_message"))["message"]["content"] == "after"
        assert await slow.closed(timeout=15) == 1013


async def test_fast_path_is_in_effect_only_where_it_applies(srv: Running) -> None:
    await srv.room("which", [1])
    async with chat(srv, "which", 1) as a:
        await a.expect("message_history")
    fast = await srv.metric("realtime_transport_sockets_total", fast_path="yes")
    plain = await srv.metric("realtime_transport_sockets_total", fast_path="no")
    # A host app configures its own logging (the embedded app leaves it alone): no line to read there.
    logged = srv.kind not in PREFIX
    if FAST.get(srv.kind, False):
        assert fast > 0 and plain == 0, (fast, plain)
        assert not logged or "uvicorn fast path in effect" in srv.output()
    else:
        assert fast == 0 and plain > 0, (fast, plain)
        assert not logged or "uvicorn fast path off" in srv.output()


async def test_mounted_without_the_wrapper_takes_the_plain_path(tmp_path: Path) -> None:
    """The host's middleware wraps `send`: without `raw_send` the fast path turns
    itself off; sockets work all the same (through the host's middleware)."""
    running = await asyncio.to_thread(_start, "hosted-bare", tmp_path)
    try:
        await running.room("bare", [1, 2])
        async with chat(running, "bare", 1) as a, chat(running, "bare", 2) as b:
            await a.expect("message_history")
            await b.expect("message_history")
            await a.send({"type": "chat_message", "content": "through the host"})
            for client in (a, b):
                assert (await client.expect("chat_message"))["message"]["content"] == "through the host"
        assert await running.metric("realtime_transport_sockets_total", fast_path="yes") == 0
        assert await running.metric("realtime_transport_sockets_total", server="wrapped", fast_path="no") == 2
    finally:
        _stop(running)
