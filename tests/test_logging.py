"""Logs: one line per socket connect and disconnect, and with LOG_FORMAT=json
every line the process writes is a JSON object, uvicorn's and the libraries' too."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import SECRET, SERVICE_KEY, Server, chat, free_port, token, ws
from tests.procs import REDIS_URL, ROOT, Proc, require, start


async def alive(proc: Proc, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            assert proc.popen.poll() is None, proc.output()
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{proc.http}/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise AssertionError(f"server not up in {timeout}s:\n{proc.output()}")


async def test_json_mode_writes_only_json_lines(tmp_path: Path) -> None:
    env = {
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "info",
        "DATABASE_URL": f"sqlite:///{tmp_path}/t.db",
        "UPLOAD_DIR": str(tmp_path / "up"),
        # A broker that is not there: the Redis backend and the hub log warnings too.
        "BROKER_URL": "redis://127.0.0.1:1",
    }
    proc = start(env, tmp_path / "server.log")
    secret = token(7, name="Seven")
    try:
        await alive(proc)
        headers = {"Authorization": f"Bearer {SERVICE_KEY}"}
        async with httpx.AsyncClient(base_url=proc.http, headers=headers) as api:
            assert (await api.post("/api/rooms", json={"id": "r", "member_ids": [7]})).status_code == 201
            assert (await api.get("/readyz")).status_code == 503
        async with ws(proc.ws_url("/ws/chat/r/", token=secret)) as client:
            await client.expect("message_history")
            await client.send({"type": "chat_message", "content": "hello"})
            await client.expect("chat_message")  # delivered here though the broker is away
            await client.send("{not json")
            await client.expect("error")
        async with ws(proc.ws_url("/ws/chat/elsewhere/", token=secret)) as refused:
            assert await refused.closed() == 4004
        await asyncio.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait()
    lines = [line for line in proc.output().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}\n\n{proc.output()}")
        assert {"ts", "level", "logger", "message"} <= record.keys(), line
        records.append(record)
    loggers = {r["logger"] for r in records}
    # uvicorn's start and stop lines, its access lines, our lines, the broker backend's.
    assert {"uvicorn.error", "uvicorn.access", "realtime.ws", "events.redis_backend"} <= loggers, loggers
    assert any(r["message"].startswith("Application shutdown complete") for r in records)
    assert secret not in proc.output()
    sockets = [r for r in records if r.get("event") in ("connect", "disconnect")]
    # Each socket logs its connect then its disconnect; the first socket's close
    # is handled on the server while the test already opens the second, so the
    # two sockets' lines may interleave.
    by_path = {path: [r for r in sockets if r["path"] == path] for path in ("/ws/chat/r/", "/ws/chat/elsewhere/")}
    assert len(sockets) == 4
    for lines_of_one in by_path.values():
        assert [r["event"] for r in lines_of_one] == ["connect", "disconnect"], sockets
    for r in sockets:
        assert r["user"] == 7 and r["channel"] == "chat"
    first_close, refusal = by_path["/ws/chat/r/"][1], by_path["/ws/chat/elsewhere/"][1]
    assert first_close["code"] == 1000 and 0 <= first_close["duration"] < 10
    assert refusal["code"] == 4004


async def test_every_socket_logs_its_connect_and_its_disconnect(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="realtime.ws")
    await server.room("r", [1])
    async with chat(server, "r", 1) as one:
        await one.expect("message_history")
    async with chat(server, "r", 2) as outsider:
        assert await outsider.closed() == 4003
    async with ws(server.ws_url("/ws/chat/r/", token="garbage")) as anonymous:
        assert await anonymous.closed() == 4001
    for _ in range(50):
        if sum(1 for r in caplog.records if getattr(r, "fields", {}).get("event") == "disconnect") == 2:
            break
        await asyncio.sleep(0.05)
    events = [r for r in caplog.records if r.name == "realtime.ws" and hasattr(r, "fields")]
    summary = [(r.fields["event"], r.fields["user"], r.fields.get("code")) for r in events]  # type: ignore[attr-defined]
    # A socket that never authenticated has no user to log: uvicorn's access line covers it.
    assert summary == [("connect", 1, None), ("disconnect", 1, 1000), ("connect", 2, None), ("disconnect", 2, 4003)]
    text = [r.getMessage() for r in events]
    assert text[1].startswith("disconnect channel=chat user=1 path=/ws/chat/r/ duration=")
    assert text[1].endswith(" code=1000")


def start_workers(tmp_path: Path, workers: int) -> Proc:
    port = free_port()
    env = {
        **os.environ,
        "JWT_SECRET": SECRET,
        "LOG_FORMAT": "json",
        "DATABASE_URL": f"sqlite:///{tmp_path}/t.db",
        "BROKER_URL": REDIS_URL,
        "WEB_CONCURRENCY": str(workers),
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, "-m", "uvicorn", "server:app", "--port", str(port), "--log-config", "logging.json"]
    log = tmp_path / "workers.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Proc(port, popen, log)


async def test_workers_with_the_json_log_config_write_only_json_lines(tmp_path: Path) -> None:
    """`uvicorn --workers N`: the supervisor logs before any app is imported; `logging.json` covers it."""
    require("redis")
    proc = start_workers(tmp_path, 2)
    try:
        await alive(proc)
        async with ws(proc.ws_url("/ws/notifications/", token=token(1))) as client:
            await client.expect("bulk_update")
    finally:
        proc.terminate()
        proc.wait()
    lines = [line for line in proc.output().splitlines() if line.strip()]
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}\n\n{proc.output()}")
    messages = [json.loads(line)["message"] for line in lines]
    assert any(m.startswith("Started parent process") for m in messages), messages
    assert sum(m.startswith("Started server process") for m in messages) == 2, messages
