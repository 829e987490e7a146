"""Helpers for tests, ours and plugin authors': whole servers started in-process on loopback, and their databases."""

# The backend under test: SQLite files by default; with FEDSERVER_TEST_POSTGRES set to a
# PostgreSQL URL (a throwaway cluster: see fedserver.testing_postgres), every store a test
# opens through database_for_test() / open_test_store() / loopback_config() lives in a fresh
# PostgreSQL schema of that database instead of the file. The schema is named after the
# process and the file's path, so opening "the same file" again (a restart) finds the same
# data, and it is dropped at the end of the test (and at exit, for any left over).

import atexit
import hashlib
import os
import socket
import threading
from typing import Any

from fedserver.config import Config, config_from_dict

#: Environment variable holding the URL of the PostgreSQL database tests run on.
POSTGRES_ENV = "FEDSERVER_TEST_POSTGRES"


def postgres_url_for_tests() -> str | None:
    """The PostgreSQL URL tests run their stores on, or ``None`` for SQLite files."""
    return os.environ.get(POSTGRES_ENV) or None


def backend_for_tests() -> str:
    """``"postgresql"`` or ``"sqlite"``: where tests keep their databases."""
    return "postgresql" if postgres_url_for_tests() else "sqlite"


def _schema_for(path: str) -> str:
    digest = hashlib.sha1(os.path.abspath(path).encode("utf-8")).hexdigest()[:20]
    return f"t{os.getpid()}_{digest}"


_admin_lock = threading.Lock()
_admin: Any = None
_made: set[str] = set()


def _admin_execute(sql: str) -> None:
    global _admin
    import psycopg

    with _admin_lock:
        if _admin is None or _admin.closed:
            url = postgres_url_for_tests()
            assert url is not None
            _admin = psycopg.connect(url, autocommit=True)
            _admin.execute("SET lock_timeout = '10s'")
            atexit.register(_drop_all)
        _admin.execute(sql)


def _drop_all() -> None:
    for name in sorted(_made):
        _drop_schema(name)


def _drop_schema(name: str) -> None:
    try:
        _admin_execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        _made.discard(name)
    except Exception:
        pass  # still in use: dropped at exit, or with the throwaway cluster


def database_for_test(test: Any, path: str) -> Any:
    """What a test opens for "the database file at ``path``": ``path`` itself on SQLite,
    or on PostgreSQL a :class:`~fedserver.storage.postgres.PostgresConfig` for the schema
    of that path (made if missing, dropped at the end of ``test``).

    :param test: the trial test case (``None``: dropped at exit only).
    """
    url = postgres_url_for_tests()
    if url is None:
        return path
    from fedserver.storage.postgres import PostgresConfig

    name = _schema_for(path)
    if name not in _made:
        _admin_execute(f"CREATE SCHEMA IF NOT EXISTS {name}")
        _made.add(name)
        if test is not None:
            test.addCleanup(_drop_schema, name)
    return PostgresConfig(url, schema=name, readers=2)


def database_arg_for_test(test: Any, path: str) -> str:
    """A command-line tool's ``--database`` value for "the database file at ``path``": the
    path on SQLite, else a ``postgresql://`` URL selecting the schema of ``path``."""
    target = database_for_test(test, path)
    if isinstance(target, str):
        return target
    from urllib.parse import quote

    url = target.dsn
    return url + ("&" if "?" in url else "?") + "options=" + quote(f"-csearch_path={target.schema}", safe="")


def database_yaml_for_test(path: str) -> str:
    """Lines of a configuration file naming "the database file at ``path``" on the backend
    under test (``database_path``, and ``database`` on PostgreSQL)."""
    import json

    lines = f"database_path: {json.dumps(path)}\n"
    for name, value in database_options_for_test(path).items():
        lines += f"{name}: {json.dumps(value)}\n"
    return lines


def database_options_for_test(path: str) -> dict[str, Any]:
    """Configuration options (raw, as in the YAML file) that put a test server's database
    on the backend under test: ``{}`` on SQLite (``database_path`` is used), else the
    ``database`` option for the schema of ``path`` (see :func:`database_for_test`; dropped
    at exit, or by :func:`start_server` at the end of the test)."""
    if postgres_url_for_tests() is None:
        return {}
    target = database_for_test(None, path)
    return {"database": {"backend": "postgresql", "dsn": target.dsn, "schema": target.schema, "readers": target.readers}}


async def open_test_store(test: Any, path: str | None = None, reactor: Any = None, **kw: Any):
    """Open a store for ``test`` (closed at its cleanup) on the backend under test, for the
    database file ``path`` (a new one under ``test.mktemp()`` if ``None``).

    :param kw: passed to :func:`fedserver.storage.open_store`.
    """
    from fedserver.storage import open_store

    if reactor is None:
        from twisted.internet import reactor
    if path is None:
        directory = test.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "fedserver.db")
    store = await open_store(database_for_test(test, path), reactor, **kw)
    test.addCleanup(store.close)
    return store


