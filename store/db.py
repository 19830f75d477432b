"""Connections, statement execution and group commit.

`databases` owns the connections (URL parsing, the asyncpg pool, the aiosqlite
connection); statements run on the driver connection it holds
(`Connection.raw_connection`), and a long-lived one is held through
`Database.connection()` by a task of its own (`Held`), so that a lost one is
given back and replaced through the same public API. databases' own query path compiles every
statement through SQLAlchemy, which measured twice as slow per query on SQLite,
and its SQLite pool opens a connection and a thread per acquire, so this module
keeps long-lived connections instead: one writer everywhere, one reader on
SQLite, and the pool for reads on PostgreSQL.

What `databases` is used for, then: opening and closing the driver connections
from DATABASE_URL (the asyncpg pool, the aiosqlite connection), and nothing
else; only its public API (`Database`, `Database.connection()`,
`Connection.raw_connection`), no private attribute, and no warning of it or of
SQLAlchemy is filtered (none is raised on this path).

SQL is written once, with `?` placeholders; for asyncpg they become `$n`.

Faults: a driver error that means the store is away or busy (`is_transient`)
reaches callers as `StoreUnavailable` (code `unavailable`), never as a bug; the
writer and the SQLite reader replace a lost connection (see GroupCommitWriter).
"""

from __future__ import annotations

import asyncio
import contextlib
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
from typing import IO, Any, NamedTuple, Protocol, TypeVar

import databases

from . import migrate
from .errors import StoreError, StoreUnavailable, is_sqlite_busy, is_transient, loses_connection

log = logging.getLogger("realtime.store")

T = TypeVar("T")
Row = Sequence[Any]

SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    # Checkpoint every 10,000 WAL pages (40 MB), not 1,000: a page written by
    # many commits meanwhile is copied back once. Halved the commit time of a
    # 125-message group commit.
    "PRAGMA wal_autocheckpoint=10000",
)
# Any fixed number (store/migrate.py's lock is 7_202_611).
SOLE_PROCESS_KEY = 7_202_612
MAX_BATCH = 512
BUSY_TIMEOUT = 10.0  # seconds SQLite waits for another connection's lock (STORE_BUSY_TIMEOUT)
CONNECT_TIMEOUT = 5.0  # one attempt to open a connection
RELEASE_TIMEOUT = 2.0  # giving back a connection that may be dead
WAIT_TIMEOUT = 10.0  # the longest a write waits for the store before `StoreUnavailable`
# The writer's reconnect attempts: 50 ms, doubling, at most 1 s apart, so writes
# work again within about a second of the database coming back.
BACKOFF_FIRST = 0.05
BACKOFF_CAP = 1.0
# After a fault that left the connection usable (locked, full), readiness stays
# off this long unless a real write commits: the probe, an empty transaction,
# would pass on a full disk at once and make readiness flap.
PROBE_AFTER = 3.0


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


@dataclass(eq=False)
class WebhookTargets:
    """The webhook URLs the writer's transactions queue events for (store/webhooks.py).

    `queued` is set by a transaction that queued some; after its commit the
    writer calls `committed`, which tells the dispatcher (`on_queued`) that
    rows are there to deliver now rather than at its next poll."""

    urls: tuple[str, ...]
    on_queued: Callable[[], None] | None = None
    queued: bool = False

    def committed(self) -> None:
        if self.queued:
            self.queued = False
            if self.on_queued is not None:
                self.on_queued()


class Runner(Protocol):
    # True on the writer when the broker can fail: stream events get outbox rows (store/outbox.py).
    outbox: bool
    raw: Any  # the driver's connection (aiosqlite's, asyncpg's)
    # Set on the writer when webhooks are on: events get webhook outbox rows (store/webhooks.py).
    webhooks: WebhookTargets | None

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...
    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...
    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


class SqliteRunner:
    """Statements on one aiosqlite connection: one thread hop per call."""

    outbox = False
    webhooks: WebhookTargets | None = None

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
    outbox = False
    webhooks: WebhookTargets | None = None

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


class Batched(NamedTuple):
    kind: BatchKind
    item: Any


