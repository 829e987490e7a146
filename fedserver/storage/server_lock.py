"""One server per database: a lock held for as long as a fedserver process serves.

Two servers on one database would each trust caches and in-memory room state the other
invalidates (and both would send the same outbound queue), so the second one refuses to
start. The command-line tools (``fedserver-register``, ``fedserver-admin``, backups) do
not take this lock: they may run beside the server.

- SQLite: ``flock`` on a file next to the database (``<database>.lock``, holding the
  server's pid for the message). Released by the kernel when the process ends, however
  it ends.
- PostgreSQL: a session advisory lock, keyed by the schema, on a connection of its own
  kept open while the server runs. Released when that connection closes (the process
  ends, or the connection is lost: the lock guards against an operator's mistake, it is
  not a fence).
"""

from __future__ import annotations

import fcntl
import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from fedserver.storage.interface import StorageError
from fedserver.storage.postgres import PostgresConfig

#: First key of the PostgreSQL advisory lock (the second is the schema's hash); the
#: two-key form never meets the writer lock's one-key form.
SERVER_LOCK_CLASS = 0x66656473  # "feds"


class ServerLockError(StorageError):
    """Another fedserver already serves from this database."""


class ServerLock:
    """A held lock; :meth:`release` gives it back (safe to call twice)."""

    def __init__(self, release: Any) -> None:
        """:param release: gives the lock back (``None``: nothing was locked)."""
        self._release = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


def lock_file_path(database_path: str) -> str:
    """The file the SQLite lock is taken on."""
    return database_path + ".lock"


def _lock_sqlite(database_path: str) -> ServerLock:
    path = lock_file_path(database_path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        # No directory, or not ours to write: the database cannot be opened either, and
        # opening it says why in SQLite's words. Nothing to lock.
        return ServerLock(None)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise ServerLockError(
            f"another fedserver{who} is serving from {database_path}: stop it first"
            " (one server per database)"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)

    def release() -> None:
        os.close(fd)  # closing the descriptor releases the flock

    return ServerLock(release)


def _lock_postgres(config: PostgresConfig) -> ServerLock:
    import psycopg
    from psycopg import sql

    kwargs: dict[str, Any] = {} if "connect_timeout" in config.dsn else {"connect_timeout": config.connect_timeout_s}
    conn = psycopg.connect(config.dsn, autocommit=True, application_name="fedserver (server lock)", **kwargs)
    try:
        if config.schema is not None:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(config.schema)))
        row = conn.execute(
            "SELECT pg_try_advisory_lock(%s, hashtext(COALESCE(current_schema(), ''))), current_schema()",
            (SERVER_LOCK_CLASS,),
        ).fetchone()
    except BaseException:
        conn.close()
        raise
    if not row or not row[0]:
        conn.close()
        raise ServerLockError(
            f"another fedserver is serving from {config.describe()} (schema {row[1] if row else '?'}): stop it"
            " first (one server per database)"
        )
    return ServerLock(conn.close)


def acquire_server_lock(target: "str | PostgresConfig", reactor: Any) -> "Deferred[ServerLock]":
    """Take the lock for the database ``target`` (a SQLite path or a
    :class:`~fedserver.storage.postgres.PostgresConfig`), in a thread.

    :raises ServerLockError: (in the Deferred) if another server holds it.
    """
    pool = reactor.getThreadPool()
    if isinstance(target, PostgresConfig):
        return deferToThreadPool(reactor, pool, _lock_postgres, target)
    return deferToThreadPool(reactor, pool, _lock_sqlite, target)
