"""Domain errors a store call raises; the endpoints map them to error codes."""


class StoreError(Exception):
    code = "invalid_payload"


class NotFound(StoreError):
    code = "not_found"


class Forbidden(StoreError):
    code = "forbidden"


class Conflict(StoreError):
    code = "conflict"


class AccessEnded(Forbidden):
    """The user has lost access to the channel (a room member removed): the socket closes with 4003."""


class StoreUnavailable(StoreError):
    """The store could not be reached or could not take the write just now
    (connection lost or refused, locked, disk full). Not a bug and not bad
    input: the client retries later (with the same `client_msg_id`, so a write
    whose outcome was unknown is not stored twice)."""

    code = "unavailable"


# SQLite result codes that pass: busy/locked (another connection holds the
# lock longer than busy_timeout), full disk, I/O error, file not openable.
_SQLITE_BUSY = frozenset({5, 6})
_SQLITE_BUSY_TEXT = "database is locked"
_SQLITE_TRANSIENT = _SQLITE_BUSY | {10, 13, 14}
_SQLITE_TRANSIENT_TEXT = (
    _SQLITE_BUSY_TEXT,
    "database or disk is full",
    "disk i/o error",
    "unable to open",
    "closed database",  # sqlite3's "Cannot operate on a closed database."
)

# asyncpg's words for a connection that closed under us (the pool takes a
# closed one back, so a holder of it sees "released back to the pool").
_PG_CLOSED_TEXT = ("connection is closed", "released back to the pool")


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is a fault of the store's availability rather than a bug.

    Driver classes are looked up lazily: a deployment has only one of the two.
    """
    if isinstance(exc, StoreUnavailable | OSError | TimeoutError | ConnectionError):
        return True
    module = type(exc).__module__
    if module.startswith("asyncpg"):
        from asyncpg import exceptions as pg

        return isinstance(
            exc,
            pg.PostgresConnectionError  # lost, refused, rejected, resolution unknown (class 08)
            | pg.OperatorInterventionError  # admin shutdown, crash shutdown, cannot connect now (57P)
            | pg.InsufficientResourcesError  # too many connections, disk full (53)
            | pg.ConnectionDoesNotExistError,
        ) or (isinstance(exc, pg.InterfaceError) and any(part in str(exc) for part in _PG_CLOSED_TEXT))
    if module.startswith("sqlite3") or module.startswith("aiosqlite"):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _SQLITE_TRANSIENT:
            return True
        text = str(exc).lower()
        return any(part in text for part in _SQLITE_TRANSIENT_TEXT)
    # aiosqlite raises ValueError once its connection (and thread) has stopped.
    return isinstance(exc, ValueError) and str(exc) in ("no active connection", "Connection closed")


def is_sqlite_busy(exc: BaseException) -> bool:
    """SQLite's busy or locked: another connection holds the lock, and the
    statement may be tried again on the same connection."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _SQLITE_BUSY
    return _SQLITE_BUSY_TEXT in str(exc).lower()


def loses_connection(exc: BaseException) -> bool:
    """A transient fault after which the connection is not to be trusted again.

    SQLite's busy, locked and full leave the connection as good as before: only
    the statement failed. Everything else transient (a reset, a refused or
    terminated PostgreSQL session, an I/O error) gets a fresh connection.
    """
    if not is_transient(exc):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF not in (5, 6, 13)
    text = str(exc).lower()
    return not any(part in text for part in _SQLITE_TRANSIENT_TEXT[:2])
