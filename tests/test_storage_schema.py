"""Tests for the versioned schema: atomic creation, upgrades, refusals, connection settings."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap

from twisted.trial import unittest

from fedserver.storage.interface import SchemaError, SchemaTooNewError
from fedserver.storage.schema import (
    DEFAULT_SCHEMA_DIR,
    find_scripts,
    get_schema_version,
    prepare_database,
    split_statements,
)
from fedserver.storage.sqlite import open_store
from fedserver.testing import connect_test_database
from tests.test_storage_support import StoreTestCase

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tables(path: str) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def _version(path: str) -> int | None:
    conn = sqlite3.connect(path)
    try:
        return get_schema_version(conn)
    finally:
        conn.close()


def _store_tables(path: str) -> set[str]:
    """The tables of the store opened for ``path`` (on the backend under test)."""
    conn = connect_test_database(path)
    try:
        return conn.tables()
    finally:
        conn.close()


def _store_version(path: str) -> int | None:
    conn = connect_test_database(path)
    try:
        return conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
    finally:
        conn.close()


#: The newest shipped schema version, and the number a test-only upgrade script takes.
LATEST = find_scripts(DEFAULT_SCHEMA_DIR)[-1].version
NEXT = LATEST + 1


def script_name(version: int, name: str) -> str:
    return f"{version:03d}_{name}.sql"


class SchemaDirTestsMixin:
    def schema_copy(self, extra: dict[str, str] | None = None) -> str:
        """A copy of the shipped schema directory with ``extra`` scripts added."""
        path = self.mktemp()
        shutil.copytree(DEFAULT_SCHEMA_DIR, path)
        for name, sql in (extra or {}).items():
            with open(os.path.join(path, name), "w", encoding="utf-8") as f:
                f.write(sql)
        return path


class SplitStatementsTests(unittest.SynchronousTestCase):
    """The script splitter."""

    def test_semicolons_in_strings_and_comments(self):
        """Semicolons inside string literals do not end a statement; comment-only chunks
        are dropped."""
        sql = "-- a comment; still a comment\nCREATE TABLE t (a TEXT DEFAULT 'x;y');\n\nINSERT INTO t VALUES ('1;2');\n-- trailing\n"
        self.assertEqual(
            list(split_statements(sql)),
            ["CREATE TABLE t (a TEXT DEFAULT 'x;y');", "INSERT INTO t VALUES ('1;2');"],
        )

    def test_unterminated_statement_is_an_error(self):
        """A script ending in the middle of a statement is refused, not half applied."""
        with self.assertRaises(SchemaError):
            list(split_statements("CREATE TABLE t (a TEXT);\nCREATE TABLE u (b TEXT)"))

    def test_shipped_scripts_parse(self):
        """Every shipped script splits into statements SQLite accepts, numbered from 001."""
        scripts = find_scripts(DEFAULT_SCHEMA_DIR)
        self.assertEqual(scripts[0].version, 1)
        for script in scripts:
            self.assertTrue(script.statements())


class FindScriptsTests(SchemaDirTestsMixin, unittest.SynchronousTestCase):
    """Discovery of NNN_*.sql scripts."""

    def test_gap_is_allowed(self):
        """Numbers are allotted to parallel work: a gap in the sequence is allowed."""
        path = self.schema_copy({script_name(NEXT + 1, "later"): "SELECT 1;\n"})
        self.assertEqual(find_scripts(path)[-1].version, NEXT + 1)

    def test_missing_first_script_is_refused(self):
        """Without 001 (the full schema of a new database) the directory is refused."""
        path = self.schema_copy()
        for script in find_scripts(path):
            if script.version == 1:
                os.remove(script.path)
        with self.assertRaises(SchemaError) as cm:
            find_scripts(path)
        self.assertIn("001", str(cm.exception))

    def test_duplicate_is_refused(self):
        """Two scripts with the same number are an error."""
        path = self.schema_copy({"001_again.sql": "SELECT 1;\n"})
        with self.assertRaises(SchemaError):
            find_scripts(path)

    def test_other_files_ignored(self):
        """Files not named NNN_name.sql are ignored."""
        path = self.schema_copy({"README.txt": "x", "2_bad.sql": "nonsense"})
        self.assertEqual([s.version for s in find_scripts(path)], [s.version for s in find_scripts(DEFAULT_SCHEMA_DIR)])


class PrepareDatabaseTests(SchemaDirTestsMixin, unittest.SynchronousTestCase):
    """prepare_database on real files, without the reactor."""

    def connect(self, path: str) -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None)
        self.addCleanup(conn.close)
        return conn

    def test_creation_is_idempotent(self):
        """Preparing twice creates the schema once and records each version once."""
        path = self.mktemp()
        conn = self.connect(path)
        self.assertEqual(prepare_database(conn, DEFAULT_SCHEMA_DIR, 5), LATEST)
        self.assertEqual(prepare_database(conn, DEFAULT_SCHEMA_DIR, 6), LATEST)
        rows = conn.execute("SELECT version, applied_ts FROM schema_version").fetchall()
        self.assertEqual(rows, [(s.version, 5) for s in find_scripts(DEFAULT_SCHEMA_DIR)])
        self.assertIn("events", _tables(path))

    def test_failed_creation_leaves_nothing(self):
        """If a script fails while a new database is built, no table is left behind, and
        a later start builds the schema from scratch."""
        broken = self.schema_copy({script_name(NEXT, "broken"): "CREATE TABLE ok (a TEXT);\nCREATE TABLE broken (;\n"})
        path = self.mktemp()
        conn = self.connect(path)
        with self.assertRaises(SchemaError):
            prepare_database(conn, broken, 1)
        self.assertEqual(_tables(path), set())
        self.assertEqual(prepare_database(conn, DEFAULT_SCHEMA_DIR, 2), LATEST)
        self.assertEqual(_version(path), LATEST)

    def test_failed_upgrade_keeps_previous_version(self):
        """A failing upgrade script is rolled back entirely; the database stays at the
        version before it and is still usable."""
        path = self.mktemp()
        conn = self.connect(path)
        prepare_database(conn, DEFAULT_SCHEMA_DIR, 1)
        broken = self.schema_copy({script_name(NEXT, "broken"): "CREATE TABLE half (a TEXT);\nINSERT INTO nowhere VALUES (1);\n"})
        with self.assertRaises(SchemaError):
            prepare_database(conn, broken, 2)
        self.assertEqual(_version(path), LATEST)
        self.assertNotIn("half", _tables(path))

    def test_foreign_database_refused(self):
        """A file with tables but no schema_version table is not taken over."""
        path = self.mktemp()
        conn = self.connect(path)
        conn.execute("CREATE TABLE somebody_elses (x INTEGER)")
        with self.assertRaises(SchemaError):
            prepare_database(conn, DEFAULT_SCHEMA_DIR, 1)
        self.assertEqual(_tables(path), {"somebody_elses"})

    def test_crash_during_creation(self):
        """A process killed in the middle of building a new database (after some tables
        were created) leaves a file that the next start builds correctly: creation is
        atomic."""
        crashing = self.schema_copy({script_name(NEXT, "crash"): "CREATE TABLE before_crash (a TEXT);\nSELECT crash();\n"})
        path = os.path.abspath(self.mktemp())
        script = textwrap.dedent(
            f"""
            import os, sqlite3, sys
            sys.path.insert(0, {REPO!r})
            from fedserver.storage.schema import prepare_database
            conn = sqlite3.connect({path!r}, isolation_level=None)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.create_function("crash", 0, lambda: os._exit(3))
            prepare_database(conn, {crashing!r}, 1)
            os._exit(0)
            """
        )
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
        self.assertEqual(result.returncode, 3, result.stderr.decode())
        self.assertEqual(_tables(path), set())
        conn = self.connect(path)
        self.assertEqual(prepare_database(conn, DEFAULT_SCHEMA_DIR, 2), LATEST)
        self.assertIn("events", _tables(path))
        self.assertNotIn("before_crash", _tables(path))


class OpenStoreSchemaTests(SchemaDirTestsMixin, StoreTestCase):
    """open_store and the schema, through the real adbapi pool."""

    async def test_upgrade_script_applied(self):
        """A database at the shipped version opened with a schema directory holding the next
        script gets it applied, recorded, and its data kept."""
        path = self.db_path()
        store = await self.open(path)
        first = await store.next_txn_id("kept.example")
        store.close()
        upgraded = self.schema_copy(
            {script_name(NEXT, "add_notes"): "CREATE TABLE notes (note_id INTEGER NOT NULL PRIMARY KEY, body TEXT NOT NULL);\nINSERT INTO notes (note_id, body) VALUES (1, 'a;b');\n"}
        )
        store = await self.open(path, schema_dir=upgraded)
        self.assertEqual(_store_version(path), NEXT)
        conn = connect_test_database(path)
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("SELECT body FROM notes").fetchall(), [("a;b",)])
        second = await store.next_txn_id("kept.example")
        self.assertEqual(first.rsplit("_", 1), [second.rsplit("_", 1)[0], "1"])
        self.assertEqual(second.rsplit("_", 1)[1], "2")

    async def test_script_filling_a_gap_is_applied_later(self):
        """A database built with a gap in the numbers (work merged out of order) gets the
        script that fills the gap applied when it arrives, and it is recorded."""
        path = self.db_path()
        later = self.schema_copy({script_name(NEXT + 1, "later"): "CREATE TABLE later (a TEXT);\n"})
        store = await self.open(path, schema_dir=later)
        store.close()
        both = self.schema_copy({script_name(NEXT + 1, "later"): "CREATE TABLE later (a TEXT);\n",
                                 script_name(NEXT, "filler"): "CREATE TABLE filler (a TEXT);\n"})
        store = await self.open(path, schema_dir=both)
        self.assertTrue({"later", "filler"} <= _store_tables(path))
        conn = connect_test_database(path)
        self.addCleanup(conn.close)
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY version")]
        self.assertEqual(versions[-2:], [NEXT, NEXT + 1])

    async def test_newer_database_refused(self):
        """A database whose schema version is newer than the code's is refused with
        SchemaTooNewError and left untouched."""
        path = self.db_path()
        upgraded = self.schema_copy({script_name(NEXT, "future"): "CREATE TABLE future (a TEXT);\n"})
        store = await self.open(path, schema_dir=upgraded)
        store.close()
        with self.assertRaises(SchemaTooNewError):
            await self.open(path)
        self.assertEqual(_store_version(path), NEXT)

    async def test_connection_settings(self):
        """The connection runs in WAL mode with foreign keys enforced and synchronous
        NORMAL (1) by default, FULL (2) when asked (SQLite)."""
        path = self.db_path()
        store = await self.open_sqlite(path)

        def pragmas(txn):
            return (
                txn.execute("PRAGMA journal_mode").fetchone()[0],
                txn.execute("PRAGMA foreign_keys").fetchone()[0],
                txn.execute("PRAGMA synchronous").fetchone()[0],
            )

        self.assertEqual(await store.run_read(pragmas), ("wal", 1, 1))
        store.close()
        store = await self.open_sqlite(path, synchronous="full")
        self.assertEqual((await store.run_read(pragmas))[2], 2)

    async def test_bad_synchronous_mode(self):
        """An unknown synchronous mode is refused before anything is opened (SQLite)."""
        with self.assertRaises(ValueError):
            await self.open_sqlite(self.db_path(), synchronous="SOMETIMES")

    async def open_sqlite(self, path: str, **kw):
        from twisted.internet import reactor

        store = await open_store(path, reactor, **kw)
        self.addCleanup(store.close)
        return store

    async def test_failed_write_rolls_back(self):
        """If a write function raises half way, nothing it wrote is kept."""
        store = await self.open()

        def half(txn):
            txn.execute("INSERT INTO rooms (room_id, room_version, is_public, created_ts) VALUES ('!x:y', '10', 0, 1)")
            raise RuntimeError("boom")

        with self.assertRaises(RuntimeError):
            await store.run_write(half)
        self.assertIsNone(await store.get_room("!x:y"))


class UpgradeFromEveryVersionTests(SchemaDirTestsMixin, unittest.TestCase):
    """Upgrading on start (docs/operators.md, "Upgrading"): a database left at any earlier
    shipped schema version reaches the newest one."""

    def _schema_upto(self, version: int) -> str:
        path = self.mktemp()
        os.makedirs(path)
        for script in find_scripts(DEFAULT_SCHEMA_DIR):
            if script.version <= version:
                shutil.copy(script.path, path)
        return path

    def _master(self, conn: sqlite3.Connection) -> set[tuple]:
        return set(conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        ).fetchall())

    def test_every_earlier_version_upgrades_to_the_fresh_schema(self):
        """For every shipped version but the newest: a database built at that version,
        opened with the shipped scripts, gets every later script applied and recorded,
        and ends with exactly the tables, indexes and columns of a new database."""
        fresh = sqlite3.connect(self.mktemp(), isolation_level=None)
        self.addCleanup(fresh.close)
        prepare_database(fresh, DEFAULT_SCHEMA_DIR, 1)
        expected = self._master(fresh)
        versions = [s.version for s in find_scripts(DEFAULT_SCHEMA_DIR)]
        self.assertGreater(len(versions), 1)
        for old in versions[:-1]:
            conn = sqlite3.connect(self.mktemp(), isolation_level=None)
            self.addCleanup(conn.close)
            self.assertEqual(prepare_database(conn, self._schema_upto(old), 1), old)
            self.assertEqual(prepare_database(conn, DEFAULT_SCHEMA_DIR, 2), LATEST, f"from {old}")
            applied = conn.execute("SELECT version, applied_ts FROM schema_version ORDER BY version").fetchall()
            self.assertEqual(applied, [(v, 1 if v <= old else 2) for v in versions], f"from {old}")
            self.assertEqual(self._master(conn), expected, f"from {old}")
