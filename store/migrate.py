"""Versioned schema migrations, applied at start-up (docs/deploy.md, "Schema migrations").

Version 1 is `schema.sql` at the top level, as it was before versions: every
statement idempotent, so a database made by a server from before versions
(its tables there, no `schema_migrations`) is brought to version 1 by running
it once more, and then recorded. Later versions are the files of
`store/migrations/`, `NNNN_<name>.sql`, with optional variants
`NNNN_<name>.sqlite.sql` / `NNNN_<name>.postgres.sql` that take the place of
the plain file on that backend. Each version runs in one transaction together
with its row in `schema_migrations`: it is applied whole and recorded, or
not at all.

Several processes may start at once. PostgreSQL: one session advisory lock,
held on the migrating connection from the first read of `schema_migrations`
to the last version, so each version is applied once. SQLite: each version's
transaction is `BEGIN IMMEDIATE` (the write lock up front) and looks again
whether another process recorded the version meanwhile.

This module imports nothing of store/db.py (db.py calls it): it works on a
connection as db.py's runners are, `?` placeholders and the driver's own
connection under `raw`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("realtime.store")

SCHEMA = Path(__file__).resolve().parent.parent / "schema.sql"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Any fixed number, the same key as the servers from before versions took
# around schema.sql: old and new processes starting together wait for each other.
LOCK_KEY = 7_202_611
FIRST = 1  # schema.sql
DIALECTS = ("sqlite", "postgres")
FILE_NAME = re.compile(r"(?P<version>\d{4})_(?P<name>[a-z0-9_]+?)(?:\.(?P<dialect>sqlite|postgres))?\.sql")
TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version    INTEGER PRIMARY KEY,"
    " name       TEXT NOT NULL,"
    " applied_at TEXT NOT NULL)"
)


class MigrationError(Exception):
    """The schema cannot be brought to this server's version: start-up is refused."""


class NewerSchema(MigrationError):
    """The database was migrated by a newer server than this one."""


class MigrationFailed(MigrationError):
    """A version failed; its transaction was rolled back and it is not recorded."""


class Connection(Protocol):
    """A connection as store/db.py's runners are (`SqliteRunner`, `PgRunner`)."""

    raw: Any

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]: ...
    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Any] | None: ...
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def label(self) -> str:
        return self.path.name


def dialect_of(is_sqlite: bool) -> str:
    return "sqlite" if is_sqlite else "postgres"


def discover(directory: Path | None, dialect: str) -> list[Migration]:
    """Every version this server knows, 1 first, each with its file for `dialect`.

    Refused (`MigrationError`, before anything runs): a `.sql` file whose name
    is not `NNNN_<name>[.sqlite|.postgres].sql`, two names for one version, a
    version with no file for this backend, and a hole in the numbering (a
    file missing or misnamed, which would otherwise be skipped for ever).
    """
    assert dialect in DIALECTS, dialect
    known = [Migration(FIRST, "schema", SCHEMA)]
    folder = MIGRATIONS if directory is None else directory
    if not folder.is_dir():
        # Not skipped: a package installed without its migrations would start a
        # fresh database at version 1 and fail only where a later table is used.
        raise MigrationError(f"schema migrations: {folder} is not a folder (the package is installed incompletely)")
    chosen: dict[int, tuple[str, dict[str | None, Path]]] = {}
    for path in sorted(folder.iterdir()):
        if not path.name.endswith(".sql"):
            continue
        match = FILE_NAME.fullmatch(path.name)
        if match is None:
            raise MigrationError(
                f"schema migration file {path.name}: the name must be NNNN_<name>.sql "
                "(or NNNN_<name>.sqlite.sql / NNNN_<name>.postgres.sql), <name> in a-z, 0-9 and _"
            )
        version, name = int(match["version"]), match["name"]
        if version <= FIRST:
            raise MigrationError(f"schema migration file {path.name}: version {FIRST} is schema.sql; start at 0002")
        seen_name, files = chosen.setdefault(version, (name, {}))
        if seen_name != name:
            raise MigrationError(f"schema migration {version:04d} has two names: {seen_name} and {name}")
        files[match["dialect"]] = path
    for version in sorted(chosen):
        name, files = chosen[version]
        path = files.get(dialect) or files.get(None)
        if path is None:
            stem = f"{version:04d}_{name}"
            raise MigrationError(
                f"schema migration {stem} has no file for {dialect}: add {stem}.sql or {stem}.{dialect}.sql"
            )
        if version != known[-1].version + 1:
            raise MigrationError(f"schema migrations skip from {known[-1].version:04d} to {version:04d}")
        known.append(Migration(version, name, path))
    return known


