"""Connection limits under uvicorn's HTTP protocol: deadlines for a request
head and a WebSocket handshake, a cap on connections still pending per client
address, a global cap below the open-file limit, and quiet accept errors.

Why a module under uvicorn and not ASGI middleware: the app first hears of a
connection once its request head is complete. A client that never completes
it (slow headers, a half-sent upgrade, a TCP connection that sends nothing)
holds a socket and a file descriptor that no middleware sees, and uvicorn
0.54 has no deadline for it (`timeout_keep_alive` runs only between
requests). So this module is the HTTP protocol uvicorn builds for each
connection (`--http realtime.transport.guard:http_protocol`): it builds uvicorn's own
protocol (`--http auto`: h11, or httptools if installed) inside, hands it a
transport that reports writes and the switch to the WebSocket protocol, and
after the handshake steps out of the data path. It reads only bytes on the
wire and calls only asyncio's Protocol/Transport interface, so it works the
same over every WebSocket implementation (websockets-sansio, websockets,
wsproto); the one exception is the mend for websockets-sansio below.

The settings come through the lifespan state (`state(...)`, yielded by the
app's lifespan): uvicorn hands that dict to every protocol it builds. With
no guard in it (another app, lifespan off) the protocol is uvicorn's own.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from ..settings import Settings, open_file_limit

log = logging.getLogger("realtime.guard")

KEY = "realtime.guard"  # the lifespan-state key uvicorn passes on to each protocol

# Refused connections answered with a 503 then half-closed and drained, so that
# the client reads the answer rather than a reset; past this many at once the
# rest are closed right after the answer (a reset may eat it then).
LINGER_MAX = 16
LINGER_SECONDS = 1.0
# Kept from the open-file limit when MAX_CONNECTIONS is not set: the store,
# the broker, logs, uploads and refused connections need descriptors too.
HEADROOM_MIN = 64
ACCEPT_ERRORS = {"EMFILE", "ENFILE", "ENOBUFS", "ENOMEM"}

# States of a connection under the guard.
HEAD = 0  # the client owes a request head: deadline and idle timer run
BUSY = 1  # a head came; the request is the app's until a response starts
RESPONDED = 2  # a response started: the client's next bytes start a new head
HANDSHAKE = 3  # an upgrade: the deadline runs until the handshake answer
OPEN = 4  # a WebSocket (or closed): the guard is out of the data path


def _answer(status: str, text: str, *extra: str) -> bytes:
    body = text.encode()
    head = [f"HTTP/1.1 {status}", "content-type: text/plain; charset=utf-8", f"content-length: {len(body)}"]
    head += [*extra, "connection: close", "", ""]
    return "\r\n".join(head).encode() + body


BUSY_503 = _answer("503 Service Unavailable", "too many connections; try again shortly\n", "retry-after: 5")
TIMEOUT_408 = _answer("408 Request Timeout", "request head not received in time\n")


@dataclass(frozen=True)
class Limits:
    header_timeout: float
    idle_timeout: float
    max_pending_per_ip: int
    max_connections: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            settings.header_timeout,
            settings.idle_timeout,
            settings.max_pending_per_ip,
            settings.max_connections or default_max_connections(open_file_limit()),
        )


def default_max_connections(files: int | None) -> int:
    """The open-file limit less an eighth of it (at least HEADROOM_MIN)."""
    if files is None:
        return 1_000_000
    return max(1, files - max(HEADROOM_MIN, files // 8))


def address_key(host: str) -> str:
    """The unit one client is counted in: its IPv4 address, its IPv6 /64
    (one subscriber gets a whole /64 and could rotate through it)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return host


