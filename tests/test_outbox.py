"""Broker faults and the outbox: local delivery never waits for Redis, and a
committed event reaches every process even when the one that committed it
lost Redis and then died. Faults come from a proxy in front of Redis; Redis
itself is never restarted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from realtime.events.node.broker import Broker, Event
from realtime.events.node.hub import GAP, Delivery, Hub, pack, unpack
from realtime.store import streams
from realtime.store.db import Db, Runner
from realtime.store.outbox import Outbox
from tests.conftest import Client, Server, base_settings, chat, running, token, ws
from tests.faultproxy import proxy_for
from tests.procs import REDIS_URL, Proc, make_room, ready, require, start


@pytest.fixture
def pg_url(pg_url: str) -> str:
    """conftest's fresh PostgreSQL database; these tests need Redis too."""
    require("redis")
    return pg_url


async def chat_frames(client: Client, count: int, timeout: float) -> list[dict]:
    """The next `count` chat messages (typing frames skipped)."""
    frames: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(frames) < count:
        frame = await client.recv(timeout=max(0.05, deadline - time.monotonic()))
        if frame["type"] == "chat_message":
            frames.append(frame)
    return frames


async def wait_ready(proc: Proc, want: bool, timeout: float = 10) -> None:
    """Until /readyz answers 200 (`want`) or 503 (not `want`)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if ((await client.get(f"{proc.http}/readyz")).status_code == 200) == want:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"/readyz never became {'ready' if want else 'unavailable'}")


async def stored_contents(database_url: str, room_id: str) -> list[str]:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT content FROM messages WHERE room_id = $1 ORDER BY seq", room_id)
    finally:
        await conn.close()
    return [row[0] for row in rows]


def node(env: dict[str, str], tmp_path: Path, name: str) -> Proc:
    return start(env, tmp_path / f"{name}.log")


@pytest.mark.parametrize("cut", ["both", "one"])
async def test_redis_outage_keeps_one_process_live_and_the_other_catches_up(
    tmp_path: Path, pg_url: str, cut: str
) -> None:
    """`both`: Redis drops for everyone (the other process refills on reconnect);
    `one`: only the publishing process loses it (its outbox is relayed)."""
    async with proxy_for(REDIS_URL) as first, proxy_for(REDIS_URL) as second:
        one = node({"DATABASE_URL": pg_url, "BROKER_URL": first.url(REDIS_URL)}, tmp_path, "one")
        two = node({"DATABASE_URL": pg_url, "BROKER_URL": second.url(REDIS_URL)}, tmp_path, "two")
        proxies = [first, second] if cut == "both" else [first]
        try:
            await asyncio.gather(ready(one), ready(two))
            await make_room(one, "x", [1, 2, 3])
            async with (
                ws(one.ws_url("/ws/chat/x/", token=token(1))) as a,
                ws(one.ws_url("/ws/chat/x/", token=token(2))) as b,
                ws(two.ws_url("/ws/chat/x/", token=token(3))) as c,
            ):
                for client in (a, b, c):
                    await client.expect("message_history")
                sent = 0
                for proxy in proxies:
                    await proxy.down()
                await wait_ready(one, False)
                started = time.monotonic()
                # Five seconds of traffic without Redis: same-process sockets hear each other at once.
                while time.monotonic() - started < 5:
                    sender, receiver = (a, b) if sent % 2 == 0 else (b, a)
                    await sender.send({"type": "chat_message", "content": f"m{sent}"})
                    echo = await chat_frames(sender, 1, timeout=1)
                    heard = await chat_frames(receiver, 1, timeout=1)
                    assert echo[0]["seq"] == heard[0]["seq"] == sent + 1
                    assert heard[0]["message"]["content"] == f"m{sent}"
                    sent += 1
                    await asyncio.sleep(0.2)
                await a.send({"type": "typing_start"})
                assert (await b.expect("typing_start", timeout=1))["user"]["id"] == 1
                await a.send({"type": "typing_stop"})
                assert (await b.expect("typing_stop", timeout=1))["user_id"] == 1
                if cut == "both":
                    await c.silent(0.2)  # the other process heard nothing meanwhile
                # With `one`, the other process's relay may already have published the first ones.
                for proxy in proxies:
                    await proxy.up()
                # The other process catches up once Redis is back: every message, once, in order.
                frames = await chat_frames(c, sent, timeout=15)
                assert [f["seq"] for f in frames] == list(range(1, sent + 1))
                assert [f["message"]["content"] for f in frames] == [f"m{i}" for i in range(sent)]
                await a.silent(0.5)
                await b.silent(0.1)
                await c.silent(0.1)
                assert await stored_contents(pg_url, "x") == [f"m{i}" for i in range(sent)]
                assert sent >= 5
        finally:
            for proc in (one, two):
                proc.kill()


async def test_a_process_cut_from_redis_that_dies_has_its_messages_relayed(tmp_path: Path, pg_url: str) -> None:
    async with proxy_for(REDIS_URL) as cut, proxy_for(REDIS_URL) as fine:
        one = node({"DATABASE_URL": pg_url, "BROKER_URL": cut.url(REDIS_URL)}, tmp_path, "one")
        two = node({"DATABASE_URL": pg_url, "BROKER_URL": fine.url(REDIS_URL)}, tmp_path, "two")
        try:
            await asyncio.gather(ready(one), ready(two))
            await make_room(one, "r", [1, 2])
            async with (
                ws(one.ws_url("/ws/chat/r/", token=token(1))) as sender,
                ws(two.ws_url("/ws/chat/r/", token=token(2))) as member,
            ):
                await sender.expect("message_history")
                await member.expect("message_history")
                await sender.send({"type": "chat_message", "content": "before"})
                assert (await chat_frames(member, 1, timeout=5))[0]["seq"] == 1
                assert (await chat_frames(sender, 1, timeout=5))[0]["seq"] == 1
                await cut.down()
                await wait_ready(one, False)
                for i in range(3):
                    await sender.send({"type": "chat_message", "content": f"cut {i}"})
                    assert (await chat_frames(sender, 1, timeout=5))[0]["seq"] == i + 2
                one.kill()  # its memory is gone; only the store remembers
                # No later traffic in the room: the other process's relay publishes them.
                frames = await chat_frames(member, 3, timeout=10)
                assert [f["seq"] for f in frames] == [2, 3, 4]
                assert [f["message"]["content"] for f in frames] == ["cut 0", "cut 1", "cut 2"]
                await member.silent(1.5)
                async with two.api() as api, httpx.AsyncClient() as plain:
                    metrics = (await plain.get(f"{two.http}/metrics")).text
                    assert "realtime_outbox_backlog 0.0" in metrics, metrics
                    assert (await api.get("/readyz")).status_code == 200
        finally:
            for proc in (one, two):
                proc.kill()


# ---- the relay's claims, on the store itself ------------------------------------------


async def old_events(db: Db, count: int) -> list[tuple[str, int]]:
    """`count` events on two streams, with outbox rows older than any grace."""

    async def job(tx: Runner) -> list[tuple[str, int]]:
        keys = []
        for i in range(count):
            stream = f"room:s{i % 2}"
            seq, _ = await streams.append(tx, stream, "chat_message", {"n": i})
            keys.append((stream, seq))
        await tx.execute("UPDATE stream_outbox SET created_ms = created_ms - 60000")
        return keys

    return await db.write(job)


@pytest.fixture
async def two_dbs(pg_url: str) -> AsyncIterator[tuple[Db, Db]]:
    one, two = Db(pg_url), Db(pg_url)
    await one.connect()
    await two.connect()
    one.use_outbox()
    try:
        yield one, two
    finally:
        await one.disconnect()
        await two.disconnect()


async def test_two_relays_on_postgres_never_take_the_same_row(two_dbs: tuple[Db, Db]) -> None:
    one, two = two_dbs
    keys = await old_events(one, 20)
    taken: list[list[tuple[str, int]]] = []

    async def slow_publish(rows: list[tuple[str, int, str]]) -> None:
        taken.append([(stream, seq) for stream, seq, _ in rows])
        await asyncio.sleep(0.3)  # both claims are open at once

    counts = await asyncio.gather(
        Outbox(one).relay(1000, slow_publish, limit=8), Outbox(two).relay(1000, slow_publish, limit=8)
    )
    assert counts == [8, 8]
    flat = [key for batch in taken for key in batch]
    assert len(flat) == len(set(flat)) == 16
    for batch in taken:  # oldest first per stream
        for stream in ("room:s0", "room:s1"):
            seqs = [seq for s, seq in batch if s == stream]
            assert seqs == sorted(seqs)
    assert await Outbox(one).backlog() == 4
    assert await Outbox(two).relay(1000, slow_publish) == 4
    assert sorted(key for batch in taken for key in batch) == sorted(keys)
    assert await Outbox(one).backlog() == 0


async def test_the_relay_keeps_rows_it_could_not_publish_and_spares_young_ones(two_dbs: tuple[Db, Db]) -> None:
    one, _ = two_dbs
    outbox = Outbox(one)
    await old_events(one, 4)

    async def refused(rows: list[tuple[str, int, str]]) -> None:
        raise ConnectionError("broker away")

    with pytest.raises(ConnectionError):
        await outbox.relay(1000, refused)
    assert await outbox.backlog() == 4

    async def fresh(tx: Runner) -> None:
        await streams.append(tx, "user:7", "bulk_update", {"n": 1})

    await one.write(fresh)
    published: list[tuple[str, int, str]] = []

    async def keep(rows: list[tuple[str, int, str]]) -> None:
        published.extend(rows)

    assert await outbox.relay(120_000, keep) == 0  # nothing is two minutes old
    assert await outbox.relay(1000, keep) == 4  # the young one waits
    assert [(s, q) for s, q, _ in published] == [("room:s0", 1), ("room:s0", 2), ("room:s1", 1), ("room:s1", 2)]
    assert all(frame.startswith('{"type":"chat_message","seq":') for _, _, frame in published)
    await outbox.confirm({"user:7": 1, "room:none": 5})
    assert await outbox.backlog() == 0


async def test_a_confirmation_never_waits_for_a_relay_on_postgres(two_dbs: tuple[Db, Db]) -> None:
    one, two = two_dbs
    await old_events(one, 4)
    claimed, release = asyncio.Event(), asyncio.Event()

    async def held(rows: list[tuple[str, int, str]]) -> None:
        assert [(s, q) for s, q, _ in rows] == [("room:s0", 1), ("room:s0", 2)]
        claimed.set()
        await release.wait()

    relay = asyncio.create_task(Outbox(two).relay(1000, held, limit=2))
    await asyncio.wait_for(claimed.wait(), 5)
    # It deletes what no relay holds, and leaves the held rows to their relay.
    await asyncio.wait_for(Outbox(one).confirm({"room:s0": 2, "room:s1": 2}), 5)
    assert await Outbox(one).backlog() == 2
    release.set()
    assert await relay == 2
    assert await Outbox(one).backlog() == 0


async def scrape_backlog(srv: Server) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{srv.http}/metrics")).text
    for family in text_string_to_metric_families(text):
        if family.name == "realtime_outbox_backlog":
            return family.samples[0].value
    raise AssertionError("no realtime_outbox_backlog gauge")


async def test_the_memory_broker_writes_no_outbox_rows(tmp_path: Path) -> None:
    async with running(base_settings(tmp_path)) as srv:
        await srv.room("r", [1])
        async with chat(srv, "r", 1) as a:
            await a.expect("message_history")
            await a.send({"type": "chat_message", "content": "hi"})
            await a.expect("chat_message")
        assert srv.runtime.hub.outbox is None
        row = await srv.runtime.db.fetch_one("SELECT COUNT(*) FROM stream_outbox")
        assert row is not None and row[0] == 0
        assert await scrape_backlog(srv) == 0


async def test_an_unpublished_event_stays_in_the_outbox_on_sqlite(tmp_path: Path) -> None:
    # Nothing listens on port 1: every publish fails, the event is echoed here all the same.
    async with running(base_settings(tmp_path, broker_url="redis://127.0.0.1:1")) as srv:
        assert srv.runtime.hub.problem is not None and "unreachable" in srv.runtime.hub.problem
        await srv.room("r", [1, 2])
        async with chat(srv, "r", 1) as a, chat(srv, "r", 2) as b:
            await a.expect("message_history")
            await b.expect("message_history")
            await a.send({"type": "chat_message", "content": "kept"})
            assert (await a.expect("chat_message", timeout=1))["seq"] == 1
            assert (await b.expect("chat_message", timeout=1))["seq"] == 1
        assert await scrape_backlog(srv) == 1


async def test_a_published_event_leaves_no_outbox_row(tmp_path: Path) -> None:
    require("redis")
    async with running(base_settings(tmp_path, broker_url=REDIS_URL)) as srv:
        assert srv.runtime.hub.problem is None
        await srv.room("r", [1])
        async with chat(srv, "r", 1) as a:
            await a.expect("message_history")
            for i in range(3):
                await a.send({"type": "chat_message", "content": f"m{i}"})
                await a.expect("chat_message", timeout=1)
            await a.silent(0.3)  # the echo came once: the copy back from Redis was dropped
        for _ in range(50):
            if await scrape_backlog(srv) == 0:
                break
            await asyncio.sleep(0.05)
        assert await scrape_backlog(srv) == 0


# ---- the hub's order with local delivery ------------------------------------------------


class FakeBroker(Broker):
    """A broker that never fails and is not the in-process one (the hub delivers
    locally and publishes); the test plays the other processes by queueing."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.published: list[tuple[str, str]] = []
        self.down = False

    async def connect(self) -> None: ...
    async def disconnect(self) -> None: ...
    async def subscribe(self, channel: str) -> None: ...
    async def unsubscribe(self, channel: str) -> None: ...

    async def publish(self, channel: str, message: Any) -> None:
        if self.down:
            raise ConnectionError("broker away")
        self.published.append((channel, message))

    async def next_published(self) -> Event:
        return await self.queue.get()


