"""Store faults: PostgreSQL cut off (through tests/faultproxy.py, never
restarted), SQLite locked by another connection, SQLite full.

What must hold: nothing acknowledged is lost, nothing unacknowledged is silent
(an `unavailable` error frame with the frame's `client_msg_id`), the socket
stays open, a retry with the same `client_msg_id` stores nothing twice, HTTP
writes answer 503 with `Retry-After`, `/readyz` says 503 while writes fail,
and everything works again after the fault, without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from realtime.store.errors import StoreUnavailable, is_transient, loses_connection
from tests.conftest import SERVICE_KEY, Client, base_settings, chat, running, token, ws
from tests.faultproxy import proxy_for
from tests.procs import REDIS_URL, require, servers
from tests.store_checks import store_is_whole

OUTAGE = 3.0
RECOVERY = 10.0  # the longest writes may take to work again after the fault ends


async def http(method: str, url: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=15, headers={"Authorization": f"Bearer {SERVICE_KEY}"}) as client:
        return await client.request(method, url, **kwargs)


async def eventually(check: Callable[[], Any], timeout: float = RECOVERY, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.1)


async def readiness(base: str) -> tuple[int, dict[str, Any]]:
    response = await http("GET", f"{base}/readyz")
    return response.status_code, response.json()


class Talker:
    """A chat socket that sends numbered messages with a `client_msg_id` each
    and records, per id, the first outcome: `ok` (its `chat_message` came
    back) or `unavailable` (an error frame naming it). Every frame is kept."""

    def __init__(self, client: Client, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.sent: list[str] = []
        self.outcome: dict[str, str] = {}
        self.frames: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                frame = await self.client.recv(timeout=120)
                self.frames.append(frame)
                if frame["type"] == "chat_message":
                    cmid = frame["message"].get("client_msg_id")
                    if cmid is not None and cmid.startswith(self.prefix):
                        self.outcome.setdefault(cmid, "ok")
                elif frame["type"] == "error":
                    self.errors.append(frame)
                    cmid = frame.get("client_msg_id")
                    if cmid is not None:
                        self.outcome.setdefault(cmid, frame["code"])

    async def send(self, n: int) -> str:
        cmid = f"{self.prefix}{n}"
        self.sent.append(cmid)
        await self.client.send({"type": "chat_message", "content": f"message {cmid}", "client_msg_id": cmid})
        return cmid

    async def retry(self, cmid: str) -> None:
        await self.client.send({"type": "chat_message", "content": f"message {cmid}", "client_msg_id": cmid})

    def answered(self) -> bool:
        return all(cmid in self.outcome for cmid in self.sent)

    def answers_for(self, cmid: str) -> list[dict[str, Any]]:
        return [
            f["message"]
            for f in self.frames
            if f["type"] == "chat_message" and f["message"].get("client_msg_id") == cmid
        ]

    def received_from(self, sender: int) -> list[int]:
        """Seqs of the other member's messages as broadcast to this socket, in arrival order."""
        return [
            f["message"]["seq"]
            for f in self.frames
            if f["type"] == "chat_message" and f["message"]["sender"]["id"] == sender
        ]

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def stored(pg_url: str, room_id: str) -> list[tuple[int, str, str, int]]:
    """(seq, id, client_msg_id, sender_id) of the room's messages, read from PostgreSQL directly."""
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch(
            "SELECT seq, id, client_msg_id, sender_id FROM messages WHERE room_id = $1 ORDER BY seq", room_id
        )
    finally:
        await conn.close()
    return [(int(r[0]), r[1], r[2], int(r[3])) for r in rows]


async def settle_and_retry(talkers: list[Talker]) -> None:
    """Wait until every sent id has an outcome; retry each `unavailable` one
    with its `client_msg_id` until it is answered with its message."""
    for t in talkers:
        await eventually(t.answered, RECOVERY, f"an outcome for every message of {t.prefix}")
        for err in t.errors:
            assert err["code"] == "unavailable", err
            assert err["request_type"] == "chat_message" and err["message"], err
    for t in talkers:
        for cmid in [c for c in t.sent if t.outcome[c] == "unavailable"]:
            await t.retry(cmid)
            await eventually(lambda c=cmid, t=t: t.answers_for(c), RECOVERY, f"an answer to the retry of {cmid}")