class PendingPerAddress:
    """Connections not yet accepted or authenticated, per client address:
    the guard counts a connection until its head (or handshake) is done, the
    endpoints count a socket until its `auth` frame; one budget for both."""

    __slots__ = ("counts", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: dict[str, int] = {}

    def take(self, host: str) -> bool:
        key = address_key(host)
        count = self.counts.get(key, 0)
        if count >= self.limit:
            return False
        self.counts[key] = count + 1
        return True

    def release(self, host: str) -> None:
        key = address_key(host)
        count = self.counts.get(key, 0) - 1
        if count > 0:
            self.counts[key] = count
        else:
            self.counts.pop(key, None)


class Guard:
    """One server's limits and counts (one per app, made by its lifespan)."""

    def __init__(self, limits: Limits, pending: PendingPerAddress) -> None:
        self.limits = limits
        self.pending = pending
        self.open = 0
        self.lingering = 0
        self.refused = 0
        self.timed_out = 0
        # Whether a peer is a proxy uvicorn trusts: its clients are counted by
        # the endpoints, from the address uvicorn's proxy-headers middleware gives.
        self.trusted: Callable[[str], bool] | None = None


def state(settings: Settings, pending: PendingPerAddress) -> dict[str, Any]:
    """What the app's lifespan yields so that uvicorn hands it to `http_protocol`."""
    return {KEY: Guard(Limits.of(settings), pending)}


def _trusted_peers(config: Any) -> Callable[[str], bool]:
    app = getattr(config, "loaded_app", None)
    if getattr(config, "proxy_headers", False) and isinstance(app, ProxyHeadersMiddleware):
        return app.trusted_hosts.__contains__
    return lambda host: False


def http_protocol(config: Any, server_state: Any, app_state: dict[str, Any], _loop: Any = None) -> asyncio.Protocol:
    """uvicorn's `--http`: its own HTTP protocol, under the app's guard."""

    def inner() -> asyncio.Protocol:
        return AutoHTTPProtocol(config=config, server_state=server_state, app_state=app_state, _loop=_loop)  # type: ignore[call-arg]

    guard = app_state.get(KEY)
    if not isinstance(guard, Guard):
        return inner()
    if guard.trusted is None:
        guard.trusted = _trusted_peers(config)
    return Guarded(guard, inner, _loop or asyncio.get_event_loop())


class _Transport:
    """The transport the protocols under the guard see: the real one, except
    that the guard hears of writes and of the switch to a WebSocket protocol."""

    def __init__(self, real: Any, guarded: Guarded) -> None:
        self._real = real
        self.write = guarded.written
        self.set_protocol = guarded.switch
        self.get_protocol = guarded.current

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class Guarded(asyncio.Protocol):
    def __init__(self, guard: Guard, make: Callable[[], asyncio.Protocol], loop: asyncio.AbstractEventLoop) -> None:
        self.guard = guard
        self.make: Callable[[], asyncio.Protocol] | None = make
        self.loop = loop
        self.inner: Any = None
        self.transport: Any = None  # asyncio's or uvloop's
        self.proxy: _Transport | None = None
        self.state = HEAD
        self.pending: str | None = None  # the address this connection is counted against
        self.host: str | None = None  # the peer's address, when it is counted at all
        self.timer: asyncio.TimerHandle | None = None
        self.started = self.last_read = 0.0
        self.tail = b""
        self.text_seen = False
        self.lingering = False

    # ---- asyncio's protocol interface ----------------------------------------

    def connection_made(self, transport: Any) -> None:
        # asyncio's transport or uvloop's (which is no asyncio.Transport subclass).
        guard = self.guard
        peer = transport.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) and peer else None
        if guard.open >= guard.limits.max_connections:
            return self._refuse(transport, "the server is at MAX_CONNECTIONS")
        if host is not None and not (guard.trusted and guard.trusted(host)):
            if not guard.pending.take(host):
                return self._refuse(transport, f"{host} is at MAX_PENDING_PER_IP")
            self.pending = self.host = host
        guard.open += 1
        self.transport = transport
        self.proxy = _Transport(transport, self)
        assert self.make is not None
        self.inner, self.make = self.make(), None
        self.started = self.last_read = self.loop.time()
        self._arm()
        self.inner.connection_made(self.proxy)

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            return  # a refused connection: its request is drained and dropped
        state = self.state
        complete = False
        if state is HEAD or state is RESPONDED:
            self.last_read = self.loop.time()
            if state is RESPONDED and not self._new_head():
                return
            complete = self._head_ends(data)
        self.inner.data_received(data)
        if complete and self.state is HEAD:
            # No switch to a WebSocket protocol: a plain request, the app's now.
            self.state = BUSY
            self._settle()

    def eof_received(self) -> bool | None:
        if self.inner is None:
            return None  # refused: close
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lingering:
            self.lingering = False
            self.guard.lingering -= 1
        if self.inner is None:
            self._cancel_timer()
            return
        self.guard.open -= 1
        self.state = OPEN
        self._settle()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    # ---- what the protocols inside call on their transport ---------------------

    def written(self, data: bytes | bytearray | memoryview) -> None:
        assert self.transport is not None
        state = self.state
        if state is BUSY:
            # A response head starts with its status line; 1xx (100 Continue) is not an answer yet.
            if bytes(data[:9]) in (b"HTTP/1.1 ", b"HTTP/1.0 ") and bytes(data[9:10]) != b"1":
                self.state = RESPONDED
        elif state is HANDSHAKE and bytes(data[:9]) == b"HTTP/1.1 ":
            # The handshake's answer: 101 and a WebSocket, or a refusal the protocol closes after.
            self._step_out()
        self.transport.write(data)

    def switch(self, protocol: asyncio.BaseProtocol) -> None:
        """uvicorn's HTTP protocol hands the connection to its WebSocket protocol."""
        self.inner = protocol
        if self.state is HEAD:
            self.state = HANDSHAKE  # the head is complete; the deadline runs on
        _flush_sansio_refusal(protocol, self)

    def current(self) -> Any:
        return self.inner

    # ---- the guard's own work ------------------------------------------------

    def _head_ends(self, data: bytes) -> bool:
        if not self.text_seen:
            # Blank lines before a request line are allowed and end nothing.
            data = data.lstrip(b"\r\n")
            if not data:
                return False
            self.text_seen = True
            self.tail = b""
        window = self.tail + data[:4096] if len(data) > 4096 else self.tail + data
        self.tail = data[-2:]
        if b"\n\n" in window or b"\n\r\n" in window:
            return True
        return len(data) > 4096 and (b"\n\n" in data or b"\n\r\n" in data)

    def _new_head(self) -> bool:
        """The next request on a kept-alive connection: it waits for its head
        again, so it counts against its address again (False: refused, closed)."""
        if self.host is not None and self.pending is None:
            if not self.guard.pending.take(self.host):
                self.guard.refused += 1
                assert self.transport is not None
                self.transport.close()
                return False
            self.pending = self.host
        self.state = HEAD
        self.started = self.last_read
        self.text_seen = False
        self._arm()
        return True

    def _arm(self) -> None:
        self._cancel_timer()
        limits = self.guard.limits
        due = self.started + limits.header_timeout
        if self.state is HEAD:
            due = min(due, self.last_read + limits.idle_timeout)
        self.timer = self.loop.call_at(due, self._expire)

    def _expire(self) -> None:
        self.timer = None
        if self.state is not HEAD and self.state is not HANDSHAKE:
            return
        now, limits = self.loop.time(), self.guard.limits
        late = now >= self.started + limits.header_timeout
        idle = self.state is HEAD and now >= self.last_read + limits.idle_timeout
        if not late and not idle:
            self._arm()
            return
        self.guard.timed_out += 1
        log.debug(
            "closing a connection: %s", "no request head in time" if self.state is HEAD else "no handshake in time"
        )
        transport = self.transport
        assert transport is not None
        if self.state is HEAD:
            transport.write(TIMEOUT_408)
        self.state = OPEN
        self._settle()
        transport.close()

    def _step_out(self) -> None:
        """The handshake answered: the WebSocket protocol talks to the transport itself from here."""
        self.state = OPEN
        self._settle()
        assert self.proxy is not None and self.transport is not None
        self.proxy.write = self.transport.write
        # Received data goes straight to the WebSocket protocol: an attribute
        # on this object shadows the method, and the transport looks it up per call.
        self.data_received = self.inner.data_received  # type: ignore[method-assign]

    def _settle(self) -> None:
        """Not pending any more: release the address's slot and the timer."""
        if self.pending is not None:
            self.guard.pending.release(self.pending)
            self.pending = None
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _refuse(self, transport: asyncio.Transport, why: str) -> None:
        guard = self.guard
        guard.refused += 1
        log.debug("refusing a connection: %s", why)
        transport.write(BUSY_503)
        if guard.lingering < LINGER_MAX and transport.can_write_eof():
            # Half-close and drain what the client sends, so the answer is read, not reset.
            guard.lingering += 1
            self.lingering = True
            transport.write_eof()
            self.timer = self.loop.call_later(LINGER_SECONDS, transport.close)
        else:
            transport.close()


