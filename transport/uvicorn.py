"""The uvicorn adapter: a direct write, a lighter receiving side, under
uvicorn's sans-I/O WebSocket protocol only (the fast path).

The default path (transport/asgi.py) writes every frame with `await send(...)`
from a writer task, which re-encodes the text per socket: a broadcast to a
thousand members does that a thousand times for one event. Under uvicorn's
sans-I/O WebSocket protocol (`--ws websockets-sansio`, the default with
`websockets` installed), a frame can be written the way that protocol's own
`send` writes it, with bytes encoded once per event: frame it with the
connection's websockets state machine and hand it to the transport, in the
caller's stack.

It is used only while that `send` would itself not wait (the transport is
writable, the handshake done, no close sent); anything else goes through the
plain path. The frame bytes are made once per event and written to every
plain connection as they are, and to every connection with stateless
compression compressed once (`negotiate` makes the handshake's
permessage-deflate what WS_COMPRESSION says). Frames are held until the end
of the event loop's turn and a socket's frames of one turn go out in one
write (`Cork`).

After the handshake `adopt` takes over the receiving side: uvicorn pauses and
resumes reading around every received frame and keeps an `asyncio.Queue` and
an `Event` per socket (3.7 KB); the replacements keep the same flow control
with a window of frames and the same interface in a few hundred bytes.

The attributes read and replaced here are uvicorn's and websockets'. The
adapter is chosen only when the `send` the socket got is bound to an instance
of uvicorn's `WebSocketsSansIOProtocol` and uvicorn's version is one it was
written and tested against (`TESTED`); under anything else (another uvicorn,
another protocol, another server, a `send` wrapped by middleware) the socket
takes the plain path, and `status` says which and why.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
import zlib
from typing import Any

import uvicorn
from starlette.types import Receive
from websockets.extensions.permessage_deflate import PerMessageDeflate, ServerPerMessageDeflateFactory
from websockets.protocol import State

from .asgi import DirectWrite

log = logging.getLogger("realtime.transport")

try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError:  # uvicorn without `websockets`: no sans-I/O protocol to adapt to
    WebSocketsSansIOProtocol = None  # type: ignore[assignment,misc]

# uvicorn (major, minor) versions whose protocol internals this adapter reads and replaces.
TESTED = frozenset({(0, 54)})

# Frames a socket may have queued before its reading is paused. uvicorn pauses
# after every frame and resumes on every receive: two epoll changes per frame.
READ_WINDOW = 4

OPEN = State.OPEN  # an enum member read through its class costs a lookup per write


def _version(text: str) -> tuple[int, int] | None:
    try:
        major, minor = text.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


VERSION_TEXT = uvicorn.__version__
VERSION = _version(VERSION_TEXT)


def protocol_of(send: Any) -> Any:
    """The uvicorn sans-I/O protocol `send` is bound to, if the adapter applies to it; else None."""
    protocol = getattr(send, "__self__", None)
    if WebSocketsSansIOProtocol is None or not isinstance(protocol, WebSocketsSansIOProtocol):
        return None
    if VERSION not in TESTED:
        return None
    return protocol


def why_not(send: Any) -> str:
    """Why the adapter does not apply to `send` (for the log line)."""
    protocol = getattr(send, "__self__", None)
    if WebSocketsSansIOProtocol is not None and isinstance(protocol, WebSocketsSansIOProtocol):
        tested = ", ".join(f"{a}.{b}" for a, b in sorted(TESTED))
        return f"uvicorn {uvicorn.__version__} is not a version the fast path was tested with ({tested})"
    owner = type(protocol).__module__ if protocol is not None else getattr(send, "__module__", None)
    if owner and owner.startswith("uvicorn."):
        return "uvicorn's --ws is not websockets-sansio"
    if send is None or (owner and owner.split(".")[0] in ("starlette", "fastapi")):
        return "the server's send is wrapped by middleware (put transport.raw_send(app) outermost)"
    return "the server is not uvicorn"


class _LastFrame:
    """The wire bytes of the last text framed. A fan-out hands the same `data`
    object to every socket in turn: it is framed once, not once per socket
    (a server frame is unmasked, so it is the same for every plain connection),
    and compressed at most once for every socket with stateless compression."""

    data: bytes | None = None
    wire: bytes = b""
    deflated: bytes | None = None  # made on first use


def _head(first: int, size: int) -> bytes:
    """A server frame's header (FIN, opcode and RSV1 in `first`; unmasked): RFC 6455, 5.2."""
    if size < 126:
        return bytes((first, size))
    if size < 65536:
        return bytes((first, 126)) + size.to_bytes(2, "big")
    return bytes((first, 127)) + size.to_bytes(8, "big")


