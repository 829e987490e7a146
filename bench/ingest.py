"""Benchmark: inbound /send transactions into a room with 1,000 members, fedserver and a real Synapse side by side.

Run as ``python bench/ingest.py [--members 1000] [--pdus 10000] [--synapse-pdus 2000]
[--runs 3] [--version 10] [--backend sqlite|postgresql|both] [--postgres URL]`` from the
repository root, with ``FEDSERVER_SYNAPSE_PYTHON`` naming a Python that has matrix-synapse
(without it only fedserver is measured, and the output says so). fedserver is measured on
SQLite and on PostgreSQL (a throwaway local cluster with PostgreSQL's default durability,
unless ``--postgres`` names a server) in the same run by default. Not a test: it prints
figures, every one measured in this run.

1. Setup, in this process: a resident fedserver database with a public room of
   ``--members`` joined members of its own.
2. The resident runs in its own process. For each run, alternating fedserver and Synapse, a
   fresh receiving server is started and a user of it joins the room (full state).
3. Messages of the resident's members are signed here with the resident's key, each citing
   the one before (the first cites the room's forward extremity after the join), and sent
   to the receiver as the resident, 50 PDUs per ``PUT /send`` transaction, one
   transaction at a time (as the spec asks of a sender), over HTTPS with X-Matrix
   signatures. Signing is done before timing starts: it is the sender's cost.
4. A PDU counts once it is *visible*: stored in the room as an accepted message in the
   receiver's database. fedserver commits before answering (200 means stored); Synapse
   answers at once and processes in the background, so its database is polled until every
   message is there (or a timeout). Rates are PDUs per second from the first request to the
   last PDU visible; the throughput of the first and last tenth of the PDUs tells whether
   it holds as the room grows.

Synapse gets ``--synapse-pdus`` (fewer: it is far slower); its rate is still a rate. As
Synapse queues inbound PDUs and prunes a room's queue past about 100 (dropping them), its
next transaction waits until the PDUs before are visible: it is measured at the rate it
really processes, not the rate it accepts and drops.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, reactor, task  # noqa: E402

from bench._common import (  # noqa: E402
    Databases, add_backend_arguments, cpu_seconds, load_line, now_ms, populated_room, rss, with_service,
)
from fedserver.auth.selection import select_auth_events  # noqa: E402
from fedserver.crypto import load_or_generate_signing_key  # noqa: E402
from fedserver.events.builder import build_event  # noqa: E402
from fedserver.federation.client import build_federation_client, fed_path  # noqa: E402
from fedserver.room_versions import spec_version  # noqa: E402
from tests.interop.peers import Fedserver, PeerUnavailable, Synapse  # noqa: E402

PER_TXN = 50


async def build_room(directory: str, server_name: str, members: int, version: str):
    rv = spec_version(version)

    async def work(service):
        joiners = [(f"@member{i}:{server_name}", server_name, service.signing_key) for i in range(members)]
        return await populated_room(service, rv, f"@owner:{server_name}", joiners, 500)

    return await with_service(directory, server_name, work)


def extremity(db_path: str, room: str) -> tuple[str, int]:
    """The resident's forward extremity of the room and its depth (after the joins)."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        row = db.execute(
            "SELECT e.event_id, e.depth FROM forward_extremities f JOIN events e ON e.event_nid = f.event_nid"
            " WHERE f.room_id = ? ORDER BY e.depth DESC LIMIT 1", (room,)
        ).fetchone()
    finally:
        db.close()
    return row[0], row[1]


def make_pdus(rv, room: str, state: dict, prev: str, depth: int, server: str, key, members: int, n: int, tag: str):
    out = []
    for i in range(n):
        user = f"@member{i % members}:{server}"
        fields = {"type": "m.room.message", "sender": user,
                  "content": {"msgtype": "m.text", "body": f"{tag} message {i}"}}
        ev = build_event(rv, room_id=room, prev_event_ids=[prev], auth_event_ids=select_auth_events(rv, fields, state),
                         depth=depth, origin_server_ts=now_ms(), server_name=server, signing_key=key, **fields)
        out.append(ev.pdu)
        prev, depth = ev.event_id, depth + 1
    return out