def _flush_sansio_refusal(protocol: Any, guarded: Guarded) -> None:
    """Mend for uvicorn 0.54's websockets-sansio protocol: an upgrade request
    that websockets' own parser refuses gets no answer and is never closed.

    websockets (16, 17) refuses a request line of 8 KB or more with 414 and a
    header line of 8 KB or more, or over 128 headers, with 431
    (`ServerProtocol.parse`); it queues that response and an EOF in
    `data_to_send()` and yields no `Request` event (any other parse failure
    queues just the EOF). uvicorn's `WebSocketsSansIOProtocol.data_received`
    writes `data_to_send()` only while handling events, so both stay queued:
    its log says "HTTP response sent (431 ...)" and the client waits forever.
    Reproduction (uvicorn 0.54, websockets 17.4, h11 0.16):

        uvicorn app:app --ws websockets-sansio  # any ASGI app
        printf 'GET / HTTP/1.1\\r\\nHost: x\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n'\\
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\nSec-WebSocket-Version: 13\\r\\n'\\
        'Cookie: %010000d\\r\\n\\r\\n' 0 | nc 127.0.0.1 8000   # no answer, no close

    h11 (16 KB heads) and the other implementations answer such a request
    (websockets legacy with 400, wsproto accepts it). Here, once uvicorn has
    fed the request to the protocol (it does before switching to it), a
    refusal still queued is written and the connection closed.
    """
    conn = getattr(protocol, "conn", None)
    if getattr(protocol, "handshake_initiated", True) or getattr(conn, "handshake_exc", None) is None:
        return
    assert conn is not None and guarded.transport is not None
    guarded.transport.write(b"".join(conn.data_to_send()))
    guarded.transport.close()