def text_frame(data: bytes) -> bytes:
    """One whole text message as a server frame: what websockets' `Frame.serialize`
    makes of it, without its per-call checks and buffer (made once per event)."""
    return _head(0x81, len(data)) + data


def _framed(data: bytes) -> bytes:
    if data is not _LastFrame.data:
        _LastFrame.wire = text_frame(data)
        _LastFrame.deflated = None
        _LastFrame.data = data
    return _LastFrame.wire


def _deflated(data: bytes) -> bytes:
    _framed(data)
    if _LastFrame.deflated is None:
        _LastFrame.deflated = deflated(data)
    return _LastFrame.deflated


# The empty stored block a sync flush ends with, which permessage-deflate leaves off (RFC 7692, 7.2.1).
_SYNC_TAIL = b"\x00\x00\xff\xff"


def deflated(data: bytes) -> bytes:
    """A whole text message compressed alone, as a frame (RSV1 set, unmasked):
    what every socket whose permessage-deflate keeps no context between
    messages (`WS_COMPRESSION=stateless`) can be sent, the same bytes for all."""
    encoder = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    payload = encoder.compress(data) + encoder.flush(zlib.Z_SYNC_FLUSH)
    if payload.endswith(_SYNC_TAIL):
        payload = payload[:-4]
    return _head(0xC1, len(payload)) + payload


class _LastJoin:
    """The last frames joined into one write: the sockets of one room are held
    the same frames in a turn, and the join is made once for all of them (a
    copy of the list is kept: a socket's own list is emptied and used again)."""

    parts: list[bytes] = []
    wire: bytes = b""


# A socket holding this many frames in one turn writes them at once (a bound on what
# one turn holds; past it, the next frame checks `writable` again).
HOLD_LIMIT = 64


class Cork:
    """Frames written directly during one turn of the event loop, held per
    socket and written at the start of the next turn, one write per socket.

    A group commit wakes every sender of the batch in the same turn and each
    fans out its message in turn: a member of the room then gets all of them in
    one `send` system call instead of one each (the call and the kernel's TCP
    work per call were over half the CPU of a fan-out). The frames of a socket
    keep their order, and anything it sends through the plain path (a close)
    is scheduled after the flush, so it stays behind them."""

    __slots__ = ("_held", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._held: list[Held] = []

    def hold(self, held: Held) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(held)

    def flush(self) -> None:
        held, self._held = self._held, []
        for frames, conn, transport, plain in held:
            _write_held(frames, conn, transport, plain)


# A socket's frames held this turn (its own list, emptied once written), its
# websockets connection and transport, and whether the frames are wire bytes.
Held = tuple[list[bytes], Any, Any, bool]


def _write_held(frames: list[bytes], conn: Any, transport: Any, plain: bool) -> None:
    if not frames:
        return  # written already (at the hold limit, or by an earlier entry)
    try:
        # Nothing after a close frame; nothing to a transport that is closing (the peer is gone).
        if conn.state is not OPEN or transport.is_closing():
            return
        if not plain:
            # Compressed per connection: websockets frames it.
            for data in frames:
                conn.send_text(data)
            transport.write(b"".join(conn.data_to_send()))
        elif len(frames) == 1:
            transport.write(frames[0])
        else:
            if frames != _LastJoin.parts:
                _LastJoin.wire = b"".join(frames)
                _LastJoin.parts = frames[:]
            transport.write(_LastJoin.wire)
    except Exception as exc:  # noqa: BLE001 - the peer is gone; its receiving side reports it
        log.debug("held frames not written: %r", exc)
    finally:
        frames.clear()


_corks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Cork] = weakref.WeakKeyDictionary()


