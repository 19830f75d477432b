"""A real uvicorn server on a free port, real sockets, a fresh database per test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect

from realtime.server import create_app
from realtime.settings import Settings

SECRET = "test-secret-of-at-least-32-bytes-long"
SERVICE_KEY = "service-key-for-tests"
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token(
    user_id: int | str,
    *,
    name: str | None = None,
    role: str | None = None,
    exp: float | None = None,
    secret: str = SECRET,
    algorithm: str = "HS256",
    claim: str = "user_id",
    **extra: Any,
) -> str:
    claims: dict[str, Any] = {claim: user_id, "exp": int(exp if exp is not None else time.time() + 3600), **extra}
    if name is not None:
        claims["name"] = name
    if role is not None:
        claims["role"] = role
    return jwt.encode(claims, secret, algorithm=algorithm)


def ws_url(port: int, path: str, prefix: str = "", **query: Any) -> str:
    """A socket's URL on a test server at `port` (an app mounted under `prefix`)."""
    url = f"ws://127.0.0.1:{port}{prefix}{path}"
    if query:
        url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return url


@dataclass
class Server:
    port: int
    settings: Settings
    app: Any

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, path: str, **query: Any) -> str:
        return ws_url(self.port, path, **query)

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    def api(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.http, headers={"Authorization": f"Bearer {SERVICE_KEY}"})

    async def room(self, room_id: str, members: list[int]) -> None:
        async with self.api() as client:
            response = await client.post("/api/rooms", json={"id": room_id, "member_ids": members})
            assert response.status_code == 201, response.text

    async def user(self, user_id: int, name: str, role: str = "client") -> None:
        async with self.api() as client:
            response = await client.put(f"/api/users/{user_id}", json={"name": name, "role": role})
            assert response.status_code == 200, response.text


@contextlib.asynccontextmanager
async def serving(app: Any, ws_impl: str = "websockets-sansio", **config: Any) -> AsyncIterator[int]:
    """Any ASGI app under a real uvicorn on a free port, in this event loop; yields the port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws=ws_impl, **config))
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if task.done():
        task.result()
    try:
        yield port
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


# The Procfile's `--http`: uvicorn's HTTP protocol under the connection guard.
GUARDED_HTTP = "realtime.transport.guard:http_protocol"


@contextlib.asynccontextmanager
async def running(settings: Settings, ws_impl: str = "websockets-sansio", **config: Any) -> AsyncIterator[Server]:
    app = create_app(settings)
    config.setdefault("http", GUARDED_HTTP)
    async with serving(app, ws_impl, lifespan="on", ws_max_size=settings.max_frame_bytes * 4, **config) as port:
        yield Server(port, settings, app)


def base_settings(tmp_path: Path, **changes: Any) -> Settings:
    settings = Settings(
        jwt_secret=SECRET,
        service_key=SERVICE_KEY,
        database_url=f"sqlite:///{tmp_path}/test.db",
        upload_dir=tmp_path / "uploads",
        typing_timeout=0.5,
    )
    return replace(settings, **changes)


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Every test on the `server` fixture runs on both stores."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/test.db"
        return
    from tests.procs import fresh_postgres, require

    require("postgres")
    async with fresh_postgres() as url:
        yield url


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for tests that run server processes on it."""
    from tests.procs import fresh_postgres, require

    require("postgres")
    async with fresh_postgres() as url:
        yield url


@pytest.fixture
async def server(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> AsyncIterator[Server]:
    """A server on a fresh database; `@pytest.mark.settings(name=value)` changes its settings."""
    marker = request.node.get_closest_marker("settings")
    changes = marker.kwargs if marker else {}
    async with running(base_settings(tmp_path, database_url=database_url, **changes)) as srv:
        yield srv


async def get(url: str, **kwargs: object) -> httpx.Response:
    """An HTTP GET that does not block the event loop the in-process server runs on."""
    async with httpx.AsyncClient() as client:
        return await client.get(url, **kwargs)  # type: ignore[arg-type]


async def post(url: str, **kwargs: object) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(url, **kwargs)  # type: ignore[arg-type]


class Client:
    """A test WebSocket client that reads JSON frames with a timeout."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn

    async def send(self, frame: Any) -> None:
        await self.conn.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.conn.recv(), timeout))

    async def expect(self, type_: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame, which must be of `type_`."""
        frame = await self.recv(timeout)
        assert frame["type"] == type_, frame
        return frame

    async def silent(self, timeout: float = 0.3) -> None:
        """Nothing arrives within `timeout`."""
        with contextlib.suppress(TimeoutError):
            frame = await asyncio.wait_for(self.conn.recv(), timeout)
            raise AssertionError(f"unexpected frame {frame}")

    async def closed(self, timeout: float = 5.0) -> int:
        """Wait for the server's close; returns its code."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(Exception):
            while time.monotonic() < deadline:
                await asyncio.wait_for(self.conn.recv(), deadline - time.monotonic())
        assert self.conn.close_code is not None, "socket still open"
        return self.conn.close_code

    async def close(self) -> None:
        await self.conn.close()


async def next_of(client: Client, type_: str, timeout: float = 5.0) -> dict[str, Any]:
    """The next frame of `type_` on a consultation socket, skipping the periodic `consultation_status`."""
    deadline = time.monotonic() + timeout
    while True:
        frame = await client.recv(max(0.01, deadline - time.monotonic()))
        if frame["type"] == type_:
            return frame
        assert frame["type"] == "consultation_status", frame


@contextlib.asynccontextmanager
async def ws(url: str, **kwargs: Any) -> AsyncIterator[Client]:
    async with connect(url, open_timeout=5, close_timeout=2, **kwargs) as conn:
        yield Client(conn)


def slow_chat(server: Server, room_id: str, user_id: int) -> contextlib.AbstractAsyncContextManager[Client]:
    """A chat client that stops reading: its library buffers one message, its
    kernel buffer is small, so the server's transport soon stops draining."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    url = server.ws_url(f"/ws/chat/{room_id}/", token=token(user_id))
    return ws(url, max_queue=1, sock=sock, compression=None)


def chat(server: Server, room_id: str, user_id: int, **query: Any) -> contextlib.AbstractAsyncContextManager[Client]:
    query.setdefault("token", token(user_id, name=f"user{user_id}"))
    return ws(server.ws_url(f"/ws/chat/{room_id}/", **query))