def check_against_store(rows: list[tuple[int, str, str, int]], talkers: list[Talker], users: list[int]) -> None:
    by_cmid: dict[str, tuple[int, str]] = {}
    for seq, id_, cmid, _sender in rows:
        assert cmid not in by_cmid, f"{cmid} stored twice"
        by_cmid[cmid] = (seq, id_)
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1)), "seqs have a gap"
    for t in talkers:
        # Everything sent is stored exactly once (after the retries), and every
        # acknowledgement names the stored row.
        assert set(t.sent) <= set(by_cmid), set(t.sent) - set(by_cmid)
        for cmid in t.sent:
            for answer in t.answers_for(cmid):
                assert (answer["seq"], answer["id"]) == by_cmid[cmid], cmid
    # Each member received the other's messages once each, in order.
    for t, me in zip(talkers, users, strict=True):
        for other in users:
            if other == me:
                continue
            expected = [seq for seq, _, _, sender in rows if sender == other]
            assert t.received_from(other) == expected, (t.prefix, other)


async def outage_traffic(
    proxy: Any,
    talkers: list[Talker],
    bases: list[str],
    during: Callable[[], Any],
) -> None:
    """Messages before, during and after an outage of `OUTAGE` seconds; `during` runs inside it."""
    n = 0
    for _ in range(4):
        for t in talkers:
            await t.send(n)
        n += 1
        await asyncio.sleep(0.02)
    for t in talkers:
        await eventually(lambda t=t: t.answered() and set(t.outcome.values()) == {"ok"}, 10, "echoes before")
    started = time.monotonic()
    await proxy.down()
    try:
        while time.monotonic() - started < 1.0:
            for t in talkers:
                await t.send(n)
            n += 1
            await asyncio.sleep(0.05)
        for base in bases:
            status, body = await readiness(base)
            assert status == 503, body
            assert any(p.startswith("store") for p in body["problems"]), body
        await during()
        await asyncio.sleep(max(0.0, OUTAGE - (time.monotonic() - started)))
    finally:
        await proxy.up()
    for base in bases:
        await eventually(lambda b=base: _ready(b), RECOVERY, f"{base} ready again")
    # After: writes work again without a restart.
    for t in talkers:
        cmid = await t.send(n)
        await eventually(lambda c=cmid, t=t: t.outcome.get(c) == "ok", RECOVERY, f"{cmid} stored after the outage")
    n += 1
    await settle_and_retry(talkers)
    for t in talkers:
        assert "unavailable" in t.outcome.values(), f"{t.prefix}: no write failed: the outage did not bite"
        assert t.client.conn.close_code is None, "the socket was closed"
    # A last message each: a receiver that has everything sees nothing new but these.
    for t in talkers:
        await t.send(n)
    for t in talkers:
        await eventually(t.answered, RECOVERY, "the last messages")


async def _ready(base: str) -> bool:
    status, _ = await readiness(base)
    return status == 200