def connect_test_database(path: str) -> Any:
    """A plain connection to "the database file at ``path``" on the backend under test,
    for tests that look at rows directly: ``execute(sql, params)`` returns a DB-API
    cursor (SQL written as in storage, with ``?`` placeholders), ``dialect`` is the
    engine's :class:`~fedserver.storage.dialect.Dialect`, ``close()`` closes it."""
    from fedserver.storage.dialect import POSTGRESQL, SQLITE

    url = postgres_url_for_tests()
    if url is None:
        import sqlite3

        return _TestConnection(sqlite3.connect(path), SQLITE)
    import psycopg

    conn = psycopg.connect(url, autocommit=True)
    conn.execute(f"SET search_path TO {_schema_for(path)}")
    return _TestConnection(conn, POSTGRESQL)


def make_unwritable(database: Any, unwritable: bool = True) -> Any:
    """Make the running :class:`~fedserver.storage.database.Database` refuse writes (or
    accept them again), as a read-only file or a read-only standby would: ``PRAGMA
    query_only`` on SQLite, ``default_transaction_read_only`` on PostgreSQL, set on the
    writer's connection. Writes then fail as storage faults of kind ``"read-only"``.

    :returns: a Deferred that fires once it is set.
    """
    from fedserver.storage.dialect import SQLITE

    if database.dialect is SQLITE:
        sql = f"PRAGMA query_only = {1 if unwritable else 0}"
    else:
        sql = f"SET default_transaction_read_only = {'on' if unwritable else 'off'}"
    return database.run_with_connection(lambda conn: conn.execute(sql))



def io_fault(database: Any) -> Exception:
    """An exception the engine of ``database`` (a :class:`~fedserver.storage.database.Database`)
    raises for an I/O error, to raise from inside a transaction in a test: storage turns
    it into ``StorageUnavailableError("io")`` and rolls the transaction back."""
    from fedserver.storage.dialect import SQLITE

    if database.dialect is SQLITE:
        import sqlite3

        return sqlite3.OperationalError("disk I/O error")
    import psycopg.errors

    return psycopg.errors.IoError("could not read block: Input/output error")

class _TestConnection:
    def __init__(self, conn: Any, dialect: Any) -> None:
        self._conn = conn
        self.dialect = dialect

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self._conn.execute(self.dialect.sql(sql), params)

    def commit(self) -> None:
        """Commit what ``execute`` changed (PostgreSQL commits each statement itself)."""
        if self.dialect.name == "sqlite":
            self._conn.commit()

    def tables(self) -> set[str]:
        """The names of the tables."""
        return {r[0] for r in self._conn.execute(self.dialect.list_tables_sql)}

    def close(self) -> None:
        self._conn.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_config(directory: str, port: int | None = None, **extra: Any) -> Config:
    """The configuration of a test server in ``directory`` (created if missing), named
    ``127.0.0.1:<port>`` and federating over TLS on that port with other loopback servers
    (self-signed certificates accepted, private addresses allowed).

    :param extra: any option to change, as in the YAML file.
    """
    os.makedirs(directory, exist_ok=True)
    port = port or free_port()
    raw = {
        "server_name": f"127.0.0.1:{port}",
        "database_path": os.path.join(directory, "fedserver.db"),
        "signing_key_path": os.path.join(directory, "signing.key"),
        "tls_certificate_path": os.path.join(directory, "tls.crt"),
        "tls_private_key_path": os.path.join(directory, "tls.key"),
        "federation_listen": f"127.0.0.1:{port}",
        "client_listen": "127.0.0.1:0",
        "federation_verify_certificates": False,
        "federation_allow_private_addresses": True,
        "federation_client_timeout": 20,
    }
    if "database" not in extra:
        raw.update(database_options_for_test(extra.get("database_path", raw["database_path"])))
    raw.update(extra)
    return config_from_dict(raw)


async def start_server(test: Any, config: Config, reactor: Any = None):
    """Start a :class:`fedserver.service.FedserverService` for a trial ``test`` (stopped at
    its cleanup) and wait until it serves.

    :returns: the running service.
    """
    from fedserver.service import FedserverService

    if reactor is None:
        from twisted.internet import reactor
    if config.database.schema in _made:
        # After the stop below (cleanups run last first).
        test.addCleanup(_drop_schema, config.database.schema)
    svc = FedserverService(config, reactor)
    svc.privilegedStartService()
    svc.startService()
    test.addCleanup(lambda: svc.stopService() if svc.running else None)
    await svc.when_ready()
    return svc
