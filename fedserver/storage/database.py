"""The database: transactions on SQLite (one connection) or PostgreSQL (one writer, parallel readers) through adbapi."""

# Every storage operation is a function f(txn, ...) run by Database.run_read or
# Database.run_write in a database thread, inside one transaction that is committed if f
# returns and rolled back if it raises. The same guarantees hold on both backends:
# * one writer: write transactions run one at a time, in submission order (SQLite: the
#   single connection; PostgreSQL: one writer connection plus an advisory lock that other
#   processes take too), so ids allocated in a transaction commit in allocation order;
# * a read sees every write submitted before it (PostgreSQL: it waits for them);
# * a Deferred that fires means committed; storage faults fail it with
#   StorageUnavailableError, nothing committed.
# On PostgreSQL a transaction function may be run more than once: after a serialization
# failure or deadlock, or when the connection dropped before the commit was sent, it is run
# again from its start on a fresh transaction (see "Writing portable SQL" in
# docs/development.md: side effects outside the database must be idempotent).

from __future__ import annotations

import collections
import functools
import json
import sqlite3
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger

from fedserver.storage.dialect import SQLITE, Dialect
from fedserver.storage.interface import InvalidDataError, StorageError, StorageUnavailableError

T = TypeVar("T")

_log = Logger()

#: Most ids put in one ``IN (...)`` list.
CHUNK = 500

#: Accepted values of ``PRAGMA synchronous``.
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")

#: How often a fault that goes on is logged again (seconds).
FAULT_LOG_INTERVAL_S = 60.0

#: How many times a PostgreSQL transaction is run in all when it keeps failing in a way
#: that allows running it again (serialization failure, deadlock, connection lost before
#: the commit), and the pause before each new run (seconds, doubled each time).
MAX_ATTEMPTS = 4
RETRY_PAUSE_S = 0.05


def fault_kind(error: BaseException) -> str | None:
    """:returns: the kind of SQLite storage fault ``error`` is, or ``None`` if it is not
        one (a bug, a constraint violation...). See :meth:`Dialect.fault_kind`."""
    return SQLITE.fault_kind(error)


# Which text the database threads of this process can store: PostgreSQL's TEXT cannot hold
# U+0000, SQLite's can. Set once per database thread when its connection is made (see
# fedserver.storage.postgres), read by storable_text() below: code running in a
# transaction treats such text as it treats lone surrogates (never stored, never found).
_thread_rules = threading.local()


def forbid_nul_in_this_thread() -> None:
    """Called in a database thread whose engine cannot store U+0000 in TEXT."""
    _thread_rules.no_nul = True


#: The 64-bit signed range SQLite integers live in.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    """``items`` in slices of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


#: One encoder for every JSON column: ``json.dumps`` given options builds a new encoder
#: on each call, which costs about as much as encoding a small event.
_STORED_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, sort_keys=True)


