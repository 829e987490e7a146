"""Shared by the benchmarks: a fedserver database with a populated room, built in-process, on SQLite or PostgreSQL."""

from __future__ import annotations

import argparse
import os
import time
import uuid
from typing import Any, Iterable, Optional

from twisted.internet import reactor

from fedserver.auth.selection import select_auth_events
from fedserver.config import config_from_dict
from fedserver.events.builder import build_event
from fedserver.room_versions import RoomVersion
from fedserver.service import FedserverService


def now_ms() -> int:
    return int(time.time() * 1000)


BACKENDS = ("sqlite", "postgresql")


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backend`` and ``--postgres``, the same in every benchmark."""
    parser.add_argument("--backend", choices=(*BACKENDS, "both"), default="both",
                        help="database engine(s) to measure (default: both, in the same run)")
    parser.add_argument("--postgres", metavar="URL",
                        help="PostgreSQL database to measure on (default: a throwaway cluster with "
                             "PostgreSQL's default durability, started and stopped by the benchmark)")


class Databases:
    """Where a benchmark keeps its databases: SQLite files, or fresh schemas of one
    PostgreSQL database (a throwaway durable cluster unless ``--postgres`` names one).

    :param args: parsed arguments with ``backend`` and ``postgres``.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.backends = list(BACKENDS) if args.backend == "both" else [args.backend]
        self._url: Optional[str] = args.postgres
        self._cluster: Any = None
        self._schemas: list[str] = []

    def __enter__(self) -> "Databases":
        if "postgresql" in self.backends and self._url is None:
            from fedserver.testing_postgres import start_cluster

            self._cluster = start_cluster(durable=True)
            self._url = self._cluster.url
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._url is not None and self._schemas:
            import psycopg

            with psycopg.connect(self._url, autocommit=True) as conn:
                for name in self._schemas:
                    conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        if self._cluster is not None:
            self._cluster.stop()

    def describe(self, backend: str) -> str:
        """The engine and its durability, for the report."""
        if backend == "sqlite":
            import sqlite3

            return f"SQLite {sqlite3.sqlite_version}, WAL, synchronous=NORMAL (no fsync per commit)"
        import psycopg

        with psycopg.connect(self._url) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            fsync = conn.execute("SHOW fsync").fetchone()[0]
            sync = conn.execute("SHOW synchronous_commit").fetchone()[0]
        where = "throwaway local cluster" if self._cluster is not None else "given server"
        return f"PostgreSQL {version}, fsync={fsync}, synchronous_commit={sync} ({where}, loopback TCP)"

    def options(self, backend: str, directory: str) -> dict[str, Any]:
        """Configuration options putting a server's database in ``directory`` (SQLite) or
        in a new schema (PostgreSQL)."""
        path = os.path.join(directory, "fedserver.db")
        if backend == "sqlite":
            return {"database_path": path}
        import psycopg

        name = "bench_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self._url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        self._schemas.append(name)
        return {"database_path": path, "database": {"backend": "postgresql", "dsn": self._url, "schema": name}}

    def target(self, options: dict[str, Any]) -> Any:
        """What :func:`fedserver.storage.open_store` opens for ``options``."""
        return config_from_dict(options).store_target()

    def query(self, options: dict[str, Any], sql: str, params: tuple = ()) -> list[tuple]:
        """Run one portable SQL query (``?`` placeholders) on that database."""
        db = options.get("database")
        if db is None:
            import sqlite3

            conn = sqlite3.connect(options["database_path"])
            try:
                return conn.execute(sql, params).fetchall()
            finally:
                conn.close()
        import psycopg

        from fedserver.storage.dialect import POSTGRESQL

        with psycopg.connect(db["dsn"], autocommit=True) as conn:
            conn.execute(f"SET search_path TO {db['schema']}")
            return conn.execute(POSTGRESQL.sql(sql), params).fetchall()

    def size_bytes(self, options: dict[str, Any]) -> int:
        """The space the database takes: files, or the schema's tables and indexes."""
        db = options.get("database")
        if db is None:
            directory = os.path.dirname(options["database_path"])
            return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory)
                       if f.startswith(os.path.basename(options["database_path"])))
        (size,) = self.query(options, "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
                                      " JOIN pg_namespace n ON n.oid = c.relnamespace"
                                      " WHERE n.nspname = current_schema() AND c.relkind = 'r'")[0]
        return int(size)


