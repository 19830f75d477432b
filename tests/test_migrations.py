"""Versioned schema migrations (store/migrate.py) on SQLite and PostgreSQL.

Later versions come from a temporary folder (the runner takes it as a
parameter; the server's default is monkeypatched), so no test migration ships.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from realtime.server import create_app
from realtime.store import migrate
from realtime.store.db import Db
from realtime.store.migrate import MigrationError, MigrationFailed, NewerSchema, discover
from tests.conftest import base_settings, running, token, ws
from tests.procs import REDIS_URL, Proc, ready, require, servers, start

FIRST_SCHEMA = Path(__file__).resolve().parent / "data" / "schema_v1.sql"  # `git show 7b3438b:schema.sql`
NOW = "2024-01-01T00:00:00.000Z"


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


async def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows read (or a statement run) on a connection of the test's own."""
    if is_sqlite(url):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            rows = conn.execute(sql).fetchall()
            conn.commit()
            return rows
        finally:
            conn.close()
    pg = await asyncpg.connect(url)
    try:
        if not sql.startswith("SELECT"):
            await pg.execute(sql)
            return []
        return [tuple(row) for row in await pg.fetch(sql)]
    finally:
        await pg.close()


async def versions(url: str) -> list[tuple[int, str]]:
    return [(int(v), str(n)) for v, n in await query(url, "SELECT version, name FROM schema_migrations ORDER BY 1")]


async def has_table(url: str, table: str) -> bool:
    if is_sqlite(url):
        return bool(await query(url, f"SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '{table}'"))
    return bool(await query(url, f"SELECT 1 FROM information_schema.tables WHERE table_name = '{table}'"))


def folder(tmp_path: Path, files: dict[str, str]) -> Path:
    """A migrations folder with these files."""
    path = tmp_path / "migrations"
    path.mkdir(exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


async def connect(url: str, migrations: Path | None = None) -> Db:
    db = Db(url, migrations=migrations)
    await db.connect()
    return db


async def make_first_schema_database(url: str, upto: str | None = None) -> None:
    """A database as the server before versions made it: schema.sql of commit
    7b3438b run statement by statement (on SQLite its `ADD COLUMN IF NOT
    EXISTS`, a fresh table's column, as that server ran it); `upto`: only
    the part before that comment line (an older server's schema). Plus a room
    with one message."""
    text = FIRST_SCHEMA.read_text()
    if upto is not None:
        text = text.split(upto)[0]
    statements = migrate.schema_statements(text)
    if is_sqlite(url):
        statements = [s.replace("ADD COLUMN IF NOT EXISTS", "ADD COLUMN") for s in statements]
    rows = [
        f"INSERT INTO rooms (id, created_at) VALUES ('r', '{NOW}')",
        "INSERT INTO room_members (room_id, user_id) VALUES ('r', 1), ('r', 2)",
        "INSERT INTO streams (stream, last_seq) VALUES ('room:r', 1)",
        "INSERT INTO messages (id, room_id, seq, sender_id, sender_name, content, message_type, created_at) "
        f"VALUES ('m0', 'r', 1, 1, 'user1', 'from before', 'text', '{NOW}')",
    ]
    for stmt in statements + rows:
        await query(url, stmt)
    assert not await has_table(url, "schema_migrations")


# ---- 1. from the schema before versions to the latest ---------------------------------


@pytest.mark.parametrize("made_by", ["the first schema", "a server from before retention"])
async def test_a_database_from_before_versions_is_recorded_as_1_then_upgraded(
    tmp_path: Path, database_url: str, made_by: str
) -> None:
    await make_first_schema_database(database_url, upto="-- Retention" if made_by != "the first schema" else None)
    later = folder(tmp_path, {"0002_room_note.sql": "ALTER TABLE rooms ADD COLUMN note TEXT;"})
    db = await connect(database_url, later)
    try:
        # schema.sql's upgrade steps ran as part of version 1 (the retention columns), then version 2.
        assert await db.fetch_one("SELECT created_at FROM stream_events WHERE stream = 'none'") is None
        assert await db.fetch_one("SELECT message_count, room_id FROM notifications") is None
        assert tuple(await db.fetch_one("SELECT content, seq FROM messages")) == ("from before", 1)
        assert tuple(await db.fetch_one("SELECT id, note FROM rooms")) == ("r", None)
    finally:
        await db.disconnect()
    assert await versions(database_url) == [(1, "schema"), (2, "room_note")]
    applied = await query(database_url, "SELECT applied_at FROM schema_migrations ORDER BY version")
    # The next start finds nothing to do (version 2's ALTER TABLE would fail if it ran again).
    await (await connect(database_url, later)).disconnect()
    assert await query(database_url, "SELECT applied_at FROM schema_migrations ORDER BY version") == applied


async def test_a_server_process_starts_on_a_database_of_the_first_schema(tmp_path: Path, database_url: str) -> None:
    await make_first_schema_database(database_url)
    proc = start({"DATABASE_URL": database_url, "UPLOAD_DIR": str(tmp_path / "up")}, tmp_path / "server.log")
    try:
        await ready(proc)
        async with (
            ws(proc.ws_url("/ws/chat/r/", token=token(1, name="user1"))) as a,
            ws(proc.ws_url("/ws/chat/r/", token=token(2, name="user2"))) as b,
        ):
            history = await a.expect("message_history")
            assert [m["content"] for m in history["messages"]] == ["from before"]
            await b.expect("message_history")
            await a.send({"type": "chat_message", "content": "after the upgrade"})
            for client in (a, b):
                frame = await client.expect("chat_message")
                assert (frame["seq"], frame["message"]["content"]) == (2, "after the upgrade")
    finally:
        proc.terminate()
        proc.wait()
    known = discover(None, "sqlite" if is_sqlite(database_url) else "postgres")
    assert await versions(database_url) == [(m.version, m.name) for m in known]


# ---- 2. several starts at once ------------------------------------------------------------

# Slow on purpose, so that the runners overlap: pg_sleep on PostgreSQL, a long
# count on SQLite (which has no sleep). Each run leaves one more row in `probe`.
RACE = {
    "0002_probe.sql": "CREATE TABLE probe (n INTEGER NOT NULL);\nINSERT INTO probe (n) VALUES (2);\n",
    "0003_count.sqlite.sql": (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000)\n"
        "INSERT INTO probe (n) SELECT 3 FROM c WHERE x = (SELECT MAX(x) FROM c);\n"
    ),
    "0003_count.postgres.sql": "SELECT pg_sleep(0.5);\nINSERT INTO probe (n) VALUES (3);\n",
}


