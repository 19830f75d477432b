"""Stream epochs: a `since` from before a database reset or restore is a resync,
not a silent replay of other events (docs/PROTOCOL.md, "Epochs")."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

from realtime.store.db import Runner
from tests.conftest import Client, Server, base_settings, chat, running, token, ws


async def post(client: Client, n: int, prefix: str) -> list[dict[str, Any]]:
    sent = []
    for i in range(n):
        await client.send({"type": "chat_message", "content": f"{prefix}{i}"})
        sent.append(await client.expect("chat_message"))
    return sent


async def test_a_since_from_before_a_database_reset_is_a_resync(tmp_path: Path) -> None:
    # The same server settings on a fresh database: the stream starts again at seq 1.
    async with running(base_settings(tmp_path, database_url=f"sqlite:///{tmp_path}/old.db")) as old:
        await old.room("r1", [1])
        async with chat(old, "r1", 1) as a:
            first = await a.expect("message_history")
            assert first["epoch"]
            seen = (await post(a, 3, "old"))[-1]
    old_epoch, since = first["epoch"], seen["seq"]
    async with running(base_settings(tmp_path, database_url=f"sqlite:///{tmp_path}/new.db")) as new:
        await new.room("r1", [1])
        async with chat(new, "r1", 1) as a:
            await a.expect("message_history")
            await post(a, 5, "new")  # past the old `since`: without an epoch it would replay new4 only
        async with chat(new, "r1", 1, since=since, epoch=old_epoch) as a:
            resync = await a.expect("resync_required")
            assert resync["last_seq"] == 5 and resync["epoch"] != old_epoch
            history = await a.expect("message_history")
            assert [m["content"] for m in history["messages"]] == [f"new{i}" for i in range(5)]
            assert history["epoch"] == resync["epoch"]
            await a.silent()
        # Without an epoch the client is taken at its word, as before epochs.
        async with chat(new, "r1", 1, since=since) as a:
            assert (await a.expect("chat_message"))["message"]["content"] == "new3"
            assert (await a.expect("chat_message"))["message"]["content"] == "new4"
            await a.silent()


async def test_deleted_stream_rows_make_a_new_epoch_and_sync_checks_it(server: Server) -> None:
    await server.room("r1", [1])
    async with chat(server, "r1", 1) as a:
        epoch = (await a.expect("message_history"))["epoch"]
        seen = await post(a, 2, "m")
        # The same epoch resumes as before.
        await a.send({"type": "sync", "since": seen[0]["seq"], "epoch": epoch})
        assert (await a.expect("chat_message"))["message"]["content"] == "m1"
        await a.silent()
    async with chat(server, "r1", 1, since=seen[0]["seq"], epoch=epoch) as a:
        assert (await a.expect("chat_message"))["message"]["content"] == "m1"
        await a.silent()
    # A restore that lost the streams table: the row comes back with a new epoch.
    await server.runtime.db.write(_delete_streams)
    async with chat(server, "r1", 1) as a:
        fresh = (await a.expect("message_history"))["epoch"]
        assert fresh != epoch
        await a.send({"type": "sync", "since": seen[0]["seq"], "epoch": epoch})
        assert (await a.expect("resync_required"))["epoch"] == fresh
        await a.expect("message_history")
        # A bad epoch is a bad frame: an error, and the socket stays usable.
        await a.send({"type": "sync", "since": 1, "epoch": "x" * 65})
        assert (await a.expect("error"))["code"] == "invalid_payload"
        await a.send({"type": "ping"})
        await a.expect("pong")
        # A blank one is none, as with `?epoch=`: the same answer as no epoch at all.
        answers = []
        for sync in ({"type": "sync", "since": 0}, {"type": "sync", "since": 0, "epoch": ""}):
            await a.send(sync)
            frames = []
            with contextlib.suppress(TimeoutError):
                while True:
                    frames.append(await a.recv(timeout=0.5))
            answers.append([f["type"] for f in frames])
        assert answers[0] == answers[1] and answers[0] and "error" not in answers[0], answers


async def _delete_streams(tx: Runner) -> None:
    await tx.execute("DELETE FROM streams")


@pytest.mark.parametrize("with_epoch", [True, False])
async def test_notifications_carry_the_epoch(server: Server, with_epoch: bool) -> None:
    async with server.api() as api:
        body = {"user_ids": [7], "type": "system", "title": "t", "body": "b"}
        assert (await api.post("/api/notifications", json=body)).status_code == 201
    url = server.ws_url("/ws/notifications/", token=token(7))
    async with ws(url) as n:
        snapshot = await n.expect("bulk_update")
        assert snapshot["epoch"] and snapshot["last_seq"] == 1
    query = {"since": 1, "epoch": "another" if with_epoch else ""}
    async with ws(server.ws_url("/ws/notifications/", token=token(7), **query)) as n:
        if with_epoch:
            assert (await n.expect("resync_required"))["epoch"] == snapshot["epoch"]
            await n.expect("bulk_update")
        await n.silent()
