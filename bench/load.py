"""Load scenarios against one running server; each run prints ONE JSON line.

    python -m bench.load SCENARIO --ws ws://127.0.0.1:PORT --pid SERVER_PID \\
        [--api http://127.0.0.1:PORT --service-key KEY --db PATH] [--quick]

Scenarios: fanout, latency, ingest, connections, churn (see bench/README.md).
With `--api` the rooms are created through the server API first (the project);
without it the server is a peer that takes any room. Every loop is bounded in
count and in time; a scenario that cannot finish reports what it got.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.client import Member, chat_frame, close_codes, close_members, error_frames, open_members
from bench.stats import CpuMeter, latency, per_unit_us
from bench.storm import STORM_FULL, STORM_QUICK, storm
from bench.target import PREFIX, Target

FULL: dict[str, dict[str, Any]] = {
    "fanout": {"members": 1000, "messages": 200, "window": 20, "senders": 50, "limit_s": 20.0},
    "latency": {"members": 1000, "rate": 20.0, "seconds": 10.0, "senders": 20},
    "ingest": {"rooms": 500, "seconds": 10.0, "warmup": 1.0},
    "connections": {"sockets": 10_000, "room_size": 100},
    "churn": {"rounds": 10, "sockets": 5000, "room_size": 100, "chatters": 10, "limit_s": 150.0},
    "connect": {"sockets": 5000, "room_size": 100, "rounds": 4},
    "storm": dict(STORM_FULL),
}
QUICK: dict[str, dict[str, Any]] = {
    "fanout": {"messages": 100, "limit_s": 10.0},
    "latency": {"seconds": 5.0},
    "ingest": {"seconds": 5.0},
    "connections": {},
    "churn": {"rounds": 4, "limit_s": 60.0},
    "connect": {"sockets": 2000, "rounds": 3},
    "storm": dict(STORM_QUICK),
}


def noop(member: Member, sent_ns: int, tag: int, now_ns: int) -> None:
    pass


class Tally:
    """Counts deliveries until `expected` are in (set once the members are connected)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.count = 0
        self.expected = 0
        self.full: asyncio.Future[None] = loop.create_future()

    def on_chat(self, member: Member, sent_ns: int, tag: int, now_ns: int) -> None:
        self.count += 1
        if self.count >= self.expected and not self.full.done():
            self.full.set_result(None)


def connected(members: list[Member | None]) -> int:
    return sum(1 for m in members if m is not None)


def cpu_per(usage: dict[str, Any], unit: str, count: int | None) -> dict[str, Any]:
    """The server's CPU per unit of work over the measured phase: the figure that
    compares servers when the load generator, not the server, sets the pace."""
    return {"cpu_unit": unit, "server_us_per_unit": per_unit_us(usage.get("server_cpu_s"), count)}


# ---- scenarios ------------------------------------------------------------------


async def fanout(t: Target, members: int, messages: int, window: int, senders: int, limit_s: float) -> dict[str, Any]:
    """One room of `members`; `messages` are sent, at most `window` not yet delivered to everyone,
    by `senders` members in turn (one sender alone would meet the per-socket rate limit, not the
    fan-out). A server too slow to finish within `limit_s` is measured on what it delivered."""
    loop = asyncio.get_running_loop()
    room = f"{PREFIX}-fan"
    await t.make_rooms({room: list(range(1, members + 1))})
    samples: list[int] = []
    remaining: dict[int, int] = {}
    sent = done = 0
    last_ns = 0
    finished: asyncio.Future[None] = loop.create_future()

    def pump() -> None:
        nonlocal sent
        while sent < messages and sent - done < window:
            remaining[sent] = expected
            speakers[sent % len(speakers)].send(chat_frame(sent, t.pad))
            sent += 1

    def on_chat(member: Member, sent_ns: int, tag: int, now_ns: int) -> None:
        nonlocal done, last_ns
        samples.append(now_ns - sent_ns)
        last_ns = now_ns
        left = remaining.get(tag)
        if left is None:
            return
        if left > 1:
            remaining[tag] = left - 1
            return
        del remaining[tag]
        done += 1
        if done == messages and not finished.done():
            finished.set_result(None)
        else:
            pump()

    users, errors, connect_s = await open_members(
        [t.url(room, u) for u in range(1, members + 1)], on_chat, t.concurrency
    )
    expected = connected(users)
    speakers = [m for m in users[:senders] if m is not None]
    if not speakers:
        raise RuntimeError(f"no sender could connect: {dict(errors)}")
    cpu = CpuMeter(t.pid)
    start = time.monotonic_ns()
    pump()
    await asyncio.wait([finished], timeout=limit_s)
    end = last_ns if finished.done() else time.monotonic_ns()
    elapsed = max(end - start, 1) / 1e9
    usage = cpu.read()
    stored = await asyncio.to_thread(t.stored)
    codes = close_codes(users)
    await close_members(users)
    return {
        "members": members,
        "connected": expected,
        "connect_errors": dict(errors),
        "connect_s": round(connect_s, 2),
        "messages": messages,
        "stored": stored,
        "window": window,
        "sent": sent,
        "complete": finished.done(),
        "deliveries": len(samples),
        "expected_deliveries": messages * expected,
        "elapsed_s": round(elapsed, 3),
        "deliveries_per_s": round(len(samples) / elapsed),
        **latency(samples),
        **usage,
        **cpu_per(usage, "delivery", len(samples)),
        "closed_during": codes,
        "error_frames": error_frames(users),
    }


