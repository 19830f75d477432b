"""One member of a big room sends at the rate limit while nobody else is there:
what it costs the store, and what it does to an unrelated room's round trip.

    python -m bench.away_room [--root PATH] [--members 10000] [--seconds 30]

Starts its own server (`uvicorn server:app` from `--root`, default this
checkout: point it at an export of another revision to compare), on a fresh
SQLite file, pinned to core 0 (this process to core 1), loopback only, with the
project's default limits (RATE_LIMIT 20/s). Then:

1. idle: a probe in a 2-member room sends a message every 50 ms and times its
   own echo (round trip), for `--idle` seconds;
2. burst: the same probe, while user 1 of a `--members` room (nobody else of
   it connected: every other member is away) sends a message every 50 ms
   for `--seconds`;
3. settle: waits (at most `--settle` seconds) until the store stops growing,
   checkpoints the WAL, and measures the file.

Prints one JSON line: probe p50/p99 idle and during the burst, messages sent,
rows and bytes the store gained per big-room message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

SECRET = "bench-secret-of-at-least-32-bytes-long!"
SERVICE_KEY = "bench-service-key"
PERIOD = 0.05  # 20 messages a second: the default RATE_LIMIT
TABLES = ("messages", "stream_events", "notifications", "streams")


def token(user_id: int) -> str:
    return jwt.encode({"user_id": user_id, "name": f"u{user_id}", "exp": int(time.time()) + 3600}, SECRET)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def store_size(db: Path) -> dict[str, int]:
    """Rows per table and the bytes of the file after a full WAL checkpoint."""
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = {t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in TABLES}
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    return {**rows, "rows": sum(rows.values()), "bytes": pages * size}


def big_room_rows(db: Path) -> dict[str, int]:
    """The rows the big room's messages made: its messages and events, and the away members' notifications."""
    queries = {
        "messages": "SELECT COUNT(*) FROM messages WHERE room_id = 'big'",
        "room_events": "SELECT COUNT(*) FROM stream_events WHERE stream = 'room:big'",
        "user_events": "SELECT COUNT(*) FROM stream_events WHERE stream LIKE 'user:%'",
        "notifications": "SELECT COUNT(*) FROM notifications",
    }
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        return {k: int(conn.execute(q).fetchone()[0]) for k, q in queries.items()}


def rows_now(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn:
        return sum(int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in TABLES)


async def chat_socket(port: int, room: str, user_id: int) -> ClientConnection:
    # No client keepalive: a stalled server is measured, not hung up on.
    url = f"ws://127.0.0.1:{port}/ws/chat/{room}/?token={token(user_id)}"
    conn = await connect(url, max_size=2**24, ping_interval=None, open_timeout=60)
    while json.loads(await conn.recv())["type"] != "message_history":
        pass
    return conn


async def sender(conn: ClientConnection, seconds: float, times: list[float] | None) -> dict[str, int]:
    """One message every PERIOD; each echo timed when `times` is given."""
    sent = echoed = limited = 0
    pending: dict[str, float] = {}

    async def read() -> None:
        nonlocal echoed, limited
        async for raw in conn:
            frame = json.loads(raw)
            if frame["type"] == "chat_message":
                started = pending.pop(frame["message"]["content"], None)
                if started is not None:
                    echoed += 1
                    if times is not None:
                        times.append(time.perf_counter() - started)
            elif frame["type"] == "error":
                limited += frame.get("code") == "rate_limited"

    reader = asyncio.create_task(read())
    deadline = time.perf_counter() + seconds
    next_at = time.perf_counter()
    closed = None
    while next_at < deadline:
        text = f"m{sent}"
        pending[text] = time.perf_counter()
        try:
            await conn.send(json.dumps({"type": "chat_message", "content": text}))
        except ConnectionClosed as exc:
            closed = str(exc)
            break
        sent += 1
        next_at += PERIOD
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    await asyncio.sleep(1.0)  # the last echoes
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
        await reader
    return {"sent": sent, "echoed": echoed, "rate_limited": limited, "closed": closed}


async def _drain(conn: ClientConnection) -> None:
    with contextlib.suppress(Exception):
        async for _ in conn:
            pass


async def scenario(port: int, db: Path, args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {SERVICE_KEY}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as api:
        big = list(range(1, args.members + 1))
        for room, members in (("big", big), ("probe", [900_001, 900_002])):
            response = await api.post("/api/rooms", json={"id": room, "member_ids": members})
            response.raise_for_status()
    probe = await chat_socket(port, "probe", 900_001)
    # The probe room's other member is there (and reads: a socket that falls
    # OUTBOUND_QUEUE frames behind is closed, and would then be notified).
    listener = await chat_socket(port, "probe", 900_002)
    drain = asyncio.create_task(_drain(listener))
    idle: list[float] = []
    await sender(probe, args.idle, idle)
    before = store_size(db)
    loud = await chat_socket(port, "big", 1)
    burst: list[float] = []
    started = time.perf_counter()
    probed, sent = await asyncio.gather(sender(probe, args.seconds, burst), sender(loud, args.seconds, None))
    burst_s = time.perf_counter() - started
    # Settle: what the messages still cause (notification writes) is counted too, up to a bound.
    # Settled: no new row over three looks 2 s apart (one huge commit can take longer than 2 s).
    settle_started, seen, settled = time.perf_counter(), [-1], False
    while time.perf_counter() - settle_started < args.settle:
        seen.append(rows_now(db))
        if len(seen) >= 4 and seen[-1] == seen[-2] == seen[-3]:
            settled = True
            break
        await asyncio.sleep(2.0)
    after = store_size(db)
    big_rows = big_room_rows(db)
    drain.cancel()
    for conn in (probe, listener, loud):
        await conn.close()
    messages = max(1, big_rows["messages"])  # the big room's messages the store took
    gained = {k: after[k] - before[k] for k in after}
    return {
        "members": args.members,
        "burst_seconds": round(burst_s, 1),
        "big_room": sent,
        "probe": probed,
        "rtt_idle_ms": {"p50": quantile(idle, 0.5), "p99": quantile(idle, 0.99), "n": len(idle)},
        "rtt_burst_ms": {"p50": quantile(burst, 0.5), "p99": quantile(burst, 0.99), "n": len(burst)},
        "rtt_burst_mean_ms": round(statistics.fmean(burst) * 1000, 2) if burst else None,
        "rtt_burst_worst_ms": [round(t * 1000, 1) for t in sorted(burst)[-8:]],
        "store_gained": gained,
        "big_room_rows": big_rows,
        "big_room_rows_per_message": round((sum(big_rows.values())) / messages, 1),
        # Per big-room message stored; bytes: the file's growth (the probe room's few rows included).
        "bytes_per_message": round(gained["bytes"] / messages),
        "settled": settled,
        "settle_seconds": round(time.perf_counter() - settle_started, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=120.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-away-"))
    db, port = tmp / "bench.db", free_port()
    env = {
        **os.environ,
        "JWT_SECRET": SECRET,
        "SERVICE_KEY": SERVICE_KEY,
        "DATABASE_URL": f"sqlite:///{db}",
        "LOG_LEVEL": "warning",
        "PYTHONUNBUFFERED": "1",
    }
    argv = [sys.executable, "-m", "uvicorn", "server:app", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--loop", "asyncio", "--ws", "websockets-sansio", "--log-level", "warning"]
    if shutil.which("taskset"):
        argv = ["taskset", "-c", "0", *argv]
        os.sched_setaffinity(0, {1})
    log = (tmp / "server.log").open("wb")
    process = subprocess.Popen(argv, cwd=args.root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(200):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        result = asyncio.run(scenario(port, db, args))
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)
        if process.poll() is None:
            process.kill()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.root, capture_output=True, text=True)
    result["git"] = git.stdout.strip() or str(args.root)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