class AcceptErrors:
    """The event loop's exception handler, with "socket.accept() out of system
    resource" (EMFILE and the like) logged at most once a second.

    asyncio's `_accept_connection` reports that error and schedules a retry,
    then keeps calling `accept()` on the same ready socket, up to `backlog`
    times (2048 under uvicorn): out of descriptors, each loop pass logged a
    traceback per pending connection, megabytes a second (and each retry it
    scheduled fails with another once the listening socket is closed). Under
    uvloop libuv accepts and closes such connections itself, silently.
    Everything else goes to the handler that was there before (or the loop's
    default).
    """

    INTERVAL = 1.0

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.previous = loop.get_exception_handler()
        self.last = -self.INTERVAL
        self.suppressed = 0
        self.flush: asyncio.TimerHandle | None = None

    @classmethod
    def install(cls, loop: asyncio.AbstractEventLoop) -> AcceptErrors:
        """The loop's handler from now on: once per loop, and it stays after the
        app stops, because asyncio's retries may still fire while the loop ends."""
        current = loop.get_exception_handler()
        if isinstance(current, AcceptErrors):
            return current
        handler = cls(loop)
        loop.set_exception_handler(handler)
        return handler

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not _accept_error(context):
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - self.last < self.INTERVAL:
            self.suppressed += 1
            if self.flush is None:
                self.flush = loop.call_later(self.last + self.INTERVAL - now, self._report_suppressed)
            return
        self.last = now
        log.error(
            "accepting a connection failed: %s (the server retries; see MAX_CONNECTIONS)", context.get("exception")
        )

    def _report_suppressed(self) -> None:
        self.flush = None
        if self.suppressed:
            log.error("accepting a connection failed %d more times in the last second", self.suppressed)
            self.suppressed = 0
            self.last = time.monotonic()


def _accept_error(context: dict[str, Any]) -> bool:
    exc, message = context.get("exception"), str(context.get("message", ""))
    if isinstance(exc, OSError) and errno.errorcode.get(exc.errno or 0) in ACCEPT_ERRORS and "accept" in message:
        return True
    # The retries asyncio scheduled (one per failed accept) fail once the listening socket is closed.
    return "_start_serving" in message and isinstance(exc, ValueError | OSError)