def encode_stored_json(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON with sorted keys, as JSON columns hold it.

    :raises TypeError, ValueError, UnicodeError, RecursionError: as :func:`json.dumps`
        (a non-JSON type, NaN or infinity, a lone surrogate, too deep).
    """
    return _STORED_JSON.encode(value).encode("utf-8")


def placeholders(n: int) -> str:
    """``?, ?, ...`` for ``n`` parameters."""
    return ", ".join("?" * n)


def storable_text(value: str) -> bool:
    """Whether ``value`` can be stored as TEXT (UTF-8): lone surrogates cannot (nor, on
    PostgreSQL, U+0000), so such an id cannot be stored and a lookup of it finds nothing."""
    if value.isascii():
        return "\x00" not in value or not getattr(_thread_rules, "no_nul", False)
    if getattr(_thread_rules, "no_nul", False) and "\x00" in value:
        return False
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


def deferred_errors(method: Callable[..., Deferred]) -> Callable[..., Deferred]:
    """Decorate a store method that returns a Deferred so that bad arguments (an exception
    raised before the Deferred exists) are reported through a failed Deferred too, like
    every other error."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kw: Any) -> Deferred:
        try:
            return method(*args, **kw)
        except Exception:
            return fail()

    return wrapper


def check_int(value: Any, what: str, *, nullable: bool = False) -> None:
    """Raise :class:`InvalidDataError` unless ``value`` is an int SQLite can hold."""
    if value is None and nullable:
        return
    if type(value) is not int or not (INT64_MIN <= value <= INT64_MAX):
        raise InvalidDataError(f"{what} must be a 64-bit integer, not {value!r:.40}")


class Txn:
    """One database transaction, handed to storage functions (which end in ``_txn``).

    SQL is written once, portably (``?`` placeholders; see docs/development.md); the
    dialect of the database turns it into what the engine takes.

    :ivar cursor: the DB-API cursor (sqlite3 or psycopg).
    :ivar local: scratch space that lives as long as the transaction (e.g. state groups
        made in it but not committed yet).
    :ivar dialect: the :class:`~fedserver.storage.dialect.Dialect` of the database.
    """

    __slots__ = ("cursor", "local", "dialect", "_after_commit", "_sql")

    def __init__(self, cursor: Any, dialect: Dialect = SQLITE):
        self.cursor = cursor
        self.local: dict[str, Any] = {}
        self.dialect = dialect
        self._after_commit: list[tuple[Callable[..., Any], tuple]] = []
        self._sql = dialect.sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one parameterised statement; the cursor is returned for fetching."""
        return self.cursor.execute(self._sql(sql), params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one parameterised statement for every row."""
        self.cursor.executemany(self._sql(sql), rows)

    def select_in(
        self, sql: str, values: Sequence[Any], params_before: Sequence[Any] = ()
    ) -> list[tuple]:
        """Run ``sql`` (which contains one ``{}`` where the ``IN`` list goes) for
        ``values`` in chunks, and return all rows (none for a statement that returns
        none, e.g. a ``DELETE``).

        :param params_before: parameters that come before the ``IN`` list.
        """
        rows: list[tuple] = []
        for chunk in chunks(values):
            query = sql.format(placeholders(len(chunk)))
            cursor = self.execute(query, (*params_before, *chunk))
            if cursor.description is not None:
                rows.extend(cursor.fetchall())
        return rows

    def allocate_ids(self, sequence: str, count: int) -> int:
        """Reserve ``count`` consecutive ids from ``sequence``; returns the first.

        Ids are never reused, even after the rows holding them are deleted. Only write
        transactions allocate, one at a time, so ids commit in allocation order.
        """
        (last,) = self.execute(
            "INSERT INTO sequences (name, last_value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET last_value = sequences.last_value + ? "
            "RETURNING last_value",
            (sequence, count, count),
        ).fetchone()
        return last - count + 1

    def call_after_commit(self, func: Callable[..., Any], *args: Any) -> None:
        """Run ``func(*args)`` once the transaction has committed (in the database thread),
        e.g. to fill or invalidate a cache; never run if it rolls back.

        In a read transaction it is meant for filling caches: on PostgreSQL, where reads
        run beside the writer, it is skipped when a write committed while the read ran
        (what the read saw may be older than that write, whose invalidations have run)."""
        self._after_commit.append((func, args))

    def _committed(self) -> None:
        for func, args in self._after_commit:
            try:
                func(*args)
            except Exception:
                # The data is committed; a failing cache update must not report failure.
                _log.failure("after-commit callback {func!r} failed", func=func)


class _PgTxn(Txn):
    """A :class:`Txn` on PostgreSQL: text it cannot store is the caller's error."""

    __slots__ = ()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        try:
            return self.cursor.execute(self._sql(sql), params)
        except Exception as e:
            if _is_nul_error(e):
                raise InvalidDataError("text holding U+0000 cannot be stored in PostgreSQL") from None
            raise

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        # psycopg pipelines the rows, which costs a sync of its own: for none or one row,
        # a plain execute (or nothing) is one round trip less.
        rows = rows if isinstance(rows, list) else list(rows)
        try:
            if len(rows) == 1:
                self.cursor.execute(self._sql(sql), rows[0])
            elif rows:
                self.cursor.executemany(self._sql(sql), rows)
        except Exception as e:
            if _is_nul_error(e):
                raise InvalidDataError("text holding U+0000 cannot be stored in PostgreSQL") from None
            raise


def _is_nul_error(error: Exception) -> bool:
    # psycopg refuses to send text holding U+0000 (PostgreSQL's TEXT cannot hold it) before
    # anything reaches the server, so the transaction is still usable.
    return (
        type(error).__name__ == "DataError"
        and getattr(error, "sqlstate", None) is None
        and "NUL" in str(error)
    )


class _Waiting:
    """A read waiting for the writes submitted before it."""

    __slots__ = ("after", "start")

    def __init__(self, after: int, start: Callable[[], None]) -> None:
        self.after = after
        self.start = start


class Database:
    """Runs transactions on adbapi pools.

    SQLite: ONE connection (``pool``) does everything, so there is one writer and every
    transaction runs in submission order. PostgreSQL: ``pool`` holds the one writer
    connection and ``read_pool`` the readers, which run in parallel; a read first waits
    for the writes submitted before it, so it sees them as it would on SQLite.

    Storage faults (disk full, read-only file, I/O errors, a lock held elsewhere beyond
    the busy timeout, a database server that cannot be reached; see
    :meth:`~fedserver.storage.dialect.Dialect.fault_kind`) fail the transaction with
    :class:`StorageUnavailableError`, nothing of it committed. They are logged here, once
    per episode: one error line when the first transaction fails, a reminder every
    :data:`FAULT_LOG_INTERVAL_S` while it goes on, and one line when a transaction of the
    failing kind (a write, if writes failed) succeeds again; so no caller needs to log them.

    :param pool: see :func:`connect_pool` (SQLite) or
        :func:`fedserver.storage.postgres.connect_pools`: the writer.
    :param clock: gives ``seconds()`` for the fault log (the reactor).
    :param dialect: the engine's :class:`~fedserver.storage.dialect.Dialect`.
    :param read_pool: the readers' pool, if not ``pool``.
    """

    def __init__(
        self,
        pool: adbapi.ConnectionPool,
        clock: Any = None,
        *,
        dialect: Dialect = SQLITE,
        read_pool: adbapi.ConnectionPool | None = None,
    ):
        self._pool = pool
        self._read_pool = read_pool if read_pool is not None else pool
        self.dialect = dialect
        self._closed = False
        self.faults = FaultLog(clock)
        self._txn_class = Txn if dialect is SQLITE else _PgTxn
        self._separate_readers = self._read_pool is not pool
        # Separate readers only: writes submitted and finished (writes finish in
        # submission order: one writer), reads waiting for some of them, and the number
        # of write transactions committed so far (see Txn.call_after_commit).
        self._writes_submitted = 0
        self._writes_done = 0
        self._waiting: collections.deque[_Waiting] = collections.deque()
        self._commits = 0
        #: ``(kind, seconds) -> None`` told how long each transaction took ("read" or
        #: "write", from BEGIN to COMMIT, retries included), from the database thread
        #: (e.g. the metrics).
        self.observe_transaction: Callable[[str, float], None] | None = None

    @property
    def separate_readers(self) -> bool:
        """Whether reads run beside the writer (PostgreSQL) rather than on its connection."""
        return self._separate_readers

    def _check_open(self) -> None:
        if self._closed:
            raise StorageUnavailableError("closed", "the database is closed (the server is stopping)")

    def run_read(self, func: Callable[..., T], *args: Any, **kw: Any) -> "Deferred[T]":
        """Run ``func(txn, *args, **kw)`` in a read transaction. It sees every write
        submitted before it.

        :returns: Deferred firing with what ``func`` returned.
        :raises StorageUnavailableError: (through the Deferred) for a storage fault.
        """
        self._check_open()
        if self._writes_done < self._writes_submitted:
            d: Deferred = Deferred()

            def start() -> None:
                if self._closed:
                    d.errback(StorageUnavailableError("closed", "the database is closed (the server is stopping)"))
                else:
                    self._start_read(func, args, kw).chainDeferred(d)

            self._waiting.append(_Waiting(self._writes_submitted, start))
            return d
        return self._start_read(func, args, kw)

    def _start_read(self, func: Callable[..., T], args: tuple, kw: dict) -> "Deferred[T]":
        d = self._read_pool.runWithConnection(self._run, func, False, args, kw)
        return d.addCallbacks(self.faults.succeeded, self._failed, callbackArgs=(False,), errbackArgs=(False,))

    def run_write(self, func: Callable[..., T], *args: Any, **kw: Any) -> "Deferred[T]":
        """Run ``func(txn, *args, **kw)`` in a write transaction. The write lock is taken
        at once (SQLite ``BEGIN IMMEDIATE``, a PostgreSQL advisory lock), so another
        process cannot make the commit fail half way; writes run one at a time, in
        submission order.

        :returns: Deferred firing with what ``func`` returned, once committed.
        :raises StorageUnavailableError: (through the Deferred) for a storage fault;
            nothing was committed.
        """
        self._check_open()
        d = self._pool.runWithConnection(self._run, func, True, args, kw)
        if self._separate_readers:
            self._writes_submitted += 1
            d.addBoth(self._write_finished)
        return d.addCallbacks(self.faults.succeeded, self._failed, callbackArgs=(True,), errbackArgs=(True,))

    def _write_finished(self, result: Any) -> Any:
        self._writes_done += 1
        while self._waiting and self._waiting[0].after <= self._writes_done:
            self._waiting.popleft().start()
        return result

    def _failed(self, failure: Any, write: bool) -> Any:
        # Errors raised before a transaction began (connecting) get classified here too.
        error = failure.value
        if not isinstance(error, StorageError):
            kind = self.dialect.fault_kind(error)
            if kind is not None:
                failure = type(failure)(StorageUnavailableError(kind, str(error).strip() or type(error).__name__))
        return self.faults.failed(failure, write)

    def run_with_connection(self, func: Callable[..., T], *args: Any) -> "Deferred[T]":
        """Run ``func(connection, *args)`` on the writer's connection with no
        transaction opened for it (schema preparation manages its own). ``connection``
        is the DB-API connection (sqlite3, or psycopg in autocommit mode)."""
        self._check_open()
        return self._pool.runWithConnection(func, *args)

    def _run(self, conn: Any, func: Callable[..., T], write: bool, args: tuple, kw: dict) -> T:
        observe = self.observe_transaction
        started = time.perf_counter() if observe is not None else 0.0
        try:
            if self.dialect is SQLITE:
                return self._run_sqlite(conn, func, write, args, kw)
            return self._run_retrying(conn, func, write, args, kw)
        finally:
            if observe is not None:
                try:
                    observe("write" if write else "read", time.perf_counter() - started)
                except Exception:  # noqa: BLE001 - measuring must never fail a transaction
                    pass

    def _run_sqlite(self, conn: Any, func: Callable[..., T], write: bool, args: tuple, kw: dict) -> T:
        cursor = conn.cursor()
        try:
            cursor.execute(SQLITE.begin_write if write else SQLITE.begin_read)
            txn = Txn(cursor)
            result = func(txn, *args, **kw)
            conn.commit()
        except sqlite3.Error as e:
            kind = SQLITE.fault_kind(e)
            if kind is None:
                raise
            # adbapi rolls back once we have raised.
            raise StorageUnavailableError(kind, str(e)) from e
        finally:
            cursor.close()
        # adbapi rolls back if we raised before getting here.
        txn._committed()
        return result

    def _run_retrying(self, conn: Any, func: Callable[..., T], write: bool, args: tuple, kw: dict) -> T:
        """One transaction on a psycopg connection (autocommit mode: BEGIN and COMMIT are
        ours), run again from its start after a serialization failure or deadlock, or on
        a new connection when the old one dropped before the commit was sent."""
        dialect = self.dialect
        pause = RETRY_PAUSE_S
        attempt = 1
        while True:
            raw = conn._connection
            if raw is None or raw.closed:
                conn.reconnect()
                raw = conn._connection
            commits_before = self._commits
            committing = False
            try:
                with raw.cursor() as cursor:
                    cursor.execute(dialect.begin_write if write else dialect.begin_read)
                    txn = self._txn_class(cursor, dialect)
                    result = func(txn, *args, **kw)
                    committing = True
                    cursor.execute("COMMIT")
                    if cursor.statusmessage != "COMMIT":
                        # PostgreSQL answers COMMIT of a transaction in which a statement
                        # failed with ROLLBACK: the function caught a database error
                        # and went on, which portable code never does.
                        raise StorageError(
                            f"{getattr(func, '__qualname__', func)!r} swallowed a database error: "
                            "the transaction was rolled back"
                        )
            except Exception as e:
                lost = raw.closed
                if not lost:
                    _rollback_quietly(raw)
                if not write and getattr(e, "sqlstate", None) == "25006":
                    # A read transaction tried to write: a bug, not a fault of the database.
                    raise StorageError(f"a read transaction tried to write: {e}") from e
                retry = attempt < MAX_ATTEMPTS and not committing and (lost or dialect.retryable(e))
                if not retry:
                    if lost and committing:
                        raise StorageUnavailableError(
                            "unavailable",
                            f"the connection to the database was lost while committing; the outcome is unknown ({e})",
                        ) from e
                    kind = dialect.fault_kind(e)
                    if kind is None:
                        raise
                    raise StorageUnavailableError(kind, str(e).strip() or type(e).__name__) from e
                time.sleep(pause)
                pause *= 2
                attempt += 1
                continue
            if write:
                self._commits += 1
            elif self._commits != commits_before:
                return result  # a write committed meanwhile: do not fill caches from this read
            txn._committed()
            return result

    def close(self) -> None:
        """Finish the queued transactions, then close the connections (once; later calls
        do nothing, and later queries fail with :class:`StorageUnavailableError`)."""
        if not self._closed:
            self._closed = True
            self._pool.close()
            if self._separate_readers:
                self._read_pool.close()
            while self._waiting:
                self._waiting.popleft().start()


def _rollback_quietly(raw: Any) -> None:
    try:
        raw.execute("ROLLBACK")
    except Exception:
        # The connection is unusable; the next transaction on it reconnects.
        try:
            raw.close()
        except Exception:
            pass


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