async def latency_run(t: Target, members: int, rate: float, seconds: float, senders: int) -> dict[str, Any]:
    """`rate` messages per second for `seconds` into one room of `members`, paced by the clock,
    sent by `senders` members in turn."""
    loop = asyncio.get_running_loop()
    room = f"{PREFIX}-lat"
    await t.make_rooms({room: list(range(1, members + 1))})
    samples: list[int] = []
    echoes: list[int] = []
    total = int(rate * seconds)
    finished: asyncio.Future[None] = loop.create_future()

    def on_chat(member: Member, sent_ns: int, tag: int, now_ns: int) -> None:
        samples.append(now_ns - sent_ns)
        if member is speakers[tag % len(speakers)]:
            echoes.append(now_ns - sent_ns)
        if len(samples) >= total * expected and not finished.done():
            finished.set_result(None)

    users, errors, connect_s = await open_members(
        [t.url(room, u) for u in range(1, members + 1)], on_chat, t.concurrency
    )
    expected = connected(users)
    speakers = [m for m in users[:senders] if m is not None]
    if not speakers:
        raise RuntimeError(f"no sender could connect: {dict(errors)}")
    cpu = CpuMeter(t.pid)
    begin = loop.time() + 0.05

    def send(i: int) -> None:
        speakers[i % len(speakers)].send(chat_frame(i, t.pad))

    timers = [loop.call_at(begin + i / rate, send, i) for i in range(total)]
    await asyncio.wait([finished], timeout=seconds + 5)
    for timer in timers:
        timer.cancel()
    usage = cpu.read()
    stored = await asyncio.to_thread(t.stored)
    codes = close_codes(users)
    await close_members(users)
    return {
        "members": members,
        "connected": expected,
        "connect_errors": dict(errors),
        "connect_s": round(connect_s, 2),
        "stored": stored,
        "rate": rate,
        "seconds": seconds,
        "messages": total,
        "complete": finished.done(),
        "deliveries": len(samples),
        "expected_deliveries": total * expected,
        **latency(samples),
        "echo": latency(echoes),
        **usage,
        **cpu_per(usage, "delivery", len(samples)),
        "closed_during": codes,
        "error_frames": error_frames(users),
    }


