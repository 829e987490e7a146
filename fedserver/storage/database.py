"""The SQLite connection: one adbapi connection (one writer), WAL, explicit transactions."""

# Every storage operation is a function f(txn, ...) run by Database.run_read or
# Database.run_write in the pool's single thread, inside one transaction that is committed
# if f returns and rolled back if it raises.

from __future__ import annotations

import sqlite3
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from fedserver.storage.interface import InvalidDataError, StorageError

T = TypeVar("T")

_log = Logger()

#: Most ids put in one ``IN (...)`` list.
CHUNK = 500

#: Accepted values of ``PRAGMA synchronous``.
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")

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

    :param pool: see :func:`connect_pool`.
    """

    def __init__(self, pool: adbapi.ConnectionPool):
        self._pool = pool
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the database is closed")

    def run_read(self, func: Callable[..., T], *args: Any, **kw: Any) -> "Deferred[T]":
        """Run ``func(txn, *args, **kw)`` in a read transaction.

        :returns: Deferred firing with what ``func`` returned.
        """
        self._check_open()
        return self._pool.runWithConnection(self._run, func, "BEGIN", args, kw)

    def run_write(self, func: Callable[..., T], *args: Any, **kw: Any) -> "Deferred[T]":
        """Run ``func(txn, *args, **kw)`` in a write transaction (``BEGIN IMMEDIATE``: the
        write lock is taken at once, so a reader in another process cannot make the
        commit fail half way).

        :returns: Deferred firing with what ``func`` returned, once committed.
        """
        self._check_open()
        return self._pool.runWithConnection(self._run, func, "BEGIN IMMEDIATE", args, kw)

    def run_with_connection(self, func: Callable[..., T], *args: Any) -> "Deferred[T]":
        """Run ``func(connection, *args)`` with no transaction opened for it (schema
        preparation manages its own). ``connection`` behaves as a sqlite3 connection."""
        self._check_open()
        return self._pool.runWithConnection(func, *args)

    @staticmethod
    def _run(conn: Any, func: Callable[..., T], begin: str, args: tuple, kw: dict) -> T:
        cursor = conn.cursor()
        try:
            cursor.execute(begin)
            txn = Txn(cursor)
            result = func(txn, *args, **kw)
            conn.commit()
        finally:
            cursor.close()
        # adbapi rolls back if we raised before getting here.
        txn._committed()
        return result

    def close(self) -> None:
        """Finish the queued transactions, then close the connection (once; later calls do
        nothing, and later queries fail with :class:`StorageError`)."""
        if not self._closed:
            self._closed = True
            self._pool.close()


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
