"""The SQLite connection: one adbapi connection (one writer), WAL, explicit transactions."""

# Every storage operation is a function f(txn, ...) run by Database.run_read or
# Database.run_write in the pool's single thread, inside one transaction that is committed
# if f returns and rolled back if it raises.

from __future__ import annotations

import sqlite3
import time
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from fedserver.storage.interface import InvalidDataError, StorageUnavailableError

T = TypeVar("T")

_log = Logger()

#: Most ids put in one ``IN (...)`` list.
CHUNK = 500

#: Accepted values of ``PRAGMA synchronous``.
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")

#: SQLite primary result codes (https://www.sqlite.org/rescode.html) that mean "the
#: database cannot work right now", not "this request is wrong": the request is answered
#: 503 and the same request may succeed later (space freed, lock released, file made
#: writable again). Extended codes (SQLITE_IOERR_WRITE, SQLITE_READONLY_DBMOVED, ...) are
#: classified by their primary code (the low byte).
_FAULT_KINDS = {
    5: "locked",  # SQLITE_BUSY: another process held the lock beyond the busy timeout
    6: "locked",  # SQLITE_LOCKED
    8: "read-only",  # SQLITE_READONLY: the file, its directory or the filesystem
    10: "io",  # SQLITE_IOERR
    11: "corrupt",  # SQLITE_CORRUPT
    13: "full",  # SQLITE_FULL: no space left (or max_page_count reached)
    14: "io",  # SQLITE_CANTOPEN: e.g. the WAL or a temporary file cannot be created
    15: "locked",  # SQLITE_PROTOCOL: WAL locking kept failing
    22: "io",  # SQLITE_NOLFS
    26: "corrupt",  # SQLITE_NOTADB
}

#: How often a fault that goes on is logged again (seconds).
FAULT_LOG_INTERVAL_S = 60.0


def fault_kind(error: BaseException) -> str | None:
    """:returns: the kind of storage fault ``error`` is (see :data:`_FAULT_KINDS`), or
        ``None`` if it is not one (a bug, a constraint violation...)."""
    if not isinstance(error, sqlite3.Error):
        return None
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:
        # Errors raised without a result code (rare): go by the message.
        text = str(error).lower()
        for needle, kind in (("disk is full", "full"), ("readonly", "read-only"), ("disk i/o", "io"),
                             ("locked", "locked"), ("unable to open", "io")):
            if needle in text:
                return kind
        return None
    return _FAULT_KINDS.get(code & 0xFF)


#: The 64-bit signed range SQLite integers live in.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    """``items`` in slices of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def placeholders(n: int) -> str:
    """``?, ?, ...`` for ``n`` parameters."""
    return ", ".join("?" * n)


