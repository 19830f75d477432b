"""Many WebSocket clients in one process, on picows: a received frame costs one
callback, not a task and a queue hop, so one load core outruns a server on the
other core (each scenario reports both processes' CPU to show it).

Every chat message the load sends carries its send time and a tag in its
content (`T<monotonic ns>|<tag>|xxx…`); a member that receives one reports
(sent_ns, tag, received_ns) without decoding the JSON around it. The clock is
CLOCK_MONOTONIC, shared by every process on the machine.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter
from collections.abc import Callable, Sequence

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

MARK = b'"content":"T'
HISTORY = b'"message_history"'
ERROR = b'{"type":"error"'
# picows' default 16 KiB read buffer per socket would be 160 MB of load-side
# memory at 10,000 sockets; it grows on demand.
READ_BUFFER = 4096

OnChat = Callable[["Member", int, int, int], None]


def chat_frame(tag: int, pad: bytes) -> bytes:
    """A `chat_message` stamped now."""
    return b'{"type":"chat_message","content":"T%d|%d|%s"}' % (time.monotonic_ns(), tag, pad)


class Closed(Exception):
    """The server closed the socket before its first `message_history`."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"closed {code}")
        self.code = code


class Member(WSListener):
    def __init__(self, index: int, on_chat: OnChat) -> None:
        loop = asyncio.get_running_loop()
        self.index = index
        self.on_chat = on_chat
        self.transport: WSTransport | None = None
        self.ready: asyncio.Future[None] = loop.create_future()  # message_history received
        self.gone: asyncio.Future[None] = loop.create_future()  # disconnected
        self.close_code: int | None = None
        self.errors = 0  # error frames (rate_limited, ...): a message that will never come back

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.TEXT:
            data = frame.get_payload_as_bytes()
            if not self.ready.done():
                # The history may hold earlier stamped messages: never count it.
                if HISTORY in data[:40]:
                    self.ready.set_result(None)
                return
            at = data.find(MARK)
            if at >= 0:
                now = time.monotonic_ns()
                start = at + len(MARK)
                bar = data.index(b"|", start)
                end = data.index(b"|", bar + 1)
                self.on_chat(self, int(data[start:bar]), int(data[bar + 1 : end]), now)
            elif data.startswith(ERROR):
                self.errors += 1
        elif kind == WSMsgType.CLOSE:
            # Read the code from the payload: picows' enum has no 4xxx codes.
            payload = frame.get_payload_as_bytes()
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if not transport.is_close_frame_sent:
                transport.send_close(WSCloseCode.OK)
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.ready.done():
            self.ready.set_exception(Closed(self.close_code))
        if not self.gone.done():
            self.gone.set_result(None)

    def send(self, payload: bytes) -> None:
        if self.transport is not None:
            self.transport.send(WSMsgType.TEXT, payload)

    def close(self) -> None:
        """Start the closing handshake; the server's close frame ends it."""
        if self.transport is not None and not self.gone.done() and not self.transport.is_close_frame_sent:
            self.transport.send_close(WSCloseCode.OK)


async def open_members(
    urls: Sequence[str], on_chat: OnChat, concurrency: int = 256, deadline: float = 120.0
) -> tuple[list[Member | None], Counter[str], float]:
    """Connect one member per URL, `concurrency` handshakes at a time, and wait
    for each one's `message_history`. Returns the members by index (None where
    it failed), the failures by kind, and the seconds it took."""
    gate = asyncio.Semaphore(concurrency)
    members: list[Member | None] = [None] * len(urls)
    errors: Counter[str] = Counter()

    async def one(index: int, url: str) -> None:
        async with gate:
            try:
                _, member = await ws_connect(
                    lambda: Member(index, on_chat),
                    url,
                    websocket_handshake_timeout=30,
                    read_buffer_init_size=READ_BUFFER,
                )
                await asyncio.wait_for(member.ready, 30)
                members[index] = member
            except Closed as exc:
                errors[f"closed {exc.code}"] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                errors[type(exc).__name__] += 1

    start = time.monotonic()
    tasks = [asyncio.ensure_future(one(i, url)) for i, url in enumerate(urls)]
    _, pending = await asyncio.wait(tasks, timeout=deadline)
    for task in pending:
        task.cancel()
    if pending:
        errors["deadline"] += len(pending)
        await asyncio.wait(pending, timeout=5)
    # What connecting made stays for the run: out of the cyclic collector's
    # sight, a full collection over it cannot pause the load mid-measurement.
    gc.collect()
    gc.freeze()
    return members, errors, time.monotonic() - start


async def close_members(members: Sequence[Member | None], timeout: float = 30.0) -> int:
    """Close every open member; abort those the server did not answer. Returns how many were aborted."""
    live = [m for m in members if m is not None and not m.gone.done()]
    for member in live:
        member.close()
    if not live:
        return 0
    _, pending = await asyncio.wait([m.gone for m in live], timeout=timeout)
    stuck = [m for m in live if m.gone in pending]
    for member in stuck:
        if member.transport is not None:
            member.transport.disconnect(graceful=False)
    if stuck:
        await asyncio.wait([m.gone for m in stuck], timeout=5)
    return len(stuck)


def close_codes(members: Sequence[Member | None]) -> dict[str, int]:
    """Close codes of members the server closed (or that dropped) before we asked."""
    codes = Counter(str(m.close_code) for m in members if m is not None and m.gone.done())
    return dict(codes)


def error_frames(members: Sequence[Member | None]) -> int:
    return sum(m.errors for m in members if m is not None)
