"""Redis pub/sub backend for the per-process event hub.

Replaces ``broadcaster``'s own ``RedisBackend``, whose listener dies silently
when Redis drops and never restores its subscriptions.  This backend owns a
listener task that reconnects with capped, jittered exponential backoff,
re-subscribes every channel it was asked for, and then emits a ``GAP`` event
so the hub knows messages may have been missed while the link was down.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from typing import Any, ClassVar
from urllib.parse import urlsplit

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# The event put into the stream after a reconnect: messages published while
# the link was down were not received. The hub defines it.
from .broker import GAP, Event

__all__ = ["GAP", "BrokerUnavailable", "RedisBackend"]

# The name it had before the move: log configurations and filters name it.
logger = logging.getLogger("events.redis_backend")


# Errors that mean "the link to Redis is unusable", as opposed to bugs.
_LINK_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    TimeoutError,
)

_SCHEMES = frozenset({"redis", "rediss"})
_BASE_BACKOFF = 0.1


class BrokerUnavailable(Exception):
    """Redis cannot be reached right now; the operation was not performed."""


def _text(value: bytes | str) -> str:
    # Other publishers may send arbitrary bytes; one bad payload must not
    # kill the listener, so undecodable bytes are replaced rather than raised.
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


# Publishes sent in one pipeline at most (a round trip's worth under load).
PUBLISH_BATCH = 1000

Outgoing = tuple[str, Any, "asyncio.Future[None]"]


def _settle(batch: list[Outgoing], error: BaseException | None) -> None:
    for _, _, done in batch:
        if done.done():
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)


class RedisBackend:
    """A broker (events/node/broker.py) over Redis pub/sub that survives connection loss.

    The hub drives it with ``connect()``, ``subscribe()``, ``unsubscribe()``,
    ``publish()``, a single ``next_published()`` loop and ``disconnect()``.
    """

    inline: ClassVar[bool] = False  # other processes hear it: the hub delivers locally itself

    # Socket connect/read timeout for every command, so nothing waits on a
    # dead peer for long (applied to the sockets at construction).
    io_timeout: float = 2.0
    # How long one pubsub read waits before the listener checks liveness.
    poll_interval: float = 1.0
    # A silent link (no RST, e.g. a network partition) is only noticed by
    # asking: PING after this much quiet, give up if no reply within
    # ping_timeout.
    ping_interval: float = 5.0
    ping_timeout: float = 3.0

    def __init__(self, url: str, *, max_backoff: float = 5.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in _SCHEMES:
            raise ValueError(f"expected a redis:// or rediss:// URL, got scheme {parts.scheme!r}")
        if max_backoff <= 0:
            raise ValueError("max_backoff must be positive")
        self._max_backoff = max_backoff
        # Host and port only: the URL may carry a password.
        self._where = f"{parts.hostname or 'localhost'}:{parts.port or 6379}"

        timeouts: dict[str, Any] = {
            "socket_connect_timeout": self.io_timeout,
            "socket_timeout": self.io_timeout,
        }
        # No redis-py retries for PUBLISH: a retried PUBLISH whose reply was
        # lost would be delivered twice.  Stale pooled connections are still
        # replaced on checkout by the pool itself.
        self._client: Redis = Redis.from_url(url, retry=Retry(NoBackoff(), 0), **timeouts)

        sub_pool = ConnectionPool.from_url(url, **timeouts)
        # redis-py would otherwise reconnect and re-subscribe the pubsub
        # connection on its own, hiding the outage (no GAP).  URL query
        # options take precedence over keyword arguments, so these are forced
        # afterwards; a connection-level health check would also read from
        # the socket concurrently with the listener.
        sub_pool.connection_kwargs.update(
            retry=Retry(NoBackoff(), 0, supported_errors=()),
            health_check_interval=0,
        )
        self._sub_client: Redis = Redis(connection_pool=sub_pool)

        # Publishes waiting for the publisher task, and that task.
        self._outbox: list[Outgoing] = []
        self._publisher: asyncio.Task[None] | None = None

        # Unbounded on purpose: the hub drains it from one task that does
        # nothing else, and dropping events here would be a silent gap.
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        # Channels the hub wants; the source of truth for re-subscription.
        self._channels: set[str] = set()
        # Serialises SUBSCRIBE/UNSUBSCRIBE and re-subscription so the server
        # state cannot diverge from ``_channels`` under concurrent callers.
        self._lock = asyncio.Lock()
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        self._reconnects = 0
        self._last_error = ""  # why the link is down, for readiness checks
        # SUBSCRIBE replies arrive in send order on the pubsub connection, so
        # a FIFO pairs each reply with the caller waiting for it.
        self._awaiting: deque[tuple[str, asyncio.Future[None]]] = deque()
        # Latest unconfirmed SUBSCRIBE per channel, for duplicate callers.
        self._unconfirmed: dict[str, asyncio.Future[None]] = {}

    # ------------------------------------------------------------------ state

    @property
    def connected(self) -> bool:
        """True while the pubsub connection is up and subscriptions are live."""
        return self._pubsub is not None

    @property
    def problem(self) -> str | None:
        """Why the broker is unusable right now, or None while it is connected."""
        if self.connected:
            return None
        return f"Redis at {self._where} is unreachable: {self._last_error or 'connecting'}"

    @property
    def reconnects(self) -> int:
        """Number of successful reconnects since construction."""
        return self._reconnects

    # -------------------------------------------------------------- lifecycle

    async def connect(self) -> None:
        """Connect and start the listener.

        If Redis is unreachable this does not raise: the listener keeps
        retrying in the background, ``connected`` stays False and ``publish``
        raises ``BrokerUnavailable`` until the link is up.
        """
        if self._listener is not None:
            return
        try:
            await self._open(announce=False)
        except _LINK_ERRORS as exc:
            self._last_error = str(exc)
            logger.warning("Redis at %s unreachable at startup, retrying in background: %s", self._where, exc)
        self._listener = asyncio.create_task(self._run(), name=f"redis-backend-listener {self._where}")

    async def disconnect(self) -> None:
        task, self._listener = self._listener, None
        if task is not None:
            task.cancel()
            # asyncio.wait never raises, so a cancellation of disconnect()
            # itself still propagates while the listener's own is absorbed.
            await asyncio.wait([task])
            if not task.cancelled() and task.exception() is not None:
                logger.error("Redis listener had failed", exc_info=task.exception())
        pubsub, self._pubsub = self._pubsub, None
        self._release_waiters()
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            publisher.cancel()
            await asyncio.wait([publisher])
        outbox, self._outbox = self._outbox, []
        _settle(outbox, BrokerUnavailable(f"Redis at {self._where}: backend closed"))
        if pubsub is not None:
            await self._close_quietly(pubsub)
        await self._sub_client.aclose(close_connection_pool=True)
        await self._client.aclose(close_connection_pool=True)

    # ---------------------------------------------------------- subscriptions

    async def subscribe(self, channel: str) -> None:
        """Subscribe to ``channel``; idempotent.

        When connected, returns once Redis has confirmed the subscription, so
        anything published afterwards is delivered.  When disconnected, only
        records the channel; it is subscribed on reconnect (followed by GAP).
        """
        async with self._lock:
            if channel not in self._channels:
                self._channels.add(channel)
                pubsub = self._pubsub
                if pubsub is not None and self._usable(pubsub):
                    await self._send_subscribe(pubsub, channel)
            waiter = self._unconfirmed.get(channel)
        if waiter is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.io_timeout)
        except TimeoutError:
            # The channel stays recorded; if the link is dead the listener's
            # PING check reconnects and re-subscribes it.
            logger.warning("Redis did not confirm SUBSCRIBE %r within %.1fs", channel, self.io_timeout)

    async def _send_subscribe(self, pubsub: PubSub, channel: str) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        # Registered before sending: the listener may read the reply while
        # the send is still draining.
        entry = (channel, waiter)
        self._awaiting.append(entry)
        self._unconfirmed[channel] = waiter
        try:
            await pubsub.subscribe(channel)
        except _LINK_ERRORS as exc:
            # The listener sees the same broken link and re-subscribes every
            # recorded channel after reconnecting.
            logger.warning("SUBSCRIBE %r failed, deferring to reconnect: %s", channel, exc)
            if entry in self._awaiting:
                self._awaiting.remove(entry)
            self._resolve(channel, waiter)

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel``; idempotent."""
        async with self._lock:
            if channel not in self._channels:
                return
            # Dropped from the set first: the listener filters on it, so
            # nothing more for this channel reaches the queue.
            self._channels.discard(channel)
            pubsub = self._pubsub
            if pubsub is None or not self._usable(pubsub):
                return
            try:
                await pubsub.unsubscribe(channel)
            except _LINK_ERRORS as exc:
                # A reconnect re-subscribes only recorded channels.
                logger.warning("UNSUBSCRIBE %r failed: %s", channel, exc)

    # --------------------------------------------------------------- messages

    async def publish(self, channel: str, message: Any) -> None:
        """Publish ``message`` (normally a str) to ``channel``.

        Publishes queue up and go out in order, whatever is queued in one
        pipeline on one connection: a PUBLISH per connection from the pool
        ran out of connections with 500 concurrent senders (redis-py raises
        "Too many connections" rather than wait) and could reorder them.

        Raises ``BrokerUnavailable`` instead of waiting when Redis is down.
        """
        if self._pubsub is None:
            raise BrokerUnavailable(f"Redis at {self._where} is unreachable (reconnecting)")
        done = asyncio.get_running_loop().create_future()
        self._outbox.append((channel, message, done))
        if self._publisher is None or self._publisher.done():
            self._publisher = asyncio.create_task(self._flush(), name=f"redis-backend-publisher {self._where}")
        await done

    async def _flush(self) -> None:
        while self._outbox:
            batch = self._outbox[:PUBLISH_BATCH]
            del self._outbox[:PUBLISH_BATCH]
            error: BaseException | None = None
            try:
                pipe = self._client.pipeline(transaction=False)
                for channel, message, _ in batch:
                    pipe.publish(channel, message)
                await pipe.execute()
            except _LINK_ERRORS as exc:
                error = BrokerUnavailable(f"Redis at {self._where} is unreachable: {exc}")
            except asyncio.CancelledError:
                _settle(batch, BrokerUnavailable(f"Redis at {self._where}: backend closed"))
                raise
            except Exception as exc:  # noqa: BLE001 - the publishers get it, not this task
                error = exc
            _settle(batch, error)

    async def next_published(self) -> Event:
        """Next message from a subscribed channel, or ``Event(GAP, "")``."""
        return await self._queue.get()

    # --------------------------------------------------------------- listener

    async def _run(self) -> None:
        while True:
            pubsub = self._pubsub
            if pubsub is None:
                await self._reconnect()
                continue
            try:
                await self._pump(pubsub)
            except _LINK_ERRORS as exc:
                self._last_error = str(exc)
                logger.warning("Lost Redis pubsub connection to %s: %s", self._where, exc)
            except Exception:
                # Never let the listener die: log loudly and start afresh.
                logger.exception("Unexpected error in Redis listener for %s", self._where)
            await self._drop(pubsub)

    async def _pump(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        last_seen = loop.time()
        ping_sent: float | None = None
        while True:
            message = await self._read(pubsub, self.poll_interval)
            now = loop.time()
            if message is not None:
                last_seen, ping_sent = now, None
                self._dispatch(message)
            elif ping_sent is not None:
                if now - ping_sent > self.ping_timeout:
                    raise RedisTimeoutError(f"no PING reply within {self.ping_timeout}s")
            elif now - last_seen >= self.ping_interval:
                self._ensure_usable(pubsub)
                # Works with zero channels too: the reply is read like any
                # other pubsub message because we read the socket directly.
                await pubsub.ping()
                ping_sent = now

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "message":
            channel = _text(message["channel"])
            # Late messages for channels already unsubscribed are dropped.
            if channel in self._channels:
                self._queue.put_nowait(Event(channel=channel, message=_text(message["data"])))
        elif kind == "subscribe" and self._awaiting:
            channel, waiter = self._awaiting.popleft()
            self._resolve(channel, waiter)

    async def _read(self, pubsub: PubSub, timeout: float) -> dict[str, Any] | None:
        self._ensure_usable(pubsub)
        # get_message(timeout=...) reads the socket even with no channels
        # subscribed, unlike listen(), so drops are noticed at any time.
        return await pubsub.get_message(timeout=timeout)

    @staticmethod
    def _usable(pubsub: PubSub) -> bool:
        conn = pubsub.connection
        return conn is not None and conn.is_connected

    def _ensure_usable(self, pubsub: PubSub) -> None:
        # redis-py silently reconnects a closed connection on the next
        # command or read; refuse so the outage is handled (and reported).
        if not self._usable(pubsub):
            raise RedisConnectionError("pubsub connection closed")

    # ------------------------------------------------------------- reconnects

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self._max_backoff, _BASE_BACKOFF * 2 ** min(attempt, 32))
        # Jitter spreads reconnects of many processes after a Redis restart.
        return random.uniform(ceiling / 2, ceiling)

    async def _reconnect(self) -> None:
        attempt = 0
        while True:
            await asyncio.sleep(self._backoff(attempt))
            attempt += 1
            try:
                await self._open(announce=True)
            except Exception as exc:  # noqa: BLE001 - keep retrying whatever the failure; it is logged
                self._last_error = str(exc)
                # Log the first failure and then occasionally, not every try.
                level = logging.WARNING if attempt == 1 or attempt % 10 == 0 else logging.DEBUG
                logger.log(level, "Reconnect %d to Redis at %s failed: %s", attempt, self._where, exc)
            else:
                logger.info("Reconnected to Redis at %s after %d attempt(s)", self._where, attempt)
                return

    async def _open(self, *, announce: bool) -> None:
        pubsub = self._sub_client.pubsub()
        try:
            await pubsub.connect()
            async with self._lock:
                buffered = await self._resubscribe(pubsub)
                self._pubsub = pubsub
        except BaseException:
            await self._close_quietly(pubsub)
            raise
        if announce:
            self._reconnects += 1
            self._queue.put_nowait(Event(channel=GAP, message=""))
        for message in buffered:
            self._dispatch(message)

    async def _resubscribe(self, pubsub: PubSub) -> list[dict[str, Any]]:
        """Subscribe every recorded channel and wait for all confirmations.

        Waiting means that once GAP is seen every channel is live again, so a
        hub that resyncs on GAP cannot miss anything published after that.
        Messages that arrive meanwhile are returned to be queued after GAP.
        """
        channels = sorted(self._channels)
        if not channels:
            return []
        await pubsub.subscribe(*channels)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.io_timeout
        buffered: list[dict[str, Any]] = []
        pending = len(channels)
        while pending:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise RedisTimeoutError("Redis did not confirm re-subscription")
            message = await self._read(pubsub, remaining)
            if message is None:
                continue
            if message["type"] == "subscribe":
                pending -= 1
            elif message["type"] == "message":
                buffered.append(message)
        return buffered

    async def _drop(self, pubsub: PubSub) -> None:
        if self._pubsub is pubsub:
            self._pubsub = None
        # Waiting subscribers are released: their channels stay recorded and
        # are subscribed again on reconnect.
        self._release_waiters()
        await self._close_quietly(pubsub)

    def _resolve(self, channel: str, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_result(None)
        if self._unconfirmed.get(channel) is waiter:
            del self._unconfirmed[channel]

    def _release_waiters(self) -> None:
        while self._awaiting:
            channel, waiter = self._awaiting.popleft()
            self._resolve(channel, waiter)
        self._unconfirmed.clear()

    @staticmethod
    async def _close_quietly(pubsub: PubSub) -> None:
        try:
            await pubsub.aclose()
        except Exception as exc:  # noqa: BLE001 - the connection is already broken
            logger.debug("Error closing Redis pubsub connection: %s", exc)
