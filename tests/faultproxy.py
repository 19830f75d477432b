"""A TCP proxy for fault tests: put it between the server and PostgreSQL or
Redis, then cut every connection and refuse new ones for a while.

It runs in the test's event loop; server processes started by the test reach
it over loopback like any client. The shared services are never restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

from tests.conftest import free_port

CHUNK = 65536


class FaultProxy:
    """Forwards `127.0.0.1:port` to `target`; `down()` aborts every connection
    (RST) and closes the listener, so new connections are refused; `up()`
    listens again on the same port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.accepted = 0

    @classmethod
    def for_url(cls, url: str) -> FaultProxy:
        parts = urlsplit(url)
        default = 6379 if parts.scheme.startswith("redis") else 5432
        return cls(parts.hostname or "127.0.0.1", parts.port or default)

    def url(self, url: str) -> str:
        """`url` with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    @property
    def is_up(self) -> bool:
        return self._server is not None

    async def up(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def down(self) -> None:
        """Refuse new connections and reset the open ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self.cut()

    def stall(self) -> None:
        """Stop forwarding without closing anything: a partition, not a reset."""
        self._flowing.clear()

    def flow(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        """Reset every open connection (both sides see a dropped link)."""
        for writer in list(self._links):
            _reset(writer)
        self._links.clear()

    @contextlib.asynccontextmanager
    async def outage(self, seconds: float) -> AsyncIterator[None]:
        """Down for `seconds` (the body runs meanwhile), then up again."""
        await self.down()
        try:
            yield
            await asyncio.sleep(seconds)
        finally:
            await self.up()

    async def close(self) -> None:
        await self.down()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(writer)
            return
        self._links.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(CHUNK):
                await self._flowing.wait()
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if dst in self._links:
                self._links.discard(dst)
                _reset(dst)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # Linger 0: close sends RST, as a crashed peer or a dropped route would.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextlib.asynccontextmanager
async def proxy_for(url: str) -> AsyncIterator[FaultProxy]:
    """A running proxy in front of the service at `url`; `proxy.url(url)` reaches it."""
    proxy = FaultProxy.for_url(url)
    await proxy.up()
    try:
        yield proxy
    finally:
        await proxy.close()
