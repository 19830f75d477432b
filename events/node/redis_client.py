"""The one place that decides "is this Redis?", and the one Redis client of a
process for everything but pub/sub: consultation presence, chat presence,
socket slots and the scheduler's tick locks share its connection pool.

The broker's pub/sub connection stays its own (events/node/redis_broker.py):
a subscribed connection can do nothing else, and its reconnects and gaps are
the hub's business.
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlparse

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ...settings import Settings

# Every command gives up after this: presence and slots degrade, they never hang a socket.
IO_TIMEOUT = 2.0


SCHEMES = ("redis", "rediss")


def namespace(settings: Settings) -> str:
    """A key prefix per deployment: the processes that share a store share presence, slots and ticks."""
    return "rt:" + hashlib.sha256(settings.database_url.encode()).hexdigest()[:12] + ":"


def uses_redis(settings: Settings) -> bool:
    return urlparse(settings.broker_url).scheme in SCHEMES


def connect(url: str) -> Redis:
    # Replies decoded to str: every user of the shared client reads text. One
    # immediate retry (a pooled connection gone stale), not redis-py's default
    # of three with exponential backoff, which would hold a handshake for seconds.
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=IO_TIMEOUT,
        socket_connect_timeout=IO_TIMEOUT,
        retry=Retry(NoBackoff(), 1),
    )


def adopt(source: str | Redis) -> tuple[Redis, bool]:
    """A client from a URL (the caller owns it and closes it) or the shared one (it does not)."""
    if isinstance(source, str):
        return connect(source), True
    return source, False


class RedisClients:
    """The Node's Redis client factory: one client, one connection pool per process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: Redis | None = None

    def client(self) -> Redis:
        if self._client is None:
            self._client = connect(self.url)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def for_settings(settings: Settings) -> RedisClients | None:
    return RedisClients(settings.broker_url) if uses_redis(settings) else None
