"""The PostgreSQL backend on a real server: one writer, parallel readers, retries, reconnects, faults as StorageUnavailableError, what it refuses. Run when FEDSERVER_TEST_POSTGRES is set (.ci/run does)."""

from __future__ import annotations

import os
import threading
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.protocols.portforward import ProxyFactory, ProxyServer
from twisted.trial.unittest import SkipTest, TestCase

from fedserver.storage import InvalidDataError, StorageError, open_store
from fedserver.storage.interface import SchemaError, StorageUnavailableError
from fedserver.storage.postgres import PostgresConfig, check_server
from fedserver.testing import database_for_test, postgres_url_for_tests
from tests.test_storage_faults import LogCapture


def _need_postgres() -> str:
    url = postgres_url_for_tests()
    if url is None:
        raise SkipTest("FEDSERVER_TEST_POSTGRES is not set (the PostgreSQL run of .ci/run sets it)")
    return url


def _raise_sqlstate(txn: Any, state: str) -> None:
    # A real error from the server, with the SQLSTATE a conflict would give.
    txn.execute(f"DO $$ BEGIN RAISE EXCEPTION 'test' USING ERRCODE = '{state}'; END $$")


class _TrackingProxy(ProxyFactory):
    """A TCP proxy in front of the PostgreSQL server whose connections can be cut."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.live: list[ProxyServer] = []

    def buildProtocol(self, addr: Any) -> Any:
        proto = super().buildProtocol(addr)
        self.live.append(proto)
        return proto

    def cut(self) -> None:
        for proto in self.live:
            if proto.transport is not None:
                proto.transport.abortConnection()
        self.live = []


class PostgresStoreCase(TestCase):
    """Opens stores on the PostgreSQL database of the test run."""

    def setUp(self) -> None:
        self.url = _need_postgres()

    def target(self, **kw: Any) -> PostgresConfig:
        path = os.path.abspath(self.mktemp())
        base = database_for_test(self, path)
        return PostgresConfig(kw.pop("dsn", base.dsn), schema=base.schema, readers=kw.pop("readers", 2), **kw)

    async def open(self, target: PostgresConfig) -> Any:
        store = await open_store(target, reactor)
        self.addCleanup(store.close)
        return store


class TransactionTests(PostgresStoreCase):
    """What a transaction function sees and what is committed."""

    async def test_serialization_failure_is_retried_from_the_start(self):
        """A write that fails with a serialization failure (40001) or a deadlock (40P01)
        is run again from its start on a fresh transaction; what its failed runs wrote is
        gone and the last run's writes are committed once."""
        store = await self.open(self.target())
        for state in ("40001", "40P01"):
            runs: list[int] = []

            def write(txn: Any) -> int:
                runs.append(1)
                nid = txn.allocate_ids(f"retry-{state}", 1)
                if len(runs) < 3:
                    _raise_sqlstate(txn, state)
                return nid

            self.assertEqual(await store.run_write(write), 1)
            self.assertEqual(len(runs), 3)
            last = await store.run_read(
                lambda txn: txn.execute("SELECT last_value FROM sequences WHERE name = ?", (f"retry-{state}",)).fetchone()
            )
            self.assertEqual(last, (1,))

    async def test_retries_used_up_answer_locked(self):
        """A write that keeps failing to serialize ends, after the last attempt, as
        StorageUnavailableError of kind "locked" (answered 503), nothing committed."""
        store = await self.open(self.target())
        runs: list[int] = []

        def write(txn: Any) -> None:
            runs.append(1)
            txn.allocate_ids("never", 1)
            _raise_sqlstate(txn, "40001")

        failure = await self.assertFailure(store.run_write(write), StorageUnavailableError)
        self.assertEqual(failure.kind, "locked")
        self.assertEqual(len(runs), 4)
        self.assertIsNone(
            await store.run_read(lambda txn: txn.execute("SELECT last_value FROM sequences WHERE name = 'never'").fetchone())
        )

    async def test_swallowed_database_error_is_not_a_commit(self):
        """A transaction function that catches a failed statement and returns does not
        report success: PostgreSQL has rolled the transaction back, so the caller gets
        StorageError and nothing it wrote is kept (SQLite would have kept the rest)."""
        store = await self.open(self.target())

        def sloppy(txn: Any) -> str:
            txn.allocate_ids("sloppy", 1)
            try:
                txn.execute("INSERT INTO rooms (room_id) VALUES (?)", ("!missing-columns:x",))
            except Exception:
                pass
            return "done"

        await self.assertFailure(store.run_write(sloppy), StorageError)
        self.assertIsNone(
            await store.run_read(lambda txn: txn.execute("SELECT 1 FROM sequences WHERE name = 'sloppy'").fetchone())
        )

    async def test_read_transactions_cannot_write(self):
        """A read transaction that tries to write fails with the database's error (a bug
        in the caller, not a storage fault: no StorageUnavailableError, nothing written)."""
        store = await self.open(self.target())
        failure = await self.assertFailure(
            store.run_read(lambda txn: txn.allocate_ids("in-a-read", 1)), StorageError
        )
        self.assertNotIsInstance(failure, StorageUnavailableError)
        self.assertIn("read transaction tried to write", str(failure))
        self.assertIsNone(store.database.faults.failing)

    async def test_values_come_back_as_on_sqlite(self):
        """Booleans are stored as 0/1, SUM() of integers is an int (not a Decimal), BLOBs
        are bytes, and "%" in SQL text is not a placeholder."""
        store = await self.open(self.target())

        def txn_func(txn: Any) -> tuple:
            txn.execute("INSERT INTO rooms (room_id, room_version, is_public, created_ts) VALUES (?, ?, ?, ?)",
                        ("!a:x", "10", True, 2**40))
            txn.execute("INSERT INTO rooms (room_id, room_version, is_public, created_ts) VALUES (?, ?, ?, ?)",
                        ("!b%:x", "10", False, 5))
            total = txn.execute("SELECT SUM(created_ts), SUM(is_public) FROM rooms").fetchone()
            like = txn.execute("SELECT room_id FROM rooms WHERE room_id LIKE '!b%'").fetchall()
            txn.execute("INSERT INTO received_transactions VALUES (?, ?, ?, ?, ?)", ("o", "t", 200, b"\x00\xff", 1))
            blob = txn.execute("SELECT response_json FROM received_transactions").fetchone()[0]
            return total, like, blob

        total, like, blob = await store.run_write(txn_func)
        self.assertEqual(total, (2**40 + 5, 1))
        self.assertIs(type(total[0]), int)
        self.assertEqual(like, [("!b%:x",)])
        self.assertEqual(blob, b"\x00\xff")

    async def test_text_with_nul_is_refused(self):
        """PostgreSQL's TEXT cannot hold U+0000: storing such text raises
        InvalidDataError (nothing stored); looking it up finds nothing."""
        store = await self.open(self.target())
        self.assertFalse(store.can_store_text("a\x00b"))
        self.assertTrue(store.can_store_text("a b"))
        await self.assertFailure(store.set_room_public("!a\x00b:x", True), InvalidDataError)
        await self.assertFailure(store.next_txn_id("evil\x00.example"), InvalidDataError)
        self.assertIsNone(await store.get_room("!a\x00b:x"))
        self.assertEqual(await store.get_events(["$a\x00b"]), {})
        self.assertEqual(await store.destinations_with_pending(), [])