Entry = tuple[Job[Any] | Batched, asyncio.Future[Any]]


class Link(Protocol):
    """A connection the writer holds: its runner, whether it still looks alive,
    and a way to close it under a call that hangs on it."""

    runner: Runner

    def abort(self) -> None: ...

    def alive(self) -> bool: ...

    async def close(self) -> None: ...


class GroupCommitWriter:
    """One writing connection; jobs that queue up meanwhile share one transaction.

    A job may raise a `StoreError` (not found, forbidden, conflict) only before
    its first write, so the batch can go on without it. Any other error rolls
    the batch back and replays its jobs one transaction each, so a bad job fails
    alone and the others are not lost.

    A transient fault (`is_transient`: connection lost or refused, locked, disk
    full) is not a bad job: the whole batch fails with `StoreUnavailable` at
    once, no replay. A lost connection is dropped and a new one opened, at once
    and then with capped backoff; while there is none, `submit` fails at once
    rather than queue. A batch that failed before its COMMIT was sent ran in a
    transaction that never committed, so it runs once more on a fresh
    connection; one whose COMMIT got no answer may or may not have committed,
    so it is never acknowledged: its callers get `StoreUnavailable` and retry
    (chat messages by `client_msg_id`, which finds the stored one).
    """

    def __init__(
        self,
        link: Link,
        reconnect: Callable[[], Awaitable[Link]],
        begin: str,
        *,
        wait_timeout: float = WAIT_TIMEOUT,
    ) -> None:
        self.link: Link | None = link
        self._reconnect = reconnect
        self._begin = begin
        self.wait_timeout = wait_timeout
        self._pending: list[Entry] = []
        self._current: list[Entry] = []
        self._busy_since = 0.0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self.batches = 0
        self.jobs = 0
        # Why writes fail now: set by a transient fault, cleared by the next commit.
        self.problem: str | None = None
        self.failures = 0  # consecutive failed attempts: the backoff's exponent
        self._failed_at = 0.0  # monotonic time of the last failed write, for PROBE_AFTER
        # Called after each batch: (jobs, seconds), for metrics.
        self.on_batch: Callable[[int, float], None] | None = None
        # Called per failed transaction: "transient" or "other", for metrics.
        self.on_fault: Callable[[str], None] | None = None
        # Called after each transaction that committed (webhook rows to deliver: Db.use_webhooks).
        self.on_commit: Callable[[], None] | None = None

    @property
    def runner(self) -> Runner:
        assert self.link is not None, "the store writer has no connection"
        return self.link.runner

    def status(self) -> str | None:
        """Why writes fail now, or None while they work (for /readyz)."""
        if self.link is None:
            return f"writer: no connection ({self.problem or 'connecting'})"
        if not self.link.alive():
            self._wake.set()  # let the writer notice now, not at the next write
            return "writer: connection lost; reconnecting"
        if self.problem is not None:
            return f"writer: the last write failed ({self.problem})"
        return None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="store-writer")
        self._watchdog = asyncio.create_task(self._watch(), name="store-writer-watchdog")

    def submit(self, job: Job[T] | Batched) -> asyncio.Future[T]:
        """Queue `job`; its result (or error) comes in the returned future.

        A plain function, not a coroutine: the caller awaits the future itself,
        one coroutine frame fewer to make and resume per write (every chat
        message is one)."""
        if self._task is None or self._task.done():
            raise RuntimeError("store writer is not running")
        if self.link is None:
            # Fail fast: queueing behind an outage would only make callers wait.
            raise StoreUnavailable(f"the store is unreachable ({self.problem}); retry later")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((job, future))
        self._idle.clear()
        self._wake.set()
        # The job is queued, not awaited: if the caller is cancelled (its socket
        # closed), only its future is, and the write still commits. What a
        # client sent and the server accepted is kept.
        return future

    async def close(self) -> None:
        """Commit what is queued, then stop (bounded: a store that stopped answering does not hold the exit)."""
        if self._task is not None and not self._task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.wait_timeout)
        for task in (self._watchdog, self._task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        if self.link is not None:
            await self.link.close()
            self.link = None

    async def _run(self) -> None:
        while True:
            if self.link is None or self.problem is not None:
                # Something to recover: try again after a capped backoff, even with no write waiting.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._backoff())
            else:
                await self._wake.wait()
            self._wake.clear()
            await self._recover()
            while self._pending:
                if self.link is None:
                    self._fail_pending(StoreUnavailable(f"the store is unreachable ({self.problem}); retry later"))
                    break
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
                started = time.perf_counter()
                self._current, self._busy_since = batch, time.monotonic()
                try:
                    await self._commit(batch)
                finally:
                    self._current, self._busy_since = [], 0.0
                if self.on_batch is not None:
                    self.on_batch(len(batch), time.perf_counter() - started)
            self._idle.set()

    def _backoff(self) -> float:
        return min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** min(self.failures, 16))

    async def _recover(self) -> None:
        """Replace a lost connection; after a transient fault with no write
        waiting, probe with an empty write transaction so that readiness comes
        back without waiting for traffic."""
        if self.link is not None and not self.link.alive():
            await self._drop("connection lost")
        if self.link is None:
            try:
                self.link = await self._reconnect()
            except Exception as exc:  # noqa: BLE001 - any failure to connect is retried with backoff
                self.failures += 1
                self.problem = describe(exc)
                log.log(logging.WARNING if self.failures == 1 else logging.DEBUG, "store writer: %s", self.problem)
                return
            log.warning("store writer: connected again")
            self._failed_at = 0.0  # a fresh connection: probe it at once
        due = time.monotonic() - self._failed_at >= PROBE_AFTER
        if self.problem is not None and not self._pending and due:
            try:
                await self.runner.execute(self._begin)
                await self.runner.execute("COMMIT")
            except Exception as exc:  # noqa: BLE001 - a failed probe is the state readiness reports
                await self._rollback()
                self.failures += 1
                self.problem = describe(exc)
                if loses_connection(exc):
                    await self._drop(self.problem)
                return
            self.problem, self.failures = None, 0

    async def _drop(self, reason: str) -> None:
        link, self.link = self.link, None
        self.problem = reason
        if link is not None:
            with contextlib.suppress(Exception):
                # Bounded: giving back a dead connection must not stall the writer.
                await asyncio.wait_for(link.close(), RELEASE_TIMEOUT)

    async def _rollback(self) -> None:
        if self.link is None:
            return
        try:
            await asyncio.wait_for(self.runner.execute("ROLLBACK"), RELEASE_TIMEOUT)
        except Exception as rollback_error:  # noqa: BLE001 - the connection is gone: nothing left to undo
            log.debug("rollback failed: %r", rollback_error)

    async def _commit(self, batch: list[Entry], *, retry: bool = True) -> bool:
        """Run `batch` in one transaction and settle its futures; True when it
        failed transiently (the caller stops replaying)."""
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        committing = False
        try:
            runner = self.runner
            await runner.execute(self._begin)
            for group in _runs(batch):
                job = group[0][0]
                if isinstance(job, Batched):
                    results = await job.kind.run(runner, [entry[0].item for entry in group])  # type: ignore[union-attr]
                    for (_, future), result in zip(group, results, strict=True):
                        failed = isinstance(result, StoreError)
                        outcomes.append((future, None if failed else result, result if failed else None))
                    continue
                future = group[0][1]
                try:
                    outcomes.append((future, await job(runner), None))
                except StoreUnavailable:
                    raise
                except StoreError as exc:
                    outcomes.append((future, None, exc))
            committing = True
            await runner.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - isolate the job that broke the batch
            await self._rollback()
            if is_transient(exc):
                return await self._unavailable(batch, exc, committing, retry)
            if self.on_fault is not None:
                self.on_fault("other")
            if len(batch) > 1:
                lost = False
                for item in batch:
                    if lost:
                        # A fault of the store, not of these jobs: no point waiting for each to fail.
                        _settle(item[1], None, StoreUnavailable(f"the store is unavailable ({self.problem})"))
                    else:
                        lost = await self._commit([item], retry=False)
                return lost
            log.error("store write failed: %r", exc)
            _settle(batch[0][1], None, exc)
            return False
        self.batches += 1
        self.jobs += len(batch)
        self.problem, self.failures = None, 0
        if self.on_commit is not None:
            self.on_commit()
        for future, result, error in outcomes:
            _settle(future, result, error)
        return False

    async def _unavailable(self, batch: list[Entry], exc: Exception, committing: bool, retry: bool) -> bool:
        if self.on_fault is not None:
            self.on_fault("transient")
        reason = describe(exc)
        if loses_connection(exc):
            await self._drop(reason)
            # Callers already answered `unavailable` (the watchdog) retry by
            # themselves: their writes must not commit behind their backs. A
            # cancelled caller (its socket closed) still gets its write.
            waiting = [entry for entry in batch if not entry[1].done() or entry[1].cancelled()]
            if retry and not committing and waiting:
                # Nothing of this batch committed: one more try on a fresh connection.
                await self._recover()
                if self.link is not None:
                    return await self._commit(waiting, retry=False)
        self.problem = reason
        self.failures += 1
        self._failed_at = time.monotonic()
        log.warning("store write failed (%s): %s", "outcome unknown" if committing else "not committed", reason)
        if committing:
            message = f"the store did not confirm this write ({reason}); retry with the same client_msg_id"
        else:
            message = f"the store is unavailable ({reason}); retry later"
        error = StoreUnavailable(message)
        for _, future in batch:
            _settle(future, None, error)
        return True

    def _fail_pending(self, error: StoreUnavailable) -> None:
        pending, self._pending = self._pending, []
        for _, future in pending:
            _settle(future, None, error)

    async def _watch(self) -> None:
        """Bound the wait: a store that stops answering (a partition, no reset)
        fails the batch in flight and the queue with `StoreUnavailable` after
        `wait_timeout`, instead of leaving their callers waiting. The stuck
        transaction may still commit later; nothing was acknowledged, and a
        retry by `client_msg_id` finds it."""
        while True:
            await asyncio.sleep(min(1.0, self.wait_timeout / 2))
            if self._busy_since and time.monotonic() - self._busy_since > self.wait_timeout:
                self.problem = f"no answer from the store within {self.wait_timeout:g}s"
                error = StoreUnavailable(f"{self.problem}; retry later")
                for _, future in self._current:
                    _settle(future, None, error)
                self._fail_pending(error)
                if self.link is not None:
                    # The call in flight fails now rather than when the kernel gives
                    # up on the connection; the writer then replaces it.
                    self.link.abort()


