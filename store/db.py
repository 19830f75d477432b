"""Connections, statement execution and group commit.

`databases` owns the connections (URL parsing, the asyncpg pool, the aiosqlite
connection); statements run on the driver connection it holds
(`Connection.raw_connection`). databases' own query path compiles every
statement through SQLAlchemy, which measured twice as slow per query on SQLite,
and its SQLite pool opens a connection and a thread per acquire, so this module
keeps long-lived connections instead: one writer everywhere, one reader on
SQLite, and the pool for reads on PostgreSQL.

SQL is written once, with `?` placeholders; for asyncpg they become `$n`.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import databases
from databases.core import Connection

from store.errors import StoreError

log = logging.getLogger("realtime.store")

T = TypeVar("T")
Row = Sequence[Any]

SCHEMA = Path(__file__).resolve().parent.parent / "schema.sql"
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=10000",
    "PRAGMA foreign_keys=ON",
    # Checkpoint every 10,000 WAL pages (40 MB), not 1,000: a page written by
    # many commits meanwhile is copied back once. Halved the commit time of a
    # 125-message group commit.
    "PRAGMA wal_autocheckpoint=10000",
)
# Any fixed number: serializes schema creation between processes on PostgreSQL.
SCHEMA_LOCK_KEY = 7_202_611
SOLE_PROCESS_KEY = 7_202_612
MAX_BATCH = 512


def utc_now() -> str:
    """ISO 8601 in UTC with milliseconds and a `Z`, as the protocol writes times."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id() -> str:
    return secrets.token_hex(12)


def new_ids(count: int) -> list[str]:
    """`count` row ids that sort by creation time: 48 bits of milliseconds, then
    48 random bits (one read of the random source for all). New rows land at
    the end of the id index instead of on a random page, which a commit would
    otherwise have to write whole (ids of stored rows, not secrets: every read
    of them is checked against the room or the user)."""
    prefix = f"{time.time_ns() // 1_000_000:012x}"
    text = secrets.token_hex(6 * count)
    return [prefix + text[i : i + 12] for i in range(0, 12 * count, 12)]


class Runner(Protocol):
    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...
    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...
    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


class SqliteRunner:
    """Statements on one aiosqlite connection: one thread hop per call."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(await self.raw.execute_fetchall(sql, params))

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = await self.raw.execute_fetchall(sql, params)
        return rows[0] if rows else None

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        await self.raw.execute_fetchall(sql, params)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        cursor = await self.raw.executemany(sql, rows)
        await cursor.close()


@functools.lru_cache(maxsize=512)
def to_dollar(sql: str) -> str:
    """`?` placeholders to asyncpg's `$1..$n` (our SQL has no `?` in literals)."""
    counter = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


class PgRunner:
    def __init__(self, raw: Any) -> None:
        self.raw = raw

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(await self.raw.fetch(to_dollar(sql), *params))

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return await self.raw.fetchrow(to_dollar(sql), *params)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        await self.raw.execute(to_dollar(sql), *params)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self.raw.executemany(to_dollar(sql), rows)


Job = Callable[[Runner], Awaitable[T]]


class BatchKind(Protocol):
    """Writes of one kind that run together: one statement for the whole batch
    (the driver's `executemany`) instead of a round trip per item."""

    async def run(self, tx: Runner, items: list[Any]) -> list[Any]:
        """One result per item, in order; a `StoreError` in place of a refused item."""
        ...


@dataclass(frozen=True, slots=True)
class Batched:
    kind: BatchKind
    item: Any


Entry = tuple[Job[Any] | Batched, asyncio.Future[Any]]


