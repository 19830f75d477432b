"""Limits and revocations across server processes on one Redis: the per-user
socket limit counts the whole cluster and a dead process's sockets stop
counting; a removed member is closed on whichever process holds the socket."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from tests.conftest import token, ws
from tests.faultproxy import proxy_for
from tests.procs import REDIS_URL, make_room, ready, require, servers, start
from tests.test_revocation import _open_or_refused

LEASE = 2.0


def env(tmp_path: Path, **more: str) -> dict[str, str]:
    return {"DATABASE_URL": f"sqlite:///{tmp_path}/shared.db", "BROKER_URL": REDIS_URL, **more}


async def test_the_socket_limit_counts_every_process_and_a_dead_ones_leases_lapse(tmp_path: Path) -> None:
    require("redis")
    settings = env(tmp_path, MAX_SOCKETS_PER_USER="3", SOCKET_LEASE=str(LEASE))
    async with servers(2, settings, tmp_path) as (one, two):
        await make_room(one, "r1", [1])
        urls = [p.ws_url("/ws/chat/r1/", token=token(1)) for p in (one, two)]
        async with contextlib.AsyncExitStack() as stack:
            outcomes = await asyncio.gather(*(_open_or_refused(urls[i % 2], stack) for i in range(40)))
            assert outcomes.count("open") == 3, sorted(set(outcomes))
            assert set(outcomes) == {"open", "1008"}
        await asyncio.sleep(0.3)
        # All three on the first process, which then dies without a word.
        async with contextlib.AsyncExitStack() as held:
            for _ in range(3):
                assert await _open_or_refused(urls[0], held) == "open"
            async with contextlib.AsyncExitStack() as stack:
                assert await _open_or_refused(urls[1], stack) == "1008"
            # A live process renews its leases: past the lease time they still count.
            await asyncio.sleep(LEASE * 1.5)
            async with contextlib.AsyncExitStack() as stack:
                assert await _open_or_refused(urls[1], stack) == "1008"
            one.kill()
            async with contextlib.AsyncExitStack() as stack:
                assert await _open_or_refused(urls[1], stack) == "1008"
            deadline = time.monotonic() + LEASE + 3
            while True:
                stack = contextlib.AsyncExitStack()
                outcome = await _open_or_refused(urls[1], stack)
                await stack.aclose()
                if outcome == "open":
                    break
                assert time.monotonic() < deadline, "the dead process's leases never lapsed"
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.2)
            async with contextlib.AsyncExitStack() as stack:
                outcomes = [await _open_or_refused(urls[1], stack) for _ in range(4)]
                assert outcomes == ["open"] * 3 + ["1008"]


async def test_a_removed_member_is_closed_on_the_other_process_within_a_second(tmp_path: Path) -> None:
    require("redis")
    async with servers(2, env(tmp_path), tmp_path) as (one, two):
        await make_room(one, "r1", [1, 2])
        async with (
            ws(one.ws_url("/ws/chat/r1/", token=token(1))) as stay,
            ws(two.ws_url("/ws/chat/r1/", token=token(2))) as removed,
        ):
            await stay.expect("message_history")
            await removed.expect("message_history")
            async with one.api() as api:
                assert (await api.delete("/api/rooms/r1/members/2")).status_code == 204
            with contextlib.suppress(Exception):
                await removed.send({"type": "chat_message", "content": "after removal"})
            started = time.monotonic()
            assert await removed.closed(timeout=1) == 4003
            assert time.monotonic() - started < 1
            await stay.silent(0.5)
        async with ws(one.ws_url("/ws/chat/r1/", token=token(1))) as reader:
            history = await reader.expect("message_history")
            assert [m["content"] for m in history["messages"]] == []


async def test_revoke_reaches_every_process(tmp_path: Path) -> None:
    require("redis")
    async with servers(2, env(tmp_path), tmp_path) as (one, two):
        await make_room(one, "r1", [1])
        old = token(1, iat=int(time.time()))
        async with ws(two.ws_url("/ws/chat/r1/", token=old)) as client:
            await client.expect("message_history")
            async with one.api() as api:
                assert (await api.post("/api/users/1/disconnect", json={"revoke": True})).status_code == 202
            assert await client.closed(timeout=1) == 4001
        for proc in (one, two):
            async with ws(proc.ws_url("/ws/chat/r1/", token=old)) as again:
                assert await again.closed() == 4001


async def test_a_process_cut_from_redis_checks_its_sockets_again_when_it_comes_back(tmp_path: Path) -> None:
    """Commands are not persisted: a process that was away from Redis when a
    member was removed, a user revoked and a consultation cancelled closes
    those sockets once Redis is back, from what the store says."""
    require("redis")
    async with proxy_for(REDIS_URL) as cut:
        one = start(env(tmp_path), tmp_path / "one.log")
        two = start(env(tmp_path, BROKER_URL=cut.url(REDIS_URL)), tmp_path / "two.log")
        try:
            await asyncio.gather(ready(one), ready(two))
            await make_room(one, "r1", [1, 2, 3])
            async with one.api() as api:
                response = await api.post("/api/consultations", json={"id": "c1", "expert_id": 5, "client_id": 6})
                assert response.status_code == 201, response.text
            async with (
                ws(two.ws_url("/ws/chat/r1/", token=token(1))) as stays,
                ws(two.ws_url("/ws/chat/r1/", token=token(2))) as removed,
                ws(two.ws_url("/ws/notifications/", token=token(3, iat=int(time.time())))) as revoked,
                ws(two.ws_url("/ws/consultation/c1/", token=token(6, role="client"))) as cancelled,
            ):
                for client, first in ((stays, "message_history"), (removed, "message_history")):
                    await client.expect(first)
                await revoked.expect("bulk_update")
                await cancelled.expect("consultation_status")
                await cut.down()
                async with one.api() as api:
                    assert (await api.delete("/api/rooms/r1/members/2")).status_code == 204
                    response = await api.post("/api/users/3/disconnect", json={"revoke": True})
                    assert response.status_code == 202
                    assert (await api.post("/api/consultations/c1/cancel", json={})).status_code == 200
                await asyncio.sleep(1)
                # The commands went by while the second process was away: nothing closed yet.
                for client in (removed, revoked, cancelled):
                    assert client.conn.close_code is None
                await cut.up()
                assert await removed.closed(timeout=15) == 4003
                assert await revoked.closed(timeout=5) == 4001
                assert await cancelled.closed(timeout=5) == 4003
                assert stays.conn.close_code is None
            assert "socket(s) closed whose access had ended meanwhile" in two.output()
        finally:
            for proc in (one, two):
                proc.terminate()
            for proc in (one, two):
                # In a thread: the proxy runs in this event loop, and the second
                # process still talks to Redis through it while it shuts down.
                await asyncio.to_thread(proc.wait, 15)
