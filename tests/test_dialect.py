"""The SQL dialects (pure), the database option, and a scan of fedserver/storage for SQL that would not run on both engines."""

from __future__ import annotations

import ast
import os
import re

import psycopg
from twisted.trial.unittest import SynchronousTestCase

from fedserver.config import ConfigError, config_from_dict, generate_config_text, load_config
from fedserver.scripts import database_overrides
from fedserver.storage.dialect import POSTGRESQL, SQLITE
from fedserver.storage.postgres import PostgresConfig

STORAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fedserver", "storage")


class TranslationTests(SynchronousTestCase):
    """Portable SQL text as each driver takes it."""

    def test_placeholders(self):
        """`?` becomes `%s` for psycopg, except inside string literals, quoted identifiers
        and comments; every `%` is doubled (psycopg reads it anywhere); SQLite's text is
        left as it is."""
        sql = "SELECT '?', \"a?\", x FROM t WHERE a = ? AND b LIKE 'x%' -- what?\nAND c = ? /* ? */"
        self.assertEqual(SQLITE.sql(sql), sql)
        self.assertEqual(
            POSTGRESQL.sql(sql),
            "SELECT '?', \"a?\", x FROM t WHERE a = %s AND b LIKE 'x%%' -- what?\nAND c = %s /* ? */",
        )
        self.assertEqual(POSTGRESQL.sql("SELECT 'it''s ?' , ?"), "SELECT 'it''s ?' , %s")
        self.assertEqual(POSTGRESQL.sql("SELECT a % 2 FROM t"), "SELECT a %% 2 FROM t")

    def test_schema_types(self):
        """Schema statements get BIGINT for INTEGER (SQLite's INTEGER is 64-bit) and BYTEA
        for BLOB on PostgreSQL, whatever their case, never inside names or literals."""
        ddl = "CREATE TABLE t (a INTEGER NOT NULL, b blob, c TEXT DEFAULT 'INTEGER', integers_x INTEGER, d BIGINT)"
        self.assertEqual(SQLITE.schema_sql(ddl), ddl)
        self.assertEqual(
            POSTGRESQL.schema_sql(ddl),
            "CREATE TABLE t (a BIGINT NOT NULL, b BYTEA, c TEXT DEFAULT 'INTEGER', integers_x BIGINT, d BIGINT)",
        )

    def test_postgres_faults(self):
        """PostgreSQL errors that are the database's fault map to the kinds answered 503;
        request errors (a constraint, a syntax error) are not faults; serialization
        failures and deadlocks may be retried."""
        errors = psycopg.errors
        cases = [
            (errors.DiskFull("x"), "full"),
            (errors.ReadOnlySqlTransaction("x"), "read-only"),
            (errors.LockNotAvailable("x"), "locked"),
            (errors.AdminShutdown("x"), "unavailable"),
            (errors.CannotConnectNow("x"), "unavailable"),
            (errors.ConnectionFailure("x"), "unavailable"),
            (errors.TooManyConnections("x"), "io"),
            (errors.IoError("x"), "io"),
            (errors.DataCorrupted("x"), "corrupt"),
            (psycopg.OperationalError("connection refused"), "unavailable"),
            (errors.UniqueViolation("x"), None),
            (errors.SyntaxError("x"), None),
            (ValueError("x"), None),
        ]
        for error, kind in cases:
            self.assertEqual(POSTGRESQL.fault_kind(error), kind, type(error).__name__)
        self.assertTrue(POSTGRESQL.retryable(errors.SerializationFailure("x")))
        self.assertTrue(POSTGRESQL.retryable(errors.DeadlockDetected("x")))
        self.assertFalse(POSTGRESQL.retryable(errors.UniqueViolation("x")))
        self.assertFalse(SQLITE.retryable(errors.SerializationFailure("x")))


