"""`/healthz` (the process answers) and `/readyz` (the store and the broker
answer): a server that cannot do its work says so, and why."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import httpx

from tests.conftest import base_settings, chat, running
from tests.procs import POSTGRES_URL, REDIS_URL, fresh_postgres, require


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(url)


async def test_a_broker_on_a_closed_port_is_not_ready_and_says_why(tmp_path: Path) -> None:
    async with running(base_settings(tmp_path, broker_url="redis://127.0.0.1:1")) as srv:
        assert (await get(f"{srv.http}/healthz")).json() == {"status": "ok"}
        response = await get(f"{srv.http}/readyz")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "unavailable"
        assert [p for p in body["problems"] if p.startswith("broker")] == body["problems"], body
        assert "127.0.0.1:1" in body["problems"][0]


async def test_a_live_redis_broker_is_ready(tmp_path: Path) -> None:
    require("redis")
    async with running(base_settings(tmp_path, broker_url=REDIS_URL)) as srv:
        response = await get(f"{srv.http}/readyz")
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "ready"}


async def test_a_dropped_postgres_database_is_not_ready(tmp_path: Path) -> None:
    require("postgres")
    async with fresh_postgres() as url, running(base_settings(tmp_path, database_url=url)) as srv:
        assert (await get(f"{srv.http}/readyz")).status_code == 200
        await srv.room("r", [1])
        async with chat(srv, "r", 1) as client:
            await client.expect("message_history")
        admin = await asyncpg.connect(POSTGRES_URL)
        try:
            await admin.execute(f"DROP DATABASE {url.rsplit('/', 1)[1]} WITH (FORCE)")
        finally:
            await admin.close()
        response = await get(f"{srv.http}/readyz")
        assert response.status_code == 503
        problems = response.json()["problems"]
        assert problems and all(p.startswith("store") for p in problems), problems
        # The process itself still answers: a restart is not what fixes it.
        assert (await get(f"{srv.http}/healthz")).status_code == 200