async def with_service(directory: str, server_name: str, work, database: Optional[dict[str, Any]] = None) -> Any:
    """Start a fedserver on the files in ``directory`` (as the benchmarks' servers will use
    them), run ``await work(service)``, stop it, and return what ``work`` returned.

    :param database: options from :meth:`Databases.options` (default: SQLite in
        ``directory``)."""
    config = config_from_dict({
        "server_name": server_name,
        "database_path": os.path.join(directory, "fedserver.db"),
        "signing_key_path": os.path.join(directory, "fedserver.signing.key"),
        "tls_certificate_path": os.path.join(directory, "fedserver.tls.crt"),
        "tls_private_key_path": os.path.join(directory, "fedserver.tls.key"),
        "federation_listen": "127.0.0.1:0",
        "client_listen": "127.0.0.1:0",
        **(database or {}),
    })
    service = FedserverService(config, reactor)
    service.privilegedStartService()
    service.startService()
    await service.when_ready()
    try:
        return await work(service)
    finally:
        await service.stopService()


async def populated_room(
    service, rv: RoomVersion, owner: str, joiners: Iterable[tuple[str, str, Any]], batch_size: int = 500
) -> tuple[str, dict, str, int]:
    """A public room owned by ``owner`` (a local user) that every ``(user_id, server_name,
    signing_key)`` of ``joiners`` has joined, taken in through the room pipeline.

    Push rule evaluation and presence are left out while the members join (see below).

    :returns: ``(room_id, current state ids, last event id, next depth)``.
    """
    content = {"room_version": rv.identifier}
    if not rv.implicit_room_creator:
        content["creator"] = owner
    create, _ = await service.creator.create_room_event(rv, sender=owner, content=content)
    room = create.room_id
    users = {} if rv.privileged_creators else {owner: 100}
    for t, c, k in (("m.room.member", {"membership": "join"}, owner),
                    ("m.room.power_levels", {"users": users}, ""),
                    ("m.room.join_rules", {"join_rule": "public"}, ""),
                    ("m.room.history_visibility", {"history_visibility": "shared"}, "")):
        await service.creator.send(room, rv, type=t, sender=owner, content=c, state_key=k)
    state = dict(await service.pipeline.current_state(room))
    prev = sorted(await service.pipeline.forward_extremities(room))
    # The members' joins are the setup, not what is measured. Two reactions to each taken-in
    # event scale with the room's local members and are left out while it is built: push
    # rules evaluated for every local member on every join (quadratic: hours for 20,000
    # local members, for no notification: member events notify nobody under the default
    # rules), and presence, which would mark every member active just now (the room
    # modelled is one of idle members; the resident then has no presence to announce).
    # The room's events and state are the same.
    hooks = service.pipeline.on_persisted
    quiet = {id(getattr(service.push, "notifications", None)), id(getattr(service.ephemeral, "presence", None))}
    saved = list(hooks)
    hooks[:] = [h for h in hooks if id(getattr(h, "__self__", None)) not in quiet]
    try:
        return await _add_members(service, rv, room, state, prev, joiners, batch_size)
    finally:
        hooks[:] = saved


async def _add_members(service, rv: RoomVersion, room: str, state: dict, prev: list, joiners, batch_size: int):
    depth, batch = 10, []

    async def flush():
        out = await service.pipeline.process(room, batch)
        refused = [o for o in out.values() if not o.accepted]
        assert not refused, refused[:3]
        batch.clear()

    for user, server_name, key in joiners:
        fields = {"type": "m.room.member", "state_key": user, "sender": user, "content": {"membership": "join"}}
        ev = build_event(
            rv, room_id=room, prev_event_ids=prev, auth_event_ids=select_auth_events(rv, fields, state),
            depth=depth, origin_server_ts=now_ms(), server_name=server_name, signing_key=key, **fields,
        )
        state[("m.room.member", user)] = ev.event_id
        prev, depth = [ev.event_id], depth + 1
        batch.append(ev)
        if len(batch) >= batch_size:
            await flush()
    if batch:
        await flush()
    return room, state, prev[0], depth


def rss(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of a process (bytes) from /proc: VmRSS now, or VmHWM (peak)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_line() -> str:
    """The machine's load averages, to print next to figures (others share the machine)."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"