class ConcurrencyTests(PostgresStoreCase):
    """One writer, parallel readers, and reads that see the writes submitted before them."""

    async def test_readers_run_in_parallel(self):
        """Two read transactions run at the same time (each waits for the other to have
        started), while on SQLite they would run one after the other."""
        store = await self.open(self.target(readers=2))
        barrier = threading.Barrier(2, timeout=20)

        def read(txn: Any) -> int:
            barrier.wait()
            return txn.execute("SELECT COUNT(*) FROM rooms").fetchone()[0]

        self.assertEqual(await defer.gatherResults([store.run_read(read), store.run_read(read)]), [0, 0])

    async def test_read_sees_writes_submitted_before_it(self):
        """A read submitted after a write (not yet finished) sees that write, as it would
        on SQLite's single connection; a read of another store (another process) started
        while the writer lock is held waits for nothing and sees the state before."""
        store = await self.open(self.target())
        writes = [store.next_txn_id("w.example") for _ in range(20)]
        seen = await store.run_read(
            lambda txn: txn.execute("SELECT last_txn_seq FROM destinations WHERE destination = 'w.example'").fetchone()[0]
        )
        self.assertEqual(seen, 20)
        self.assertEqual([x.rsplit("_", 1)[1] for x in await defer.gatherResults(writes)], [str(i) for i in range(1, 21)])

    async def test_one_writer_across_processes(self):
        """Two stores on the same database (as two processes) never write at the same
        time: while one holds the writer lock, the other's write waits, and gives up as
        "locked" (503) after lock_timeout; it succeeds once the lock is released."""
        target = self.target()
        first = await self.open(target)
        second = await self.open(PostgresConfig(target.dsn, schema=target.schema, readers=1, lock_timeout_ms=300))
        holding, release = threading.Event(), threading.Event()

        def hold(txn: Any) -> str:
            txn.allocate_ids("held", 1)
            holding.set()
            release.wait(30)
            return "released"

        held = first.run_write(hold)
        await threads.deferToThread(holding.wait, 30)
        failure = await self.assertFailure(second.next_txn_id("other.example"), StorageUnavailableError)
        self.assertEqual(failure.kind, "locked")
        release.set()
        self.assertEqual(await held, "released")
        self.assertTrue((await second.next_txn_id("other.example")).endswith("_1"))