def storable_text(value: str) -> bool:
    """Whether ``value`` can be stored as TEXT (UTF-8): lone surrogates cannot, so such an
    id cannot be stored and a lookup of it finds nothing."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def lookup_ids(ids: Iterable[str]) -> list[str]:
    """Distinct ids to look up, in first-seen order, leaving out what cannot be stored.

    :raises InvalidDataError: if an id is not a string.
    """
    seen: dict[str, None] = {}
    for i in ids:
        if type(i) is not str:
            raise InvalidDataError(f"ids must be strings, not {type(i).__name__}")
        if i not in seen and storable_text(i):
            seen[i] = None
    return list(seen)


def lookup_text(value: Any, what: str) -> bool:
    """For lookups: whether ``value`` could be stored at all (if not, nothing matches it).

    :raises InvalidDataError: if it is not a string.
    """
    if type(value) is not str:
        raise InvalidDataError(f"{what} must be a string, not {type(value).__name__}")
    return storable_text(value)


def check_text(value: Any, what: str, *, nullable: bool = False) -> None:
    """Raise :class:`InvalidDataError` unless ``value`` can be stored as TEXT."""
    if value is None and nullable:
        return
    if type(value) is not str:
        raise InvalidDataError(f"{what} must be a string, not {type(value).__name__}")
    if not storable_text(value):
        raise InvalidDataError(f"{what} is not valid Unicode (lone surrogate)")


def check_texts(values: Sequence[Any], what: str) -> None:
    """:func:`check_text` for many values, fast when they are all ASCII strings."""
    if all(type(v) is str for v in values) and "".join(values).isascii():
        return
    for v in values:
        check_text(v, what)


def check_int(value: Any, what: str, *, nullable: bool = False) -> None:
    """Raise :class:`InvalidDataError` unless ``value`` is an int SQLite can hold."""
    if value is None and nullable:
        return
    if type(value) is not int or not (INT64_MIN <= value <= INT64_MAX):
        raise InvalidDataError(f"{what} must be a 64-bit integer, not {value!r:.40}")


class Txn:
    """One database transaction, handed to storage functions (which end in ``_txn``).

    :ivar cursor: the sqlite3 cursor.
    :ivar local: scratch space that lives as long as the transaction (e.g. state groups
        made in it but not committed yet).
    """

    __slots__ = ("cursor", "local", "_after_commit")

    def __init__(self, cursor: sqlite3.Cursor):
        self.cursor = cursor
        self.local: dict[str, Any] = {}
        self._after_commit: list[tuple[Callable[..., Any], tuple]] = []

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """Run one parameterised statement; the cursor is returned for fetching."""
        return self.cursor.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one parameterised statement for every row."""
        self.cursor.executemany(sql, rows)

    def select_in(
        self, sql: str, values: Sequence[Any], params_before: Sequence[Any] = ()
    ) -> list[tuple]:
        """Run ``sql`` (which contains one ``{}`` where the ``IN`` list goes) for
        ``values`` in chunks, and return all rows.

        :param params_before: parameters that come before the ``IN`` list.
        """
        rows: list[tuple] = []
        for chunk in chunks(values):
            query = sql.format(placeholders(len(chunk)))
            rows.extend(self.cursor.execute(query, (*params_before, *chunk)).fetchall())
        return rows

    def allocate_ids(self, sequence: str, count: int) -> int:
        """Reserve ``count`` consecutive ids from ``sequence``; returns the first.

        Ids are never reused, even after the rows holding them are deleted.
        """
        self.cursor.execute(
            "INSERT INTO sequences (name, last_value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET last_value = sequences.last_value + ?",
            (sequence, count, count),
        )
        (last,) = self.cursor.execute(
            "SELECT last_value FROM sequences WHERE name = ?", (sequence,)
        ).fetchone()
        return last - count + 1

    def call_after_commit(self, func: Callable[..., Any], *args: Any) -> None:
        """Run ``func(*args)`` once the transaction has committed (in the database thread),
        e.g. to fill or invalidate a cache; never run if it rolls back."""
        self._after_commit.append((func, args))

    def _committed(self) -> None:
        for func, args in self._after_commit:
            try:
                func(*args)
            except Exception:
                # The data is committed; a failing cache update must not report failure.
                _log.failure("after-commit callback {func!r} failed", func=func)