async def test_postgres_outage_in_process_loses_nothing_acknowledged(tmp_path: Path, pg_url: str) -> None:
    async with proxy_for(pg_url) as proxy:
        settings = base_settings(tmp_path, database_url=proxy.url(pg_url))
        async with running(settings) as srv:
            await srv.room("r", [1, 2])
            async with chat(srv, "r", 1) as a_client, chat(srv, "r", 2) as b_client:
                await a_client.expect("message_history")
                await b_client.expect("message_history")
                a, b = Talker(a_client, "a"), Talker(b_client, "b")

                async def during() -> None:
                    # The server API: 503 with Retry-After, not 500.
                    response = await http("PUT", f"{srv.http}/api/users/9", json={"name": "Nine"})
                    assert response.status_code == 503, response.text
                    assert response.headers["retry-after"].isdigit()
                    assert response.json()["error"] == "unavailable"
                    # Bad input is still bad input, not unavailable.
                    response = await http("PUT", f"{srv.http}/api/users/9", json={"name": ""})
                    assert response.status_code == 400, response.text
                    # A connect that needs the store is told to try again later.
                    async with ws(srv.ws_url("/ws/chat/r/", token=token(1))) as late:
                        assert await late.closed() == 1013
                    text = (await http("GET", f"{srv.http}/metrics")).text
                    assert "realtime_store_writer_up 0.0" in text
                    assert 'realtime_store_write_errors_total{kind="transient"}' in text

                try:
                    await outage_traffic(proxy, [a, b], [srv.http], during)
                    response = await http("PUT", f"{srv.http}/api/users/9", json={"name": "Nine"})
                    assert response.status_code == 200, response.text
                    await eventually(lambda: len(a.received_from(2)) == len(b.sent), RECOVERY, "b's messages at a")
                    await eventually(lambda: len(b.received_from(1)) == len(a.sent), RECOVERY, "a's messages at b")
                    await asyncio.sleep(0.3)  # anything doubled would arrive now
                finally:
                    await a.stop()
                    await b.stop()
            check_against_store(await stored(pg_url, "r"), [a, b], [1, 2])
            await store_is_whole(srv.runtime.db)
            text = (await http("GET", f"{srv.http}/metrics")).text
            assert "realtime_store_writer_up 1.0" in text
            # The outage was never taken for a bad job (no one-by-one replay of its batches).
            assert 'realtime_store_write_errors_total{kind="other"}' not in text


async def test_a_store_that_stops_answering_is_given_up_on_and_replaced(tmp_path: Path, pg_url: str) -> None:
    """A partition, not a reset: the connection stays open and nothing comes
    back. The write is answered `unavailable` after the writer's wait and is
    never committed later behind the caller's back (it has no client_msg_id to
    make a retry safe); the writer replaces the connection by itself."""
    async with proxy_for(pg_url) as proxy:
        async with running(base_settings(tmp_path, database_url=proxy.url(pg_url))) as srv:
            srv.runtime.db.writer.wait_timeout = 1.0
            await srv.room("r", [1, 2])
            async with chat(srv, "r", 1) as a, chat(srv, "r", 2) as b:
                await a.expect("message_history")
                await b.expect("message_history")
                proxy.stall()
                await a.send({"type": "chat_message", "content": "held"})
                refused = await a.expect("error", timeout=5)
                assert refused["code"] == "unavailable"
                status, _ = await readiness(srv.http)
                assert status == 503
                # The partition ends; the connections it held are gone.
                proxy.cut()
                proxy.flow()
                deadline = time.monotonic() + RECOVERY
                while True:
                    await a.send({"type": "chat_message", "content": "after", "client_msg_id": "p1"})
                    frame = await a.recv()
                    if frame["type"] == "chat_message":
                        break
                    assert frame["code"] == "unavailable", frame
                    assert time.monotonic() < deadline, "writes never recovered"
                    await asyncio.sleep(0.2)
                assert (await b.expect("chat_message"))["message"]["content"] == "after"
                await b.silent(0.5)
            await eventually(lambda: _ready(srv.http), RECOVERY, "ready again")
            rows = await srv.runtime.db.fetch_all("SELECT content FROM messages")
            assert [r[0] for r in rows] == ["after"]