def count_visible(kind: str, db_path: str, room: str, tag: str, dbs: Databases | None = None,
                  options: dict | None = None) -> int:
    """Messages of this run (``tag``) stored as accepted in the receiver's database."""
    if kind == "fedserver-pg":
        return dbs.query(options, "SELECT COUNT(*) FROM events WHERE room_id = ? AND type = 'm.room.message'"
                                  " AND outlier = 0 AND rejected = 0 AND soft_failed = 0"
                                  " AND convert_from(json, 'UTF8') LIKE ?", (room, f'%"{tag} message %'))[0][0]
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        if kind == "fedserver":
            sql = ("SELECT COUNT(*) FROM events WHERE room_id = ? AND type = 'm.room.message' AND outlier = 0"
                   " AND rejected = 0 AND soft_failed = 0 AND CAST(json AS TEXT) LIKE ?")
        else:
            sql = ("SELECT COUNT(*) FROM events e LEFT JOIN rejections r ON r.event_id = e.event_id"
                   " WHERE e.room_id = ? AND e.type = 'm.room.message' AND e.outlier = 0 AND r.event_id IS NULL"
                   " AND e.event_id IN (SELECT event_id FROM event_json WHERE json LIKE ?)")
        return db.execute(sql, (room, f'%"{tag} message %')).fetchone()[0]
    finally:
        db.close()


async def send_all(client, destination: str, origin: str, pdus: list, kind: str, db_path: str, room: str, tag: str):
    """Send the PDUs, 50 per transaction, and return (seconds until all visible, [time at
    which each tenth became visible], accepted per-PDU results, errors).

    fedserver commits before its 200, so the next transaction follows the answer. Synapse
    answers at once, queues the PDUs and prunes a room's queue past about 100 events
    (dropping them), so the next transaction is sent once those before are visible: the
    rate measured is what it really processes."""
    start = time.perf_counter()
    marks: list[float] = []  # when each transaction's PDUs were all visible
    accepted = 0
    errors: dict[str, int] = {}
    for i in range(0, len(pdus), PER_TXN):
        body = {"origin": origin, "origin_server_ts": now_ms(), "pdus": pdus[i:i + PER_TXN]}
        resp = await client.put_json(destination, fed_path("/_matrix/federation/v1/send/{}", f"{tag}-{i}"), body,
                                     timeout=120)
        for result in resp.get("pdus", {}).values():
            if result == {}:
                accepted += 1
            else:
                why = str(result.get("error", "?"))[:80]
                errors[why] = errors.get(why, 0) + 1
        done = min(i + PER_TXN, len(pdus))
        if kind == "synapse":
            deadline = time.perf_counter() + 120
            while count_visible(kind, db_path, room, tag) < done:
                if time.perf_counter() > deadline:
                    errors["not visible after 120 s"] = done
                    return float("nan"), marks, accepted, errors
                await task.deferLater(reactor, 0.02, lambda: None)
        marks.append(time.perf_counter() - start)
    return marks[-1], marks, accepted, errors


