"""The reconnect storm: every client of a server comes back at once after a restart.

`clients` authenticated members in rooms of `room_size` connect (with
`?resume=1`, so the drain closes them with a clean 1012). The first member of
each room is its speaker: a publisher sends `rate` messages a second through
the speakers, room after room, for the whole run (a room whose speaker is not
back yet skips its turn). After `steady_s` the load asks its runner
(bench/run.py) to restart the server: SIGTERM, the old process exits, a new
one starts on the same port and database. Then every member reconnects at
once with `?since=<its last seq>`, and sends a `ping`: its `pong` comes after
the server has authenticated it, joined it and replayed what it missed, so
the `pong` is when the member is **back**. A member is **caught up** once it
is back and has every seq its room had when the new server started.

Measured:
- `storm_s`: from the first reconnect until every member is back and caught up
  (`back_s`: until every member is back);
- server CPU over that window per reconnect (`server_us_per_unit`), and the
  same less what the publisher's traffic cost in the steady phase before
  (`net_us_per_reconnect`);
- latency during the storm of members already back: send → receipt of every
  message sent after the receiving member's `pong`, received before the
  storm ended (`storm_latency`), beside the steady phase's (`steady_latency`);
- errors, which must all be zero: connect failures, closes the load did not
  ask for (other than the restart's 1012s), error frames after the restart,
  `resync_required`, and per member seqs missed (`gaps`) or received twice
  (`dupes`) over the whole run; after the publisher stops, every member must
  reach its room's final seq (`behind_at_end`).

Talking to the runner: the load prints `!restart` on stdout and reads
`!ready <new pid> <seconds the old one took to exit>` on stdin. A peer (no
store, no `since`) is measured the same way without the seq checks: its
members are back at their `message_history`.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections import Counter
from typing import Any

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from bench.client import MARK, READ_BUFFER, chat_frame
from bench.stats import CpuMeter, latency, per_unit_us
from bench.target import PREFIX, Target

STORM_FULL: dict[str, Any] = {
    "clients": 10_000,
    "room_size": 100,
    "rate": 100.0,  # messages a second, over all rooms
    "steady_s": 5.0,
    "after_s": 3.0,
    "limit_s": 120.0,
    "storm_concurrency": 0,  # reconnects in flight at once; 0: all
}
STORM_QUICK: dict[str, Any] = {"clients": 2000, "steady_s": 3.0, "after_s": 2.0, "limit_s": 60.0}

CHAT = b'{"type":"chat_message","seq":'
HISTORY = b'{"type":"message_history"'
LAST_SEQ = b'"last_seq":'
PONG = b'{"type":"pong"'
RESYNC = b'{"type":"resync_required"'
ERROR = b'{"type":"error"'
PING = b'{"type":"ping"}'
RESTARTING = 1012


class Follower(WSListener):
    """One member across the restart: the same object listens on both connections,
    so its last seq, gaps and repeats carry over."""

    def __init__(self, storm: Storm, index: int, room: int) -> None:
        self.storm = storm
        self.index = index
        self.room = room
        self.last_seq = -1  # not known before the first message_history
        self.dupes = self.gaps = self.resyncs = 0
        self.errors: Counter[str] = Counter()  # error frames by phase
        self.closes: Counter[str] = Counter()  # close codes by phase
        self.transport: WSTransport | None = None
        self.live = False
        self.back_ns = 0
        self.caught = False
        self.resyncing = False
        self.arm()

    def arm(self) -> None:
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.gone: asyncio.Future[None] = loop.create_future()
        self.close_code: int | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        if self.storm.phase == "storm" and self.storm.checked:
            transport.send(WSMsgType.TEXT, PING)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.TEXT:
            data = frame.get_payload_as_bytes()
            if data.startswith(CHAT):
                start = len(CHAT)
                self.storm.on_seq(self, int(data[start : data.index(b",", start)]), data)
            elif data.startswith(PONG):
                self._ready()
            elif data.startswith(HISTORY):
                at = data.index(LAST_SEQ) + len(LAST_SEQ)
                end = at
                while data[end : end + 1].isdigit():
                    end += 1
                if self.last_seq < 0 or self.resyncing or not self.storm.checked:
                    self.last_seq = int(data[at:end])
                    self.resyncing = False
                if not self.storm.checked or self.storm.phase != "storm":
                    self._ready()
            elif data.startswith(RESYNC):
                self.resyncs += 1
                self.resyncing = True
            elif data.startswith(ERROR):
                self.errors[self.storm.phase] += 1
        elif kind == WSMsgType.CLOSE:
            payload = frame.get_payload_as_bytes()
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if not transport.is_close_frame_sent:
                transport.send_close(WSCloseCode.OK)
            transport.disconnect()

    def _ready(self) -> None:
        if self.ready.done():
            return
        self.live = True
        self.ready.set_result(None)
        if self.storm.phase == "storm":
            self.back_ns = time.monotonic_ns()
            self.storm.on_back(self)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.live = False
        self.transport = None
        if self.storm.closing:
            code = "asked"
        else:
            code = str(self.close_code) if self.close_code is not None else "dropped"
        self.closes[f"{self.storm.phase}:{code}"] += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed {code}"))
        if not self.gone.done():
            self.gone.set_result(None)

    def send(self, payload: bytes) -> None:
        if self.transport is not None:
            self.transport.send(WSMsgType.TEXT, payload)


class Storm:
    def __init__(self, t: Target, clients: int, room_size: int) -> None:
        self.t = t
        self.checked = t.db is not None  # the project: seqs are kept and replayed
        self.phase = "connect"
        self.closing = False
        self.rooms = (clients + room_size - 1) // room_size
        self.names = [f"{PREFIX}-s{r}" for r in range(self.rooms)]
        self.members = [Follower(self, i, i // room_size) for i in range(clients)]
        self.speakers = [self.members[r * room_size] for r in range(self.rooms)]
        self.targets: list[int] = [0] * self.rooms  # each room's seq when the new server started
        self.steady: list[int] = []
        self.during: list[int] = []
        self.after: list[int] = []
        self.back = self.caught = 0
        self.all_back: asyncio.Future[None] | None = None
        self.all_caught: asyncio.Future[None] | None = None
        self.sent = self.skipped = 0
        self.storm_end_ns = 0

    def url(self, m: Follower) -> str:
        if self.phase == "connect":
            query = "&resume=1"
        else:
            query = f"&since={max(m.last_seq, 0)}&resume=1"
        return self.t.url(self.names[m.room], m.index + 1, query)

    def on_seq(self, m: Follower, seq: int, data: bytes) -> None:
        last = m.last_seq
        if self.checked:
            if seq <= last:
                m.dupes += 1
                return
            if last >= 0 and seq > last + 1:
                m.gaps += seq - last - 1
        m.last_seq = seq
        at = data.find(MARK)
        if at >= 0:
            now = time.monotonic_ns()
            start = at + len(MARK)
            sent_ns = int(data[start : data.index(b"|", start)])
            if self.phase == "steady":
                self.steady.append(now - sent_ns)
            elif self.phase == "storm" and m.back_ns and sent_ns > m.back_ns:
                self.during.append(now - sent_ns)
            elif self.phase == "after" and m.back_ns and sent_ns > m.back_ns:
                self.after.append(now - sent_ns)
        if self.phase == "storm" and m.back_ns and not m.caught and seq >= self.targets[m.room]:
            self._caught(m)

    def on_back(self, m: Follower) -> None:
        self.back += 1
        if self.back == len(self.members) and self.all_back is not None and not self.all_back.done():
            self.all_back.set_result(None)
        if not m.caught and (not self.checked or m.last_seq >= self.targets[m.room]):
            self._caught(m)

    def _caught(self, m: Follower) -> None:
        m.caught = True
        self.caught += 1
        if self.caught == len(self.members) and self.all_caught is not None and not self.all_caught.done():
            self.storm_end_ns = time.monotonic_ns()
            self.all_caught.set_result(None)

    async def publish(self, rate: float, pad: bytes) -> None:
        """`rate` messages a second, room after room, through each room's speaker when it is live."""
        loop = asyncio.get_running_loop()
        begin = loop.time()
        i = 0
        while True:
            due = begin + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            speaker = self.speakers[i % self.rooms]
            if speaker.live:
                speaker.send(chat_frame(i, pad))
                self.sent += 1
            else:
                self.skipped += 1
            i += 1

    async def open_all(self, concurrency: int, deadline: float) -> tuple[Counter[str], float]:
        gate = asyncio.Semaphore(concurrency or len(self.members))
        errors: Counter[str] = Counter()

        async def one(m: Follower) -> None:
            async with gate:
                m.arm()
                try:
                    await ws_connect(
                        lambda: m, self.url(m), websocket_handshake_timeout=60, read_buffer_init_size=READ_BUFFER
                    )
                    await asyncio.wait_for(asyncio.shield(m.ready), 60)
                except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                    errors[type(exc).__name__ if not isinstance(exc, ConnectionError) else str(exc)] += 1

        start = time.monotonic()
        tasks = [asyncio.ensure_future(one(m)) for m in self.members]
        _, pending = await asyncio.wait(tasks, timeout=deadline)
        for task in pending:
            task.cancel()
        if pending:
            errors["deadline"] += len(pending)
        return errors, time.monotonic() - start

    async def close_all(self, timeout: float = 60.0) -> None:
        self.closing = True
        live = [m for m in self.members if m.transport is not None and not m.gone.done()]
        for m in live:
            if m.transport is not None and not m.transport.is_close_frame_sent:
                m.transport.send_close(WSCloseCode.OK)
        if live:
            _, pending = await asyncio.wait([m.gone for m in live], timeout=timeout)
            for m in live:
                if m.gone in pending and m.transport is not None:
                    m.transport.disconnect(graceful=False)