async def ingest(t: Target, rooms: int, seconds: float, warmup: float) -> dict[str, Any]:
    """`rooms` two-member rooms; each room's sender sends again as soon as its own echo is back."""
    loop = asyncio.get_running_loop()
    names = [f"{PREFIX}-in{i}" for i in range(rooms)]
    await t.make_rooms({name: [2 * i + 1, 2 * i + 2] for i, name in enumerate(names)})
    samples: list[int] = []
    echoes = received = sent = in_flight = 0
    sending = measuring = False
    drained: asyncio.Future[None] = loop.create_future()

    def on_chat(member: Member, sent_ns: int, tag: int, now_ns: int) -> None:
        nonlocal echoes, received, sent, in_flight
        if member.index % 2:
            received += 1
            return
        in_flight -= 1
        if measuring:
            echoes += 1
            samples.append(now_ns - sent_ns)
        if sending:
            member.send(chat_frame(tag, t.pad))
            sent += 1
            in_flight += 1
        elif in_flight == 0 and not drained.done():
            drained.set_result(None)

    urls = [t.url(names[i // 2], i + 1) for i in range(2 * rooms)]
    users, errors, connect_s = await open_members(urls, on_chat, t.concurrency)
    senders = [m for m in users[::2] if m is not None]
    sending = True
    for member in senders:
        member.send(chat_frame(member.index, t.pad))
        sent += 1
        in_flight += 1
    await asyncio.sleep(warmup)
    stored_before = await asyncio.to_thread(t.stored)
    batches_before = await t.store_batches()
    cpu = CpuMeter(t.pid)
    measuring = True
    start = time.monotonic()
    await asyncio.sleep(seconds)
    measuring = False
    window = time.monotonic() - start
    usage = cpu.read()
    stored_after = await asyncio.to_thread(t.stored)
    batches_after = await t.store_batches()
    sending = False
    if in_flight > 0:
        await asyncio.wait([drained], timeout=15)
    await asyncio.sleep(0.5)
    stored_total = await asyncio.to_thread(t.stored)
    codes = close_codes(users)
    await close_members(users)
    stored_rate = batch_mean = commit_share = None
    if stored_before is not None and stored_after is not None:
        stored_rate = round((stored_after - stored_before) / window)
    if batches_before and batches_after and batches_after[0] > batches_before[0]:
        batch_mean = round((batches_after[1] - batches_before[1]) / (batches_after[0] - batches_before[0]), 1)
        commit_share = round((batches_after[2] - batches_before[2]) / window, 2)
    return {
        "rooms": rooms,
        "connected": connected(users),
        "connect_errors": dict(errors),
        "connect_s": round(connect_s, 2),
        "senders": len(senders),
        "seconds": round(window, 3),
        "echoes": echoes,
        "echoes_per_s": round(echoes / window),
        "stored_per_s": stored_rate,
        "commit_batch_mean": batch_mean,
        "commit_share": commit_share,  # of the wall time, a group commit was running
        "sent": sent,
        "stored_total": stored_total,
        "lost_in_flight": in_flight,
        "received_by_peer": received,
        **latency(samples),
        **usage,
        **cpu_per(usage, "message", echoes),
        "closed_during": codes,
        "error_frames": error_frames(users),
    }


async def connections(t: Target, sockets: int, room_size: int) -> dict[str, Any]:
    """`sockets` idle authenticated sockets in rooms of `room_size`: RSS per socket and time to connect."""
    rooms = math.ceil(sockets / room_size)
    names = [f"{PREFIX}-c{r}" for r in range(rooms)]
    await t.make_rooms(
        {name: list(range(r * room_size + 1, min((r + 1) * room_size, sockets) + 1)) for r, name in enumerate(names)}
    )
    # One socket first, so one-time costs (imports, caches, the first room) are not counted per socket.
    warm, _, _ = await open_members([t.url(names[0], 1)], noop, 1)
    await close_members(warm)
    fds_before = t.fds()
    await t.settle(fds_before)
    before = t.rss()
    cpu = CpuMeter(t.pid)
    urls = [t.url(names[(u - 1) // room_size], u) for u in range(1, sockets + 1)]
    users, errors, connect_s = await open_members(urls, noop, t.concurrency, deadline=300)
    usage = cpu.read()
    await asyncio.sleep(2.0)
    after = t.rss()
    fds_after = t.fds() if t.pid else None
    codes = close_codes(users)
    n = connected(users)
    stuck = await close_members(users, timeout=60)
    await t.settle(fds_before)
    closed = t.rss()
    per_socket = None
    if before is not None and after is not None and n:
        per_socket = round((after - before) * 1024 / n)
    return {
        "sockets": sockets,
        "room_size": room_size,
        "connected": n,
        "connect_errors": dict(errors),
        "connect_s": round(connect_s, 2),
        "connects_per_s": round(n / connect_s) if connect_s else None,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "rss_closed_kib": closed,
        "bytes_per_socket": per_socket,
        "server_fds": fds_after,
        "server_cpu_ms_per_connect": round(usage["server_cpu_s"] * 1000 / n, 3)
        if n and usage["server_cpu_s"] is not None
        else None,
        **usage,
        **cpu_per(usage, "connect", n),
        "closed_during": codes,
        "aborted_at_close": stuck,
    }


async def connect(t: Target, sockets: int, room_size: int, rounds: int) -> dict[str, Any]:
    """Server CPU per authenticated connect (the project) or per plain connect (a peer), over the
    connect phase only: `sockets` connect (rooms of `room_size`, 256 handshakes in flight) and get
    their first frame, then all close; `rounds` times. Round 1 meets the server cold (tokens and rooms
    it has not seen); the middle rounds are reconnects with the same tokens; the last round brings
    tokens the server has not seen (another signature) to rooms it knows: a new session."""
    rooms = math.ceil(sockets / room_size)
    names = [f"{PREFIX}-k{r}" for r in range(rooms)]
    await t.make_rooms(
        {name: list(range(r * room_size + 1, min((r + 1) * room_size, sockets) + 1)) for r, name in enumerate(names)}
    )
    # One socket in a room of its own first: imports and one-time set-up are not counted per connect.
    await t.make_rooms({f"{PREFIX}-kwarm": [sockets + 1]})
    warm, _, _ = await open_members([t.url(f"{PREFIX}-kwarm", sockets + 1)], noop, 1)
    await close_members(warm)
    fds_before = t.fds()
    await t.settle(fds_before)
    per_round: list[float | None] = []
    times: list[float] = []
    errors: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    loads: list[float | None] = []
    total_s = 0.0
    total_n = 0
    for r in range(max(2, rounds)):
        generation = 1 if r == max(2, rounds) - 1 else 0
        urls = [t.url(names[(u - 1) // room_size], u, generation=generation) for u in range(1, sockets + 1)]
        cpu = CpuMeter(t.pid)
        users, failed, connect_s = await open_members(urls, noop, t.concurrency, deadline=300)
        usage = cpu.read()
        n = connected(users)
        errors.update(failed)
        codes.update(close_codes(users))
        times.append(round(connect_s, 2))
        loads.append(usage["load_cpu"])
        per_round.append(per_unit_us(usage["server_cpu_s"], n))
        total_s += usage["server_cpu_s"] or 0.0
        total_n += n
        await close_members(users, timeout=60)
        await t.settle(fds_before)
    reconnects = [v for v in per_round[1:-1] if v is not None]
    return {
        "sockets": sockets,
        "room_size": room_size,
        "rounds": len(per_round),
        "connect_s": times,
        "connect_errors": dict(errors),
        "closed_during": dict(codes),
        "us_per_connect_rounds": per_round,
        "cold_us": per_round[0],
        "reconnect_us": round(statistics.median(reconnects), 1) if reconnects else None,
        "new_token_us": per_round[-1],
        "load_cpu_rounds": loads,
        "load_cpu": max((x for x in loads if x is not None), default=None),
        "server_cpu_s": round(total_s, 3),
        # The headline: a new session (a token not seen before) into rooms the server knows.
        "cpu_unit": "connect",
        "server_us_per_unit": per_round[-1],
    }


async def churn(t: Target, rounds: int, sockets: int, room_size: int, chatters: int, limit_s: float) -> dict[str, Any]:
    """`rounds` of: `sockets` join, `chatters` of them send one message each, all leave; RSS after
    each. No round starts after `limit_s`: a slow server is measured on the rounds it did."""
    loop = asyncio.get_running_loop()
    rooms = math.ceil(sockets / room_size)
    names = [f"{PREFIX}-ch{r}" for r in range(rooms)]
    await t.make_rooms(
        {name: list(range(r * room_size + 1, min((r + 1) * room_size, sockets) + 1)) for r, name in enumerate(names)}
    )
    urls = [t.url(names[(u - 1) // room_size], u) for u in range(1, sockets + 1)]
    fds_before = t.fds()
    rss: list[int | None] = []
    connect_times: list[float] = []
    errors: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    delivered_total = expected_total = rejected = 0
    speakers = [k * (sockets // chatters) for k in range(chatters)]
    stop_at = time.monotonic() + limit_s
    joined = 0
    cpu = CpuMeter(t.pid)
    for _ in range(rounds):
        if rss and time.monotonic() > stop_at:
            break
        tally = Tally(loop)
        users, failed, connect_s = await open_members(urls, tally.on_chat, t.concurrency, deadline=300)
        joined += connected(users)
        errors.update(failed)
        connect_times.append(round(connect_s, 2))
        for index in speakers:
            room = index // room_size
            tally.expected += sum(1 for m in users[room * room_size : (room + 1) * room_size] if m is not None)
        for index in speakers:
            speaker = users[index]
            if speaker is not None:
                speaker.send(chat_frame(index, t.pad))
        await asyncio.wait([tally.full], timeout=15)
        delivered_total += tally.count
        expected_total += tally.expected
        codes.update(close_codes(users))
        rejected += error_frames(users)
        await close_members(users, timeout=60)
        await t.settle(fds_before)
        rss.append(t.rss())
    usage = cpu.read()
    first, last = rss[0], rss[-1]
    ratio = round(last / first, 3) if first and last else None
    return {
        "rounds_done": len(rss),
        "sockets": sockets,
        "room_size": room_size,
        "chatters": chatters,
        "connect_s": connect_times,
        "connect_errors": dict(errors),
        "deliveries": delivered_total,
        "expected_deliveries": expected_total,
        "rss_kib": rss,
        "rss_first_kib": first,
        "rss_last_kib": last,
        "ratio": ratio,
        "within_10pct": ratio is not None and ratio <= 1.10,
        "closed_during": dict(codes),
        "error_frames": rejected,
        **usage,
        # A socket's whole life: join, its share of the chat, leave.
        **cpu_per(usage, "socket", joined),
    }


SCENARIOS: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
    "fanout": fanout,
    "latency": latency_run,
    "ingest": ingest,
    "connections": connections,
    "churn": churn,
    "connect": connect,
    "storm": storm,
}


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65_536
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--ws", required=True, help="ws://127.0.0.1:PORT")
    p.add_argument("--pid", type=int, help="the server's pid, for RSS and CPU")
    p.add_argument("--api", help="http://127.0.0.1:PORT: create rooms through the server API")
    p.add_argument("--service-key")
    p.add_argument("--db", type=Path, help="the server's SQLite file, to count stored messages")
    p.add_argument("--target", default="?", help="a label copied into the result")
    p.add_argument("--quick", action="store_true", help="shorter runs (see QUICK)")
    p.add_argument("--pad", type=int, default=64, help="bytes of filler in each message's content")
    p.add_argument("--concurrency", type=int, default=256, help="handshakes in flight at once")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one parameter")
    return p.parse_args(argv)


def params(args: argparse.Namespace) -> dict[str, Any]:
    chosen = dict(FULL[args.scenario])
    if args.quick:
        chosen.update(QUICK[args.scenario])
    for item in args.set:
        key, _, raw = item.partition("=")
        if not any(key in known for known in FULL.values()):
            raise SystemExit(f"--set: no scenario has a parameter {key!r}")
        if key in chosen:  # a run of several scenarios passes every --set to each
            chosen[key] = type(chosen[key])(raw)
    return chosen


def run(scenario: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """On uvloop where installed: the load's own event loop is half its cost per
    received frame, and at 1,000 members the load must outrun the server."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(scenario)  # type: ignore[arg-type]
    return uvloop.run(scenario)  # type: ignore[arg-type]


def main(argv: list[str]) -> int:
    args = parse(argv)
    if not args.ws.startswith(("ws://127.0.0.1:", "ws://localhost:")):
        raise SystemExit("--ws must be ws://127.0.0.1:PORT: the load only targets this machine")
    fd_limit = raise_fd_limit()
    chosen = params(args)
    target = Target(args.ws, args.pid, args.api, args.service_key, args.db, b"x" * args.pad, args.concurrency)
    result: dict[str, Any] = {"scenario": args.scenario, "target": args.target, "quick": args.quick, **chosen}
    started = time.time()
    try:
        result.update(run(SCENARIOS[args.scenario](target, **chosen)))
        status = 0
    except Exception as exc:  # noqa: BLE001 - a failed run is a result too
        result["error"] = repr(exc)[:500]
        status = 1
    result.update({"pad": args.pad, "fd_limit": fd_limit, "wall_s": round(time.time() - started, 1)})
    print(json.dumps(result), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