async def upgrade(conn: Connection, *, is_sqlite: bool, directory: Path | None = None) -> int:
    """Apply the versions `conn`'s database lacks; returns the version it is at.

    `conn` is a connection of its own, not shared meanwhile, and left in no
    transaction. `directory`: the later versions' folder (the package's when None).
    """
    known = discover(directory, dialect_of(is_sqlite))
    if is_sqlite:
        # SQLite's way for schema changes: foreign keys off, so that a table
        # rebuilt (new table, copy, drop, rename) does not cascade its drop to
        # other tables' rows; each version is checked before it commits instead.
        await conn.execute("PRAGMA foreign_keys=OFF")
        return await _upgrade(conn, known, is_sqlite)
    unlock = f"SELECT pg_advisory_unlock({LOCK_KEY})"
    await _pg_lock(conn)
    try:
        version = await _upgrade(conn, known, is_sqlite)
    except BaseException:
        # The error to tell is the first one; a connection that cannot unlock
        # is closed by the caller, and the lock goes with it.
        with contextlib.suppress(Exception):
            await conn.execute(unlock)
        raise
    await conn.execute(unlock)
    return version


async def _pg_lock(conn: Connection) -> None:
    row = await conn.fetch_one(f"SELECT pg_try_advisory_lock({LOCK_KEY})")
    if row is not None and row[0]:
        return
    log.info("schema: another process is migrating this database; waiting for it")
    await conn.execute(f"SELECT pg_advisory_lock({LOCK_KEY})")


async def _upgrade(conn: Connection, known: list[Migration], is_sqlite: bool) -> int:
    newest = known[-1]
    async with _transaction(conn, is_sqlite):
        await conn.execute(TABLE)
        applied = await _applied(conn, known)
    pending = [m for m in known if m.version not in applied]
    for migration in pending:
        async with _transaction(conn, is_sqlite):
            # On SQLite another process may have applied it since the read above.
            if is_sqlite and migration.version in await _applied(conn, known):
                continue
            await _apply(conn, migration, is_sqlite)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, _now()),
            )
        log.info("schema: applied version %d (%s)", migration.version, migration.label)
    if pending:
        log.info("schema: at version %d", newest.version)
    return newest.version


async def _applied(conn: Connection, known: list[Migration]) -> set[int]:
    """The versions recorded; refused when the database is ahead of this server
    or recorded a version under another name than this server's file."""
    rows = await conn.fetch_all("SELECT version, name FROM schema_migrations ORDER BY version")
    recorded = {int(version): str(name) for version, name in rows}
    newest = known[-1].version
    if recorded and max(recorded) > newest:
        raise NewerSchema(
            f"the database's schema is at version {max(recorded)}, newer than this server's newest, {newest}: "
            "run a server that knows it (or restore the database from before that upgrade)"
        )
    for migration in known:
        name = recorded.get(migration.version)
        if name is not None and name != migration.name:
            raise MigrationError(
                f"schema version {migration.version} was applied as {name!r}, "
                f"but this server's file for it is {migration.label}: one of the two was renamed or replaced"
            )
    return set(recorded)