async def test_runners_started_together_apply_each_version_once(tmp_path: Path, database_url: str) -> None:
    later = folder(tmp_path, RACE)
    dbs = await asyncio.gather(*(connect(database_url, later) for _ in range(4)))
    for db in dbs:
        await db.disconnect()
    assert await versions(database_url) == [(1, "schema"), (2, "probe"), (3, "count")]
    assert sorted(n for (n,) in await query(database_url, "SELECT n FROM probe")) == [2, 3]


async def test_stores_opened_together_on_a_new_sqlite_file_all_start(tmp_path: Path) -> None:
    """Switching a new file to WAL takes the lock for a moment; a store that
    finds it taken waits, up to its busy timeout, rather than failing start-up."""
    for attempt in range(20):
        url = f"sqlite:///{tmp_path / f'fresh{attempt}.db'}"
        dbs = await asyncio.gather(*(connect(url) for _ in range(6)), return_exceptions=True)
        for db in dbs:
            if isinstance(db, Db):
                await db.disconnect()
        assert [d for d in dbs if not isinstance(d, Db)] == []
        assert await query(url, "PRAGMA journal_mode") == [("wal",)]


async def test_two_server_processes_started_together_on_a_fresh_database(tmp_path: Path, database_url: str) -> None:
    require("redis")
    env = {"DATABASE_URL": database_url, "BROKER_URL": REDIS_URL, "UPLOAD_DIR": str(tmp_path / "up")}
    async with servers(2, env, tmp_path):
        pass
    known = discover(None, "sqlite" if is_sqlite(database_url) else "postgres")
    assert await versions(database_url) == [(m.version, m.name) for m in known]


# ---- 3. a database newer than the server --------------------------------------------------


def refusals(proc: Proc) -> list[str]:
    """The refusal lines of a server's output (uvicorn logs the lifespan's SystemExit with its traceback)."""
    return [line for line in proc.output().splitlines() if line.startswith("SystemExit: realtime: DATABASE_URL=")]


async def test_a_database_newer_than_the_server_refuses_start_up(tmp_path: Path, database_url: str) -> None:
    await (await connect(database_url)).disconnect()
    newest = discover(None, "sqlite" if is_sqlite(database_url) else "postgres")[-1].version
    ahead = newest + 5
    await query(
        database_url,
        f"INSERT INTO schema_migrations (version, name, applied_at) VALUES ({ahead}, 'from_the_future', '{NOW}')",
    )
    with pytest.raises(NewerSchema, match=f"version {ahead}, newer than this server's newest, {newest}"):
        await connect(database_url)

    proc = start({"DATABASE_URL": database_url, "UPLOAD_DIR": str(tmp_path / "up")}, tmp_path / "server.log")
    assert proc.wait(30) != 0
    [line] = refusals(proc)
    assert f"schema is at version {ahead}, newer than this server's newest, {newest}" in line
    shown = database_url.rsplit("/", 1)[-1]
    assert shown in line
    assert [v for v, _ in await versions(database_url)] == [*range(1, newest + 1), ahead]


