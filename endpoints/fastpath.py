"""A direct write for uvicorn's WebSocket protocol, where it can be had.

Through ASGI every frame to every socket is a `send` coroutine chain that
re-encodes the text. A broadcast to a thousand members does that a thousand
times for one event. When the server is uvicorn's sans-I/O WebSocket protocol
(`--ws websockets-sansio`, the default with `websockets` installed), a frame
can be written the way that protocol's own `send` writes it, with bytes
encoded once per event: frame it with the connection's websockets state
machine and hand it to the transport, in the caller's stack.

It is used only while that `send` would itself not wait (the transport is
writable, the handshake done, no close sent); anything else goes through ASGI.
The frame bytes are made once per event and written to every plain (not
compressed) connection as they are. The attributes read here are uvicorn's and
websockets', checked on the versions pinned in requirements.txt and covered by
the test suite, which runs both paths.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from websockets.frames import Frame, Opcode
from websockets.protocol import State

RAW_SEND = "realtime.raw_send"

DirectWrite = Callable[[bytes], bool]


class KeepRawSend:
    """Outermost middleware: remember the server's own `send` for WebSockets,
    before Starlette wraps it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope[RAW_SEND] = send
        await self.app(scope, receive, send)


class _LastFrame:
    """The wire bytes of the last text framed. A fan-out hands the same `data`
    object to every socket in turn: it is framed once, not once per socket
    (a server frame is unmasked, so it is the same for every plain connection)."""

    data: bytes | None = None
    wire: bytes = b""


def framed(data: bytes) -> bytes:
    if data is not _LastFrame.data:
        _LastFrame.wire = Frame(Opcode.TEXT, data).serialize(mask=False, extensions=[])
        _LastFrame.data = data
    return _LastFrame.wire


def direct_writer(send: Any) -> DirectWrite | None:
    protocol = getattr(send, "__self__", None)
    if type(protocol).__name__ != "WebSocketsSansIOProtocol":
        return None
    try:
        conn, transport, writable = protocol.conn, protocol.transport, protocol.writable
        if not protocol.handshake_complete:
            return None
    except AttributeError:
        return None

    # Fixed once the handshake is done, which it is when the endpoint asks.
    plain = not conn.extensions

    def write(data: bytes) -> bool:
        # The same conditions under which uvicorn's `send` writes at once.
        if (
            not writable.is_set()
            or protocol.close_sent
            or protocol.disconnected
            or protocol.initial_response is not None
            or transport.is_closing()
        ):
            return False
        if plain and conn.state is State.OPEN:
            transport.write(framed(data))
        else:
            # Compressed (per connection), or not plainly open: let websockets frame it.
            conn.send_text(data)
            transport.write(b"".join(conn.data_to_send()))
        return True

    return write
