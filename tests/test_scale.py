"""Several server processes on one Redis and one store: nothing lost, nothing
doubled, order kept, across broker outages and process deaths."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Client, free_port, token, ws
from tests.procs import REDIS_URL, make_room, ready, require, servers, start


async def drain(client: Client, count: int, timeout: float = 20) -> list[dict]:
    frames = []
    deadline = time.monotonic() + timeout
    while len(frames) < count:
        frame = await client.recv(timeout=max(0.1, deadline - time.monotonic()))
        if frame["type"] == "chat_message":
            frames.append(frame)
    return frames


async def test_members_on_two_processes_chat_both_ways_in_order(tmp_path: Path, pg_url: str) -> None:
    require("redis")
    async with servers(2, {"DATABASE_URL": pg_url, "BROKER_URL": REDIS_URL}, tmp_path) as (one, two):
        await make_room(one, "x", [1, 2])
        async with (
            ws(one.ws_url("/ws/chat/x/", token=token(1))) as a,
            ws(two.ws_url("/ws/chat/x/", token=token(2))) as b,
        ):
            await a.expect("message_history")
            await b.expect("message_history")
            for i in range(20):
                await (a if i % 2 == 0 else b).send({"type": "chat_message", "content": f"m{i}"})
            for client in (a, b):
                frames = await drain(client, 20)
                assert [f["seq"] for f in frames] == list(range(1, 21))
                assert sorted(f["message"]["content"] for f in frames) == sorted(f"m{i}" for i in range(20))
                await client.silent()


async def test_fifty_joining_on_one_process_receive_from_the_other(tmp_path: Path, pg_url: str) -> None:
    require("redis")
    async with servers(2, {"DATABASE_URL": pg_url, "BROKER_URL": REDIS_URL}, tmp_path) as (one, two):
        members = list(range(1, 52))
        await make_room(one, "crowd", members)
        managers = [ws(one.ws_url("/ws/chat/crowd/", token=token(m))) for m in members[:50]]
        clients = await asyncio.gather(*(m.__aenter__() for m in managers))
        try:
            await asyncio.gather(*(c.expect("message_history") for c in clients))
            async with ws(two.ws_url("/ws/chat/crowd/", token=token(51))) as sender:
                await sender.expect("message_history")
                await sender.send({"type": "chat_message", "content": "to all fifty"})
                frames = await asyncio.gather(*(c.expect("chat_message") for c in clients))
                assert {f["message"]["content"] for f in frames} == {"to all fifty"}
        finally:
            await asyncio.gather(*(m.__aexit__(None, None, None) for m in managers))


@contextlib.contextmanager
def private_redis(port: int) -> Iterator[subprocess.Popen[bytes]]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


async def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


async def test_redis_restarted_mid_conversation_loses_and_doubles_nothing(tmp_path: Path, pg_url: str) -> None:
    redis_port = free_port()
    broker = f"redis://127.0.0.1:{redis_port}/0"
    redis = private_redis(redis_port)
    redis.__enter__()
    try:
        await wait_port(redis_port)
        async with servers(2, {"DATABASE_URL": pg_url, "BROKER_URL": broker}, tmp_path) as (one, two):
            await make_room(one, "r", [1, 2, 3])
            async with (
                ws(one.ws_url("/ws/chat/r/", token=token(1))) as a,
                ws(two.ws_url("/ws/chat/r/", token=token(2))) as b,
                ws(two.ws_url("/ws/chat/r/", token=token(3))) as c,
            ):
                for client in (a, b, c):
                    await client.expect("message_history")
                sent = 0

                async def send_round(count: int) -> None:
                    nonlocal sent
                    for _ in range(count):
                        sender = (a, b)[sent % 2]
                        await sender.send({"type": "chat_message", "content": f"m{sent}"})
                        sent += 1
                        await asyncio.sleep(0.02)

                await send_round(6)
                redis.__exit__(None, None, None)  # the broker goes away
                await send_round(6)
                redis = private_redis(redis_port)
                redis.__enter__()
                await wait_port(redis_port)
                await send_round(6)
                for client in (a, b, c):
                    frames = await drain(client, sent, timeout=30)
                    assert [f["seq"] for f in frames] == list(range(1, sent + 1))
                    assert sorted(f["message"]["content"] for f in frames) == sorted(f"m{i}" for i in range(sent))
                    await client.silent(0.5)
    finally:
        redis.__exit__(None, None, None)


async def test_a_killed_process_clients_resume_on_the_other_without_missing_anything(
    tmp_path: Path, pg_url: str
) -> None:
    require("redis")
    async with servers(2, {"DATABASE_URL": pg_url, "BROKER_URL": REDIS_URL}, tmp_path) as (one, two):
        await make_room(one, "r", [1, 2])
        async with ws(two.ws_url("/ws/chat/r/", token=token(1))) as sender:
            await sender.expect("message_history")
            async with ws(one.ws_url("/ws/chat/r/", token=token(2))) as victim:
                await victim.expect("message_history")
                await sender.send({"type": "chat_message", "content": "before"})
                last_seen = (await victim.expect("chat_message"))["seq"]
                one.kill()
                with contextlib.suppress(Exception):
                    await victim.closed(timeout=5)
            for i in range(5):
                await sender.send({"type": "chat_message", "content": f"while away {i}"})
                await sender.expect("chat_message")
            async with ws(two.ws_url("/ws/chat/r/", token=token(2), since=last_seen)) as back:
                frames = await drain(back, 5)
                assert [f["message"]["content"] for f in frames] == [f"while away {i}" for i in range(5)]
                await back.silent()


async def test_sigterm_closes_sockets_with_1012_and_keeps_what_was_accepted(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/t.db", "UPLOAD_DIR": str(tmp_path / "up")}
    proc = start(env, tmp_path / "a.log")
    await ready(proc)
    await make_room(proc, "r", [1])
    # `resume=1`: a client that comes back after a 1012 (others are dropped: see test_drain.py).
    async with ws(proc.ws_url("/ws/chat/r/", token=token(1), resume=1)) as client:
        await client.expect("message_history")
        await client.send({"type": "chat_message", "content": "last words", "client_msg_id": "k1"})
        await client.expect("chat_message")
        proc.terminate()
        assert await client.closed(timeout=10) == 1012
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert proc.wait() in (0, -15)
    assert "Application shutdown complete" in proc.output()
    again = start(env, tmp_path / "b.log")
    try:
        await ready(again)
        async with ws(again.ws_url("/ws/chat/r/", token=token(1))) as client:
            history = await client.expect("message_history")
            assert [m["content"] for m in history["messages"]] == ["last words"]
    finally:
        again.terminate()
        again.wait()


async def test_two_processes_on_one_sqlite_file_keep_seq_strict(tmp_path: Path) -> None:
    require("redis")
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/shared.db", "BROKER_URL": REDIS_URL}
    async with servers(2, env, tmp_path) as (one, two):
        await make_room(one, "s", [1, 2])
        async with (
            ws(one.ws_url("/ws/chat/s/", token=token(1))) as a,
            ws(two.ws_url("/ws/chat/s/", token=token(2))) as b,
        ):
            await a.expect("message_history")
            await b.expect("message_history")
            batch = [{"type": "chat_message", "content": f"x{i}"} for i in range(30)]
            await asyncio.gather(a.send(batch), b.send(batch))
            for client in (a, b):
                frames = await drain(client, 60)
                assert [f["seq"] for f in frames] == list(range(1, 61))


async def test_a_memory_broker_refuses_a_second_process_on_the_same_database(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/one.db", "UPLOAD_DIR": str(tmp_path / "up")}
    first = start(env, tmp_path / "first.log")
    try:
        await ready(first)
        second = start(env, tmp_path / "second.log")
        assert second.wait(20) != 0
        assert "already uses this database with BROKER_URL=memory://" in second.output()
    finally:
        first.terminate()
        first.wait()
