"""permessage-deflate for this traffic: bytes on the wire per typical frame, CPU
per compression, and idle memory per socket when a browser negotiates it.

    python -m bench.compression frames
    python -m bench.compression memory [--sockets 2000] [--modes off,stateless,server] [--repeat 2]

`frames`: the project's own frames, built by its own code with realistic
(Korean) content: `chat_message`, `consultation_status`, `message_history` of
50, `new_notification`. For each: the WebSocket frame as sent without
compression; compressed alone (`WS_COMPRESSION=stateless`: no context kept
between messages, 32 KiB window); compressed with context takeover as uvicorn
does it by default (`--ws-per-message-deflate`, 4 KiB windows, memLevel 5),
averaged over 20 such frames in a row on one connection, which is its best
case; and the µs to compress one.

`memory`: the server (SQLite, memory broker) with each `WS_COMPRESSION` mode
under uvicorn's defaults (`--ws-per-message-deflate` on), N idle chat sockets
whose client offers compression as Chromium does (`permessage-deflate;
client_max_window_bits`), one socket warmed first; RSS per socket is (VmRSS
after - before) ÷ sockets. `plain` is the same server with clients that offer
no compression (the reference: what a socket weighs without it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode

from bench.load import PREFIX, Target, raise_fd_limit, token
from bench.run import OUT, ROOT, SERVER_CORE, SERVICE_KEY, Server, command, free_port, pinned, stop, wait_ready
from bench.stats import rss_kib
from realtime.events.protocol import consultation, outbound
from realtime.store import message_rows, streams
from realtime.store import notifications as notification_rows
from realtime.transport.uvicorn import deflated

NOW = "2026-11-30T09:41:27.315Z"
ROOM = "consult-8f3a2c91"
SENTENCES = [
    "안녕하세요, 오늘 상담 시간 괜찮으신가요?",
    "네, 3시에 뵙겠습니다. 아이가 요즘 잠을 잘 못 자서요.",
    "혹시 최근에 생활 패턴이 바뀐 적이 있나요? 이사나 새 학기 같은 변화요.",
    "사진 보내드릴게요",
    "좋아요 👍",
    "지난번 말씀하신 방법을 일주일 동안 해봤는데, 처음 사흘은 힘들었지만 그 뒤로는 조금씩 나아지는 것 같아요.",
]


def message(seq: int, sender: int) -> dict[str, Any]:
    row = (
        secrets.token_hex(12), seq, ROOM, sender, ["김민지", "이서준 선생님"][sender % 2],
        f"https://cdn.example.com/profiles/{sender}.jpg", SENTENCES[seq % len(SENTENCES)], "text",
        None, None, f"c-{secrets.token_hex(8)}", NOW,
    )  # fmt: skip
    return message_rows.to_record(row, False)


def chat_message(seq: int) -> str:
    return message_rows.frame(seq, message(seq, seq % 2 + 1041))


def history() -> str:
    return outbound.message_history([message(s, s % 2 + 1041) for s in range(1, 51)], True, 50, secrets.token_hex(8))


def status(remaining: int) -> str:
    participants = [
        {"id": 1042, "name": "이서준 선생님", "type": "expert", "joined_at": "2026-11-30T09:00:03.120Z"},
        {"id": 1041, "name": "김민지", "type": "client", "joined_at": "2026-11-30T09:00:41.902Z"},
    ]
    return consultation.consultation_status(
        {
            "status": "in_progress",
            "participants": participants,
            "duration_minutes": 50,
            "scheduled_start": "2026-11-30T09:00:00.000Z",
            "started_at": "2026-11-30T09:00:41.903Z",
            "ends_at": "2026-11-30T09:50:41.903Z",
            "remaining_seconds": remaining,
            "agora_channel": f"consultation-{ROOM}",
        }
    )


def notification(seq: int) -> str:
    row = (
        secrets.token_hex(12), 1041, seq, "chat", "이서준 선생님님의 새 메시지", SENTENCES[seq % len(SENTENCES)][:40],
        f"/chat/{ROOM}", None, NOW, 1,
    )  # fmt: skip
    return streams.frame("new_notification", seq, {"notification": notification_rows.to_record(row)})


KINDS = {
    "chat_message": chat_message,
    "consultation_status": lambda n: status(2400 - 30 * n),
    "message_history (50)": lambda n: history(),
    "new_notification": notification,
}


def plain_size(text: str) -> int:
    return len(Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[]))


def frames_report(runs: int = 20) -> str:
    lines = [
        "| frame | JSON bytes | wire, no compression | wire, compressed alone (stateless) "
        "| wire, context takeover (uvicorn's), mean of 20 in a row | µs to compress alone | µs with context |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, make in KINDS.items():
        texts = [make(n) for n in range(1, runs + 1)]
        data = [t.encode() for t in texts]
        plain = statistics.mean(plain_size(t) for t in texts)
        alone = statistics.mean(len(deflated(d)) for d in data)
        started = time.perf_counter()
        for d in data:
            deflated(d)
        alone_us = (time.perf_counter() - started) * 1e6 / len(data)
        # uvicorn 0.54's ServerPerMessageDeflateFactory: 12-bit windows both ways, memLevel 5, context kept.
        context = PerMessageDeflate(False, False, 12, 12, {"memLevel": 5})
        started = time.perf_counter()
        sizes = [len(Frame(Opcode.TEXT, d).serialize(mask=False, extensions=[context])) for d in data]
        context_us = (time.perf_counter() - started) * 1e6 / len(data)
        lines.append(
            f"| `{kind}` | {statistics.mean(len(d) for d in data):,.0f} | {plain:,.0f} | {alone:,.0f} "
            f"({alone / plain:.0%}) | {statistics.mean(sizes):,.0f} ({statistics.mean(sizes) / plain:.0%}) "
            f"| {alone_us:.1f} | {context_us:.1f} |"
        )
    return "\n".join(lines)


# ---- idle memory per socket -----------------------------------------------------


async def idle_sockets(t: Target, sockets: int, room_size: int, compressed: bool) -> tuple[int, int]:
    """Connect `sockets` chat sockets and hold them idle; (connected, RSS bytes per socket)."""
    from websockets.asyncio.client import connect

    assert t.pid is not None
    rooms = math.ceil(sockets / room_size)
    names = [f"{PREFIX}-z{r}" for r in range(rooms)]
    await t.make_rooms(
        {name: list(range(r * room_size + 1, min((r + 1) * room_size, sockets) + 1)) for r, name in enumerate(names)}
    )
    compression = "deflate" if compressed else None
    gate = asyncio.Semaphore(t.concurrency)

    async def one(user: int) -> Any:
        async with gate:
            url = f"{t.ws}/ws/chat/{names[(user - 1) // room_size]}/?token={token(user)}"
            conn = await connect(url, compression=compression, max_size=None, open_timeout=60)
            first = json.loads(await conn.recv())
            assert first["type"] == "message_history", first
            negotiated = conn.response.headers.get("Sec-WebSocket-Extensions") if conn.response else None
            return conn, negotiated

    warm, _ = await one(1)
    await warm.close()
    await asyncio.sleep(1.0)
    before = rss_kib(t.pid)
    opened = await asyncio.gather(*(one(u) for u in range(1, sockets + 1)), return_exceptions=True)
    conns = [c for c in opened if not isinstance(c, BaseException)]
    await asyncio.sleep(2.0)
    after = rss_kib(t.pid)
    negotiated = {str(n) for _, n in conns}
    print(f"  negotiated: {negotiated}", file=sys.stderr)
    await asyncio.gather(*(c.close() for c, _ in conns), return_exceptions=True)
    return len(conns), round((after - before) * 1024 / max(len(conns), 1))


def memory(args: argparse.Namespace) -> str:
    rows: dict[str, list[int]] = {}
    for _ in range(args.repeat):
        for mode in args.modes.split(","):
            tmp = Path(tempfile.mkdtemp(prefix="bench-z-"))
            port = free_port()
            extra = {} if mode == "plain" else {"WS_COMPRESSION": mode}
            argv, env, db = command("project", port, tmp, extra)
            argv, pin = pinned(argv, SERVER_CORE)
            log = OUT / f"server-compression-{mode}.log"
            with log.open("wb") as sink:
                process = subprocess.Popen(
                    argv, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, preexec_fn=pin
                )
            try:
                wait_ready(Server("project", process, port, db, log))
                api = f"http://127.0.0.1:{port}"
                t = Target(f"ws://127.0.0.1:{port}", process.pid, api, SERVICE_KEY, db, b"", 64)
                n, per = asyncio.run(idle_sockets(t, args.sockets, 100, compressed=mode != "plain"))
                print(f"{mode}: {n} sockets, {per:,} B/socket", file=sys.stderr)
                rows.setdefault(mode, []).append(per)
            finally:
                stop(process)
    lines = ["| server mode (`WS_COMPRESSION`) | client offers deflate | RSS per idle socket (runs) |", "|---|---|---|"]
    for mode, values in rows.items():
        each = ", ".join(f"{v:,}" for v in values)
        offers = "no" if mode == "plain" else "yes"
        lines.append(f"| {mode} | {offers} | {statistics.median(values):,.0f} B ({each}) |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compression", description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=["frames", "memory"])
    p.add_argument("--sockets", type=int, default=2000)
    p.add_argument("--modes", default="plain,off,stateless,server")
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    if args.part == "frames":
        print(frames_report())
        return 0
    raise_fd_limit()
    OUT.mkdir(parents=True, exist_ok=True)
    print(memory(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
