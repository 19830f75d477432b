"""Where the project's memory per idle socket goes: tracemalloc snapshots of
the server before and after N authenticated sockets, the allocation sites that
grew, per socket.

    python -m bench.memprobe [--sockets 2000] [--room-size 100] [--top 25]

The server runs under `bench.traced` (uvicorn with tracemalloc), pinned to
core 0 like in bench.run. tracemalloc's own bookkeeping inflates RSS, so the
RSS per socket to quote is the `connections` scenario's; this tells where the
Python heap part of it goes.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from bench.client import close_members, open_members
from bench.load import PREFIX, Target, noop, raise_fd_limit
from bench.run import OUT, ROOT, SERVER_CORE, SERVICE_KEY, Server, command, free_port, pinned, stop, wait_ready
from bench.stats import rss_kib


def snapshot(pid: int, folder: Path, number: int, timeout: float = 120.0) -> tracemalloc.Snapshot:
    os.kill(pid, signal.SIGUSR1)
    path = folder / f"snap-{number}.pickle"
    for _ in range(int(timeout / 0.1)):
        if path.exists():
            return tracemalloc.Snapshot.load(str(path))
        time.sleep(0.1)
    raise RuntimeError(f"no snapshot from pid {pid} within {timeout}s")


async def measure(
    t: Target, folder: Path, sockets: int, room_size: int
) -> tuple[int, int, tracemalloc.Snapshot, tracemalloc.Snapshot]:
    assert t.pid is not None
    rooms = math.ceil(sockets / room_size)
    names = [f"{PREFIX}-m{r}" for r in range(rooms)]
    await t.make_rooms(
        {name: list(range(r * room_size + 1, min((r + 1) * room_size, sockets) + 1)) for r, name in enumerate(names)}
    )
    warm, _, _ = await open_members([t.url(names[0], 1)], noop, 1)
    await close_members(warm)
    await asyncio.sleep(1.0)
    rss0 = rss_kib(t.pid)
    before = await asyncio.to_thread(snapshot, t.pid, folder, 0)
    urls = [t.url(names[(u - 1) // room_size], u) for u in range(1, sockets + 1)]
    members, errors, _ = await open_members(urls, noop, t.concurrency, deadline=300)
    connected = sum(1 for m in members if m is not None)
    if errors:
        print(f"connect failures: {dict(errors)}", file=sys.stderr)
    await asyncio.sleep(2.0)
    rss1 = rss_kib(t.pid)
    after = await asyncio.to_thread(snapshot, t.pid, folder, 1)
    await close_members(members, timeout=60)
    return connected, (rss1 - rss0) * 1024, before, after


def report(connected: int, rss_bytes: int, before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, top: int) -> str:
    ignore = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    ]
    before, after = before.filter_traces(ignore), after.filter_traces(ignore)
    lines = after.compare_to(before, "lineno")
    heap = sum(s.size_diff for s in lines)
    n = max(connected, 1)
    out = [
        f"{connected} sockets; RSS +{rss_bytes / n:,.0f} B/socket under tracemalloc (inflated by its bookkeeping); "
        f"Python heap +{heap / n:,.0f} B/socket, {sum(s.count_diff for s in lines) / n:,.1f} blocks/socket",
        "",
        "| B/socket | blocks/socket | allocated at |",
        "|---:|---:|---|",
    ]
    for stat in lines[:top]:
        frame = stat.traceback[0]
        out.append(
            f"| {stat.size_diff / n:,.0f} | {stat.count_diff / n:,.2f} | `{short(frame.filename)}:{frame.lineno}` |"
        )
    out += ["", "Largest call paths (innermost last):", ""]
    for stat in after.compare_to(before, "traceback")[:8]:
        out.append(f"- {stat.size_diff / n:,.0f} B/socket:")
        out += [f"    - `{short(f.filename)}:{f.lineno}`" for f in stat.traceback[-6:]]
    return "\n".join(out)


def short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memprobe", description=__doc__.split("\n\n")[0])
    p.add_argument("--sockets", type=int, default=2000)
    p.add_argument("--room-size", type=int, default=100)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    raise_fd_limit()
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-mem-"))
    port = free_port()
    argv, env, db = command("project", port, tmp, {})
    argv[argv.index("uvicorn")] = "bench.traced"
    env["BENCH_SNAPSHOTS"] = str(tmp)
    argv, pin = pinned(argv, SERVER_CORE)
    log = OUT / "server-memprobe.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, preexec_fn=pin)
    try:
        wait_ready(Server("project", process, port, db, log))
        api = f"http://127.0.0.1:{port}"
        target = Target(f"ws://127.0.0.1:{port}", process.pid, api, SERVICE_KEY, db, b"x" * 64, 128)
        connected, rss_bytes, before, after = asyncio.run(measure(target, tmp, args.sockets, args.room_size))
    finally:
        stop(process)
        shutil.rmtree(tmp, ignore_errors=True)
    print(report(connected, rss_bytes, before, after, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
