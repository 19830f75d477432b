"""The plain ASGI side of a socket, correct on every ASGI server.

The outbound side of one socket: frames go out through `await send(...)` from
one writer task, fed by a queue bounded by OUTBOUND_QUEUE; a socket whose queue
overflows is cut off with 1013. The writer exists only while frames wait (most
sockets are idle most of the time, and 10,000 idle tasks would weigh 20 MB).

A server adapter (transport/uvicorn.py) may give the socket a direct write:
a synchronous `write(bytes) -> bool` used while nothing waits in the queue.
Whatever it declines goes through the queue, in order.

`SocketRoutes` sends WebSockets straight to their endpoints ahead of the HTTP
middleware and remembers the server's own `send` under RAW_SEND (where a
server adapter looks for it); `raw_send(app)` does the remembering for a host
app that mounts this one behind its own middleware.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.routing import BaseRoute, Match, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("realtime.outbound")

# The scope key under which the server's own `send` (before any middleware wrapped it) is kept.
RAW_SEND = "realtime.raw_send"
SLOW_CONSUMER = 1013

SendMessage = Callable[[dict[str, Any]], Awaitable[None]]
DirectWrite = Callable[[bytes], bool]


class SocketRoutes:
    """Outermost middleware of the app: a WebSocket on one of `routes` goes
    straight to its endpoint, with the server's own `send` remembered before
    Starlette wraps it (unless a host's `raw_send` remembered it first).

    Nothing between here and the endpoint applies to it (the endpoints handle
    their own errors), and every coroutine frame in between would stay
    suspended for the socket's whole life, in memory and on every resume.
    """

    def __init__(
        self, app: ASGIApp, routes: Sequence[BaseRoute], prepare: Callable[[Scope], None] | None = None
    ) -> None:
        self.app = app
        self.routes = [route for route in routes if isinstance(route, WebSocketRoute)]
        # Called with the scope of each socket for a route here, before its endpoint (and its handshake's answer).
        self.prepare = prepare

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope.setdefault(RAW_SEND, send)
            if self.prepare is not None:
                self.prepare(scope)
            for route in self.routes:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child)
                    await route.app(scope, receive, send)
                    return
        await self.app(scope, receive, send)


class RawSend:
    """ASGI middleware a host app puts outermost (around its own middleware)
    when it mounts the realtime app: the server's own `send` reaches the
    realtime sockets, so a server adapter's fast path still applies. The host's
    middleware still sees the handshake; the frames after it bypass it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope.setdefault(RAW_SEND, send)
        await self.app(scope, receive, send)


def raw_send(app: ASGIApp) -> RawSend:
    """`uvicorn.run(transport.raw_send(host_app))`: see `RawSend`."""
    return RawSend(app)


class Outbound:
    __slots__ = (
        "_busy",
        "_direct",
        "_limit",
        "_queue",
        "_send",
        "_writer",
        "closed",
        "dropped",
        "on_closed",
        "on_push",
        "sent",
    )

    def __init__(self, send: SendMessage, limit: int, direct: DirectWrite | None = None) -> None:
        self._send = send
        # Writes an encoded frame at once when the server allows (see transport/uvicorn.py).
        self._direct = direct
        self._limit = limit
        # Made when first needed: most sockets never fall behind (and 10,000 empty deques weigh 7 MB).
        self._queue: deque[dict[str, Any]] | None = None
        self._writer: asyncio.Task[None] | None = None
        # True while the writer is inside `send`: a direct write then would overtake that frame.
        self._busy = False
        self.closed = False
        # Called once the socket cannot take more frames (overflow or a failed send).
        self.on_closed: Callable[[], None] | None = None
        # Told of each frame `push`ed (metrics); `relay` skips it.
        self.on_push: Callable[[str], None] | None = None
        self.sent = 0
        self.dropped = 0

    @property
    def fast(self) -> bool:
        """Whether a server adapter's direct write is in use for this socket."""
        return self._direct is not None

    def push(self, text: str) -> None:
        """A frame for this socket alone: a reply, a snapshot, a replay."""
        if self.on_push is not None:
            self.on_push(text)
        self.relay(text)

    def relay(self, text: str, data: bytes | None = None) -> None:
        """This socket's copy of a fanned-out event (the hub counts those once per
        event); `data` is the text already encoded, once for all recipients."""
        if self.closed:
            return
        if self._direct is not None and not self._queue and not self._busy:
            try:
                if self._direct(data if data is not None else text.encode()):
                    self.sent += 1
                    return
            except Exception as exc:  # noqa: BLE001 - the peer is gone
                self._fail(exc)
                return
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        if len(queue) >= self._limit:
            self._overflow()
            return
        queue.append({"type": "websocket.send", "text": text})
        self._start()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close after what is already queued has been written."""
        if self.closed:
            return
        self.closed = True
        if self._queue is None:
            self._queue = deque()
        self._queue.append({"type": "websocket.close", "code": code, "reason": reason})
        self._start()

    async def drained(self, timeout: float) -> None:
        """Wait until the queue (and a pending close) is written, or give up."""
        writer = self._writer
        if writer is not None:
            await asyncio.wait({writer}, timeout=timeout)

    def _start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        try:
            while self._queue:
                message = self._queue.popleft()
                self._busy = True
                try:
                    await self._send(message)
                except Exception as exc:  # retried once, as a plain close
                    if message["type"] != "websocket.close" or message["code"] == 1000:
                        raise
                    # A server that takes no 1xxx code but 1000 (daphne's autobahn refuses 1009, 1011,
                    # 1012, 1013): a normal close naming the code beats a socket left open in silence.
                    log.warning("close %s refused by the server (%r): closed with 1000", message["code"], exc)
                    reason = f"{message['code']} {message['reason']}".strip()
                    await self._send({"type": "websocket.close", "code": 1000, "reason": reason})
                self._busy = False
                if message["type"] == "websocket.send":
                    self.sent += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the peer is gone
            self._fail(exc)
        finally:
            self._busy = False
            # A cut-off may already have replaced this writer with the one sending the close.
            if self._writer is asyncio.current_task():
                self._writer = None

    def _overflow(self) -> None:
        self.dropped += len(self._queue or ()) + 1
        self.closed = True
        writer = self._writer
        # The writer is blocked on a peer that stopped reading: stop waiting for
        # it and send the close frame behind what the server already holds.
        if writer is not None:
            writer.cancel()
        self._writer = None
        self._busy = False
        self._queue = deque([{"type": "websocket.close", "code": SLOW_CONSUMER, "reason": "slow consumer"}])
        self._start()
        self._notify()

    def _fail(self, exc: Exception) -> None:
        # A peer that went away is ordinary; anything else is the server refusing our send.
        if isinstance(exc, OSError) or type(exc).__name__ in _PEER_GONE:
            log.debug("send failed: %r", exc)
        else:
            log.warning("send failed, socket closed: %r", exc)
        self.closed = True
        self._queue = None
        self._notify()

    def _notify(self) -> None:
        callback, self.on_closed = self.on_closed, None
        if callback is not None:
            callback()


# What the servers raise from `send` once the client is gone (uvicorn, starlette, websockets).
_PEER_GONE = frozenset({"ClientDisconnected", "ConnectionClosed", "ConnectionClosedError", "ConnectionClosedOK"})
