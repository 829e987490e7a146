"""Benchmark: PDUs per second accepted through PUT /send into a room with 1,000 members, on SQLite and PostgreSQL.

Run as ``python bench/ingest.py [--members 1000] [--pdus 10000] [--origins 1] [--version 10]
[--backend sqlite|postgresql|both] [--postgres URL]`` from the repository root (not a
test: it prints figures). Both engines are measured in the same run by default
(PostgreSQL on a throwaway local cluster with its default durability unless ``--postgres``
names a server); each gets the whole benchmark below, and a table compares them.

1. Setup, in this process: a fedserver database with a public room of ours and ``--members``
   users of ``--origins`` peer servers joined to it (taken in through the room pipeline,
   exactly as received joins are), and the peers' keys stored.
2. A real fedserver is started as an operator starts it (``twistd -n fedserver``) on that
   database, in its own process.
3. Each peer sends ``--pdus / --origins`` messages, 50 per transaction, one transaction at a
   time per origin (as the spec asks of a sending server), over real HTTPS with X-Matrix
   signatures. Every message cites the previous one, so each is authorised against the
   state before it and the current state, persisted, and made the room's extremity.
4. We count PDUs whose per-PDU result is ``{}`` (accepted), check the database holds every
   one of them as accepted, and print PDUs/s, the server's CPU time and peak memory.

Signing the PDUs is done before timing starts: it is the senders' cost, not the receiver's.
The brief's figure for Synapse on this machine: about 35 PDUs/s accepted into a room, with
most of a faster backlog silently dropped.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from signedjson.key import generate_signing_key  # noqa: E402
from twisted.internet import defer, reactor, task  # noqa: E402

from bench._common import Databases, add_backend_arguments, now_ms, populated_room, with_service  # noqa: E402
from fedserver.auth.selection import select_auth_events  # noqa: E402
from fedserver.events.builder import build_event  # noqa: E402
from fedserver.events.hashing import unpadded_base64  # noqa: E402
from fedserver.federation.client import build_federation_client, fed_path  # noqa: E402
from fedserver.room_versions import spec_version  # noqa: E402
from tests.interop.peers import Fedserver, free_port  # noqa: E402

SYNAPSE_PDUS_PER_SECOND = 35  # the brief's measurement of Synapse on this machine
PER_TXN = 50


class Peer:
    """A sending server: a name, a key, and the users it has in the room."""

    def __init__(self, index: int):
        self.name = f"127.0.0.1:{free_port()}"  # never contacted: its key is pre-stored
        self.key = generate_signing_key(f"b{index}")
        self.users: list[str] = []


async def setup(directory: str, args, peers: list[Peer], database: dict) -> tuple[str, str, dict, str, int]:
    """Build the room in a database under ``directory``; returns (room_id, our server name,
    current state ids, last event id, next depth)."""
    rv = spec_version(args.version)
    server_name = "127.0.0.1:%d" % free_port()

    async def work(service):
        for p in peers:
            key_b64 = unpadded_base64(p.key.verify_key.encode())
            await service.store.store_server_keys(
                p.name, [(f"ed25519:{p.key.version}", key_b64, now_ms() + 86_400_000, None)], None, now_ms()
            )
        joiners = []
        for i in range(args.members):
            peer = peers[i % len(peers)]
            user = f"@u{i}:{peer.name}"
            peer.users.append(user)
            joiners.append((user, peer.name, peer.key))
        return await populated_room(service, rv, f"@alice:{server_name}", joiners, batch_size=200)

    room, state, last, depth = await with_service(directory, server_name, work, database)
    return room, server_name, state, last, depth


def make_pdus(args, rv, room: str, state: dict, last: str, depth: int, peers: list[Peer]) -> dict[str, list[dict]]:
    """Every message, signed by its sender's server, each citing the one before (per origin
    chains interleave into one DAG only through their shared first prev)."""
    out: dict[str, list[dict]] = {p.name: [] for p in peers}
    per_origin = args.pdus // len(peers)
    for p in peers:
        prev, d = [last], depth
        for i in range(per_origin):
            user = p.users[i % len(p.users)]
            fields = {"type": "m.room.message", "sender": user, "content": {"msgtype": "m.text", "body": f"message {i}"}}
            ev = build_event(
                rv, room_id=room, prev_event_ids=prev, auth_event_ids=select_auth_events(rv, fields, state),
                depth=d, origin_server_ts=now_ms(), server_name=p.name, signing_key=p.key, **fields,
            )
            out[p.name].append(ev.pdu)
            prev, d = [ev.event_id], d + 1
    return out


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS in bytes) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    peak = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return cpu, peak


async def run(args) -> None:
    results = {}
    with Databases(args) as dbs:
        for backend in dbs.backends:
            print(f"== {backend}: {dbs.describe(backend)}", flush=True)
            results[backend] = await run_one(args, dbs, backend)
    print()
    rows = [("accepted PDUs per second", "rate", "{:,.0f}"), ("accepted / sent", "accepted", "{}"),
            ("server CPU seconds", "cpu", "{:.2f}"), ("PDUs per server CPU-second", "per_cpu", "{:,.0f}"),
            ("server peak RSS (MB)", "rss", "{:.0f}")]
    print(f"{'':<30}" + "".join(f"{b:>16}" for b in results))
    for label, key, fmt in rows:
        print(f"{label:<30}" + "".join(f"{fmt.format(r[key]):>16}" for r in results.values()))
    print(f"{'Synapse (the brief)':<30}{SYNAPSE_PDUS_PER_SECOND:>16,}")


async def run_one(args, dbs: Databases, backend: str) -> dict:
    directory = tempfile.mkdtemp(prefix="fedserver-bench-ingest-")
    database = dbs.options(backend, directory)
    peers = [Peer(i) for i in range(args.origins)]
    t0 = time.perf_counter()
    room, server_name, state, last, depth = await setup(directory, args, peers, database)
    print(f"setup: room {room} (v{args.version}) with {args.members} members from {args.origins} server(s) in {time.perf_counter() - t0:.1f}s")
    rv = spec_version(args.version)
    pdus = make_pdus(args, rv, room, state, last, depth, peers)
    total = sum(len(v) for v in pdus.values())

    # The server under test, as an operator runs it, on the database just built.
    server = Fedserver(os.path.join(directory, "run"))
    port = int(server_name.rsplit(":", 1)[1])
    server.fed_port, server.server_name, server.fed_url = port, server_name, f"https://{server_name}"
    server.extra_config = {
        **database,
        "signing_key_path": os.path.join(directory, "fedserver.signing.key"),
        "log_level": "warn",
    }
    server.start()
    try:
        cpu0, _ = proc_stats(server.proc.pid)
        clients = {p.name: build_federation_client(reactor, p.name, p.key, verify_tls=False, allow_private_addresses=True)
                   for p in peers}
        accepted = 0
        errors: dict[str, int] = {}

        async def send_all(p: Peer) -> None:
            nonlocal accepted
            chunk = pdus[p.name]
            for i in range(0, len(chunk), PER_TXN):
                body = {"origin": p.name, "origin_server_ts": now_ms(), "pdus": chunk[i:i + PER_TXN]}
                resp = await clients[p.name].put_json(server_name, fed_path("/_matrix/federation/v1/send/{}", f"b{i}"), body)
                for result in resp["pdus"].values():
                    if result == {}:
                        accepted += 1
                    else:
                        errors[result.get("error", "?")[:80]] = errors.get(result.get("error", "?")[:80], 0) + 1

        start = time.perf_counter()
        await defer.gatherResults([defer.ensureDeferred(send_all(p)) for p in peers], consumeErrors=True)
        elapsed = time.perf_counter() - start
        cpu1, peak = proc_stats(server.proc.pid)
        for c in clients.values():
            c.close()
    finally:
        server.stop()
    (stored,) = dbs.query(
        database,
        "SELECT COUNT(*) FROM events WHERE room_id = ? AND type = 'm.room.message' AND outlier = 0"
        " AND rejected = 0 AND soft_failed = 0", (room,)
    )[0]
    shutil.rmtree(directory, ignore_errors=True)
    rate = accepted / elapsed if elapsed else 0.0
    print()
    print(f"{'PDUs sent':<34}{total:>12,}")
    print(f"{'accepted (per-PDU result {})':<34}{accepted:>12,}")
    print(f"{'stored as accepted in the DB':<34}{stored:>12,}")
    print(f"{'dropped or refused':<34}{total - accepted:>12,}   {errors or ''}")
    print(f"{'wall time':<34}{elapsed:>11.2f}s")
    print(f"{'accepted PDUs per second':<34}{rate:>12,.0f}")
    print(f"{'server CPU time':<34}{cpu1 - cpu0:>11.2f}s   ({accepted / max(cpu1 - cpu0, 1e-9):,.0f} PDUs per CPU-second)")
    print(f"{'server peak RSS':<34}{peak / 2**20:>10.0f} MB")
    print(f"{'Synapse (the brief, same machine)':<34}{SYNAPSE_PDUS_PER_SECOND:>12,}   -> x{rate / SYNAPSE_PDUS_PER_SECOND:,.0f}")
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    cpu = cpu1 - cpu0
    return {"rate": rate, "accepted": f"{accepted}/{total}", "cpu": cpu, "per_cpu": accepted / max(cpu, 1e-9),
            "rss": peak / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--pdus", type=int, default=10_000)
    parser.add_argument("--origins", type=int, default=1)
    parser.add_argument("--version", default="10")
    add_backend_arguments(parser)
    args = parser.parse_args()
    task.react(lambda _r: defer.ensureDeferred(run(args)))


if __name__ == "__main__":
    main()