def describe(exc: BaseException) -> str:
    """A short, single-line reason for logs, readiness and error frames."""
    text = " ".join(str(exc).split())[:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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


class Held:
    """A connection from `databases`, held open by a task of its own.

    `Database.connection()` gives each asyncio task its own connection, acquired
    by `async with` and given back (to the pool; on SQLite, closed) when the
    block ends. A task that does nothing but sit in that block holds one
    connection for the writer, or for every task's SQLite reads, as long as it
    is needed; `close()` ends the block, and the next `open()` gets a fresh
    connection: how a lost one is replaced, through databases' public API.
    """

    def __init__(self, raw: Any, runner: Runner, task: asyncio.Task[None], done: asyncio.Event) -> None:
        self.raw = raw
        self.runner = runner
        self._task = task
        self._done = done

    @classmethod
    async def open(cls, database: databases.Database, make: Callable[[Any], Runner], timeout: float) -> Held:
        ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done = asyncio.Event()

        async def hold() -> None:
            async with database.connection() as conn:
                ready.set_result(conn.raw_connection)
                await done.wait()

        task = asyncio.create_task(hold(), name="store-connection")
        try:
            await asyncio.wait({ready, task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # Not left holding a connection nobody will give back (the pool's close would wait for it).
            done.set()
            task.cancel()
            raise
        if not ready.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            if task.cancelled() or not task.done() or task.exception() is None:
                raise TimeoutError(f"no connection to the store within {timeout:g}s")
            raise task.exception()  # type: ignore[misc]
        raw = ready.result()
        return cls(raw, make(raw), task, done)

    def abort(self) -> None:
        """Close the connection under a call that hangs on it (asyncpg's terminate;
        SQLite calls are bounded by busy_timeout and have nothing to abort)."""
        terminate = getattr(self.raw, "terminate", None)
        if terminate is not None:
            with contextlib.suppress(Exception):
                terminate()

    def alive(self) -> bool:
        if self._task.done():
            return False
        is_closed = getattr(self.raw, "is_closed", None)  # asyncpg tells; aiosqlite reports by failing
        if is_closed is None:
            return True
        try:
            return not is_closed()
        except Exception:  # noqa: BLE001 - the pool took back a connection that closed under us
            return False

    async def close(self) -> None:
        self._done.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._task), RELEASE_TIMEOUT)
        if not self._task.done():
            self._task.cancel()


class Db:
    """The database of one server process."""

    def __init__(self, url: str, *, busy_timeout: float = BUSY_TIMEOUT, migrations: Path | None = None) -> None:
        self.url = url
        self.migrations = migrations  # the schema's later versions (store/migrate.py; None: the package's)
        self.is_sqlite = url.startswith("sqlite")
        self.database = databases.Database(url)
        self.busy_timeout = busy_timeout
        self._lock_file: IO[str] | None = None
        self._sole_lock = False
        self._outbox = False  # see use_outbox
        self._webhooks: WebhookTargets | None = None  # see use_webhooks
        self._reader: Held | None = None
        self._reader_lock = asyncio.Lock()
        self.writer: GroupCommitWriter | None = None

    @property
    def shown_url(self) -> str:
        """DATABASE_URL as logs may show it: without its password."""
        return str(self.database.url.obscure_password)

    async def connect(self) -> None:
        """Connect and bring the schema to this version (`migrate.MigrationError`
        when it cannot be: the store is then left disconnected)."""
        await self.database.connect()
        try:
            await self._migrate()
        except BaseException:
            await self.database.disconnect()
            raise
        link = await self._open()
        # IMMEDIATE takes the write lock up front: a deferred transaction
        # that reads first can fail to upgrade when another process wrote.
        begin = "BEGIN IMMEDIATE" if self.is_sqlite else "BEGIN"
        if self.is_sqlite:
            self._reader = await self._open()
        self.writer = GroupCommitWriter(link, self._open_writer, begin)
        self.writer.start()

    async def disconnect(self) -> None:
        if self.writer is not None:
            await self.writer.close()
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        await self.database.disconnect()
        if self._lock_file is not None:
            self._lock_file.close()

    async def _open(self) -> Held:
        make: Callable[[Any], Runner] = SqliteRunner if self.is_sqlite else PgRunner
        held = await Held.open(self.database, make, CONNECT_TIMEOUT)
        if self.is_sqlite:
            try:
                await held.runner.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
                for pragma in SQLITE_PRAGMAS:
                    await self._sqlite_pragma(held.runner, pragma)
            except BaseException:
                await held.close()
                raise
        return held

    async def _sqlite_pragma(self, runner: Runner, pragma: str) -> None:
        """Run `pragma`, trying again while another process holds the lock.

        Switching a new file to WAL needs the lock for a moment, and SQLite
        can answer "database is locked" at once, without its busy handler,
        when two processes open a new file together: up to busy_timeout.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.busy_timeout
        while True:
            try:
                await runner.execute(pragma)
                return
            except Exception as exc:
                if not is_sqlite_busy(exc) or loop.time() >= deadline:
                    raise
            await asyncio.sleep(0.02)

    async def _open_writer(self) -> Held:
        held = await self._open()
        # Every writer connection, the first and each that replaces a lost one.
        held.runner.outbox = self._outbox
        held.runner.webhooks = self._webhooks
        if self._sole_lock and not self.is_sqlite:
            # The session lock went with the old connection: take it again.
            try:
                row = await held.runner.fetch_one(f"SELECT pg_try_advisory_lock({SOLE_PROCESS_KEY})")
            except BaseException:
                # Not left holding a connection nobody would give back (its task would wait for ever).
                await held.close()
                raise
            if not (row and row[0]):
                log.error("another server process took this database's sole-process lock while the store was away")
        return held

    async def _migrate(self) -> None:
        """On a connection of its own, given back afterwards: whatever session
        state a migration sets (SQLite's foreign keys off for it, a `SET` in a
        PostgreSQL file) never reaches the writer's."""
        held = await self._open()
        try:
            await migrate.upgrade(held.runner, is_sqlite=self.is_sqlite, directory=self.migrations)
        finally:
            await held.close()

    async def claim_sole_process(self) -> bool:
        """Take a lock that only one server process on this database can hold.

        With the memory broker every process is its own island: a second
        process on the same database would split every room between them.
        SQLite: an exclusive flock beside the database file; PostgreSQL: a
        session advisory lock on the writer connection (taken again when the
        writer reconnects). Both end with the process.
        """
        if self.is_sqlite:
            path = self.database.url.database or ":memory:"
            if path == ":memory:":
                return True
            self._lock_file = _flock(f"{path}.sole-process.lock")
            return self._lock_file is not None
        row = await self.write(lambda tx: tx.fetch_one(f"SELECT pg_try_advisory_lock({SOLE_PROCESS_KEY})"))
        self._sole_lock = bool(row and row[0])
        return self._sole_lock

    def use_outbox(self) -> None:
        """Give every stream event an outbox row from now on (a broker that can fail)."""
        assert self.writer is not None, "store is not connected"
        self._outbox = True
        self.writer.runner.outbox = True

    def use_webhooks(self, targets: WebhookTargets) -> None:
        """Give events webhook outbox rows for `targets` from now on (store/webhooks.py)."""
        assert self.writer is not None, "store is not connected"
        self._webhooks = targets
        self.writer.runner.webhooks = targets
        self.writer.on_commit = targets.committed

    def write(self, job: Job[T]) -> Awaitable[T]:
        """Run `job` in the writer's next group commit; await the result."""
        assert self.writer is not None, "store is not connected"
        return self.writer.submit(job)

    def write_batched(self, kind: BatchKind, item: Any) -> Awaitable[Any]:
        """Queue `item` for `kind`'s statement of the next group commit; await the result."""
        assert self.writer is not None, "store is not connected"
        return self.writer.submit(Batched(kind, item))

    async def _read(self, call: Callable[[Runner], Awaitable[T]]) -> T:
        """A read; one that lost its connection runs once more on a fresh one
        (a read repeats safely), so a connection that died while idle costs
        the first read after an outage nothing."""
        try:
            try:
                return await self._read_once(call)
            except Exception as exc:
                if not loses_connection(exc):
                    raise
                log.debug("store read lost its connection (%s): once more on a fresh one", describe(exc))
                return await self._read_once(call)
        except StoreUnavailable:
            raise
        except Exception as exc:
            if is_transient(exc):
                raise StoreUnavailable(f"the store is unavailable ({describe(exc)}); retry later") from exc
            raise

    async def _read_once(self, call: Callable[[Runner], Awaitable[T]]) -> T:
        if not self.is_sqlite:
            # The pool replaces a connection that closed while idle.
            async with self.database.connection() as conn:
                return await call(PgRunner(conn.raw_connection))
        reader = self._reader
        if reader is None or not reader.alive():
            reader = await self._reopen_reader(reader)
        try:
            return await call(reader.runner)
        except Exception as exc:
            if loses_connection(exc) and self._reader is reader:
                self._reader = None  # the next read opens a fresh one
                await reader.close()
            raise

    async def _reopen_reader(self, old: Held | None) -> Held:
        async with self._reader_lock:  # reads that find it gone together open one, not one each
            if self._reader is not None and self._reader is not old and self._reader.alive():
                return self._reader
            if old is not None:
                await old.close()
            self._reader = await self._open()
            return self._reader

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self._read(lambda r: r.fetch_all(sql, params))

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return await self._read(lambda r: r.fetch_one(sql, params))

    async def ping(self) -> None:
        await self.fetch_one("SELECT 1")
