"""The fault proxy itself: it forwards, cuts and refuses."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.faultproxy import proxy_for
from tests.procs import REDIS_URL, require


async def test_the_proxy_forwards_cuts_refuses_and_comes_back() -> None:
    require("redis")
    async with proxy_for(REDIS_URL) as proxy:
        client = Redis.from_url(proxy.url(REDIS_URL), socket_connect_timeout=1, socket_timeout=1)
        try:
            assert await client.ping()
            await proxy.down()
            with pytest.raises((RedisConnectionError, OSError)):
                await client.ping()
            with pytest.raises((RedisConnectionError, OSError)):
                await client.ping()  # a new connection is refused too
            await proxy.up()
            assert await client.ping()
        finally:
            await client.aclose()