class Database:
    """An adbapi pool of ONE sqlite3 connection, so there is one writer and transactions
    run one at a time, in submission order.

    Storage faults (disk full, read-only file, I/O errors, a lock held elsewhere beyond
    the busy timeout; see :func:`fault_kind`) fail the transaction with
    :class:`StorageUnavailableError`, nothing of it committed. They are logged here, once
    per episode: one error line when the first transaction fails, a reminder every
    :data:`FAULT_LOG_INTERVAL_S` while it goes on, and one line when a transaction of the
    failing kind (a write, if writes failed) succeeds again; so no caller needs to log them.

    :param pool: see :func:`connect_pool`.
    :param clock: gives ``seconds()`` for the fault log (the reactor).
    """

    def __init__(self, pool: adbapi.ConnectionPool, clock: Any = None):
        self._pool = pool
        self._closed = False
        self.faults = FaultLog(clock)
        #: ``(kind, seconds) -> None`` told how long each transaction took ("read" or
        #: "write", from BEGIN to COMMIT), from the database thread (e.g. the metrics).
        self.observe_transaction: Callable[[str, float], None] | None = None

    def _check_open(self) -> None:
        if self._closed:
            raise StorageUnavailableError("closed", "the database is closed (the server is stopping)")

    def run_read(self, func: Callable[..., T], *args: Any, **kw: Any) -> "Deferred[T]":
        """Run ``func(txn, *args, **kw)`` in a read transaction.

        :returns: Deferred firing with what ``func`` returned.
        :raises StorageUnavailableError: (through the Deferred) for a storage fault.
        """
        self._check_open()
        d = self._pool.runWithConnection(self._run, func, "BEGIN", args, kw, self._observer("read"))
        return d.addCallbacks(self.faults.succeeded, self.faults.failed, callbackArgs=(False,), errbackArgs=(False,))

    def run_write(self, func: Callable[..., T], *args: Any, **kw: Any) -> "Deferred[T]":
        """Run ``func(txn, *args, **kw)`` in a write transaction (``BEGIN IMMEDIATE``: the
        write lock is taken at once, so a reader in another process cannot make the
        commit fail half way).

        :returns: Deferred firing with what ``func`` returned, once committed.
        :raises StorageUnavailableError: (through the Deferred) for a storage fault;
            nothing was committed.
        """
        self._check_open()
        d = self._pool.runWithConnection(self._run, func, "BEGIN IMMEDIATE", args, kw, self._observer("write"))
        return d.addCallbacks(self.faults.succeeded, self.faults.failed, callbackArgs=(True,), errbackArgs=(True,))

    def run_with_connection(self, func: Callable[..., T], *args: Any) -> "Deferred[T]":
        """Run ``func(connection, *args)`` with no transaction opened for it (schema
        preparation manages its own). ``connection`` behaves as a sqlite3 connection."""
        self._check_open()
        return self._pool.runWithConnection(func, *args)

    def _observer(self, kind: str) -> Callable[[float], None] | None:
        observe = self.observe_transaction
        if observe is None:
            return None
        return lambda seconds: observe(kind, seconds)

    @staticmethod
    def _run(conn: Any, func: Callable[..., T], begin: str, args: tuple, kw: dict,
             observe: Callable[[float], None] | None = None) -> T:
        started = time.perf_counter() if observe is not None else 0.0
        cursor = conn.cursor()
        try:
            cursor.execute(begin)
            txn = Txn(cursor)
            result = func(txn, *args, **kw)
            conn.commit()
        except sqlite3.Error as e:
            kind = fault_kind(e)
            if kind is None:
                raise
            # adbapi rolls back once we have raised.
            raise StorageUnavailableError(kind, str(e)) from e
        finally:
            cursor.close()
            if observe is not None:
                try:
                    observe(time.perf_counter() - started)
                except Exception:  # noqa: BLE001 - measuring must never fail a transaction
                    pass
        # adbapi rolls back if we raised before getting here.
        txn._committed()
        return result

    def close(self) -> None:
        """Finish the queued transactions, then close the connection (once; later calls do
        nothing, and later queries fail with :class:`StorageUnavailableError`)."""
        if not self._closed:
            self._closed = True
            self._pool.close()


