"""SQL dialects: the one place where SQLite and PostgreSQL differ (placeholders, types, transactions, faults)."""

# Storage code writes one SQL text for both backends (see "Writing portable SQL" in
# docs/development.md): `?` placeholders, INTEGER / BIGINT / TEXT / BLOB columns, upserts
# with ON CONFLICT. A Dialect turns that text into what its engine wants, and answers the
# few questions whose answers differ (how to begin a transaction, which errors are faults
# of the database rather than bugs, which may be retried). Nothing else in storage may
# branch on the backend.

from __future__ import annotations

import functools
import re
import sqlite3
from typing import Any

#: SQLite primary result codes (https://www.sqlite.org/rescode.html) that mean "the
#: database cannot work right now", not "this request is wrong": the request is answered
#: 503 and the same request may succeed later (space freed, lock released, file made
#: writable again). Extended codes (SQLITE_IOERR_WRITE, SQLITE_READONLY_DBMOVED, ...) are
#: classified by their primary code (the low byte).
_SQLITE_FAULT_KINDS = {
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

#: PostgreSQL SQLSTATEs (Appendix A of its manual) that are faults of the database, not of
#: the request. Classes 08 (connection), 53 (resources), 58 (system) and XX (internal)
#: are matched by their first two characters.
_PG_FAULT_KINDS = {
    "53100": "full",  # disk_full
    "25006": "read-only",  # read_only_sql_transaction (a standby, default_transaction_read_only)
    "55P03": "locked",  # lock_not_available: lock_timeout expired (e.g. the writer lock)
    "40001": "locked",  # serialization_failure, once the retries are used up
    "40P01": "locked",  # deadlock_detected, likewise
    "57014": "locked",  # query_canceled
    "57P01": "unavailable",  # admin_shutdown
    "57P02": "unavailable",  # crash_shutdown
    "57P03": "unavailable",  # cannot_connect_now (starting up, shutting down)
    "XX001": "corrupt",  # data_corrupted
    "XX002": "corrupt",  # index_corrupted
}
_PG_FAULT_CLASSES = {"08": "unavailable", "53": "io", "58": "io"}

#: SQLSTATEs after which the whole transaction may be run again from its start.
_PG_RETRYABLE = frozenset({"40001", "40P01"})

#: Key of the advisory lock every PostgreSQL write transaction holds: one writer at a time,
#: across processes, as SQLite's write lock (the value spells "fedsrvwr").
WRITER_LOCK_KEY = 0x6665647372767772

# Quoted strings, quoted identifiers and comments pass through the translations untouched.
_TOKENS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|\?|%", re.S)
_SCHEMA_TOKENS = re.compile(
    r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|\bINTEGER\b|\bBLOB\b", re.S | re.I
)
_SCHEMA_TYPES = {"integer": "BIGINT", "blob": "BYTEA"}


class Dialect:
    """What one engine needs differently. Subclasses are stateless singletons."""

    #: ``"sqlite"`` or ``"postgresql"``.
    name = ""
    #: Statement(s) opening a read transaction and a write transaction.
    begin_read = "BEGIN"
    begin_write = "BEGIN"
    #: Lists the tables of the database (of the current schema), one name per row.
    list_tables_sql = ""
    #: Whether TEXT can hold U+0000.
    text_allows_nul = True

    def sql(self, text: str) -> str:
        """``text`` (portable SQL with ``?`` placeholders) as this engine's driver takes it."""
        return text

    def schema_sql(self, statement: str) -> str:
        """A statement of a schema script as this engine takes it (column types)."""
        return statement

    def fault_kind(self, error: BaseException) -> str | None:
        """:returns: the kind of storage fault ``error`` is (``"full"``, ``"read-only"``,
            ``"io"``, ``"locked"``, ``"corrupt"``, ``"unavailable"``), or ``None`` if it is
            not one (a bug, a constraint violation...)."""
        return None

    def retryable(self, error: BaseException) -> bool:
        """Whether a transaction that failed with ``error`` may simply be run again."""
        return False

    def in_transaction(self, conn: Any) -> bool:
        """Whether the DB-API connection ``conn`` has a transaction open."""
        raise NotImplementedError

    def driver_error(self) -> type[Exception]:
        """The base class of the driver's database errors."""
        raise NotImplementedError


class SQLiteDialect(Dialect):
    """SQLite through the standard library's sqlite3 (``isolation_level=None``)."""

    name = "sqlite"
    begin_read = "BEGIN"
    # IMMEDIATE: the write lock is taken at once, so a reader in another process cannot
    # make the commit fail half way.
    begin_write = "BEGIN IMMEDIATE"
    list_tables_sql = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"

    def fault_kind(self, error: BaseException) -> str | None:
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
        return _SQLITE_FAULT_KINDS.get(code & 0xFF)

    def in_transaction(self, conn: Any) -> bool:
        return bool(conn.in_transaction)

    def driver_error(self) -> type[Exception]:
        return sqlite3.Error


class PostgresDialect(Dialect):
    """PostgreSQL through psycopg 3 (autocommit connections; we issue BEGIN ourselves)."""

    name = "postgresql"
    # Reads see one snapshot from their first statement to their end (as a SQLite read
    # transaction does); a read-only REPEATABLE READ transaction never fails to serialize.
    begin_read = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
    # One writer at a time, in this process (one writer connection) and across processes
    # (the advisory lock, released at commit or rollback): the semantics of SQLite's
    # BEGIN IMMEDIATE, so READ COMMITTED sees everything committed before it.
    begin_write = (
        "BEGIN ISOLATION LEVEL READ COMMITTED; "
        f"SELECT pg_advisory_xact_lock({WRITER_LOCK_KEY})"
    )
    list_tables_sql = (
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
    )
    text_allows_nul = False

    def sql(self, text: str) -> str:
        return _to_pyformat(text)

    def schema_sql(self, statement: str) -> str:
        # SQLite's INTEGER is 64-bit; PostgreSQL's is 32-bit. BLOB is BYTEA there.
        return _SCHEMA_TOKENS.sub(_schema_type, statement)

    def fault_kind(self, error: BaseException) -> str | None:
        import psycopg

        if not isinstance(error, psycopg.Error):
            return None
        state = error.sqlstate or ""
        kind = _PG_FAULT_KINDS.get(state) or _PG_FAULT_CLASSES.get(state[:2])
        if kind is not None:
            return kind
        if not state and isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError)):
            # No SQLSTATE: the driver's own errors (connection refused, lost, closed).
            return "unavailable"
        return None

    def retryable(self, error: BaseException) -> bool:
        return getattr(error, "sqlstate", None) in _PG_RETRYABLE

    def in_transaction(self, conn: Any) -> bool:
        from psycopg.pq import TransactionStatus

        return conn.info.transaction_status != TransactionStatus.IDLE

    def driver_error(self) -> type[Exception]:
        import psycopg

        return psycopg.Error


@functools.lru_cache(maxsize=4096)
def _to_pyformat(text: str) -> str:
    return _TOKENS.sub(_pyformat_token, text)


def _pyformat_token(m: re.Match) -> str:
    token = m.group(0)
    if token == "?":
        return "%s"
    # psycopg reads every "%" as the start of a placeholder, even inside a string literal.
    return token.replace("%", "%%")


def _schema_type(m: re.Match) -> str:
    token = m.group(0)
    return _SCHEMA_TYPES.get(token.lower(), token)


#: The dialects, by backend name.
SQLITE = SQLiteDialect()
POSTGRESQL = PostgresDialect()
DIALECTS = {d.name: d for d in (SQLITE, POSTGRESQL)}
