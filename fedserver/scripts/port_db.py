"""fedserver-port-db: copy a SQLite database into an empty PostgreSQL one, verified by row counts and checksums."""

# The whole copy is ONE PostgreSQL transaction (schema, rows, verification): it commits
# only if every table has as many rows on both sides and the same checksum, so a failed
# or interrupted port leaves the target empty and can simply be run again. The SQLite file
# is read under its write lock (BEGIN IMMEDIATE): a server still running on it cannot
# change it meanwhile (its writes wait, then fail as "locked"), so the copy is consistent.
# Stop the server first anyway: anything it writes after the copy would be lost.

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence, TextIO

from fedserver.scripts.refusals import _Parser

PROG = "fedserver-port-db"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

#: Rows fetched from SQLite at a time.
BATCH = 5000

DESCRIPTION = """\
Copy fedserver's SQLite database into an empty PostgreSQL database (or schema), then
check that every table has as many rows on both sides and the same checksum (the events
included). Everything happens in one PostgreSQL transaction: nothing is kept unless the
check passes. Stop the server first; the SQLite file is upgraded to this version's schema
if it is older (as the server would on start) and is otherwise left as it is. Media files
are not touched: keep media_store_path pointing at the same directory.
"""

EPILOG = """\
exit status: 0 copied and verified, 1 refused or failed (nothing kept), 2 usage or
configuration errors.
"""


class PortError(Exception):
    """The port cannot be done or did not verify; nothing was kept."""


@dataclass
class TableReport:
    """One table's outcome."""

    name: str
    rows: int
    checksum: str


@dataclass
class PortReport:
    """What was copied."""

    schema_version: int
    tables: list[TableReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)

    def table(self, name: str) -> TableReport:
        return next(t for t in self.tables if t.name == name)


def build_parser(stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr) -> argparse.ArgumentParser:
    """The command line of ``fedserver-port-db``."""
    p = _Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG, stdout=stdout, stderr=stderr,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", metavar="FILE",
                   help="server configuration: the source is its database_path, the target its "
                        "database (if backend: postgresql)")
    p.add_argument("--sqlite", metavar="PATH", help="the SQLite database file to copy")
    p.add_argument("--postgres", metavar="URL", help="the target: a libpq URL or connection string")
    p.add_argument("--schema", metavar="NAME", help="the target schema (must exist; default: the user's default)")
    return p


def port_database(sqlite_path: str, target: Any, *, out: Callable[[str], None] = lambda _: None,
                  schema_dir: Optional[str] = None, now_ms: Optional[int] = None) -> PortReport:
    """Copy the fedserver database ``sqlite_path`` into the empty PostgreSQL database
    ``target`` (a :class:`~fedserver.storage.postgres.PostgresConfig`) and verify it.

    :param out: gets one line per step.
    :raises PortError: if the source is not a fedserver database, the target is not
        empty or unsuitable, a value cannot be stored in PostgreSQL, or the copy does not
        verify. Nothing is kept in the target.
    """
    import psycopg

    from fedserver.storage.interface import SchemaError
    from fedserver.storage.schema import DEFAULT_SCHEMA_DIR, prepare_database

    schema_dir = schema_dir or DEFAULT_SCHEMA_DIR
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    started = time.monotonic()
    if not os.path.isfile(sqlite_path):
        raise PortError(f"no database at {sqlite_path}")
    try:
        src = sqlite3.connect(sqlite_path, isolation_level=None, timeout=10)
    except sqlite3.Error as e:
        raise PortError(f"cannot open {sqlite_path}: {e}") from None
    try:
        try:
            version = prepare_database(src, schema_dir, now_ms)
            src.execute("BEGIN IMMEDIATE")
        except (SchemaError, sqlite3.Error) as e:
            raise PortError(f"{sqlite_path}: {e}") from None
        report = PortReport(version)
        _copy_into(src, sqlite_path, target, report, schema_dir, now_ms, out)
    except psycopg.Error as e:
        raise PortError(f"PostgreSQL: {str(e).strip()} (nothing was kept)") from None
    finally:
        if src.in_transaction:
            src.execute("ROLLBACK")
        src.close()
    report.seconds = time.monotonic() - started
    events = report.table("events")
    out(f"events: {events.rows} rows, checksum sha256:{events.checksum} on both sides")
    out(f"done: {len(report.tables)} tables, {report.rows} rows copied and verified in {report.seconds:.1f} s")
    return report


