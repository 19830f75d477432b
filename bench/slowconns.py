"""What slow and pending connections cost the server, and what they can do
to an honest client. Loopback only; every count bounded by the arguments.

    python -m bench.slowconns [--root DIR] [--slow 1000] [--honest 20]

Starts `uvicorn server:app` with the Procfile's flags from `--root` (another
checkout, say the base revision, for comparison; without the guard's
`--http` if that checkout has no guard.py) and measures:

1. memory (RSS) and file descriptors per pending socket, for a half-sent
   request head and for a WebSocket waiting for its `auth` frame;
2. the most slow connections one client address can hold (half-sent heads
   from 127.0.0.2), and for how long;
3. how long an honest client (a query-token socket, and an `auth`-frame
   socket) takes to connect while `--slow` half-sent heads are held from ten
   other addresses, against an idle server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jwt
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-of-at-least-32-bytes-long"
HALF_HEAD = b"GET /ws/notifications/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nX-Slow: "


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token(user_id: int) -> str:
    return jwt.encode({"user_id": user_id, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Server:
    def __init__(self, root: Path, env: dict[str, str], tmp: Path, files: int | None = None) -> None:
        self.port = free_port()
        # Where the checkout keeps its guard, if it has one (it moved to transport/).
        module = next((m for m in ("transport", "endpoints") if (root / m / "guard.py").exists()), None)
        args = ["--ws", "websockets-sansio", "--ws-max-size", "262144", "--proxy-headers"]
        args += ["--http", f"{module}.guard:http_protocol"] if module else []
        self.log = (tmp / f"server-{self.port}.log").open("wb")
        # The image's event loop (requirements.txt has no uvloop).
        full_env = {
            **os.environ,
            "UVICORN_LOOP": "asyncio",
            "JWT_SECRET": SECRET,
            "DATABASE_URL": f"sqlite:///{tmp}/b{self.port}.db",
            **env,
        }
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "server:app", "--host", "127.0.0.1", "--port", str(self.port), *args],
            cwd=root,
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=None if files is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (files, files)),
        )

    async def ready(self) -> None:
        for _ in range(200):
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if (await reader.read()).startswith(b"HTTP/1.1 200"):
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError("server not ready")

    def stop(self) -> None:
        self.popen.terminate()
        self.popen.wait(15)


async def half_heads(port: int, count: int, sources: list[str]) -> list[socket.socket]:
    loop = asyncio.get_running_loop()
    socks = []
    for i in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((sources[i % len(sources)], 0))
        await loop.sock_connect(sock, ("127.0.0.1", port))
        with contextlib.suppress(OSError):
            sock.send(HALF_HEAD)
        socks.append(sock)
    return socks


def _open(sock: socket.socket) -> bool:
    """Neither answered nor closed by the server."""
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


async def drip(socks: list[socket.socket]) -> None:
    """A byte to each socket every 2 s: under IDLE_TIMEOUT, so only HEADER_TIMEOUT ends them."""
    while True:
        await asyncio.sleep(2)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.send(b"a")


async def per_socket_cost(port: int, pid: int, count: int) -> dict[str, float]:
    sources = [f"127.0.0.{20 + i}" for i in range(10)]
    await asyncio.sleep(0.5)
    rss0, fd0 = rss_kb(pid), fds(pid)
    socks = await half_heads(port, count, sources)
    await asyncio.sleep(1.0)
    rss1, fd1, held = rss_kb(pid), fds(pid), sum(_open(s) for s in socks)
    for sock in socks:
        sock.close()
    await asyncio.sleep(1.0)
    rss2, fd2 = rss_kb(pid), fds(pid)
    waiting = []
    for i in range(count):
        sock = socket.socket()
        sock.bind((sources[i % len(sources)], 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        waiting.append(await connect(f"ws://127.0.0.1:{port}/ws/notifications/", sock=sock, open_timeout=10))
    await asyncio.sleep(1.0)
    rss3, fd3 = rss_kb(pid), fds(pid)
    for client in waiting:
        await client.close()
    return {
        "half_heads_held": held,
        "kb_per_half_head": round((rss1 - rss0) / max(held, 1), 2),
        "fds_per_half_head": round((fd1 - fd0) / max(held, 1), 2),
        "kb_per_auth_waiting_socket": round((rss3 - rss2) / count, 2),
        "fds_per_auth_waiting_socket": round((fd3 - fd2) / count, 2),
    }


async def one_address(port: int, attempts: int) -> dict[str, Any]:
    socks = await half_heads(port, attempts, ["127.0.0.2"])
    dripping = asyncio.create_task(drip(socks))
    started = time.monotonic()
    await asyncio.sleep(0.5)
    held = sum(_open(s) for s in socks)
    last = held
    while last and time.monotonic() - started < 30:
        await asyncio.sleep(0.5)
        last = sum(_open(s) for s in socks)
    dripping.cancel()
    for sock in socks:
        sock.close()
    return {
        "attempted": attempts,
        "held": held,
        "held_for_s": round(time.monotonic() - started, 1),
        "open_at_end": last,
    }


async def honest(port: int, rounds: int) -> dict[str, float]:
    by_token, by_frame = [], []
    for i in range(rounds):
        started = time.monotonic()
        url = f"ws://127.0.0.1:{port}/ws/notifications/?token={token(i + 1)}"
        async with connect(url, open_timeout=10) as client:
            await asyncio.wait_for(client.recv(), 10)
        by_token.append(time.monotonic() - started)
        started = time.monotonic()
        async with connect(f"ws://127.0.0.1:{port}/ws/notifications/", open_timeout=10) as client:
            await client.send(json.dumps({"type": "auth", "token": token(i + 1)}))
            assert json.loads(await asyncio.wait_for(client.recv(), 10))["type"] == "auth_ok"
        by_frame.append(time.monotonic() - started)
    return {
        "token_median_ms": round(statistics.median(by_token) * 1000, 1),
        "token_max_ms": round(max(by_token) * 1000, 1),
        "auth_frame_median_ms": round(statistics.median(by_frame) * 1000, 1),
        "auth_frame_max_ms": round(max(by_frame) * 1000, 1),
    }


async def while_held(port: int, count: int, addresses: int, rounds: int) -> dict[str, Any]:
    sources = [f"127.0.0.{30 + i}" for i in range(addresses)]
    socks = await half_heads(port, count, sources)
    dripping = asyncio.create_task(drip(socks))
    await asyncio.sleep(0.5)
    result: dict[str, Any] = {"slow": count, "held": sum(_open(s) for s in socks)}
    try:
        result["honest"] = await honest(port, rounds)
    except (OSError, TimeoutError) as exc:
        result["honest"] = f"failed: {exc!r}"[:120]
    result["held_after"] = sum(_open(s) for s in socks)
    dripping.cancel()
    for sock in socks:
        sock.close()
    return result


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--slow", type=int, default=1000)
    parser.add_argument("--honest", type=int, default=20)
    parser.add_argument("--one-address", type=int, default=500)
    args = parser.parse_args()
    results: dict[str, Any] = {"root": str(args.root)}
    with tempfile.TemporaryDirectory() as tmp:
        # Costs: limits out of the way (ten addresses, each under its cap).
        server = Server(args.root, {"MAX_PENDING_PER_IP": "5000", "MAX_PENDING_AUTH": "5000"}, Path(tmp))
        try:
            await server.ready()
            results["cost"] = await per_socket_cost(server.port, server.popen.pid, args.slow)
        finally:
            server.stop()
        # Defaults from here on.
        server = Server(args.root, {}, Path(tmp))
        try:
            await server.ready()
            results["idle_server"] = await honest(server.port, args.honest)
            results["one_address"] = await one_address(server.port, args.one_address)
            await asyncio.sleep(1)
            results["ten_addresses"] = await while_held(server.port, args.slow, 10, args.honest)
        finally:
            server.stop()
        # The outage as reported: a 1,024-descriptor limit, one address holding 1,100.
        server = Server(args.root, {}, Path(tmp), files=1024)
        try:
            await server.ready()
            results["one_address_1100_at_1024_files"] = await while_held(server.port, 1100, 1, args.honest)
        finally:
            server.stop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