class FaultLog:
    """Logs storage faults once per episode (see :class:`Database`) and says whether
    the database is failing right now.

    :param clock: gives ``seconds()``; ``None`` for the wall clock.
    :ivar failing: the kind of the fault going on, or ``None``.
    """

    def __init__(self, clock: Any = None) -> None:
        self._clock = clock
        self.failing: str | None = None
        self._writes = False
        self._since = 0.0
        self._last_logged = 0.0
        self._count = 0
        self._count_logged = 0
        self._silent = False

    def _now(self) -> float:
        if self._clock is not None:
            return float(self._clock.seconds())
        import time

        return time.time()

    def failed(self, failure: Any, write: bool) -> Any:
        """Errback: note a failed transaction (storage faults only) and pass it on."""
        error = failure.value
        if not isinstance(error, StorageUnavailableError) or error.kind == "closed":
            return failure
        now = self._now()
        if self.failing is None:
            self.failing, self._writes, self._since = error.kind, write, now
            self._count, self._count_logged = 1, 0
            if self._last_logged and now - self._last_logged < FAULT_LOG_INTERVAL_S:
                # A fault that comes and goes (a disk with a few pages left) is one
                # episode for the log: the reminder below reports it.
                self._silent = True
                return failure
            self._silent = False
            self._last_logged, self._count_logged = now, 1
            _log.error(
                "Database unavailable ({kind}): {detail}. Requests that need it are answered "
                "503 M_UNKNOWN until it works again.",
                kind=error.kind, detail=error.detail,
            )
            return failure
        self._count += 1
        self._writes = self._writes or write
        if now - self._last_logged >= FAULT_LOG_INTERVAL_S:
            _log.error(
                "Database still unavailable ({kind}): {n} more failed transactions in the last "
                "{s:.0f} s ({detail})",
                kind=error.kind, n=self._count - self._count_logged, s=now - self._last_logged, detail=error.detail,
            )
            self._last_logged, self._count_logged, self._silent = now, self._count, False
        return failure

    def succeeded(self, result: T, write: bool) -> T:
        """Callback: a transaction worked; the fault is over if it was of the kind that
        failed (a read working says nothing about a disk that is full for writes)."""
        if self.failing is not None and (write or not self._writes):
            if not self._silent:
                _log.info(
                    "Database works again after {s:.0f} s ({kind}; {n} failed transactions)",
                    s=self._now() - self._since, kind=self.failing, n=self._count,
                )
            self.failing = None
        return result


def _configure_connection(synchronous: str, busy_timeout_ms: int) -> Callable[[Any], None]:
    def configure(conn: sqlite3.Connection) -> None:
        cur = conn.cursor()
        try:
            # WAL: readers never block the writer and a commit is one append to the log.
            mode = cur.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() not in ("wal", "memory"):
                raise sqlite3.OperationalError(f"could not switch to WAL mode (got {mode!r})")
            # NORMAL (the default here): in WAL mode a commit is never lost to a crash of
            # this process, and the database is never corrupted; only a power cut or an
            # OS crash can lose the transactions since the last WAL sync. That is the
            # trade-off most servers make: FULL costs an fsync per commit. Operators who
            # need power-loss durability for every 200 pass synchronous="FULL".
            cur.execute(f"PRAGMA synchronous = {synchronous}")
            cur.execute("PRAGMA foreign_keys = ON")
            cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cur.execute("PRAGMA temp_store = MEMORY")
        finally:
            cur.close()

    return configure


def connect_pool(
    path: str,
    reactor: Any,
    *,
    synchronous: str = "NORMAL",
    busy_timeout_ms: int = 10_000,
) -> adbapi.ConnectionPool:
    """An adbapi pool with exactly one connection to the SQLite file ``path``.

    :param reactor: the reactor whose thread pool machinery runs the queries.
    :param synchronous: ``PRAGMA synchronous`` (see the comment in the code for why
        ``NORMAL`` is the default).
    :param busy_timeout_ms: how long to wait for a lock held by another process.
    :raises ValueError: for an unknown ``synchronous`` mode.
    """
    synchronous = synchronous.upper()
    if synchronous not in SYNCHRONOUS_MODES:
        raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}")
    return adbapi.ConnectionPool(
        "sqlite3",
        path,
        check_same_thread=False,
        isolation_level=None,  # we issue BEGIN ourselves
        timeout=busy_timeout_ms / 1000,
        cp_min=1,
        cp_max=1,
        cp_noisy=False,
        cp_openfun=_configure_connection(synchronous, busy_timeout_ms),
        cp_reactor=reactor,
    )