def cork_of(loop: asyncio.AbstractEventLoop) -> Cork:
    cork = _corks.get(loop)
    if cork is None:
        cork = _corks[loop] = Cork(loop)
    return cork


# permessage-deflate that keeps no context between messages, either way: no
# compressor or decompressor lives between messages (idle memory as without
# compression), and a server message compresses to the same bytes for every
# socket. A browser that offers `permessage-deflate; client_max_window_bits`
# accepts both parameters in the answer (RFC 7692, 7.1.1).
STATELESS = ServerPerMessageDeflateFactory(server_no_context_takeover=True, client_no_context_takeover=True)
EXTENSIONS_HEADER = "Sec-WebSocket-Extensions"
# WS_COMPRESSION's values: no permessage-deflate; stateless; whatever the server negotiated.
COMPRESSION_MODES = ("off", "stateless", "server")


def negotiate(send: Any, mode: str) -> bool:
    """Before the handshake is answered: make the socket's permessage-deflate
    what `mode` says (WS_COMPRESSION). Only where uvicorn's sans-I/O protocol
    negotiated one already (`--ws-per-message-deflate`, on by default): a
    server started without it gets none added. True if the answer changed."""
    protocol = protocol_of(send)
    if protocol is None or mode == "server":
        return False
    try:
        conn, request, response = protocol.conn, protocol.request, protocol.response
        if protocol.handshake_complete or request is None or response is None or not conn.extensions:
            return False
    except AttributeError:
        return False
    if EXTENSIONS_HEADER in response.headers:
        del response.headers[EXTENSIONS_HEADER]
    conn.extensions = []
    if mode == "stateless":
        conn.available_extensions = [STATELESS]
        try:
            header, extensions = conn.process_extensions(request.headers)
        except Exception as exc:  # noqa: BLE001 - an offer uvicorn took and this one does not: no compression
            log.debug("permessage-deflate offer not taken: %r", exc)
        else:
            if header is not None:
                response.headers[EXTENSIONS_HEADER] = header
            conn.extensions = extensions
    return True


def _stateless(conn: Any) -> bool:
    """The connection's permessage-deflate keeps no context and uses the full
    window: the shared compressed frame (`deflated`) is what it would send."""
    if len(conn.extensions) != 1 or not isinstance(conn.extensions[0], PerMessageDeflate):
        return False
    ext = conn.extensions[0]
    return bool(ext.local_no_context_takeover) and ext.local_max_window_bits == zlib.MAX_WBITS


def direct_writer(send: Any, compress_from: int = 0) -> DirectWrite | None:
    """The fast path's write for a socket; with stateless compression, texts of
    `compress_from` bytes or more go compressed (smaller ones gain little)."""
    protocol = protocol_of(send)
    if protocol is None:
        return None
    try:
        conn, transport = protocol.conn, protocol.transport
        if not protocol.handshake_complete:
            return None
    except AttributeError:
        return None

    # Fixed once the handshake is done, which it is when the endpoint asks. Frames
    # this socket can take as made once per event are held as wire bytes; with
    # stateless compression, those from `compress_from` bytes compressed.
    plain = not conn.extensions or _stateless(conn)
    deflate_from = compress_from if conn.extensions and plain else None
    cork = cork_of(asyncio.get_running_loop())
    # This turn's frames (wire bytes, or text to compress); empty between turns.
    held: list[bytes] = []

    def write(data: bytes) -> bool:
        if not held:
            # When uvicorn's `send` would write at once: the transport takes more
            # (`writable`), the connection is open (not after a close was sent or
            # failed), and the transport is not closing (nor lost). Read per turn:
            # uvicorn's `writable` is swapped by `adopt`.
            if not protocol.writable.is_set() or conn.state is not OPEN or transport.is_closing():
                return False
            cork.hold((held, conn, transport, plain))
        if not plain:
            held.append(data)
        elif deflate_from is not None and len(data) >= deflate_from:
            held.append(_deflated(data))
        elif data is _LastFrame.data:
            held.append(_LastFrame.wire)
        else:
            held.append(_framed(data))
        if len(held) >= HOLD_LIMIT:
            _write_held(held, conn, transport, plain)
        return True

    return write


