"""Versioned schema: builds a new database atomically and applies upgrade scripts in order."""

# The schema directory holds NNN_description.sql files. 001 is the full schema of a new
# database; each later number is an upgrade. Numbers are handed out to parallel branches,
# so the sequence may have gaps while some are not merged yet: every script whose number
# is not recorded in the schema_version table is applied, in number order, whenever it
# arrives (each upgrade touches only its own area's tables).
# * A new database is built in ONE transaction (bootstrap table, every script, the version
#   rows): a crash half way leaves an empty file, which the next start builds again.
# * An existing database gets each missing upgrade in its own transaction, in order.
# * A database whose version is newer than the newest script is refused, as is a file that
#   has tables but no schema_version (not ours).
# The scripts are portable SQL (see docs/development.md); on PostgreSQL the dialect turns
# INTEGER into BIGINT and BLOB into BYTEA as each statement is run, and DDL is
# transactional there too, so the same guarantees hold.

from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass
from typing import Any, Iterator

from fedserver.storage.dialect import SQLITE, Dialect
from fedserver.storage.interface import SchemaError, SchemaTooNewError

#: Where the shipped schema scripts live.
DEFAULT_SCHEMA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema")

_SCRIPT_NAME = re.compile(r"^(\d{3})_[A-Za-z0-9_]+\.sql$")

_BOOTSTRAP = (
    "CREATE TABLE schema_version ("
    " version INTEGER NOT NULL PRIMARY KEY,"
    " applied_ts INTEGER NOT NULL)"
)


@dataclass(frozen=True)
class SchemaScript:
    """One ``NNN_name.sql`` file."""

    version: int
    path: str

    def statements(self) -> list[str]:
        """The file's SQL statements, in order.

        :raises SchemaError: if the file ends inside an unfinished statement.
        """
        with open(self.path, encoding="utf-8") as f:
            return list(split_statements(f.read(), self.path))


def split_statements(sql: str, source: str = "<sql>") -> Iterator[str]:
    """Split a script into complete statements (SQLite's own parser decides where one ends,
    so semicolons in strings or trigger bodies are handled).

    ``executescript`` cannot be used: it commits any open transaction first, which would
    break the atomic creation of a new database.
    """
    buf: list[str] = []
    for line in sql.splitlines(keepends=True):
        if not buf and (not line.strip() or line.lstrip().startswith("--")):
            continue  # blank lines and comments between statements
        buf.append(line)
        text = "".join(buf)
        if sqlite3.complete_statement(text):
            if _has_sql(text):
                yield text.strip()
            buf = []
    rest = "".join(buf)
    if _has_sql(rest):
        raise SchemaError(f"{source}: unterminated SQL statement at end of file")


def _has_sql(text: str) -> bool:
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("--"):
            return True
    return False


def find_scripts(schema_dir: str) -> list[SchemaScript]:
    """The scripts of ``schema_dir``, by version.

    :raises SchemaError: if there are none, two share a number, or the first is not
        ``001``. Gaps are allowed (numbers allotted to work not merged yet).
    """
    try:
        names = os.listdir(schema_dir)
    except OSError as e:
        raise SchemaError(f"cannot read schema directory {schema_dir!r}: {e}") from None
    scripts: dict[int, SchemaScript] = {}
    for name in names:
        m = _SCRIPT_NAME.match(name)
        if m is None:
            continue
        version = int(m.group(1))
        if version in scripts:
            raise SchemaError(f"two schema scripts for version {version} in {schema_dir!r}")
        scripts[version] = SchemaScript(version, os.path.join(schema_dir, name))
    if not scripts:
        raise SchemaError(f"no schema scripts in {schema_dir!r}")
    ordered = [scripts[v] for v in sorted(scripts)]
    if ordered[0].version != 1:
        raise SchemaError(f"schema script 001 is missing from {schema_dir!r}")
    return ordered


def get_schema_version(conn: Any, dialect: Dialect = SQLITE) -> int | None:
    """The version recorded in the database, or ``None`` if it has no schema yet.

    :raises SchemaError: if it has tables but no ``schema_version`` table.
    """
    cur = conn.cursor()
    try:
        tables = {row[0] for row in cur.execute(dialect.list_tables_sql)}
        if "schema_version" not in tables:
            if tables:
                raise SchemaError(
                    "the database has tables but no schema_version table: it was not "
                    "created by fedserver"
                )
            return None
        row = cur.execute("SELECT MAX(version) FROM schema_version").fetchone()
    finally:
        cur.close()
    if row is None or row[0] is None:
        raise SchemaError("the schema_version table is empty: the database is damaged")
    return int(row[0])


def prepare_database(conn: Any, schema_dir: str, now_ms: int, dialect: Dialect = SQLITE) -> int:
    """Create or upgrade the schema of ``conn`` (sqlite3 opened with
    ``isolation_level=None``, or psycopg in autocommit mode).

    :param schema_dir: the directory of ``NNN_*.sql`` scripts.
    :param now_ms: recorded as the time each version was applied.
    :param dialect: the engine's dialect.
    :returns: the schema version now in the database.
    :raises SchemaTooNewError: if the database is newer than the newest script.
    :raises SchemaError: if the database is not ours or a script is broken; nothing of the
        failing step is left behind.
    """
    scripts = find_scripts(schema_dir)
    code_version = scripts[-1].version
    cur = conn.cursor()
    try:
        # Take the write lock before looking, so two processes starting at once cannot
        # both decide to build the schema.
        cur.execute(dialect.begin_write)
        try:
            current = get_schema_version(conn, dialect)
            if current is None:
                build_schema(cur, scripts, now_ms, dialect)
            elif current > code_version:
                raise SchemaTooNewError(
                    f"the database has schema version {current}, newer than the newest this "
                    f"code knows ({code_version}); refusing to open it"
                )
            else:
                applied = {row[0] for row in cur.execute("SELECT version FROM schema_version")}
                cur.execute("COMMIT")
                for script in [s for s in scripts if s.version not in applied]:
                    cur.execute(dialect.begin_write)
                    _apply(cur, script, now_ms, dialect)
                    cur.execute("COMMIT")
                return code_version
            cur.execute("COMMIT")
        except BaseException:
            if dialect.in_transaction(conn):
                cur.execute("ROLLBACK")
            raise
    finally:
        cur.close()
    return code_version


def build_schema(cur: Any, scripts: list[SchemaScript], now_ms: int, dialect: Dialect = SQLITE) -> None:
    """Create the whole schema of a new database in the caller's (open) transaction: the
    ``schema_version`` table and every script, each recorded as applied at ``now_ms``.

    :raises SchemaError: if a script fails.
    """
    cur.execute(dialect.schema_sql(_BOOTSTRAP))
    for script in scripts:
        _apply(cur, script, now_ms, dialect)


def _apply(cur: Any, script: SchemaScript, now_ms: int, dialect: Dialect = SQLITE) -> None:
    for statement in script.statements():
        try:
            cur.execute(dialect.schema_sql(statement))
        except dialect.driver_error() as e:
            if dialect is not SQLITE and dialect.fault_kind(e) is not None:
                raise  # the server cannot work right now (connection lost...); not the script
            raise SchemaError(
                f"schema script {os.path.basename(script.path)} failed: {e}"
            ) from e
    cur.execute(
        dialect.sql("INSERT INTO schema_version (version, applied_ts) VALUES (?, ?)"),
        (script.version, now_ms),
    )
