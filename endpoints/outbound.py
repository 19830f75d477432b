"""The outbound side of one socket: inline writes while it keeps up, a bounded
backlog while it does not, and a cut-off (1013) when the backlog overflows.

uvicorn's ASGI `send` for a WebSocket completes without suspending while the
transport is writable, so a frame is written by stepping the `send` coroutine
once, in the caller's task: no task and no queue hop per frame for a socket
that keeps up. Only when `send` suspends (the peer stopped reading and the
transport paused) does a writer task take over, finishing that send and
draining the backlog in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from endpoints.fastpath import DirectWrite

log = logging.getLogger("realtime.outbound")

Send = Callable[[dict[str, Any]], Awaitable[None]]

SLOW_CONSUMER = 1013


class Outbound:
    __slots__ = (
        "_backlog",
        "_close",
        "_direct",
        "_limit",
        "_send",
        "_writer",
        "closed",
        "dropped",
        "on_closed",
        "on_push",
        "sent",
    )

    def __init__(self, send: Send, limit: int, direct: DirectWrite | None = None) -> None:
        self._send = send
        # Writes an encoded frame at once when the server allows (see fastpath).
        self._direct = direct
        self._limit = limit
        # Made when first needed: most sockets never fall behind (and 10,000 empty deques weigh 7 MB).
        self._backlog: deque[dict[str, Any]] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._close: dict[str, Any] | None = None
        self.closed = False
        # Called once the socket cannot take more frames (overflow or a failed send).
        self.on_closed: Callable[[], None] | None = None
        # Told of each frame `push`ed (metrics); `relay` skips it.
        self.on_push: Callable[[str], None] | None = None
        self.sent = 0
        self.dropped = 0

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
        if self._writer is None and self._direct is not None:
            try:
                if self._direct(data if data is not None else text.encode()):
                    self.sent += 1
                    return
            except Exception as exc:  # noqa: BLE001 - the peer is gone
                self._fail(exc)
                return
        message = {"type": "websocket.send", "text": text}
        if self._writer is not None:
            if self._backlog is None:
                self._backlog = deque()
            if len(self._backlog) >= self._limit:
                self._overflow()
                return
            self._backlog.append(message)
            return
        self._step(message)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close after what is already queued has been written."""
        if self.closed:
            return
        self.closed = True
        message = {"type": "websocket.close", "code": code, "reason": reason}
        if self._writer is not None:
            self._close = message
        else:
            self._step(message)

    async def drained(self, timeout: float) -> None:
        """Wait until the backlog (and a pending close) is written, or give up."""
        writer = self._writer
        if writer is not None:
            await asyncio.wait({writer}, timeout=timeout)

    def _step(self, message: dict[str, Any]) -> None:
        coro = self._send(message)
        try:
            pending = coro.send(None)  # type: ignore[attr-defined]
        except StopIteration:
            self.sent += 1
            return
        except Exception as exc:  # noqa: BLE001 - the peer is gone
            self._fail(exc)
            return
        self._writer = asyncio.create_task(self._finish(coro, pending))  # type: ignore[arg-type]

    async def _finish(self, coro: Coroutine[Any, Any, None], pending: Any) -> None:
        try:
            await _resume(coro, pending)
            self.sent += 1
            while self._backlog:
                await self._send(self._backlog.popleft())  # type: ignore[union-attr]
                self.sent += 1
            if self._close is not None:
                message, self._close = self._close, None
                await self._send(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the peer is gone
            self._fail(exc)
        finally:
            # A cut-off may already have replaced this writer with the one sending the close.
            if self._writer is asyncio.current_task():
                self._writer = None

    def _overflow(self) -> None:
        self.dropped += len(self._backlog or ()) + 1
        self._backlog = None
        self.closed = True
        writer = self._writer
        # The writer is blocked on a paused transport: stop waiting for it and
        # queue the close frame behind what the transport already holds.
        if writer is not None:
            writer.cancel()
        self._writer = None
        self._step({"type": "websocket.close", "code": SLOW_CONSUMER, "reason": "slow consumer"})
        self._notify()

    def _fail(self, exc: Exception) -> None:
        log.debug("send failed: %r", exc)
        self.closed = True
        self._backlog = None
        self._notify()

    def _notify(self) -> None:
        callback, self.on_closed = self.on_closed, None
        if callback is not None:
            callback()


async def _resume(coro: Coroutine[Any, Any, None], pending: Any) -> None:
    """Finish a coroutine that was stepped by hand and suspended on `pending`."""
    while True:
        try:
            if pending is None:
                await asyncio.sleep(0)
            else:
                # What a Task does with a future its coroutine yields: take the
                # "blocking" mark off, then wait on it (here, by awaiting it).
                pending._asyncio_future_blocking = False
                await pending
        except asyncio.CancelledError:
            coro.close()
            raise
        except BaseException as exc:  # noqa: BLE001 - hand the awaited error to the coroutine
            try:
                pending = coro.throw(exc)
            except StopIteration:
                return
            continue
        try:
            pending = coro.send(None)
        except StopIteration:
            return