class ConnectionTests(PostgresStoreCase):
    """Dropped connections and an unreachable server."""

    async def proxy(self) -> tuple[_TrackingProxy, Any, str]:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        params = conninfo_to_dict(self.url)
        factory = _TrackingProxy(params.get("host", "127.0.0.1"), int(params.get("port", 5432)))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(lambda: port.stopListening() if port.connected else None)
        self.addCleanup(factory.cut)
        dsn = make_conninfo(self.url, host="127.0.0.1", port=str(port.getHost().port))
        return factory, port, dsn

    async def test_dropped_connections_are_replaced(self):
        """When every connection drops between transactions (a server restart, a
        network cut), the next reads and writes reconnect and succeed; each write is
        committed once."""
        factory, _port, dsn = await self.proxy()
        store = await self.open(self.target(dsn=dsn))
        self.assertTrue((await store.next_txn_id("d.example")).endswith("_1"))
        self.assertEqual(await store.get_public_room_ids(), [])
        factory.cut()
        self.assertTrue((await store.next_txn_id("d.example")).endswith("_2"))
        factory.cut()
        self.assertEqual(await store.get_public_room_ids(), [])
        self.assertTrue((await store.next_txn_id("d.example")).endswith("_3"))

    async def test_unreachable_server_is_a_storage_fault(self):
        """While the server cannot be reached, reads and writes fail with
        StorageUnavailableError "unavailable" (503), logged once for the episode; when it
        is back they work again, without a restart."""
        factory, port, dsn = await self.proxy()
        number = port.getHost().port
        store = await self.open(self.target(dsn=dsn))
        await store.next_txn_id("u.example")
        log = LogCapture(self)
        await port.stopListening()
        factory.cut()
        for _ in range(3):
            failure = await self.assertFailure(store.next_txn_id("u.example"), StorageUnavailableError)
            self.assertEqual(failure.kind, "unavailable")
            failure = await self.assertFailure(store.get_public_room_ids(), StorageUnavailableError)
            self.assertEqual(failure.kind, "unavailable")
        self.assertEqual(store.database.faults.failing, "unavailable")
        self.assertEqual(len(log.serious()), 1, [e.get("log_format") for e in log.serious()])
        again = reactor.listenTCP(number, factory, interface="127.0.0.1")
        self.addCleanup(again.stopListening)
        self.assertTrue((await store.next_txn_id("u.example")).endswith("_2"))
        self.assertIsNone(store.database.faults.failing)

    async def test_open_without_server_fails_cleanly(self):
        """open_store on a server that cannot be reached fails with
        StorageUnavailableError (the service stops with one line), leaving nothing
        running."""
        from fedserver.testing import free_port

        target = PostgresConfig(f"postgresql://postgres@127.0.0.1:{free_port()}/fedserver", connect_timeout_s=2)
        failure = await self.assertFailure(open_store(target, reactor), StorageUnavailableError)
        self.assertEqual(failure.kind, "unavailable")


class ServerCheckTests(PostgresStoreCase):
    """What open_store refuses."""

    async def test_missing_schema_refused(self):
        """A schema that does not exist is refused with SchemaError (nothing created)."""
        config = PostgresConfig(self.url, schema="no_such_schema_here")
        await self.assertFailure(open_store(config, reactor), SchemaError)

    def test_encoding_and_collation_checked(self):
        """A database that is not UTF8, or whose collation sorts by language rules, is
        refused with a message saying how to create a suitable one; C and C.UTF-8 pass."""

        class Conn:
            def __init__(self, row: tuple) -> None:
                self.row = row

            def execute(self, sql: str) -> Any:
                return self

            def fetchone(self) -> tuple:
                return self.row

        config = PostgresConfig("")
        for row in (("UTF8", "C", "C", "public", "db"), ("UTF8", "C.UTF-8", "C.UTF-8", "public", "db")):
            check_server(Conn(row), config)
        for row, needle in (
            (("SQL_ASCII", "C", "C", "public", "db"), "encoding SQL_ASCII"),
            (("UTF8", "en_US.UTF-8", "en_US.UTF-8", "public", "db"), "LC_COLLATE 'C'"),
            (("UTF8", "C", "C", None, "db"), "does not exist"),
        ):
            with self.assertRaises(SchemaError) as caught:
                check_server(Conn(row), config)
            self.assertIn(needle, str(caught.exception))
