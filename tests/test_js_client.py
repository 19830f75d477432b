"""The TypeScript client (clients/js): built with npm, its unit tests under
`node --test`, its typed example under `tsc`, the demo page's copy equal to the
build, and the built client itself on a real server that expires its token,
disconnects it and restarts under it, without losing a message."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from realtime.endpoints.asyncapi import document
from realtime.events.protocol import schema
from realtime.server import SOCKETS
from tests.conftest import IN_CI, SECRET, free_port, token, ws
from tests.procs import Proc, make_room, ready, start

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "clients" / "js"
FRAMES_TS = JS / "src" / "frames.ts"


def npm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["npm", *args], cwd=JS, capture_output=True, text=True, timeout=timeout, check=False)


def installed() -> bool:
    """node_modules holds what package-lock.json pins (npm's own record of what it installed)."""
    record = JS / "node_modules" / ".package-lock.json"
    if not record.exists():
        return False
    lock = json.loads((JS / "package-lock.json").read_text())["packages"]
    have = json.loads(record.read_text())["packages"]
    return {k: v.get("version") for k, v in lock.items() if k} == {k: v.get("version") for k, v in have.items()}


@pytest.fixture(scope="module")
def built() -> Path:
    """clients/js installed (`npm ci`, as .ci/run does first) and built (`npm run build`)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        if IN_CI:
            pytest.fail("node and npm are required in CI (.ci/run)")
        pytest.skip("node is not installed")
    if not installed():
        result = npm("ci", "--no-audit", "--no-fund")
        assert result.returncode == 0, result.stdout + result.stderr
    result = npm("run", "build")
    assert result.returncode == 0, result.stdout + result.stderr
    return JS


# ---- the package ----------------------------------------------------------------------


def test_unit_tests_pass(built: Path) -> None:
    result = npm("test")
    assert result.returncode == 0, result.stdout + result.stderr
    passed = re.search(r"^# pass (\d+)$", result.stdout, re.MULTILINE)
    assert passed and int(passed.group(1)) >= 20, result.stdout
    assert re.search(r"^# fail 0$", result.stdout, re.MULTILINE), result.stdout


def test_the_typed_example_type_checks(built: Path) -> None:
    """examples/usage.ts compiles, and each of its `@ts-expect-error` lines is an error."""
    result = npm("run", "typecheck")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_demo_page_loads_this_build(built: Path) -> None:
    """static/realtime-client.js is the compiled src/client.ts, byte for byte."""
    result = subprocess.run(
        ["node", "scripts/bundle.mjs", "--check"], cwd=JS, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_frames_ts_names_every_schema_and_every_frame_of_each_channel() -> None:
    text = FRAMES_TS.read_text()
    declared = re.findall(r"^export (?:interface|type) (\w+)", text, re.MULTILINE)
    schemas = set(document(SOCKETS)["components"]["schemas"])
    assert schemas <= set(declared)
    assert len(declared) == len(set(declared))
    for channel, sends in schema.SENDS.items():
        block = re.search(rf"^export interface {channel.title()}ServerFrames \{{\n(.*?)^\}}", text, re.M | re.S)
        assert block, channel
        types = re.findall(r"^  (\w+): \w+;$", block.group(1), re.MULTILINE)
        assert types == [s.__struct_config__.tag for s in sends]


# ---- the built client on a real server ------------------------------------------------


class NodeClient:
    """live/chat-log.js: its JSON lines as they come, and commands to its stdin."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(json.loads(raw))

    async def command(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        await self.proc.stdin.drain()

    def events(self, event: str) -> list[Any]:
        return [line["data"] for line in self.lines if line["event"] == event]

    def frames(self, type_: str) -> list[dict[str, Any]]:
        return [frame for frame in self.events("frame") if frame.get("type") == type_]

    def contents(self) -> list[str]:
        return [frame["message"]["content"] for frame in self.frames("chat_message")]

    async def until(self, what: str, check: Callable[[], bool], timeout: float = 15) -> None:
        for _ in range(int(timeout / 0.05)):
            if check():
                return
            if self.reader.done():
                break
            await asyncio.sleep(0.05)
        stderr = (await self.proc.stderr.read()).decode() if self.proc.stderr and self.reader.done() else ""
        raise AssertionError(f"not seen: {what}\n" + "\n".join(map(json.dumps, self.lines)) + stderr)


@contextlib.asynccontextmanager
async def node_client(base: str, room: str, user: int, first_token_seconds: int) -> AsyncIterator[NodeClient]:
    env = {
        **os.environ,
        "REALTIME_BASE": base,
        "REALTIME_ROOM": room,
        "REALTIME_USER": str(user),
        "JWT_SECRET": SECRET,
        "FIRST_TOKEN_SECONDS": str(first_token_seconds),
    }
    proc = await asyncio.create_subprocess_exec(
        "node",
        "dist/live/chat-log.js",
        cwd=JS,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    client = NodeClient(proc)
    try:
        yield client
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        client.reader.cancel()


async def say(proc: Proc, room: str, user: int, content: str) -> None:
    """Another member writes to the room through `proc` (and sees it stored)."""
    async with ws(proc.ws_url(f"/ws/chat/{room}/", token=token(user, name=f"user{user}"))) as other:
        await other.expect("message_history")
        await other.send({"type": "chat_message", "content": content})
        while (await other.recv())["type"] != "chat_message":
            pass


def stop(proc: Proc) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.timeout(180)
async def test_the_client_refreshes_its_token_and_resumes_through_a_restart(built: Path, tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/rt.db", "UPLOAD_DIR": str(tmp_path / "uploads")}
    port = free_port()
    first = start(env, tmp_path / "first.log", port)
    procs = [first]
    try:
        await ready(first)
        await make_room(first, "js", [1, 2])
        # The first token lives 3 s: the server sends `token_expiring` while the socket is open.
        async with node_client(first.http, "js", 1, first_token_seconds=3) as client:
            await client.until("the snapshot", lambda: bool(client.frames("message_history")))
            await say(first, "js", 2, "one")
            await client.command(send={"type": "chat_message", "content": "two", "client_msg_id": "js-2"})
            await client.until("both messages", lambda: client.contents() == ["one", "two"])

            # token_expiring → getToken() → an `auth` frame → auth_ok, on the same socket.
            await client.until("auth_ok", lambda: bool(client.frames("auth_ok")), timeout=20)
            assert client.frames("token_expiring") and len(client.events("get_token")) == 1
            assert client.frames("auth_ok")[0]["user"]["id"] == 1
            assert len(client.events("connected")) == 1 and not client.events("disconnected")

            # The platform disconnects the user (4001): a fresh token, a new socket, resumed.
            async with first.api() as api:
                reply = await api.post("/api/users/1/disconnect", json={})
                assert reply.status_code == 202, reply.text
            await client.until("the reconnect", lambda: len(client.events("connected")) == 2)
            assert [d["code"] for d in client.events("disconnected")] == [4001]
            assert len(client.events("get_token")) == 2 and not client.events("refused")
            seen = client.frames("chat_message")[-1]["seq"]
            await client.until("a pong on the new socket", lambda: len(client.frames("pong")) >= 2)

            # SIGTERM: the drain closes the socket with 1012 (it was opened with resume=1).
            stop(first)
            await client.until("1012", lambda: 1012 in [d["code"] for d in client.events("disconnected")])

            # While it is away, on another port: messages it must not miss.
            other_port = free_port()
            while other_port == port:
                other_port = free_port()
            elsewhere = start(env, tmp_path / "elsewhere.log", other_port)
            procs.append(elsewhere)
            await ready(elsewhere)
            await say(elsewhere, "js", 2, "three")
            await say(elsewhere, "js", 2, "four")
            stop(elsewhere)

            second = start(env, tmp_path / "second.log", port)
            procs.append(second)
            await ready(second)
            await client.until("the replay", lambda: client.contents()[-1:] == ["four"], timeout=20)
            await say(second, "js", 2, "five")
            await client.until("a live message", lambda: client.contents()[-1:] == ["five"])
            await client.command(quit=True)
            await client.until("quit", lambda: bool(client.events("quit")))

        # Every message once, in order; seqs only go up.
        assert client.contents() == ["one", "two", "three", "four", "five"]
        seqs = [frame["seq"] for frame in client.frames("chat_message")]
        assert seqs == sorted(set(seqs))
        # The reconnect to the new server resumed after the last seq seen, in the room's epoch.
        epoch = client.frames("message_history")[0]["epoch"]
        resumed = re.findall(r"/ws/chat/js/\?[^\s\"]*", second.output())
        assert resumed, second.output()
        assert f"since={seen}" in resumed[0] and f"epoch={epoch}" in resumed[0], resumed
        assert len(client.frames("message_history")) == 1  # never a fresh snapshot: always a replay
        assert not client.events("refused")
        assert client.events("quit")[0] == {"lastSeq": seqs[-1], "epoch": epoch}
    finally:
        for proc in procs:
            stop(proc)
