"""PostgreSQL connections: psycopg 3 through adbapi, one writer connection and a pool of readers."""

# Why psycopg 3 (not psycopg2): its cursor.execute() returns the cursor, as sqlite3's does,
# so storage code reads `txn.execute(...).fetchone()` on both backends; it binds
# parameters on the server (no client-side quoting); executemany() sends the rows in one
# pipeline (libpq 14+), which is what batch persistence needs; and it ships a binary
# wheel with its own libpq (`psycopg[binary]`), so no compiler or system library is needed.
# It is DB-API 2.0 with threadsafety 2, which is what twisted.enterprise.adbapi expects.

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from twisted.enterprise import adbapi

from fedserver.storage.database import forbid_nul_in_this_thread
from fedserver.storage.interface import SchemaError

#: Default number of reader connections.
DEFAULT_READERS = 4

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class PostgresConfig:
    """Where the PostgreSQL database is and how to use it.

    :ivar dsn: a libpq connection string, ``postgresql://user@host:port/dbname`` or
        ``host=... dbname=...``; empty: libpq's defaults and ``PG*`` environment variables.
    :ivar schema: the schema holding fedserver's tables (must exist); ``None`` for the
        user's default (``public``).
    :ivar readers: how many connections serve reads in parallel (the writer is one more).
    :ivar lock_timeout_ms: how long a write waits for the writer lock held by another
        process before failing as "locked" (as SQLite's busy timeout).
    :ivar connect_timeout_s: how long connecting may take (unless the dsn says).
    """

    dsn: str = ""
    schema: Optional[str] = None
    readers: int = DEFAULT_READERS
    lock_timeout_ms: int = 10_000
    connect_timeout_s: int = 10

    def __post_init__(self) -> None:
        if self.schema is not None and not _IDENTIFIER.match(self.schema):
            raise ValueError("schema must be a lower-case identifier (letters, digits, '_')")
        if not 1 <= self.readers <= 64:
            raise ValueError("readers must be between 1 and 64")

    def describe(self) -> str:
        """The target without its password, for logs."""
        from psycopg.conninfo import conninfo_to_dict

        try:
            params = conninfo_to_dict(self.dsn)
        except Exception:
            return "postgresql (unparseable dsn)"
        where = "{}@{}:{}/{}".format(
            params.get("user", ""), params.get("host", ""), params.get("port", ""), params.get("dbname", "")
        )
        return f"postgresql {where}" + (f" schema {self.schema}" if self.schema else "")


class _Connection(adbapi.Connection):
    """adbapi's connection wrapper, made quiet: our transactions end themselves, so the
    rollback adbapi issues after a failure only has to leave a usable (or no) connection
    behind, without logging; and reconnecting never trips over a connection adbapi has
    already forgotten."""

    def rollback(self) -> None:
        raw = self._connection
        if raw is None or raw.closed:
            return
        try:
            raw.rollback()
        except Exception:
            try:
                raw.close()
            except Exception:
                pass

    def reconnect(self) -> None:
        old, self._connection = self._connection, None
        if old is not None:
            pool = self._pool
            if pool.connections.get(pool.threadID()) is old:
                pool.disconnect(old)
            else:
                try:
                    old.close()
                except Exception:
                    pass
        self._connection = self._pool.connect()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


class _Pool(adbapi.ConnectionPool):
    connectionFactory = _Connection


def _configure(config: PostgresConfig) -> Any:
    def configure(conn: Any) -> None:
        import psycopg
        from psycopg import sql
        from psycopg.adapt import Dumper, Loader

        forbid_nul_in_this_thread()
        int8 = conn.adapters.types["int8"].oid

        class BoolAsInt(Dumper):
            # Booleans are INTEGER 0/1 in our schema (SQLite has no boolean type).
            oid = int8

            def dump(self, obj: bool) -> bytes:
                return b"1" if obj else b"0"

        class NumericAsNumber(Loader):
            # SUM() of BIGINT is NUMERIC in PostgreSQL; SQLite gives an integer.
            def load(self, data: Any) -> Any:
                text = bytes(data)
                return float(text) if b"." in text or b"e" in text.lower() else int(text)

        conn.adapters.register_dumper(bool, BoolAsInt)
        conn.adapters.register_loader("numeric", NumericAsNumber)
        conn.execute(
            sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(config.lock_timeout_ms)}ms"))
        )
        if config.schema is not None:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(config.schema)))
        del psycopg

    return configure


def connect_pools(config: PostgresConfig, reactor: Any) -> tuple[adbapi.ConnectionPool, adbapi.ConnectionPool]:
    """The writer pool (one connection) and the readers' pool (``config.readers``).

    Connections are made lazily, in the pools' threads, in autocommit mode: transactions
    are begun and committed by :class:`~fedserver.storage.database.Database`.

    :raises ImportError: if psycopg is not installed (``pip install 'fedserver[postgres]'``).
    """
    import psycopg  # noqa: F401  (fail now, with a clear message, if it is missing)

    common = dict(
        autocommit=True,
        application_name="fedserver",
        cp_noisy=False,
        cp_reconnect=False,  # _Connection and Database reconnect, quietly
        cp_openfun=_configure(config),
        cp_reactor=reactor,
    )
    kwargs: dict[str, Any] = {}
    if "connect_timeout" not in config.dsn:
        kwargs["connect_timeout"] = config.connect_timeout_s
    writer = _Pool("psycopg", config.dsn, cp_min=1, cp_max=1, **kwargs, **common)
    readers = _Pool("psycopg", config.dsn, cp_min=1, cp_max=config.readers, **kwargs, **common)
    return writer, readers


def _codepoint_order(locale: str) -> bool:
    # "C" and "POSIX" compare bytes; glibc's C.UTF-8 compares code points, the same order.
    return locale.lower().replace("-", "") in ("c", "posix", "c.utf8")


def check_server(conn: Any, config: PostgresConfig) -> None:
    """Refuse a database that would not behave as fedserver needs: text must be UTF-8 and
    ordered by code point (collation ``C``, as SQLite compares text), and the schema must
    exist.

    :raises SchemaError: naming what is wrong and how to create a suitable database.
    """
    row = conn.execute(
        "SELECT pg_encoding_to_char(encoding), datcollate, datctype, current_schema(), current_database()"
        " FROM pg_database WHERE datname = current_database()"
    ).fetchone()
    encoding, collate, ctype, schema, dbname = row
    fix = (
        "create it with: CREATE DATABASE name ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' "
        "TEMPLATE template0 (see docs/operators.md)"
    )
    if encoding != "UTF8":
        raise SchemaError(f"database {dbname!r} has encoding {encoding}, not UTF8; {fix}")
    if not (_codepoint_order(collate) and _codepoint_order(ctype)):
        raise SchemaError(
            f"database {dbname!r} has LC_COLLATE {collate!r} and LC_CTYPE {ctype!r}: text would sort "
            f"by language rules, not by code point as fedserver expects; {fix}"
        )
    if schema is None or (config.schema is not None and schema != config.schema):
        raise SchemaError(
            f"schema {config.schema or 'public'!r} does not exist in database {dbname!r} "
            "(or the user may not use it): create it first"
        )