class SlowStore:
    """Stream events by stream and seq, read slowly so refills overlap."""

    def __init__(self) -> None:
        self.frames: dict[str, dict[int, str]] = {}

    async def last_seq(self, stream: str) -> int:
        return max(self.frames.get(stream, {}), default=0)

    async def between(self, stream: str, after: int, upto: int | None) -> list[tuple[int, str]] | None:
        await asyncio.sleep(0.05)
        frames = self.frames.get(stream, {})
        top = upto if upto is not None else max(frames, default=0)
        return [(seq, frames[seq]) for seq in range(after + 1, top + 1) if seq in frames]


class Recorder:
    user_id = 0

    def __init__(self) -> None:
        self.got: list[tuple[int, str]] = []

    def deliver(self, delivery: Delivery) -> None:
        self.got.append((delivery.seq, delivery.frame))

    def resync(self) -> None:
        raise AssertionError("nothing here is too old to refill")


async def test_local_and_remote_events_on_one_topic_arrive_once_in_order() -> None:
    broker, store, rec = FakeBroker(), SlowStore(), Recorder()
    hub = Hub(broker, store, "p:", outbox=None)
    await hub.start()
    try:
        await hub.join("room:a", rec)
        store.frames["room:a"] = {seq: f"f{seq}" for seq in range(1, 7)}

        def remote(seq: int) -> None:
            broker.queue.put_nowait(Event("p:room:a", pack(Delivery("chat_message", seq, 0, f"f{seq}"), "other")))

        # Another process's 2 and 5 reach the listener while this process publishes 4 and 6.
        remote(2)
        await asyncio.gather(
            hub.publish("room:a", Delivery("chat_message", 4, 0, "f4")),
            hub.publish("room:a", Delivery("chat_message", 6, 0, "f6")),
        )
        remote(5)
        remote(3)
        for _ in range(100):
            if broker.queue.empty() and len(rec.got) == 6:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        assert rec.got == [(seq, f"f{seq}") for seq in range(1, 7)]
        assert [unpack(m).origin for _, m in broker.published] == [hub.node, hub.node]

        # Ephemeral events: delivered in the publisher's stack, the broker's copy of our own dropped.
        typing = Delivery("typing_start", 0, 0, "t")
        await hub.publish("room:a", typing)
        assert rec.got[-1] == (0, "t")
        broker.queue.put_nowait(Event("p:room:a", broker.published[-1][1]))
        broker.queue.put_nowait(Event("p:room:a", pack(Delivery("typing_start", 0, 0, "u"), "other")))
        for _ in range(50):
            if rec.got[-1] == (0, "u"):
                break
            await asyncio.sleep(0.02)
        assert rec.got[-2:] == [(0, "t"), (0, "u")]
    finally:
        await hub.stop()