async def test_postgres_outage_across_two_processes(tmp_path: Path, pg_url: str) -> None:
    require("redis")
    async with proxy_for(pg_url) as proxy:
        env = {"DATABASE_URL": proxy.url(pg_url), "BROKER_URL": REDIS_URL}
        async with servers(2, env, tmp_path) as (one, two):
            async with one.api() as api:
                response = await api.post("/api/rooms", json={"id": "r2", "member_ids": [1, 2]})
                assert response.status_code == 201, response.text
            async with (
                ws(one.ws_url("/ws/chat/r2/", token=token(1))) as a_client,
                ws(two.ws_url("/ws/chat/r2/", token=token(2))) as b_client,
            ):
                await a_client.expect("message_history")
                await b_client.expect("message_history")
                a, b = Talker(a_client, "a"), Talker(b_client, "b")

                async def during() -> None:
                    for proc in (one, two):
                        response = await http("PUT", f"{proc.http}/api/users/9", json={"name": "Nine"})
                        assert response.status_code == 503, response.text
                        assert "retry-after" in response.headers

                try:
                    await outage_traffic(proxy, [a, b], [one.http, two.http], during)
                    for proc in (one, two):
                        response = await http("PUT", f"{proc.http}/api/users/9", json={"name": "Nine"})
                        assert response.status_code == 200, response.text
                    await eventually(lambda: len(a.received_from(2)) == len(b.sent), RECOVERY, "b's messages at a")
                    await eventually(lambda: len(b.received_from(1)) == len(a.sent), RECOVERY, "a's messages at b")
                    await asyncio.sleep(0.3)
                finally:
                    await a.stop()
                    await b.stop()
            check_against_store(await stored(pg_url, "r2"), [a, b], [1, 2])
            for proc in (one, two):
                assert proc.popen.poll() is None, proc.output()


def sqlite_path(settings: Any) -> str:
    return settings.database_url.removeprefix("sqlite:///")


async def test_sqlite_locked_answers_unavailable_then_recovers(tmp_path: Path) -> None:
    settings = base_settings(tmp_path, store_busy_timeout=0.3)
    async with running(settings) as srv:
        await srv.room("r", [1, 2])
        async with chat(srv, "r", 1) as a:
            await a.expect("message_history")
            holder = sqlite3.connect(sqlite_path(settings), isolation_level=None)
            try:
                # Another process's long write transaction: held past the busy timeout.
                holder.execute("BEGIN EXCLUSIVE")
                await a.send({"type": "chat_message", "content": "hello", "client_msg_id": "k1"})
                error = await a.expect("error", timeout=5)
                assert error["code"] == "unavailable" and error["client_msg_id"] == "k1", error
                assert error["request_type"] == "chat_message"
                # Bad input keeps its own codes meanwhile.
                await a.send("{not json")
                assert (await a.expect("error"))["code"] == "invalid_json"
                await a.send({"type": "chat_message", "client_msg_id": "k2"})
                assert (await a.expect("error"))["code"] == "invalid_payload"
                response = await http("POST", f"{srv.http}/api/rooms", json={"id": "s", "member_ids": [1]})
                assert response.status_code == 503 and "retry-after" in response.headers, response.text
                status, body = await readiness(srv.http)
                assert status == 503 and any("locked" in p for p in body["problems"]), body
                # An upload (outside the server API's wrapper) is 503 too, and leaves no file behind.
                async with httpx.AsyncClient(timeout=15) as client:
                    response = await client.post(
                        f"{srv.http}/chat/messages/file/",
                        files={"file": ("a.bin", b"data", "application/octet-stream")},
                        data={"room_id": "r"},
                        headers={"Authorization": f"Bearer {token(1)}"},
                    )
                assert response.status_code == 503 and "retry-after" in response.headers, response.text
                assert not [f for f in settings.upload_dir.rglob("*") if f.is_file()]
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            await eventually(lambda: _ready(srv.http), RECOVERY, "ready after the lock")
            await a.send({"type": "chat_message", "content": "hello", "client_msg_id": "k1"})
            message = (await a.expect("chat_message"))["message"]
            assert message["client_msg_id"] == "k1" and message["seq"] == 1
            await a.send({"type": "chat_message", "content": "hello", "client_msg_id": "k1"})
            assert (await a.expect("chat_message"))["message"]["id"] == message["id"]
            await a.send({"type": "delete_message", "message_id": "nope"})
            assert (await a.expect("error"))["code"] == "not_found"
        rows = await srv.runtime.db.fetch_all("SELECT client_msg_id FROM messages")
        assert [r[0] for r in rows] == ["k1"]
        await store_is_whole(srv.runtime.db)