def tenth_rates(marks: list[float]) -> tuple[float, float]:
    """PDUs per second over the first and the last tenth of the transactions."""
    k = max(1, len(marks) // 10)
    if len(marks) < 2 * k:
        return float("nan"), float("nan")
    return k * PER_TXN / marks[k - 1], k * PER_TXN / (marks[-1] - marks[-k - 1])


async def run(args) -> None:
    with Databases(args) as dbs:
        await run_with(args, dbs)


async def run_with(args, dbs: Databases) -> None:
    base = tempfile.mkdtemp(prefix="fedserver-bench-ingest-")
    kinds = [{"sqlite": "fedserver", "postgresql": "fedserver-pg"}[b] for b in dbs.backends] + ["synapse"]
    for b in dbs.backends:
        print(f"fedserver{'' if b == 'sqlite' else '-pg'}: {dbs.describe(b)}")
    resident = Fedserver(os.path.join(base, "resident"), extra_config={"log_level": "warn", "serve_partial_state": False})
    os.makedirs(resident.directory, exist_ok=True)
    t0 = time.perf_counter()
    rv = spec_version(args.version)
    room, state, _last, _depth = await build_room(resident.directory, resident.server_name, args.members, args.version)
    print(f"setup: room {room} (v{args.version}) with {args.members + 1:,} members in {time.perf_counter() - t0:.1f}s")
    key, _ = load_or_generate_signing_key(resident.signing_key_path)
    synapse_ok = True
    try:
        Synapse(os.path.join(base, "probe"))
    except PeerUnavailable as e:
        synapse_ok = False
        print(f"Synapse NOT measured: {e}")
    client = build_federation_client(reactor, resident.server_name, key, verify_tls=False, allow_private_addresses=True)
    results: dict[str, list[dict]] = {}
    resident.start()
    try:
        n = 0
        for r in range(args.runs):
            for kind in kinds:
                if (kind == "synapse" and not synapse_ok) or kind.split("-")[0] not in args.only:
                    continue
                n += 1
                options = None
                if kind.startswith("fedserver"):
                    directory = os.path.join(base, f"recv-{n}")
                    if kind == "fedserver-pg":
                        os.makedirs(directory, exist_ok=True)
                        options = dbs.options("postgresql", directory)
                        options.pop("database_path", None)
                    receiver = Fedserver(directory, extra_config={
                        "log_level": "warn", "partial_state_joins": False, **(options or {})})
                    receiver.start()
                    user = receiver.user("bob")
                    db_path = os.path.join(receiver.directory, "fedserver.db")
                    count = args.pdus
                else:
                    receiver = Synapse(os.path.join(base, f"recv-{n}"), room_version=args.version)
                    receiver.start()
                    user = receiver.register("alice")
                    db_path = os.path.join(receiver.directory, "homeserver.db")
                    count = args.synapse_pdus
                try:
                    receiver.client("POST", f"/_matrix/client/v3/join/{room}", {}, as_user=user,
                                    params={"server_name": resident.server_name})
                    time.sleep(1.0)
                    prev, depth = extremity(os.path.join(resident.directory, "fedserver.db"), room)
                    tag = f"r{n}"
                    pdus = make_pdus(rv, room, state, prev, depth + 1, resident.server_name, key, args.members, count, tag)
                    print(f"  run {r + 1}, {kind}: {count:,} PDUs ... {load_line()}", flush=True)
                    cpu0 = cpu_seconds(receiver.proc.pid)
                    total, marks, accepted, errors = await send_all(
                        client, receiver.server_name, resident.server_name, pdus, kind, db_path, room, tag)
                    cpu = cpu_seconds(receiver.proc.pid) - cpu0
                    visible = count_visible(kind, db_path, room, tag, dbs, options)
                    first, last = tenth_rates(marks)
                    res = {"rate": visible / total if total == total else 0.0, "visible": visible, "sent": count,
                           "accepted": accepted, "first": first, "last": last, "cpu": cpu,
                           "peak": rss(receiver.proc.pid, "VmHWM")}
                    print(f"    {visible:,}/{count:,} visible in {total:.2f}s: {res['rate']:,.0f} PDU/s; first tenth "
                          f"{first:,.0f}/s, last tenth {last:,.0f}/s; receiver CPU {cpu:.1f}s"
                          + (f"; refused: {errors}" if errors else ""), flush=True)
                    results.setdefault(kind, []).append(res)
                finally:
                    receiver.stop()
    finally:
        await client.close()
        resident.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print(f"{args.members + 1:,}-member room, {PER_TXN}-PDU transactions, medians of {args.runs} alternating runs; "
          f"{load_line()}")
    print(f"{'receiver':<13}{'PDUs':>8}{'visible':>9}{'PDU/s':>9}{'1st tenth':>11}{'last tenth':>12}{'last/1st':>10}"
          f"{'PDU/CPU-s':>11}{'peak RSS':>10}")
    med = {}
    for kind in kinds:
        rows = results.get(kind)
        if not rows:
            continue
        m = {k: statistics.median(r[k] for r in rows) for k in ("rate", "first", "last", "cpu", "peak", "visible")}
        med[kind] = m
        print(f"{kind:<13}{rows[0]['sent']:>8,}{m['visible']:>9,.0f}{m['rate']:>9,.0f}{m['first']:>11,.0f}"
              f"{m['last']:>12,.0f}{m['last'] / m['first'] - 1:>+10.1%}{m['visible'] / max(m['cpu'], 1e-9):>11,.0f}"
              f"{m['peak'] / 2**20:>8.0f}MB")
    for kind in kinds[:-1]:
        if kind in med and "synapse" in med:
            print(f"{kind}/Synapse: {med[kind]['rate'] / med['synapse']['rate']:.0f}x the rate")
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--pdus", type=int, default=10_000)
    parser.add_argument("--synapse-pdus", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--version", default="10")
    parser.add_argument("--only", default="fedserver,synapse", type=lambda s: s.split(","),
                        help="receivers to measure (default both)")
    parser.add_argument("--keep", action="store_true", help="keep the servers' files (for debugging)")
    add_backend_arguments(parser)
    args = parser.parse_args()
    task.react(lambda _r: defer.ensureDeferred(run(args)))


if __name__ == "__main__":
    main()
