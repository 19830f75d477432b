"""Tests for events.node.redis_broker against a real Redis at 127.0.0.1:6379.

Skipped when Redis is unreachable, except with CI=true where that is a
failure.  Every test uses its own uuid channel names and its own client name,
so runs sharing the server do not interfere; the machine's Redis is never
restarted, outages are simulated by killing our own pubsub connection or by
cutting a local TCP proxy.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import time
import uuid
import warnings
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from realtime.events.node.broker import Event
from realtime.events.node.redis_broker import GAP, BrokerUnavailable, RedisBackend

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
WAIT = 10.0


def _redis_reachable() -> bool:
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=1.0) as sock:
            sock.settimeout(1.0)
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


if not _redis_reachable():
    if os.environ.get("CI") == "true":
        pytest.fail(f"Redis is required at {REDIS_HOST}:{REDIS_PORT} when CI=true", pytrace=False)
    pytest.skip(f"Redis not reachable at {REDIS_HOST}:{REDIS_PORT}", allow_module_level=True)


def unique(prefix: str = "test") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def client_name() -> str:
    return unique("redis-backend")


@pytest.fixture
async def admin() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def backend(client_name: str) -> AsyncIterator[RedisBackend]:
    instance = RedisBackend(f"{REDIS_URL}?client_name={client_name}", max_backoff=0.5)
    await instance.connect()
    assert instance.connected
    yield instance
    await instance.disconnect()


async def next_event(backend: RedisBackend, timeout: float = WAIT) -> Event:
    return await asyncio.wait_for(backend.next_published(), timeout)


async def assert_no_event(backend: RedisBackend, within: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        event = await asyncio.wait_for(backend.next_published(), within)
        pytest.fail(f"unexpected event {event!r}")


async def numsub(admin: Redis, channel: str) -> int:
    [(_, count)] = await admin.pubsub_numsub(channel)
    return int(count)


async def wait_until_numsub(admin: Redis, channel: str, expected: int) -> None:
    deadline = time.monotonic() + WAIT
    while await numsub(admin, channel) != expected:
        assert time.monotonic() < deadline, f"{channel} never reached {expected} subscribers"
        await asyncio.sleep(0.02)


async def wait_until_connected(backend: RedisBackend, expected: bool) -> None:
    deadline = time.monotonic() + WAIT
    while backend.connected != expected:
        assert time.monotonic() < deadline, f"connected never became {expected}"
        await asyncio.sleep(0.02)


class TcpProxy:
    """Local TCP relay to Redis that can be cut and restored, to simulate an
    outage (and refused reconnects) without touching the real server."""

    def __init__(self, host: str = REDIS_HOST, port: int = REDIS_PORT) -> None:
        self._target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        # Same port on restart, so the backend's URL stays valid.
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def freeze(self) -> None:
        """Keep connections open but relay nothing: a silent, dead link."""
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        # Closing the sockets ends the relays; handlers are not cancelled
        # because asyncio's server logs cancelled connection handlers.
        for writer in list(self._writers):
            writer.close()
        await asyncio.wait_for(asyncio.gather(*self._handlers), WAIT)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        writers = [client_writer]
        self._writers.add(client_writer)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
            writers.append(upstream_writer)
            self._writers.add(upstream_writer)
            pipes = [
                asyncio.create_task(self._pipe(client_reader, upstream_writer)),
                asyncio.create_task(self._pipe(upstream_reader, client_writer)),
            ]
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            for writer in writers:
                writer.close()
            await asyncio.gather(*pipes)
        except OSError:
            pass
        finally:
            for writer in writers:
                writer.close()
                self._writers.discard(writer)
                try:
                    await writer.wait_closed()
                except OSError:
                    pass
            self._handlers.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except OSError:
            pass


@pytest.mark.anyio
async def test_rejects_other_schemes() -> None:
    with pytest.raises(ValueError):
        RedisBackend("memory://")


@pytest.mark.anyio
async def test_publish_receive_round_trip(backend: RedisBackend) -> None:
    channel = unique()
    await backend.subscribe(channel)
    await backend.publish(channel, "héllo ✓")

    event = await next_event(backend)

    assert event == Event(channel=channel, message="héllo ✓")
    assert isinstance(event.channel, str) and isinstance(event.message, str)


@pytest.mark.anyio
async def test_many_concurrent_publishes_all_arrive_in_order(backend: RedisBackend) -> None:
    """More publishers at once than redis-py's pool has connections (100):
    every publish succeeds, and they arrive in the order they were made."""
    channel = unique()
    await backend.subscribe(channel)
    await asyncio.gather(*(backend.publish(channel, str(i)) for i in range(2_500)))

    received = [(await next_event(backend)).message for _ in range(2_500)]

    assert received == [str(i) for i in range(2_500)]


@pytest.mark.anyio
async def test_message_from_other_publisher_is_decoded(backend: RedisBackend, admin: Redis) -> None:
    channel = unique()
    await backend.subscribe(channel)
    await admin.publish(channel, "ünïcode".encode())

    assert await next_event(backend) == Event(channel=channel, message="ünïcode")


@pytest.mark.anyio
async def test_concurrent_subscribes_to_one_channel_deliver_once(backend: RedisBackend, admin: Redis) -> None:
    channel = unique()

    await asyncio.gather(*(backend.subscribe(channel) for _ in range(50)))
    assert await numsub(admin, channel) == 1
    await admin.publish(channel, "once")

    assert await next_event(backend) == Event(channel=channel, message="once")
    await assert_no_event(backend)


@pytest.mark.anyio
async def test_concurrent_subscribes_to_many_channels(backend: RedisBackend, admin: Redis) -> None:
    channels = [unique() for _ in range(50)]

    await asyncio.gather(*(backend.subscribe(channel) for channel in channels))
    for channel in channels:
        await admin.publish(channel, channel[-6:])

    received = [await next_event(backend) for _ in channels]
    assert sorted((e.channel, e.message) for e in received) == sorted((c, c[-6:]) for c in channels)
    await assert_no_event(backend)


@pytest.mark.anyio
async def test_concurrent_subscribe_and_unsubscribe_are_safe(backend: RedisBackend) -> None:
    channel = unique()

    calls = [backend.subscribe(channel) if i % 2 else backend.unsubscribe(channel) for i in range(50)]
    await asyncio.gather(*calls)
    await backend.subscribe(channel)
    await backend.subscribe(channel)
    await backend.publish(channel, "still works")

    assert await next_event(backend) == Event(channel=channel, message="still works")
    await assert_no_event(backend)


@pytest.mark.anyio
async def test_unsubscribe_stops_delivery(backend: RedisBackend, admin: Redis) -> None:
    dropped, kept = unique(), unique()
    await backend.subscribe(dropped)
    await backend.subscribe(kept)

    await backend.unsubscribe(dropped)
    await backend.unsubscribe(dropped)  # idempotent
    await admin.publish(dropped, "should not arrive")
    await admin.publish(kept, "arrives")

    # Same publisher connection, so order is preserved: had the first message
    # been delivered it would come first.
    assert await next_event(backend) == Event(channel=kept, message="arrives")
    await assert_no_event(backend)
    await wait_until_numsub(admin, dropped, 0)


@pytest.mark.anyio
async def test_killed_pubsub_connection_reconnects_and_signals_gap(
    backend: RedisBackend, admin: Redis, client_name: str
) -> None:
    channel = unique()
    await backend.subscribe(channel)
    assert backend.reconnects == 0

    # Only our own pubsub connection, so other users of this Redis are unaffected.
    ours = [c["id"] for c in await admin.client_list(_type="pubsub") if c.get("name") == client_name]
    assert len(ours) == 1
    assert await admin.client_kill_filter(_id=ours[0], _type="pubsub") == 1

    assert await next_event(backend) == Event(channel=GAP, message="")
    assert backend.connected
    assert backend.reconnects == 1
    # Re-subscription is confirmed before GAP is emitted.
    assert await numsub(admin, channel) == 1

    await backend.publish(channel, "after reconnect")
    assert await next_event(backend) == Event(channel=channel, message="after reconnect")
    await assert_no_event(backend)


@pytest.mark.anyio
async def test_outage_blocks_publish_records_subscribe_then_recovers(admin: Redis) -> None:
    proxy = TcpProxy()
    await proxy.start()
    backend = RedisBackend(proxy.url, max_backoff=0.2)
    try:
        await backend.connect()
        before, during = unique(), unique()
        await backend.subscribe(before)

        await proxy.stop()
        await wait_until_connected(backend, False)

        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            await backend.publish(before, "lost")
        await backend.subscribe(during)
        assert time.monotonic() - started < 1.0

        await proxy.start()
        assert await next_event(backend) == Event(channel=GAP, message="")
        assert backend.connected
        assert backend.reconnects == 1
        assert await numsub(admin, before) == 1
        assert await numsub(admin, during) == 1

        await backend.publish(before, "one")
        await admin.publish(during, "two")
        assert await next_event(backend) == Event(channel=before, message="one")
        assert await next_event(backend) == Event(channel=during, message="two")
    finally:
        await backend.disconnect()
        await proxy.stop()


@pytest.mark.anyio
async def test_silent_link_is_detected_by_ping_and_reconnected(admin: Redis) -> None:
    proxy = TcpProxy()
    await proxy.start()
    backend = RedisBackend(proxy.url, max_backoff=0.2)
    backend.poll_interval = 0.1
    backend.ping_interval = 0.3
    backend.ping_timeout = 0.3
    try:
        await backend.connect()
        channel = unique()
        await backend.subscribe(channel)

        proxy.freeze()
        await wait_until_connected(backend, False)
        proxy.thaw()

        assert await next_event(backend) == Event(channel=GAP, message="")
        assert backend.reconnects == 1
        await admin.publish(channel, "alive")
        assert await next_event(backend) == Event(channel=channel, message="alive")
    finally:
        await backend.disconnect()
        await proxy.stop()


@pytest.mark.anyio
async def test_publish_to_unreachable_redis_fails_fast() -> None:
    backend = RedisBackend("redis://127.0.0.1:1/0", max_backoff=0.2)
    started = time.monotonic()
    await backend.connect()
    try:
        assert not backend.connected

        await backend.subscribe(unique())  # only recorded, must not block
        with pytest.raises(BrokerUnavailable):
            await backend.publish(unique(), "nowhere")
        assert time.monotonic() - started < 2.0
        assert not backend.connected
        assert backend.reconnects == 0
    finally:
        await backend.disconnect()


@pytest.mark.anyio
async def test_disconnect_leaves_no_pending_tasks_or_open_connections(client_name: str) -> None:
    tasks_before = asyncio.all_tasks()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend = RedisBackend(f"{REDIS_URL}?client_name={client_name}")
        await backend.connect()
        channel = unique()
        await backend.subscribe(channel)
        await backend.publish(channel, "bye")
        assert await next_event(backend) == Event(channel=channel, message="bye")

        await backend.disconnect()
        await asyncio.sleep(0)  # let closed transports finish
        assert not backend.connected
        assert asyncio.all_tasks() - tasks_before == set()

        del backend
        gc.collect()
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


@pytest.mark.anyio
async def test_disconnect_while_reconnecting_leaves_no_pending_tasks() -> None:
    tasks_before = asyncio.all_tasks()
    backend = RedisBackend("redis://127.0.0.1:1/0", max_backoff=0.2)
    await backend.connect()
    await asyncio.sleep(0.3)  # listener is in its backoff/retry loop

    await backend.disconnect()

    assert asyncio.all_tasks() - tasks_before == set()