class FlakyStore(SlowStore):
    """Fails its first `failures` reads, as a store that is away for a moment."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def between(self, stream: str, after: int, upto: int | None) -> list[tuple[int, str]] | None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("store away")
        return await super().between(stream, after, upto)


async def test_an_event_whose_refill_failed_arrives_without_more_traffic() -> None:
    """Event 3 arrives while 2 is missing and the store cannot be read: the hub
    tries the refill again by itself, so a quiet topic gets 2 and 3."""
    broker, store, rec = FakeBroker(), FlakyStore(failures=2), Recorder()
    hub = Hub(broker, store, "p:", outbox=None)
    await hub.start()
    try:
        await hub.join("room:a", rec)
        store.frames["room:a"] = {1: "f1", 2: "f2", 3: "f3"}
        await hub.publish("room:a", Delivery("chat_message", 1, 0, "f1"))
        broker.queue.put_nowait(Event("p:room:a", pack(Delivery("chat_message", 3, 0, "f3"), "other")))
        for _ in range(200):
            if len(rec.got) == 3:
                break
            await asyncio.sleep(0.02)
        assert rec.got == [(1, "f1"), (2, "f2"), (3, "f3")]
        assert store.failures == 0
    finally:
        await hub.stop()


def test_pack_carries_the_origin_and_reads_the_older_form() -> None:
    d = Delivery("chat_message", 3, 7, '{"type":"chat_message","seq":3}')
    back = unpack(pack(d, "n1"))
    assert (back.type, back.seq, back.exclude, back.frame, back.origin) == (d.type, 3, 7, d.frame, "n1")
    older = unpack("chat_message\t3\t7\t" + d.frame)
    assert (older.type, older.seq, older.exclude, older.frame, older.origin) == (d.type, 3, 7, d.frame, "")


class NoteConfirmations:
    """An outbox store that only notes what the hub confirms."""

    def __init__(self) -> None:
        self.confirmed: list[dict[str, int]] = []

    async def confirm(self, published: dict[str, int]) -> None:
        self.confirmed.append(dict(published))

    async def backlog(self) -> int:
        return 0

    async def relay(self, grace_ms: int, publish: Any) -> int:
        return 0


async def test_refused_events_reach_local_sockets_and_the_newest_goes_out_on_reconnect() -> None:
    broker, store, rec, outbox = FakeBroker(), SlowStore(), Recorder(), NoteConfirmations()
    hub = Hub(broker, store, "p:", outbox=outbox)
    await hub.start()
    try:
        await hub.join("room:a", rec)
        await hub.join("room:b", rec)
        broker.down = True
        for stream, seq in (("room:a", 1), ("room:a", 2), ("room:b", 1)):
            store.frames.setdefault(stream, {})[seq] = f"{stream}/{seq}"
            await hub.publish(stream, Delivery("chat_message", seq, 0, f"{stream}/{seq}"))
        await hub.publish("room:a", Delivery("typing_start", 0, 0, "t"))
        assert rec.got == [(1, "room:a/1"), (2, "room:a/2"), (1, "room:b/1"), (0, "t")]
        assert hub.publish_failures == 4 and broker.published == []
        broker.down = False
        broker.queue.put_nowait(Event(GAP, ""))
        for _ in range(100):
            if outbox.confirmed:
                break
            await asyncio.sleep(0.02)
        # The newest of each stream only: receivers refill the older ones from the store.
        assert sorted((c, unpack(m).seq) for c, m in broker.published) == [("p:room:a", 2), ("p:room:b", 1)]
        assert outbox.confirmed == [{"room:a": 2, "room:b": 1}]
        assert len(rec.got) == 4  # nothing new in the store: the refill on reconnect adds nothing
    finally:
        await hub.stop()
