"""The server under load as the scenarios see it: its URLs, its process (RSS,
CPU, open files) and, for the project, its API and its SQLite file."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt

from bench.stats import open_fds, process_tree, rss_kib

JWT_SECRET = "bench-secret-of-at-least-32-bytes-long!"
# Room ids are unique per run: Redis pub/sub channels are shared by every database number.
PREFIX = "b" + secrets.token_hex(3)

BATCH_METRICS = (
    "realtime_store_write_batch_size_count",
    "realtime_store_write_batch_size_sum",
    "realtime_store_write_batch_seconds_sum",
)


@dataclass
class Target:
    ws: str
    pid: int | None
    api: str | None
    service_key: str | None
    db: Path | None
    pad: bytes
    concurrency: int

    def url(self, room: str, user_id: int, query: str = "", generation: int = 0) -> str:
        return f"{self.ws}/ws/chat/{room}/?token={token(user_id, generation)}{query}"

    async def make_rooms(self, rooms: dict[str, list[int]]) -> None:
        """Create the rooms through the server API; a peer takes any room as it is."""
        if self.api is None:
            return
        headers = {"Authorization": f"Bearer {self.service_key}"}
        gate = asyncio.Semaphore(16)
        async with httpx.AsyncClient(base_url=self.api, headers=headers, timeout=60) as client:

            async def one(room: str, members: list[int]) -> None:
                async with gate:
                    response = await client.post("/api/rooms", json={"id": room, "member_ids": members})
                    if response.status_code != 201:
                        raise RuntimeError(f"POST /api/rooms {room}: {response.status_code} {response.text[:200]}")

            await asyncio.gather(*(one(room, members) for room, members in rooms.items()))

    def rss(self) -> int | None:
        """KiB resident, summed over the server's processes (uvicorn --workers)."""
        if not self.pid:
            return None
        return sum(rss_kib(pid) for pid in process_tree(self.pid))

    def fds(self) -> int:
        return sum(open_fds(pid) for pid in process_tree(self.pid)) if self.pid else 0

    def stored(self) -> int | None:
        """Rows in `messages` (the project on SQLite), read beside the running server."""
        if self.db is None:
            return None
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30) as conn:
            return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])

    async def store_batches(self) -> tuple[float, float, float] | None:
        """Group commits so far, from the server's /metrics: (transactions, jobs, seconds)."""
        if self.api is None:
            return None
        async with httpx.AsyncClient(base_url=self.api, timeout=10) as client:
            text = (await client.get("/metrics")).text
        found = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in BATCH_METRICS:
                found[name] = float(value)
        if len(found) < len(BATCH_METRICS):
            return None
        return tuple(found[name] for name in BATCH_METRICS)  # type: ignore[return-value]

    def stream_seqs(self) -> dict[str, int] | None:
        """Each stream's last seq in the project's SQLite file (None for a peer)."""
        if self.db is None:
            return None
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30) as conn:
            return {str(name): int(seq) for name, seq in conn.execute("SELECT stream, last_seq FROM streams")}

    async def settle(self, baseline_fds: int, timeout: float = 15.0) -> None:
        """Wait until the server has let go of the sockets the load closed."""
        if not self.pid:
            await asyncio.sleep(1.0)
            return
        for _ in range(int(timeout / 0.1)):
            if self.fds() <= baseline_fds + 2:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)


_tokens: dict[tuple[int, int], str] = {}


def token(user_id: int, generation: int = 0) -> str:
    """The user's token; another `generation` is another token (a new signature) for the same user."""
    cached = _tokens.get((user_id, generation))
    if cached is None:
        claims = {"user_id": user_id, "name": f"user{user_id}", "exp": int(time.time()) + 6 * 3600 + generation}
        cached = _tokens[user_id, generation] = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    return cached
