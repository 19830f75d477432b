"""Server processes for tests that need more than one: `uvicorn server:app`
started as a child with its own environment, stopped with SIGTERM or SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from tests.conftest import IN_CI, SECRET, SERVICE_KEY, free_port, ws_url

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass
class Proc:
    port: int
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, path: str, **query: object) -> str:
        return ws_url(self.port, path, **query)

    def api(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.http, headers={"Authorization": f"Bearer {SERVICE_KEY}"})

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)

    def wait(self, timeout: float = 15) -> int:
        return self.popen.wait(timeout)


def start(
    env: Mapping[str, str],
    log: Path,
    port: int | None = None,
    open_files: int | None = None,
    args: Sequence[str] = (),
) -> Proc:
    """`port` None: a free one; a given port lets a restarted server take its predecessor's place.
    `open_files`: the child's RLIMIT_NOFILE (to run it out of descriptors); `args`: more of uvicorn's options."""
    port = port or free_port()
    full_env = {
        **os.environ,
        "JWT_SECRET": SECRET,
        "SERVICE_KEY": SERVICE_KEY,
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    out = log.open("wb")
    popen = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "server:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--ws",
            "websockets-sansio",
            "--http",
            "realtime.transport.guard:http_protocol",
            *args,
        ],
        cwd=ROOT,
        env=full_env,
        stdout=out,
        stderr=subprocess.STDOUT,
        preexec_fn=None if open_files is None else functools.partial(_limit_files, open_files),
    )
    return Proc(port, popen, log)


def _limit_files(count: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


async def ready(proc: Proc, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise AssertionError(f"server exited with {proc.popen.returncode}:\n{proc.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{proc.http}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise AssertionError(f"server not ready in {timeout}s:\n{proc.output()}")


@contextlib.asynccontextmanager
async def servers(count: int, env: Mapping[str, str], tmp_path: Path) -> AsyncIterator[list[Proc]]:
    """`count` processes sharing one store and one broker (both named in `env`)."""
    procs = [start(env, tmp_path / f"server{i}.log") for i in range(count)]
    try:
        await asyncio.gather(*(ready(p) for p in procs))
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


async def make_room(proc: Proc, room_id: str, members: list[int]) -> None:
    """A room through the server API of `proc`."""
    async with proc.api() as api:
        response = await api.post("/api/rooms", json={"id": room_id, "member_ids": members})
        assert response.status_code == 201, response.text


def service_available(kind: str) -> bool:
    url = REDIS_URL if kind == "redis" else POSTGRES_URL
    parsed = urlparse(url)
    try:
        socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 0), timeout=1).close()
    except OSError:
        return False
    return True


def require(kind: str) -> None:
    """Skip without the service, except in CI, where it must be there."""
    if service_available(kind):
        return
    if IN_CI:
        pytest.fail(f"{kind} is not reachable and CI=true")
    pytest.skip(f"{kind} is not running")


@contextlib.asynccontextmanager
async def fresh_postgres() -> AsyncIterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped afterwards."""
    import asyncpg

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin = await asyncpg.connect(POSTGRES_URL)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()