def _copy_into(src: sqlite3.Connection, sqlite_path: str, target: Any, report: PortReport, schema_dir: str,
               now_ms: int, out: Callable[[str], None]) -> None:
    """Connect to ``target``, check the server, then copy and verify in one transaction,
    rolled back on any failure (the target is left as it was)."""
    import psycopg
    from psycopg import sql

    from fedserver.storage.dialect import POSTGRESQL
    from fedserver.storage.interface import SchemaError
    from fedserver.storage.postgres import check_server

    try:
        dst = psycopg.connect(target.dsn, autocommit=True, connect_timeout=target.connect_timeout_s)
    except psycopg.Error as e:
        raise PortError(f"cannot connect to {target.describe()}: {str(e).strip()}") from None
    try:
        if target.schema is not None:
            dst.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(target.schema)))
        try:
            check_server(dst, target)
        except SchemaError as e:
            raise PortError(str(e)) from None
        out(f"copying {sqlite_path} (schema version {report.schema_version}) into {target.describe()}")
        try:
            with dst.cursor() as cur:
                cur.execute(POSTGRESQL.begin_write)
                _copy_tables(src, cur, report, schema_dir, now_ms, out)
                cur.execute("COMMIT")
        except BaseException:
            if POSTGRESQL.in_transaction(dst):
                dst.execute("ROLLBACK")
            raise
    finally:
        dst.close()


def _copy_tables(src: sqlite3.Connection, cur: Any, report: PortReport, schema_dir: str, now_ms: int,
                 out: Callable[[str], None]) -> None:
    """Inside the target's transaction: refuse a target that is not empty, build the
    schema, copy every table (each after those its foreign keys point at) and verify."""
    from psycopg import sql

    from fedserver.storage.dialect import POSTGRESQL, SQLITE
    from fedserver.storage.schema import build_schema, find_scripts

    existing = [r[0] for r in cur.execute(POSTGRESQL.list_tables_sql)]
    if existing:
        raise PortError(
            f"the target is not empty ({len(existing)} tables, e.g. {sorted(existing)[0]!r}): "
            "port into an empty database or schema"
        )
    build_schema(cur, find_scripts(schema_dir), now_ms, POSTGRESQL)
    order = _copy_order(src, cur, SQLITE)
    # The scripts may have put rows in (schema_version, seeded sequences):
    # the source holds their own, which are copied instead.
    for table in reversed(order):
        cur.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(table)))
    for table in order:
        report.tables.append(_copy_table(src, cur, table))
        t = report.tables[-1]
        out(f"  {t.name:<28} {t.rows:>10} rows  checksum {t.checksum[:16]}")
    _verify(src, cur, report)


def _copy_order(src: sqlite3.Connection, cur: Any, dialect: Any) -> list[str]:
    """The source's tables, each after the tables its foreign keys point at."""
    tables = sorted(r[0] for r in src.execute(dialect.list_tables_sql))
    deps: dict[str, set[str]] = {t: set() for t in tables}
    for child, parent in cur.execute(
        "SELECT c.relname, f.relname FROM pg_constraint k"
        " JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class f ON f.oid = k.confrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE k.contype = 'f' AND n.nspname = current_schema()"
    ).fetchall():
        if child in deps and parent != child and parent in deps:
            deps[child].add(parent)
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(tables):
        ready = [t for t in tables if t not in done and deps[t] <= done]
        if not ready:
            raise PortError(f"foreign keys form a cycle among {sorted(set(tables) - done)}")
        for t in ready:
            order.append(t)
            done.add(t)
    return order


def _columns(src: sqlite3.Connection, cur: Any, table: str) -> tuple[list[str], list[str], list[str]]:
    """The table's columns, their PostgreSQL types, and its primary key columns."""
    info = src.execute(f'PRAGMA table_info("{table}")').fetchall()
    names = [r[1] for r in info]
    pk = [r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]
    types = dict(cur.execute(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = %s",
        (table,),
    ).fetchall())
    missing = [n for n in names if n not in types]
    if missing:
        raise PortError(f"table {table}: columns {missing} do not exist in PostgreSQL (schemas differ)")
    return names, [types[n] for n in names], pk


def _converter(table: str, column: str, pg_type: str) -> Callable[[Any], Any]:
    """Turns a value SQLite holds into what the PostgreSQL column takes (SQLite's columns
    take any type; ours are INTEGER, TEXT or BLOB and hold those)."""

    def convert(value: Any) -> Any:
        if value is None:
            return None
        if pg_type == "bytea":
            if isinstance(value, str):
                return value.encode("utf-8")
            if isinstance(value, (bytes, bytearray, memoryview)):
                return bytes(value)
        elif pg_type in ("bigint", "integer", "smallint"):
            if isinstance(value, int):
                return value
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                return int(value)
        elif pg_type == "text":
            if isinstance(value, bytes):
                try:
                    value = value.decode("utf-8")
                except UnicodeDecodeError:
                    raise PortError(f"{table}.{column}: bytes that are not UTF-8 text") from None
            if isinstance(value, (int, float)):
                value = str(value)
            if isinstance(value, str):
                if "\x00" in value:
                    raise PortError(
                        f"{table}.{column}: a value holds U+0000, which PostgreSQL cannot store in TEXT "
                        f"({value[:60]!r})"
                    )
                return value
        else:
            return value
        raise PortError(f"{table}.{column}: {type(value).__name__} value {value!r:.60} does not fit {pg_type}")

    return convert