def flush_held(send: Any) -> None:
    """Write the frames held this turn now (before the transport is closed under them)."""
    protocol = getattr(send, "__self__", None)
    loop = getattr(protocol, "loop", None)
    cork = _corks.get(loop) if loop is not None else None
    if cork is not None:
        cork.flush()


class FrameQueue:
    """uvicorn's per-connection queue of received events, as a list and one
    waiter: asyncio.Queue carries four deques (3 KB) per socket. One reader."""

    __slots__ = ("_items", "_waiter")

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self._items = items
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: dict[str, Any]) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def __len__(self) -> int:
        return len(self._items)

    async def get(self) -> dict[str, Any]:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class Flag:
    """asyncio.Event's interface for uvicorn's `writable`, without a deque of
    waiters made for every socket (760 B): a list only once somebody waits."""

    __slots__ = ("_set", "_waiters")

    def __init__(self, is_set: bool) -> None:
        self._set = is_set
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


def adopt(send: Any) -> Receive | None:
    """After the handshake, take over the receiving side of uvicorn's sans-I/O
    protocol: lighter queue and `writable` flag; reading paused only once `READ_WINDOW` frames
    wait unread and resumed once they are all taken (the same flow control,
    without two epoll changes per frame); the parsed handshake let go.
    Returns the `receive` to use, or None on any other server."""
    protocol = protocol_of(send)
    if protocol is None:
        return None
    try:
        if not protocol.handshake_complete or not isinstance(protocol.queue, asyncio.Queue):
            return None
        transport, original = protocol.transport, protocol.send_receive_event_to_app
        old = protocol.queue
        queue = FrameQueue([old.get_nowait() for _ in range(old.qsize())])
        writable = Flag(protocol.writable.is_set())
        # Read only while connecting; a WebSocket's scope keeps its own headers.
        protocol.request = protocol.response = None
    except AttributeError:
        return None
    protocol.queue, protocol.writable = queue, writable

    def queue_frame() -> None:
        paused = protocol.read_paused
        protocol.read_paused = True  # keeps uvicorn's own call from pausing
        try:
            original()
        finally:
            protocol.read_paused = paused
        # Past its close, uvicorn reads on until the peer's reply: never pause then.
        if not paused and len(queue) >= READ_WINDOW and not protocol.close_sent:
            protocol.read_paused = True
            transport.pause_reading()

    async def receive() -> dict[str, Any]:
        message = await queue.get()
        if protocol.read_paused and queue.empty():
            protocol.read_paused = False
            transport.resume_reading()
        return message

    protocol.send_receive_event_to_app = queue_frame
    return receive


def drop_connection(send: Any, abort: bool = False) -> bool:
    """End the connection without a WebSocket close frame (a browser then
    reports `wasClean: false`): close the transport, which still writes what
    it holds (the last echoes) before its FIN, or with `abort` discard that
    and reset it (a peer that stopped reading). Under uvicorn, whose WebSocket
    protocols (sans-I/O, legacy websockets, wsproto) each keep their asyncio
    transport as `transport` on the object whose bound `send` the app got.
    False under any other server, which then gets a clean close instead."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if not abort:
        flush_held(send)  # the frames of this turn go before the FIN too
    # asyncio's transports and uvloop's alike
    close = getattr(transport, "abort" if abort else "close", None)
    if transport is None or not callable(close) or not callable(getattr(transport, "is_closing", None)):
        return False
    if abort or not transport.is_closing():
        close()
    return True
