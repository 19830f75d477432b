"""`GET /metrics`: the numbers move by what real traffic did, no more."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from realtime.events.node.metrics import frame_type
from realtime.server import create_app
from realtime.settings import SettingsError
from tests.conftest import Client, Server, base_settings, chat, running, slow_chat, token, ws
from tests.procs import REDIS_URL, Proc, require

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(srv: Server | Proc) -> Samples:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{srv.http}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_traffic_moves_the_counters_by_what_happened(server: Server) -> None:
    await server.room("r", [1, 2, 3])
    async with chat(server, "r", 1) as a, chat(server, "r", 2) as b, chat(server, "r", 3) as c:
        for client in (a, b, c):
            await client.expect("message_history")
        before = await scrape(server)
        assert value(before, "realtime_open_sockets", channel="chat") == 3
        assert value(before, "realtime_open_sockets", channel="notifications") == 0

        await a.send({"type": "chat_message", "content": "hello"})
        for client in (a, b, c):
            await client.expect("chat_message")
        await a.send({"type": "typing_start"})
        for client in (b, c):
            await client.expect("typing_start")
        await a.send({"type": "ping"})
        await a.expect("pong")
        await a.send("{not json")
        assert (await a.expect("error"))["code"] == "invalid_json"
        await a.send({"type": "nope"})
        assert (await a.expect("error"))["code"] == "unknown_type"
        await a.send({"type": "mark_read", "message_id": "missing"})
        assert (await a.expect("error"))["code"] == "not_found"
        await a.send({"type": "typing_stop"})
        for client in (b, c):
            await client.expect("typing_stop")
        after = await scrape(server)

    # In: one per frame the client sent, by type; undecodable ones as `invalid`.
    for type_, n in {"chat_message": 1, "typing_start": 1, "typing_stop": 1, "ping": 1, "mark_read": 1}.items():
        assert delta(before, after, "realtime_frames_in_total", channel="chat", type=type_) == n, type_
    assert delta(before, after, "realtime_frames_in_total", channel="chat", type="invalid") == 2
    # Out: a fan-out counts its recipients (three sockets, two without the typist); replies count one.
    for type_, n in {"chat_message": 3, "typing_start": 2, "typing_stop": 2, "pong": 1, "error": 3}.items():
        assert delta(before, after, "realtime_frames_out_total", type=type_) == n, type_
    for code in ("invalid_json", "unknown_type", "not_found"):
        assert delta(before, after, "realtime_errors_total", code=code) == 1
    # Two write jobs, one after the other: the message, and the receipt refused as not_found.
    assert delta(before, after, "realtime_store_write_batch_size_count") == 2
    assert delta(before, after, "realtime_store_write_batch_size_sum") == 2
    assert delta(before, after, "realtime_store_write_batch_seconds_count") == 2
    assert 0 < delta(before, after, "realtime_store_write_batch_seconds_sum") < 5

    for _ in range(50):  # the server notices the three closes right after the clients send them
        closed = await scrape(server)
        if value(closed, "realtime_open_sockets", channel="chat") == 0:
            break
        await asyncio.sleep(0.05)
    assert value(closed, "realtime_open_sockets", channel="chat") == 0
    assert delta(after, closed, "realtime_closes_total", code="1000") == 3


async def test_refusals_count_their_close_codes(server: Server) -> None:
    await server.room("r", [1])
    before = await scrape(server)
    async with chat(server, "r", 2) as outsider:
        assert await outsider.closed() == 4003
    async with chat(server, "nope", 1) as lost:
        assert await lost.closed() == 4004
    async with ws(server.ws_url("/ws/chat/r/", token="not-a-jwt")) as anonymous:
        assert await anonymous.closed() == 4001
    async with ws(server.ws_url("/ws/notifications/")) as waiting:
        await waiting.send({"type": "auth", "token": token(1)})
        await waiting.expect("auth_ok")
        await waiting.expect("bulk_update")
        during = await scrape(server)
        assert value(during, "realtime_open_sockets", channel="notifications") == 1
        await waiting.conn.close(code=4321)
    for _ in range(50):
        after = await scrape(server)
        if delta(before, after, "realtime_closes_total", code="other") == 1:
            break
        await asyncio.sleep(0.05)
    for code in ("4001", "4003", "4004"):
        assert delta(before, after, "realtime_closes_total", code=code) == 1, code
    # A close code a client made up is `other`: clients cannot mint label values.
    assert delta(before, after, "realtime_closes_total", code="other") == 1
    assert ("realtime_closes_total", frozenset({("code", "4321")})) not in after
    assert delta(before, after, "realtime_frames_out_total", type="auth_ok") == 1
    assert delta(before, after, "realtime_frames_out_total", type="bulk_update") == 1


async def test_concurrent_writes_share_batches_and_the_histogram_counts_every_job(server: Server) -> None:
    members = list(range(1, 9))
    await server.room("r", members)
    async with all_of([chat(server, "r", m) for m in members]) as clients:
        for client in clients:
            await client.expect("message_history")
        before = await scrape(server)
        await asyncio.gather(*(client.send({"type": "chat_message", "content": "hi"}) for client in clients))
        for client in clients:
            for _ in members:
                await client.expect("chat_message")
        after = await scrape(server)
    jobs = delta(before, after, "realtime_store_write_batch_size_sum")
    batches = delta(before, after, "realtime_store_write_batch_size_count")
    assert jobs == len(members)
    assert 1 <= batches <= len(members)
    assert delta(before, after, "realtime_frames_out_total", type="chat_message") == len(members) ** 2


async def test_a_slow_consumer_cut_off_counts_once_with_its_dropped_frames(tmp_path: Path) -> None:
    queue = 8
    settings = base_settings(tmp_path, outbound_queue=queue, rate_limit=10_000, rate_burst=10_000)
    async with running(settings) as srv:
        await srv.room("r1", [1, 2])
        before = await scrape(srv)
        async with (
            slow_chat(srv, "r1", 2) as slow,
            chat(srv, "r1", 1) as a,
        ):
            await slow.expect("message_history")
            await a.expect("message_history")
            big = "x" * 9000
            for i in range(2000):
                await a.send({"type": "chat_message", "content": f"{i}:{big}"})
                await a.expect("chat_message")
                if srv.runtime.hub.local_subscribers("room:r1") == 1:
                    break
            assert await slow.closed(timeout=10) == 1013
        after = await scrape(srv)
    assert delta(before, after, "realtime_slow_consumer_closes_total") == 1
    assert delta(before, after, "realtime_closes_total", code="1013") == 1
    assert delta(before, after, "realtime_outbound_dropped_frames_total") >= queue + 1


async def test_broker_failures_and_reconnects_are_counted(tmp_path: Path) -> None:
    # A broker that is not there: the publish fails (the event is kept to publish again).
    (tmp_path / "down").mkdir()
    async with running(base_settings(tmp_path / "down", broker_url="redis://127.0.0.1:1")) as srv:
        await srv.room("r", [1])
        async with chat(srv, "r", 1) as a:
            await a.expect("message_history")
            before = await scrape(srv)
            await a.send({"type": "chat_message", "content": "into the void"})
            for _ in range(50):
                after = await scrape(srv)
                if delta(before, after, "realtime_hub_publish_failures_total"):
                    break
                await asyncio.sleep(0.05)
        assert delta(before, after, "realtime_hub_publish_failures_total") == 1
        assert value(after, "realtime_broker_reconnects_total") == 0

    require("redis")
    name = f"rt-metrics-{uuid.uuid4().hex[:8]}"
    async with running(base_settings(tmp_path, broker_url=f"{REDIS_URL}?client_name={name}")) as srv:
        assert value(await scrape(srv), "realtime_broker_reconnects_total") == 0
        admin = Redis.from_url(REDIS_URL)
        try:
            ours = [c["id"] for c in await admin.client_list(_type="pubsub") if c.get("name") == name]
            assert len(ours) == 1
            await admin.client_kill_filter(_id=ours[0], _type="pubsub")
        finally:
            await admin.aclose()
        for _ in range(100):
            if value(await scrape(srv), "realtime_broker_reconnects_total") == 1:
                break
            await asyncio.sleep(0.05)
        assert value(await scrape(srv), "realtime_broker_reconnects_total") == 1


async def test_apps_in_one_process_keep_their_own_numbers(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    async with (
        running(base_settings(tmp_path / "one")) as one,
        running(base_settings(tmp_path / "two")) as two,
    ):
        await one.room("r", [1])
        async with chat(one, "r", 1) as a:
            await a.expect("message_history")
            assert value(await scrape(one), "realtime_open_sockets", channel="chat") == 1
            assert value(await scrape(two), "realtime_open_sockets", channel="chat") == 0
            assert one.runtime.metrics.registry is not two.runtime.metrics.registry
        # Both show this process's own numbers, with no `pid`: one process, one set.
        for srv in (one, two):
            samples = await scrape(srv)
            assert value(samples, "process_resident_memory_bytes") > 0
            assert value(samples, "process_start_time_seconds") > 0
            assert value(samples, "process_cpu_seconds_total") > 0


def test_a_multiprocess_directory_needs_the_variable_from_the_process_start(tmp_path: Path) -> None:
    """prometheus_client chose where its values live when it was imported: a directory named later is refused."""
    with pytest.raises(SettingsError, match=r"^PROMETHEUS_MULTIPROC_DIR: must be in the environment"):
        create_app(base_settings(tmp_path, prometheus_multiproc_dir=tmp_path))


@pytest.mark.parametrize(
    ("text", "expected"),
    [('{"type":"pong","ts":1}', "pong"), ('{"ts":1,"type":"pong"}', "other"), ('{"type":"', "other"), ("", "other")],
)
def test_frame_type_reads_the_leading_type_or_says_other(text: str, expected: str) -> None:
    assert frame_type(text) == expected


@contextlib.asynccontextmanager
async def all_of(managers: list[AbstractAsyncContextManager[Client]]) -> AsyncIterator[list[Client]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(m) for m in managers]