class GroupCommitWriter:
    """One writing connection; jobs that queue up meanwhile share one transaction.

    A job may raise a `StoreError` (not found, forbidden, conflict) only before
    its first write, so the batch can go on without it. Any other error rolls
    the batch back and replays its jobs one transaction each, so a bad job fails
    alone and the others are not lost.
    """

    def __init__(self, runner: Runner, begin: str) -> None:
        self.runner = runner
        self._begin = begin
        self._pending: list[Entry] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.jobs = 0
        # Called after each batch: (jobs, seconds), for metrics.
        self.on_batch: Callable[[int, float], None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="store-writer")

    async def submit(self, job: Job[T] | Batched) -> T:
        if self._task is None or self._task.done():
            raise RuntimeError("store writer is not running")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((job, future))
        self._idle.clear()
        self._wake.set()
        # The job is queued, not awaited: if the caller is cancelled (its socket
        # closed), only its future is, and the write still commits. What a
        # client sent and the server accepted is kept.
        return await future

    async def close(self) -> None:
        """Commit what is queued, then stop."""
        if self._task is not None and not self._task.done():
            await self._idle.wait()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
                started = time.perf_counter()
                await self._commit(batch)
                if self.on_batch is not None:
                    self.on_batch(len(batch), time.perf_counter() - started)
            self._idle.set()

    async def _commit(self, batch: list[Entry]) -> None:
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            await self.runner.execute(self._begin)
            for group in _runs(batch):
                job = group[0][0]
                if isinstance(job, Batched):
                    results = await job.kind.run(self.runner, [entry[0].item for entry in group])  # type: ignore[union-attr]
                    for (_, future), result in zip(group, results, strict=True):
                        failed = isinstance(result, StoreError)
                        outcomes.append((future, None if failed else result, result if failed else None))
                    continue
                future = group[0][1]
                try:
                    outcomes.append((future, await job(self.runner), None))
                except StoreError as exc:
                    outcomes.append((future, None, exc))
            await self.runner.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - isolate the job that broke the batch
            try:
                await self.runner.execute("ROLLBACK")
            except Exception as rollback_error:  # noqa: BLE001 - the connection is gone: nothing left to undo
                log.debug("rollback failed: %r", rollback_error)
            if len(batch) > 1:
                for item in batch:
                    await self._commit([item])
                return
            log.error("store write failed: %r", exc)
            _settle(batch[0][1], None, exc)
            return
        self.batches += 1
        self.jobs += len(batch)
        for future, result, error in outcomes:
            _settle(future, result, error)


def _runs(batch: list[Entry]) -> list[list[Entry]]:
    """Consecutive batched entries of one kind together; every plain job alone."""
    runs: list[list[Entry]] = []
    for entry in batch:
        job = entry[0]
        previous = runs[-1][0][0] if runs else None
        if isinstance(job, Batched) and isinstance(previous, Batched) and previous.kind is job.kind:
            runs[-1].append(entry)
        else:
            runs.append([entry])
    return runs


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def _flock(path: str) -> IO[str] | None:
    """An exclusive lock held as long as the returned file stays open."""
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def schema_statements(text: str) -> list[str]:
    lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
    return [stmt.strip() for stmt in "\n".join(lines).split(";") if stmt.strip()]


# `ALTER TABLE t ADD COLUMN IF NOT EXISTS c ...`: PostgreSQL's clause, which SQLite lacks.
ADD_COLUMN = re.compile(r"ALTER\s+TABLE\s+(\w+)\s+ADD\s+COLUMN\s+IF\s+NOT\s+EXISTS\s+(\w+)\b", re.IGNORECASE)


async def _schema_execute(runner: Runner, stmt: str, is_sqlite: bool) -> None:
    """One schema statement. An added column is added only when the table does
    not have it yet (upgrading a database made by an older version): SQLite
    has no `IF NOT EXISTS` there, and on PostgreSQL even a no-op ALTER TABLE
    would wait for, then block, every query on a busy table at each start."""
    match = ADD_COLUMN.match(stmt)
    if match is None:
        await runner.execute(stmt)
        return
    table, column = match.groups()

    async def has_column() -> bool:
        if not is_sqlite:
            sql = (
                "SELECT 1 FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = ? AND column_name = ?"
            )
            return await runner.fetch_one(sql, (table.lower(), column.lower())) is not None
        rows = await runner.fetch_all(f"PRAGMA table_info({table})")
        return column.lower() in {str(row[1]).lower() for row in rows}

    if await has_column():
        return
    if not is_sqlite:
        await runner.execute(stmt)
        return
    try:
        await runner.execute(ADD_COLUMN.sub(f"ALTER TABLE {table} ADD COLUMN {column}", stmt, count=1))
    except Exception:
        # Another process starting on the same file may have added it meanwhile.
        if not await has_column():
            raise