def test_the_refusal_shows_database_url_without_its_password() -> None:
    shown = Db("postgresql://app:hunter2secret@db.internal:5432/realtime").shown_url
    assert "hunter2secret" not in shown
    assert shown.startswith("postgresql://app:") and shown.endswith("@db.internal:5432/realtime")


# ---- 4. a failing migration -----------------------------------------------------------------

HALF = "CREATE TABLE half (n INTEGER);\nINSERT INTO half (n) VALUES (1);\n"


async def test_a_failing_migration_is_rolled_back_and_refuses_start_up_until_fixed(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    later = folder(tmp_path, {"0002_half.sql": HALF + "INSERT INTO no_such_table (n) VALUES (1);\n"})
    monkeypatch.setattr(migrate, "MIGRATIONS", later)
    settings = base_settings(tmp_path, database_url=database_url)
    app = create_app(settings)
    with pytest.raises(SystemExit) as refused:
        async with app.router.lifespan_context(app):
            pytest.fail("the server started")
    line = str(refused.value)
    assert "\n" not in line
    assert line.startswith("realtime: DATABASE_URL=")
    assert "schema migration 0002_half.sql failed and was rolled back, not recorded" in line
    assert "no_such_table" in line
    # Nothing of version 2 stayed: neither its table nor its row; version 1 is kept.
    assert await versions(database_url) == [(1, "schema")]
    assert not await has_table(database_url, "half")

    (later / "0002_half.sql").write_text(HALF)
    async with running(settings) as server:
        assert tuple(await server.runtime.db.fetch_one("SELECT COUNT(*) FROM half")) == (1,)
    assert await versions(database_url) == [(1, "schema"), (2, "half")]


async def test_a_version_recorded_under_another_name_refuses_start_up(tmp_path: Path, database_url: str) -> None:
    await (await connect(database_url, folder(tmp_path, {"0002_one.sql": "SELECT 1;"}))).disconnect()
    (tmp_path / "migrations" / "0002_one.sql").rename(tmp_path / "migrations" / "0002_other.sql")
    with pytest.raises(MigrationError, match=r"version 2 was applied as 'one'.*0002_other\.sql"):
        await connect(database_url, tmp_path / "migrations")


# ---- 5. dialect variants ----------------------------------------------------------------------


KIND = "CREATE TABLE kind (n INTEGER, name TEXT);\n"


async def test_a_dialect_variant_takes_the_place_of_the_plain_file(tmp_path: Path, database_url: str) -> None:
    later = folder(
        tmp_path,
        {
            "0002_kind.sql": KIND + "INSERT INTO kind VALUES (2, 'plain');\n",
            "0002_kind.sqlite.sql": KIND + "INSERT INTO kind VALUES (2, 'sqlite');\n",
            "0002_kind.postgres.sql": KIND + "INSERT INTO kind VALUES (2, 'pg');\n",
            "0003_more.sql": "INSERT INTO kind VALUES (3, 'plain');\n",
            "0003_more.postgres.sql": "INSERT INTO kind VALUES (3, 'pg');\n",
        },
    )
    await (await connect(database_url, later)).disconnect()
    rows = await query(database_url, "SELECT n, name FROM kind ORDER BY n")
    assert rows == ([(2, "sqlite"), (3, "plain")] if is_sqlite(database_url) else [(2, "pg"), (3, "pg")])
    assert await versions(database_url) == [(1, "schema"), (2, "kind"), (3, "more")]


async def test_postgres_runs_a_file_as_written(tmp_path: Path, pg_url: str) -> None:
    """A function body with `;` and `$$`, and a `?` (a jsonb operator): the
    server parses the file, not the runner."""
    later = folder(
        tmp_path,
        {
            "0002_fn.postgres.sql": (
                "CREATE FUNCTION twice(n INTEGER) RETURNS INTEGER AS $$\n"
                "BEGIN\n    RETURN n * 2;\nEND;\n$$ LANGUAGE plpgsql;\n"
                "CREATE TABLE flags (doc JSONB);\n"
                "INSERT INTO flags SELECT '{\"a\": 1}' WHERE '{\"a\": 1}'::jsonb ? 'a';\n"
            ),
            "0002_fn.sqlite.sql": "SELECT 1;",
        },
    )
    await (await connect(pg_url, later)).disconnect()
    assert await query(pg_url, "SELECT twice(21), (SELECT COUNT(*) FROM flags)") == [(42, 1)]


# ---- SQLite specifics -------------------------------------------------------------------------


async def test_a_sqlite_table_rebuild_keeps_the_rows_that_refer_to_it(tmp_path: Path) -> None:
    """SQLite changes a column by rebuilding the table; with foreign keys on,
    dropping the old `rooms` would cascade to `room_members`. Migrations run
    with them off and are checked before they commit."""
    url = f"sqlite:///{tmp_path}/rebuild.db"
    await make_first_schema_database(url)
    rebuild = (
        "CREATE TABLE rooms_new (id TEXT PRIMARY KEY, consultation_id TEXT, created_at TEXT NOT NULL, "
        "title TEXT NOT NULL DEFAULT '');\n"
        "INSERT INTO rooms_new (id, consultation_id, created_at) SELECT id, consultation_id, created_at FROM rooms;\n"
        "DROP TABLE rooms;\n"
        "ALTER TABLE rooms_new RENAME TO rooms;\n"
    )
    await (await connect(url, folder(tmp_path, {"0002_rebuild_rooms.sql": rebuild}))).disconnect()
    assert await query(url, "SELECT room_id, user_id FROM room_members ORDER BY user_id") == [("r", 1), ("r", 2)]
    assert await query(url, "SELECT id, title FROM rooms") == [("r", "")]

    (tmp_path / "migrations" / "0003_orphans.sql").write_text("DELETE FROM rooms;")
    with pytest.raises(MigrationFailed, match="break a foreign key in room_members"):
        await connect(url, tmp_path / "migrations")
    assert await query(url, "SELECT id FROM rooms") == [("r",)]


def test_sqlite_statements_end_where_sqlite_says() -> None:
    text = (
        "-- a comment; with a semicolon\n"
        "INSERT INTO t VALUES ('a;b'); INSERT INTO t VALUES (2);\n"
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n  UPDATE t SET x = 1;\n  DELETE FROM u;\nEND;\n"
        "SELECT 1"
    )
    assert migrate.sqlite_statements(text) == [
        "-- a comment; with a semicolon\nINSERT INTO t VALUES ('a;b');",
        "INSERT INTO t VALUES (2);",
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN\n  UPDATE t SET x = 1;\n  DELETE FROM u;\nEND;",
        "SELECT 1",
    ]


# ---- the folder: what is refused before anything runs -------------------------------------------


@pytest.mark.parametrize(
    ("files", "error"),
    [
        ({"2_webhooks.sql": ""}, "2_webhooks.sql: the name must be NNNN_<name>.sql"),
        ({"0002_Web-Hooks.sql": ""}, "0002_Web-Hooks.sql: the name must be"),
        ({"0002_webhooks.mysql.sql": ""}, "0002_webhooks.mysql.sql: the name must be"),
        ({"0001_again.sql": ""}, "0001_again.sql: version 1 is schema.sql; start at 0002"),
        ({"0002_a.sql": "", "0002_b.sql": ""}, "schema migration 0002 has two names: a and b"),
        ({"0002_a.sql": "", "0004_c.sql": ""}, "schema migrations skip from 0002 to 0004"),
        ({"0003_c.sql": ""}, "schema migrations skip from 0001 to 0003"),
        ({"0002_a.postgres.sql": ""}, "0002_a has no file for sqlite: add 0002_a.sql or 0002_a.sqlite.sql"),
    ],
)
def test_a_bad_migrations_folder_is_refused(tmp_path: Path, files: dict[str, str], error: str) -> None:
    with pytest.raises(MigrationError, match=re.escape(error)):
        discover(folder(tmp_path, files), "sqlite")


async def test_a_bad_folder_refuses_start_up_and_changes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/bad.db"
    with pytest.raises(MigrationError, match="skip from 0001 to 0003"):
        await connect(url, folder(tmp_path, {"0003_c.sql": "CREATE TABLE c (n INTEGER);"}))
    assert not await has_table(url, "users")


def test_versions_are_taken_in_order_and_other_files_are_left_alone(tmp_path: Path) -> None:
    # 0010 lists before 0002..0009 only if sorted wrongly; README.md and an editor's backup are not versions.
    later = folder(tmp_path, {f"{v:04d}_step{v}.sql": "" for v in (10, *range(2, 10))})
    folder(tmp_path, {"README.md": "", "0002_step2.sql.orig": ""})
    (later / "__pycache__").mkdir()
    found = discover(later, "postgres")
    assert [(m.version, m.name) for m in found] == [(1, "schema"), *((v, f"step{v}") for v in range(2, 11))]
    assert found[0].path == migrate.SCHEMA


def test_the_package_folder_holds_only_valid_migrations() -> None:
    for dialect in migrate.DIALECTS:
        assert discover(None, dialect)[0].name == "schema"


def test_a_package_without_its_migrations_folder_refuses_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An install that lost store/migrations/ must not start a fresh database at version 1."""
    monkeypatch.setattr(migrate, "MIGRATIONS", tmp_path / "missing")
    for dialect in migrate.DIALECTS:
        with pytest.raises(MigrationError, match="is not a folder"):
            discover(None, dialect)