async def ask_restart() -> tuple[int, float]:
    """Ask the runner for a restart; returns the new server's pid and how long the old one took to exit."""
    print("!restart", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    word, pid, drain = line.split()
    if word != "!ready":
        raise RuntimeError(f"the runner answered {line!r}")
    return int(pid), float(drain)


async def storm(
    t: Target,
    clients: int,
    room_size: int,
    rate: float,
    steady_s: float,
    after_s: float,
    limit_s: float,
    storm_concurrency: int,
) -> dict[str, Any]:
    s = Storm(t, clients, room_size)
    await t.make_rooms(
        {name: list(range(r * room_size + 1, min((r + 1) * room_size, clients) + 1)) for r, name in enumerate(s.names)}
    )
    connect_errors, connect_s = await s.open_all(t.concurrency, 300)
    gc.collect()
    gc.freeze()
    # Steady: the publisher's traffic alone, for the latency and CPU to compare the storm with.
    s.phase = "steady"
    publisher = asyncio.ensure_future(s.publish(rate, t.pad))
    steady_cpu = CpuMeter(t.pid)
    await asyncio.sleep(steady_s)
    steady_usage = steady_cpu.read()

    # The restart: the old server drains (1012 to every member), a new one starts.
    s.phase = "restart"
    restart_at = time.monotonic()
    new_pid, exit_s = await ask_restart()
    down_s = time.monotonic() - restart_at
    _, still_open = await asyncio.wait([m.gone for m in s.members], timeout=15)
    t.pid = new_pid
    seqs = await asyncio.to_thread(t.stream_seqs)
    if seqs is not None:
        s.targets = [seqs.get(f"room:{name}", 0) for name in s.names]

    # The storm: everyone at once.
    s.all_back = asyncio.get_running_loop().create_future()
    s.all_caught = asyncio.get_running_loop().create_future()
    cpu = CpuMeter(new_pid)
    start_ns = time.monotonic_ns()
    s.phase = "storm"
    opener = asyncio.ensure_future(s.open_all(storm_concurrency, limit_s))
    await asyncio.wait([s.all_caught], timeout=limit_s)
    usage = cpu.read()
    end_ns = s.storm_end_ns or time.monotonic_ns()
    back_s = None
    if s.all_back.done():
        back_s = round((max(m.back_ns for m in s.members) - start_ns) / 1e9, 3)
    s.phase = "after"
    reconnect_errors, _ = await opener
    await asyncio.sleep(after_s)
    publisher.cancel()
    s.phase = "end"
    # Every member must reach its room's final seq.
    await asyncio.sleep(1.0)
    behind = 0
    if s.checked:
        final = await asyncio.to_thread(t.stream_seqs) or {}
        wanted = [final.get(f"room:{name}", 0) for name in s.names]
        for _ in range(300):
            behind = sum(1 for m in s.members if m.last_seq < wanted[m.room])
            if not behind:
                break
            await asyncio.sleep(0.1)
    closes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for m in s.members:
        closes.update(m.closes)
        errors.update(m.errors)
    await s.close_all()
    reconnected = sum(1 for m in s.members if m.back_ns)
    storm_cpu_s = usage["server_cpu_s"]
    steady_rate = steady_usage["server_cpu"] or 0.0  # cores the publisher's traffic alone took
    storm_s = (end_ns - start_ns) / 1e9
    net = None if storm_cpu_s is None else max(0.0, storm_cpu_s - steady_rate * storm_s)
    unexpected = {k: v for k, v in closes.items() if k != f"restart:{RESTARTING}"}
    return {
        "clients": clients,
        "rooms": s.rooms,
        "connect_s": round(connect_s, 2),
        "connect_errors": dict(connect_errors),
        "exit_s": exit_s,  # SIGTERM until the old process exited
        "down_s": round(down_s, 2),  # the restart as the load saw it: asked until the new server listened
        "closed_by_restart": closes.get(f"restart:{RESTARTING}", 0),
        "not_closed_by_restart": len(still_open),
        "complete": s.all_caught.done(),
        "back_s": back_s,
        "storm_s": round(storm_s, 3),
        "reconnected": reconnected,
        "reconnect_errors": dict(reconnect_errors),
        "steady_latency": latency(s.steady),
        "storm_latency": latency(s.during),
        "after_latency": latency(s.after),
        **{f"steady_{k}": v for k, v in steady_usage.items() if k in ("server_cpu", "server_cpu_s", "load_cpu")},
        **usage,
        "cpu_unit": "reconnect",
        "server_us_per_unit": per_unit_us(storm_cpu_s, reconnected),
        "net_us_per_reconnect": per_unit_us(net, reconnected),
        "published": s.sent,
        "skipped_turns": s.skipped,  # a room's turn while its speaker was away
        "gaps": sum(m.gaps for m in s.members) if s.checked else None,
        "dupes": sum(m.dupes for m in s.members) if s.checked else None,
        "resyncs": sum(m.resyncs for m in s.members),
        "behind_at_end": behind if s.checked else None,
        "unexpected_closes": unexpected,
        "error_frames": dict(errors),  # by phase; `restart`: refused during the drain, as documented
    }