class Db:
    """The database of one server process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.database = databases.Database(url)
        self._held: list[Connection] = []
        self._lock_file: IO[str] | None = None
        self._reader: Runner | None = None
        self.writer: GroupCommitWriter | None = None

    async def connect(self) -> None:
        await self.database.connect()
        writer_conn = await self._hold()
        if self.is_sqlite:
            writer: Runner = SqliteRunner(writer_conn.raw_connection)
            reader_conn = await self._hold()
            self._reader = SqliteRunner(reader_conn.raw_connection)
            for runner in (writer, self._reader):
                for pragma in SQLITE_PRAGMAS:
                    await runner.execute(pragma)
            # IMMEDIATE takes the write lock up front: a deferred transaction
            # that reads first can fail to upgrade when another process wrote.
            begin = "BEGIN IMMEDIATE"
        else:
            writer = PgRunner(writer_conn.raw_connection)
            begin = "BEGIN"
        await self._apply_schema(writer)
        self.writer = GroupCommitWriter(writer, begin)
        self.writer.start()

    async def disconnect(self) -> None:
        if self.writer is not None:
            await self.writer.close()
        for conn in reversed(self._held):
            await conn.__aexit__(None, None, None)
        self._held.clear()
        await self.database.disconnect()
        if self._lock_file is not None:
            self._lock_file.close()

    async def _hold(self) -> Connection:
        conn = Connection(self.database, self.database._backend)
        await conn.__aenter__()
        self._held.append(conn)
        return conn

    async def _apply_schema(self, runner: Runner) -> None:
        statements = schema_statements(SCHEMA.read_text())
        if self.is_sqlite:
            for stmt in statements:
                await _schema_execute(runner, stmt, True)
            return
        await runner.execute(f"SELECT pg_advisory_lock({SCHEMA_LOCK_KEY})")
        try:
            for stmt in statements:
                await _schema_execute(runner, stmt, False)
        finally:
            await runner.execute(f"SELECT pg_advisory_unlock({SCHEMA_LOCK_KEY})")

    async def claim_sole_process(self) -> bool:
        """Take a lock that only one server process on this database can hold.

        With the memory broker every process is its own island: a second
        process on the same database would split every room between them.
        SQLite: an exclusive flock beside the database file; PostgreSQL: a
        session advisory lock on the writer connection. Both end with the process.
        """
        if self.is_sqlite:
            path = self.database.url.database or ":memory:"
            if path == ":memory:":
                return True
            self._lock_file = _flock(f"{path}.sole-process.lock")
            return self._lock_file is not None
        assert self.writer is not None
        row = await self.writer.runner.fetch_one(f"SELECT pg_try_advisory_lock({SOLE_PROCESS_KEY})")
        return bool(row and row[0])

    async def write(self, job: Job[T]) -> T:
        assert self.writer is not None, "store is not connected"
        return await self.writer.submit(job)

    async def write_batched(self, kind: BatchKind, item: Any) -> Any:
        assert self.writer is not None, "store is not connected"
        return await self.writer.submit(Batched(kind, item))

    async def _read(self, call: Callable[[Runner], Awaitable[T]]) -> T:
        if self._reader is not None:
            return await call(self._reader)
        async with self.database.connection() as conn:
            return await call(PgRunner(conn.raw_connection))

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self._read(lambda r: r.fetch_all(sql, params))

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return await self._read(lambda r: r.fetch_one(sql, params))

    async def ping(self) -> None:
        await self.fetch_one("SELECT 1")