def _copy_table(src: sqlite3.Connection, cur: Any, table: str) -> TableReport:
    from psycopg import sql

    names, types, pk = _columns(src, cur, table)
    converters = [_converter(table, n, t) for n, t in zip(names, types)]
    cols = ", ".join(f'"{n}"' for n in names)
    order = f" ORDER BY {', '.join(chr(34) + c + chr(34) for c in pk)}" if pk else ""
    digest = hashlib.sha256()
    count = 0
    rows = src.execute(f'SELECT {cols} FROM "{table}"{order}')
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(n) for n in names)
    )
    with cur.copy(copy_sql) as copy:
        while True:
            batch = rows.fetchmany(BATCH)
            if not batch:
                break
            for row in batch:
                values = tuple(f(v) for f, v in zip(converters, row))
                copy.write_row(values)
                _hash_row(digest, values)
            count += len(batch)
    return TableReport(table, count, digest.hexdigest())


def _hash_row(digest: Any, values: Iterable[Any]) -> None:
    for v in values:
        if v is None:
            digest.update(b"N;")
        elif isinstance(v, bytes):
            digest.update(b"B%d:" % len(v) + v)
        elif isinstance(v, int):
            digest.update(b"I%d;" % v)
        else:
            data = str(v).encode("utf-8")
            digest.update(b"T%d:" % len(data) + data)


def _verify(src: sqlite3.Connection, cur: Any, report: PortReport) -> None:
    """Count and checksum every table again from PostgreSQL (in the copying
    transaction): the same rows, in the same primary-key order, as read from SQLite."""
    for t in report.tables:
        names, _types, pk = _columns(src, cur, t.name)
        cols = ", ".join(f'"{n}"' for n in names)
        order = f" ORDER BY {', '.join(chr(34) + c + chr(34) for c in pk)}" if pk else ""
        (count,) = cur.execute(f'SELECT COUNT(*) FROM "{t.name}"').fetchone()
        if count != t.rows:
            raise PortError(f"table {t.name}: {t.rows} rows read from SQLite but {count} in PostgreSQL (nothing was kept)")
        if not pk:
            continue  # no defined order to compare in; the count was checked
        digest = hashlib.sha256()
        cur.execute(f'SELECT {cols} FROM "{t.name}"{order}')
        while True:
            batch = cur.fetchmany(BATCH)
            if not batch:
                break
            for row in batch:
                _hash_row(digest, row)
        if digest.hexdigest() != t.checksum:
            raise PortError(f"table {t.name}: the checksums differ after the copy (nothing was kept)")


async def run(reactor: Any, argv: Sequence[str], stdout: TextIO, stderr: TextIO) -> int:
    """The tool, minus process handling; returns the exit status."""
    from fedserver.config import ConfigError, load_config
    from fedserver.scripts import is_database_url
    from fedserver.storage.postgres import PostgresConfig

    parser = build_parser(stdout, stderr)
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as e:
        return EXIT_OK if e.code == 0 else EXIT_USAGE

    def fail(message: str, status: int) -> int:
        stderr.write(f"{PROG}: {message}\n")
        return status

    source, target = args.sqlite, None
    if args.config is not None:
        try:
            config = load_config(args.config)
        except ConfigError as e:
            return fail(str(e), EXIT_USAGE)
        source = source or config.database_path
        if args.postgres is None:
            if config.database.backend != "postgresql":
                return fail("the configuration's database is not postgresql: give --postgres", EXIT_USAGE)
            target = config.store_target()
    if args.postgres is not None:
        if not is_database_url(args.postgres) and "=" not in args.postgres:
            return fail("--postgres must be a postgresql:// URL or a libpq connection string", EXIT_USAGE)
        try:
            target = PostgresConfig(args.postgres, schema=args.schema)
        except ValueError as e:
            return fail(str(e), EXIT_USAGE)
    if source is None or target is None:
        return fail("give --sqlite PATH and --postgres URL (or --config FILE)", EXIT_USAGE)

    def out(line: str) -> None:
        stdout.write(line + "\n")
        stdout.flush()

    try:
        from twisted.internet import threads

        # Blocking work (two database drivers), in a thread so the reactor stays free.
        await threads.deferToThreadPool(reactor, reactor.getThreadPool(), port_database, source, target, out=out)
    except PortError as e:
        return fail(str(e), EXIT_FAILED)
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console script entry point: ``fedserver-port-db``."""
    from fedserver.scripts import react_main

    react_main(run, argv, sys.stdout, sys.stderr)


if __name__ == "__main__":
    main()