async def test_sqlite_full_answers_unavailable_then_recovers(tmp_path: Path) -> None:
    async with running(base_settings(tmp_path)) as srv:
        await srv.room("r", [1])
        db = srv.runtime.db
        async with chat(srv, "r", 1) as a:
            await a.expect("message_history")
            # The writer's own connection may not grow the file past its size
            # now: the next write that needs a page fails with SQLITE_FULL.
            pages = await db.write(lambda tx: tx.fetch_one("PRAGMA page_count"))
            await db.write(lambda tx: tx.fetch_one(f"PRAGMA max_page_count = {int(pages[0])}"))
            big = "x" * 9_000
            await a.send({"type": "chat_message", "content": big, "client_msg_id": "f1"})
            error = await a.expect("error", timeout=5)
            assert error["code"] == "unavailable" and error["client_msg_id"] == "f1", error
            assert "full" in error["message"]
            status, body = await readiness(srv.http)
            assert status == 503 and any("full" in p for p in body["problems"]), body
            text = (await http("GET", f"{srv.http}/metrics")).text
            assert 'realtime_store_write_errors_total{kind="transient"} 1.0' in text
            await a.send({"type": "ping"})
            await a.expect("pong")  # still open
            await db.write(lambda tx: tx.fetch_one("PRAGMA max_page_count = 1073741823"))
            await a.send({"type": "chat_message", "content": big, "client_msg_id": "f1"})
            message = (await a.expect("chat_message"))["message"]
            assert message["client_msg_id"] == "f1"
        await eventually(lambda: _ready(srv.http), RECOVERY, "ready after the disk has room")
        assert [r[0] for r in await db.fetch_all("SELECT client_msg_id FROM messages")] == ["f1"]
        await store_is_whole(db)


async def test_sqlite_connections_that_break_are_replaced(tmp_path: Path) -> None:
    async with running(base_settings(tmp_path)) as srv:
        await srv.room("r", [1])
        db = srv.runtime.db
        writer_link, reader_link = db.writer.link, db._reader
        # Both of the server's long-lived connections stop under it.
        await writer_link.raw.close()
        await reader_link.raw.close()
        async with chat(srv, "r", 1) as a:
            # The connect reads (room, membership, snapshot) on a fresh reader.
            assert (await a.expect("message_history"))["messages"] == []
            # The write finds its connection gone before BEGIN: nothing was
            # committed, so it runs again on a fresh connection and succeeds.
            await a.send({"type": "chat_message", "content": "after", "client_msg_id": "z1"})
            assert (await a.expect("chat_message"))["message"]["client_msg_id"] == "z1"
        assert db.writer.link is not writer_link and db._reader is not reader_link
        await eventually(lambda: _ready(srv.http), RECOVERY, "ready with the new connections")
        assert [r[0] for r in await db.fetch_all("SELECT client_msg_id FROM messages")] == ["z1"]


async def test_a_replaced_writer_connection_keeps_writing_the_outbox(tmp_path: Path) -> None:
    """The outbox is a property of the store, not of one connection: after the
    writer's connection is replaced, an event Redis refuses is still kept."""
    require("redis")
    async with proxy_for(REDIS_URL) as redis, running(base_settings(tmp_path, broker_url=redis.url(REDIS_URL))) as srv:
        await srv.room("r", [1])
        db = srv.runtime.db
        await db.writer.link.raw.close()
        async with chat(srv, "r", 1) as a:
            await a.expect("message_history")
            await redis.down()
            await a.send({"type": "chat_message", "content": "kept", "client_msg_id": "k1"})
            assert (await a.expect("chat_message"))["message"]["client_msg_id"] == "k1"
            rows = await db.fetch_all("SELECT stream, seq FROM stream_outbox")
            assert [(r[0], int(r[1])) for r in rows] == [("room:r", 1)]
            await redis.up()

            async def relayed() -> bool:
                return not await db.fetch_all("SELECT 1 FROM stream_outbox")

            await eventually(relayed, RECOVERY, "the outbox relayed once Redis is back")