class DatabaseOptionTests(SynchronousTestCase):
    """The ``database`` option: SQLite by default, PostgreSQL when asked."""

    def test_default_is_sqlite_at_database_path(self):
        """Without the option (or with {backend: sqlite}) the store is database_path."""
        for raw in ({}, {"database": {"backend": "sqlite"}}, {"database": None}):
            config = config_from_dict({"database_path": "x.db", **raw})
            self.assertEqual(config.database.backend, "sqlite")
            self.assertEqual(config.store_target(), "x.db")
            self.assertEqual(config.describe_database(), "x.db")

    def test_postgresql(self):
        """backend: postgresql with a dsn, schema and readers gives a PostgresConfig; the
        description for logs has no password."""
        config = config_from_dict({"database": {"backend": "postgresql", "dsn": "postgresql://fs:secret@db.example:5433/fs",
                                                "schema": "fedserver", "readers": 8}})
        target = config.store_target()
        self.assertEqual(target, PostgresConfig("postgresql://fs:secret@db.example:5433/fs", schema="fedserver", readers=8))
        self.assertEqual(config.describe_database(), "postgresql fs@db.example:5433/fs schema fedserver")
        self.assertNotIn("secret", config.describe_database())
        self.assertEqual(config_from_dict({"database": {"backend": "postgresql"}}).store_target().dsn, "")

    def test_bad_values_named(self):
        """Unknown backends or keys, SQLite with PostgreSQL keys, bad schema names,
        readers out of range and unparseable dsns stop the start with one line."""
        for bad, needle in (
            ({"backend": "mysql"}, "backend must be"),
            ({"backend": "postgresql", "host": "x"}, "unknown key 'host'"),
            ({"backend": "sqlite", "dsn": "x"}, "are for backend: postgresql"),
            ({"backend": "postgresql", "schema": "Bad-Name"}, "schema must be"),
            ({"backend": "postgresql", "readers": 0}, "readers must be"),
            ({"backend": "postgresql", "readers": True}, "readers must be"),
            ({"backend": "postgresql", "dsn": "host='unterminated"}, "not a valid connection string"),
            ("postgresql://x", "must be a mapping"),
        ):
            with self.assertRaises(ConfigError) as caught:
                config_from_dict({"database": bad})
            self.assertIn("'database'", str(caught.exception))
            self.assertIn(needle, str(caught.exception))
            self.assertEqual(len(str(caught.exception).splitlines()), 1)

    def test_generated_config_round_trips(self):
        """--generate-config shows the option with a PostgreSQL example, and the text of a
        PostgreSQL configuration loads back equal."""
        text = generate_config_text()
        self.assertIn("database:\n  backend: sqlite", text)
        self.assertIn("#   database:\n#     backend: postgresql", text)
        config = config_from_dict({"database": {"backend": "postgresql", "dsn": "dbname=fs", "schema": None, "readers": 3}})
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(generate_config_text(config))
        self.assertEqual(load_config(path), config)

    def test_command_line_database(self):
        """A tool's --database is a SQLite file, or a postgresql:// URL."""
        self.assertEqual(database_overrides("x.db"), {"database_path": "x.db", "database": {"backend": "sqlite"}})
        self.assertEqual(database_overrides("postgresql://h/db"),
                         {"database": {"backend": "postgresql", "dsn": "postgresql://h/db"}})


# -- portability ----------------------------------------------------------------------------

#: SQL that one engine has and the other has not (or means differently). A string may opt
#: out with a "# portable-sql: <why>" comment on its first line ("-- portable-sql: <why>" in
#: a schema script).
_NOT_PORTABLE = [
    (r"\bINSERT\s+OR\s+(REPLACE|IGNORE)\b|\bREPLACE\s+INTO\b", "upsert with ON CONFLICT ... DO UPDATE/NOTHING"),
    (r"\bAUTOINCREMENT\b|\bWITHOUT\s+ROWID\b|\browid\b|\blastrowid\b", "allocate ids with txn.allocate_ids()"),
    (r"\bsqlite_master\b|\bPRAGMA\b", "SQLite only (the dialect knows how to list tables)"),
    (r"\bIS\s+NOT\s+\?|\bIS\s+\?", "PostgreSQL has no IS <value>: branch on None in Python"),
    (r"\bsubstr\([^)]*,\s*-", "negative substr() starts are SQLite only"),
    (r"\b(GLOB|ifnull|group_concat|julianday|strftime|datetime|randomblob|zeroblob|typeof|printf|instr|total)\s*\(",
     "an SQLite-only function"),
    (r"\bjson_(extract|each|object|array|group_array)\s*\(", "JSON functions differ between engines"),
    (r"\b(I?LIKE)\b", "LIKE ignores ASCII case on SQLite, not on PostgreSQL: compare exactly"),
    (r"=\s*(TRUE|FALSE)\b", "booleans are INTEGER 0/1"),
    (r"\bCAST\s*\([^)]*\bAS\s+INTEGER\b", "CAST(... AS BIGINT): INTEGER is 32-bit in PostgreSQL"),
]
_COLUMN_TYPES = re.compile(r"^\s+(?!PRIMARY|UNIQUE|FOREIGN|CHECK|CONSTRAINT)\w+\s+([A-Z]+(?:\s+PRECISION)?)\b", re.M)
_SQLISH = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|WHERE|VALUES|ON CONFLICT|JOIN)\b")
_ALLOWED_TYPES = {"INTEGER", "BIGINT", "TEXT", "BLOB"}
# Files that speak to one engine on purpose.
_ENGINE_FILES = {"dialect.py", "database.py", "postgres.py", "schema.py"}