class _transaction:
    """One transaction on `conn`: committed when the block ends, else rolled back."""

    def __init__(self, conn: Connection, is_sqlite: bool) -> None:
        self.conn = conn
        self.is_sqlite = is_sqlite

    async def __aenter__(self) -> None:
        if not self.is_sqlite:
            await self.conn.execute("BEGIN")
            return
        # IMMEDIATE: the write lock up front, so two processes cannot both read
        # "not applied" and then both apply. Another process's migration may
        # hold it longer than busy_timeout: wait for it, as on PostgreSQL.
        while True:
            try:
                await self.conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "database is locked" not in str(exc):
                    raise
                log.info("schema: another process is migrating this database; waiting for it")

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if kind is None:
            await self.conn.execute("COMMIT")
            return
        try:
            await self.conn.execute("ROLLBACK")
        except Exception as rollback:  # noqa: BLE001 - the connection is gone; the first error is the one to tell
            log.warning("schema: rollback failed: %r", rollback)


async def _apply(conn: Connection, migration: Migration, is_sqlite: bool) -> None:
    text = migration.path.read_text()
    try:
        if migration.version == FIRST:
            for stmt in schema_statements(text):
                await schema_execute(conn, stmt, is_sqlite)
            return
        if not is_sqlite:
            # The file as one simple query: several statements, `$$` bodies and
            # a `?` in its text are the server's to parse, not ours.
            await conn.raw.execute(text)
            return
        for stmt in sqlite_statements(text):
            await conn.execute(stmt)
        broken = await conn.fetch_all("PRAGMA foreign_key_check")
        if broken:
            tables = sorted({str(row[0]) for row in broken})
            raise MigrationError(f"it leaves rows that break a foreign key in {', '.join(tables)}")
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise MigrationFailed(
            f"schema migration {migration.label} failed and was rolled back, not recorded: "
            f"{type(exc).__name__}: {reason}; fix it and start again"
        ) from exc


def _now() -> str:
    # As store/db.py's utc_now (not imported: db.py imports this module).
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def schema_statements(text: str) -> list[str]:
    """schema.sql's statements: `--` comment lines dropped, split at every `;`."""
    lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
    return [stmt.strip() for stmt in "\n".join(lines).split(";") if stmt.strip()]


def sqlite_statements(text: str) -> list[str]:
    """A migration's statements for SQLite, which runs one per call: split at
    the `;` that SQLite itself says end one (not those in a string, a comment
    or a trigger's body)."""
    statements: list[str] = []
    current = ""
    pieces = text.split(";")
    for piece in pieces[:-1]:
        current += piece + ";"
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    rest = (current + pieces[-1]).strip()
    if rest:
        statements.append(rest)  # no final `;`: SQLite runs it, or says what is wrong with it
    return statements


# `ALTER TABLE t ADD COLUMN IF NOT EXISTS c ...`: PostgreSQL's clause, which SQLite lacks.
ADD_COLUMN = re.compile(r"ALTER\s+TABLE\s+(\w+)\s+ADD\s+COLUMN\s+IF\s+NOT\s+EXISTS\s+(\w+)\b", re.IGNORECASE)


async def schema_execute(conn: Connection, stmt: str, is_sqlite: bool) -> None:
    """One statement of schema.sql. An added column is added only when the
    table does not have it yet (a database made by an older server): SQLite
    has no `IF NOT EXISTS` there, and on PostgreSQL even a no-op ALTER TABLE
    would wait for, then block, every query on a busy table."""
    match = ADD_COLUMN.match(stmt)
    if match is None:
        await conn.execute(stmt)
        return
    table, column = match.groups()
    if is_sqlite:
        rows = await conn.fetch_all(f"PRAGMA table_info({table})")
        if column.lower() not in {str(row[1]).lower() for row in rows}:
            await conn.execute(ADD_COLUMN.sub(f"ALTER TABLE {table} ADD COLUMN {column}", stmt, count=1))
        return
    sql = (
        "SELECT 1 FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = ? AND column_name = ?"
    )
    if await conn.fetch_one(sql, (table.lower(), column.lower())) is None:
        await conn.execute(stmt)