async def test_a_broker_outage_shows_in_readiness_and_metrics(tmp_path: Path) -> None:
    require("redis")
    async with proxy_for(REDIS_URL) as proxy:
        async with running(base_settings(tmp_path, broker_url=proxy.url(REDIS_URL))) as srv:
            assert await _ready(srv.http)
            assert "realtime_broker_up 1.0" in (await http("GET", f"{srv.http}/metrics")).text
            async with proxy.outage(2):

                async def broker_down() -> bool:
                    status, body = await readiness(srv.http)
                    return status == 503 and any(p.startswith("broker") for p in body["problems"])

                await eventually(broker_down, 10, "readiness reports the broker")
                assert "realtime_broker_up 0.0" in (await http("GET", f"{srv.http}/metrics")).text
                # The store is fine meanwhile: only the broker is named.
                _, body = await readiness(srv.http)
                assert not [p for p in body["problems"] if p.startswith("store")], body
            await eventually(lambda: _ready(srv.http), RECOVERY, "ready once Redis is back")
            assert "realtime_broker_up 1.0" in (await http("GET", f"{srv.http}/metrics")).text


def test_faults_are_told_apart_from_bugs() -> None:
    import asyncpg.exceptions as pg

    locked = sqlite3.OperationalError("database is locked")
    full = sqlite3.OperationalError("database or disk is full")
    assert is_transient(locked) and not loses_connection(locked)
    assert is_transient(full) and not loses_connection(full)
    assert is_transient(ConnectionRefusedError()) and loses_connection(ConnectionResetError())
    assert is_transient(pg.ConnectionDoesNotExistError("gone")) and loses_connection(pg.AdminShutdownError("bye"))
    assert is_transient(pg.CannotConnectNowError("starting up"))
    assert loses_connection(
        pg.InterfaceError("cannot call Connection.fetch(): connection has been released back to the pool")
    )
    assert is_transient(StoreUnavailable("x"))
    assert loses_connection(ValueError("Connection closed")) and not is_transient(ValueError("Connection"))
    assert loses_connection(sqlite3.ProgrammingError("Cannot operate on a closed database."))
    # Bugs and bad data are not faults of the store.
    assert not is_transient(sqlite3.OperationalError("no such table: nope"))
    assert not is_transient(sqlite3.IntegrityError("UNIQUE constraint failed"))
    assert not is_transient(pg.UniqueViolationError("duplicate key"))
    assert not is_transient(pg.UndefinedTableError("no table"))
    assert not is_transient(ValueError("bad"))
    assert not is_transient(KeyError("x"))


@pytest.mark.parametrize("value", ["0", "-1", "soon", "100000"])
def test_a_bad_busy_timeout_names_the_variable(value: str) -> None:
    from realtime.settings import SettingsError, from_env

    with pytest.raises(SettingsError, match=r"^STORE_BUSY_TIMEOUT: .*(seconds|number)"):
        from_env({"JWT_SECRET": "x" * 40, "STORE_BUSY_TIMEOUT": value})


def test_the_busy_timeout_is_read_in_seconds() -> None:
    from realtime.settings import from_env

    assert from_env({"JWT_SECRET": "x" * 40, "STORE_BUSY_TIMEOUT": "0.25"}).store_busy_timeout == 0.25
    assert from_env({"JWT_SECRET": "x" * 40}).store_busy_timeout == 10.0


async def test_a_writer_connection_that_fails_its_lock_query_is_given_back() -> None:
    """Reconnecting on PostgreSQL takes the sole-process lock again; if that
    query fails (the store went away again), the fresh connection is closed,
    not left held by a task that would wait for ever."""
    from realtime.store.db import Db

    class Runner:
        outbox = False

        async def fetch_one(self, sql: str, params: Any = ()) -> Any:
            raise ConnectionResetError("gone again")

    class Link:
        runner = Runner()
        closed = False

        async def close(self) -> None:
            self.closed = True

    db = Db("postgresql://nowhere/test")
    link = Link()

    async def opened() -> Any:
        return link

    db._open = opened  # type: ignore[method-assign]
    db._sole_lock = True
    with pytest.raises(ConnectionResetError):
        await db._open_writer()
    assert link.closed