class PortableSqlTests(SynchronousTestCase):
    """Storage code and schema scripts use only SQL both engines run alike (see
    "Writing portable SQL" in docs/development.md)."""

    def _lines(self):
        """``(file, line, text)`` of every SQL text: string literals of the Python
        modules that look like SQL, and the schema scripts without their comments."""
        for root, _dirs, names in os.walk(STORAGE):
            for name in sorted(names):
                if not name.endswith((".py", ".sql")) or name in _ENGINE_FILES:
                    continue
                path = os.path.join(root, name)
                where = os.path.relpath(path, STORAGE)
                with open(path, encoding="utf-8") as f:
                    source = f.read()
                lines = source.splitlines()
                if name.endswith(".sql"):
                    for number, line in enumerate(lines, 1):
                        if "portable-sql:" not in line:
                            yield where, number, line.split("--", 1)[0]
                    continue
                for node in ast.walk(ast.parse(source)):
                    if isinstance(node, ast.Constant) and isinstance(node.value, str) and _SQLISH.search(node.value):
                        if "portable-sql:" not in lines[node.lineno - 1]:
                            yield where, node.lineno, node.value

    def test_no_engine_specific_sql(self):
        """No upsert shortcut, rowid, pragma, IS ?, negative substr, SQLite-only function,
        LIKE, boolean literal or 32-bit cast in fedserver/storage."""
        found = []
        for where, number, code in self._lines():
            for pattern, why in _NOT_PORTABLE:
                if re.search(pattern, code, re.I if "LIKE" not in pattern else 0):
                    found.append(f"{where}:{number}: {code.strip()[:100]}  -> {why}")
        self.assertEqual(found, [])

    def test_schema_column_types(self):
        """Schema scripts declare only INTEGER, BIGINT, TEXT and BLOB columns."""
        found = []
        schema = os.path.join(STORAGE, "schema")
        for name in sorted(os.listdir(schema)):
            with open(os.path.join(schema, name), encoding="utf-8") as f:
                text = "\n".join(line.split("--", 1)[0] for line in f)
            for table in re.findall(r"CREATE TABLE[^(]*\((.*?)\n\);", text, re.S):
                for column_type in _COLUMN_TYPES.findall("\n" + table):
                    if column_type not in _ALLOWED_TYPES:
                        found.append(f"{name}: {column_type}")
        self.assertEqual(found, [])

    def test_scan_catches_what_it_should(self):
        """The scan itself flags a sample of non-portable statements."""
        samples = [
            "INSERT OR IGNORE INTO t VALUES (?)", "REPLACE INTO t VALUES (1)", "x INTEGER PRIMARY KEY AUTOINCREMENT",
            "SELECT rowid FROM t", "PRAGMA foreign_keys", "WHERE a IS NOT ?", "substr(x, -3)",
            "SELECT group_concat(a) FROM t", "WHERE a LIKE ?", "WHERE flag = TRUE", "CAST(x AS INTEGER)",
            "json_extract(j, '$.a')",
        ]
        for sample in samples:
            self.assertTrue(
                any(re.search(p, sample, re.I if "LIKE" not in p else 0) for p, _ in _NOT_PORTABLE), sample
            )

