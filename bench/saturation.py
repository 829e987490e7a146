"""Benchmark: where one fedserver process saturates: work per CPU-second of the server, and what it spends it on.

Run as ``python bench/saturation.py [--scenario ingest|send|sync|versions|all] [--profile]``
from the repository root (not a test: it prints figures).

One process is one core: Twisted runs the server on one thread (SQLite work runs on one
more, which mostly waits for the disk). So the ceiling of a process is its throughput per
CPU-second of that process: the figures below divide the work done by the CPU time the
server process used (from /proc), which does not depend on what else the machine runs.
The wall-clock rates are printed too, for what they are on a shared machine.

Scenarios (each on a fresh server started as an operator starts it, ``twistd -n fedserver``):

- ``ingest``: inbound PDUs over ``PUT /send`` into a room with ``--members`` members of
  one peer server, 50 per transaction (as ``bench/ingest.py``);
- ``send``: clients sending messages (``PUT /rooms/{id}/send``) into a room of
  ``--users`` local users, one request at a time per user, all users at once;
- ``sync``: clients polling ``GET /sync`` incrementally (timeout 0) in that room while one
  user sends, i.e. the read path;
- ``versions``: ``GET /_matrix/client/versions``: the HTTP edge alone (parsing, routing,
  logging, metrics), the floor under every request.

With ``--profile`` the server runs under cProfile (twistd ``--profile``) and the CPU time
is attributed to areas (HTTP edge, handlers, auth, state, events/JSON/signing, storage and
SQLite, Twisted's reactor and TLS, logging); the profiler slows the server, so rates are
only measured without it.
"""

from __future__ import annotations

import argparse
import os
import pstats
import shutil
import sys
import tempfile
import time
from typing import Any
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import treq  # noqa: E402
from twisted.internet import defer, reactor, task  # noqa: E402
from twisted.web.client import HTTPConnectionPool  # noqa: E402

from bench.ingest import PER_TXN, Peer, make_pdus, proc_stats, setup  # noqa: E402
from bench._common import now_ms  # noqa: E402
from fedserver.federation.client import build_federation_client, fed_path  # noqa: E402
from fedserver.room_versions import spec_version  # noqa: E402
from tests.interop.peers import Fedserver, shared_secret_register  # noqa: E402

#: Areas of the profile, by the path of the function's file (first match wins).
AREAS = (
    ("HTTP edge (fedserver.http)", ("fedserver/http/",)),
    ("auth rules (fedserver.auth)", ("fedserver/auth/",)),
    ("state resolution (fedserver.state)", ("fedserver/state/",)),
    ("events: hashes, signatures, JSON (fedserver.events, canonicaljson, signedjson, nacl)",
     ("fedserver/events/", "canonicaljson", "signedjson", "nacl/", "unpaddedbase64")),
    ("handlers (fedserver.handlers)", ("fedserver/handlers/",)),
    ("federation client and keys (fedserver.federation)", ("fedserver/federation/",)),
    ("storage: our SQL code and caches (fedserver.storage)", ("fedserver/storage/",)),
    ("SQLite (sqlite3 C calls)", ("sqlite3",)),
    ("metrics and logs (fedserver.metrics, .logs, twisted.logger)", ("fedserver/metrics", "fedserver/logs", "twisted/logger/")),
    ("Twisted web (HTTP parsing, resources)", ("twisted/web/",)),
    ("Twisted reactor, TLS, threads (twisted.internet, OpenSSL)", ("twisted/internet/", "twisted/protocols/", "OpenSSL", "twisted/python/")),
    ("JSON encoding/decoding (json)", ("json/", "_json")),
)


class ProfiledFedserver(Fedserver):
    """fedserver under twistd, optionally with ``--profile`` (cProfile stats saved at exit)."""

    profile_path: str | None = None

    def write_config(self) -> str:
        from tests.interop.peers import free_port

        if "metrics_listen" not in self.extra_config:
            port = free_port()
            self.extra_config["metrics_listen"] = f"127.0.0.1:{port}"
            self.metrics_url = f"http://127.0.0.1:{port}/metrics"
        return super().write_config()

    def start(self, timeout: float = 60) -> None:
        if self.profile_path is None:
            return super().start(timeout)
        import subprocess  # noqa: F401 - the launcher spawns through _spawn

        path = self.write_config()
        run_twistd = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
        self._spawn([sys.executable, "-c", run_twistd, "-n", "--pidfile=", f"--profile={self.profile_path}",
                     "--profiler=cprofile", "--savestats", "fedserver", "--config", path], env=self.env())
        from tests.interop.peers import http_json, wait_until

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError("fedserver exited:\n" + self.log_tail())
            http_json("GET", self.fed_url + "/_matrix/key/v2/server", timeout=5)
            return True

        wait_until(ready, timeout, "fedserver to listen")


#: Functions whose own time is the reactor waiting for work (idle), not work.
IDLE = ("<method 'poll' of 'select.epoll' objects>", "<method 'poll' of 'select.poll' objects>",
        "<built-in method select.select>")


def areas_of(profile: str) -> list[tuple[str, float, float]]:
    """``[(area, seconds, share)]`` of the reactor thread's busy own time (tottime,
    waiting in epoll left out), largest first."""
    stats = pstats.Stats(profile)
    totals: dict[str, float] = {}
    grand = 0.0
    for (filename, _line, name), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if name in IDLE:
            continue
        grand += tottime
        where = f"{filename} {name}"
        area = "other (Python runtime, libraries)"
        for label, needles in AREAS:
            if any(n in where for n in needles):
                area = label
                break
        totals[area] = totals.get(area, 0.0) + tottime
    return sorted(((a, s, s / grand if grand else 0.0) for a, s in totals.items()), key=lambda x: -x[1])


def db_seconds(server: Any) -> tuple[float, int]:
    """``(seconds, transactions)`` the server spent in database transactions so far, from
    its own metrics (the database runs on its own thread, which the profiler does not see)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(server.metrics_url, timeout=30) as resp:
        text = resp.read().decode("utf-8")
    total, count = 0.0, 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "fedserver_database_transaction_seconds_sum":
                total += sample.value
            elif sample.name == "fedserver_database_transaction_seconds_count":
                count += int(sample.value)
    return total, count


def top_functions(profile: str, n: int = 12) -> list[tuple[str, float]]:
    stats = pstats.Stats(profile)
    rows = []
    for (filename, line, name), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if name in IDLE:
            continue
        short = filename.split("site-packages/")[-1].split("/fedserver/", 1)[-1]
        rows.append((f"{short}:{line} {name}", tottime))
    return sorted(rows, key=lambda r: -r[1])[:n]


async def scenario_ingest(args: Any, directory: str, profile: str | None) -> dict[str, Any]:
    peers = [Peer(0)]
    room, server_name, state, last, depth = await setup(directory, args, peers)
    pdus = make_pdus(args, spec_version(args.version), room, state, last, depth, peers)
    server = ProfiledFedserver(os.path.join(directory, "run"))
    server.profile_path = profile
    port = int(server_name.rsplit(":", 1)[1])
    server.fed_port, server.server_name, server.fed_url = port, server_name, f"https://{server_name}"
    server.extra_config = {"database_path": os.path.join(directory, "fedserver.db"),
                           "signing_key_path": os.path.join(directory, "fedserver.signing.key"),
                           "log_level": "warn", "access_log": False}
    server.start()
    try:
        cpu0, _ = proc_stats(server.proc.pid)
        db0 = db_seconds(server)
        p = peers[0]
        client = build_federation_client(reactor, p.name, p.key, verify_tls=False, allow_private_addresses=True)
        accepted = 0
        start = time.perf_counter()
        chunk = pdus[p.name]
        for i in range(0, len(chunk), PER_TXN):
            body = {"origin": p.name, "origin_server_ts": now_ms(), "pdus": chunk[i:i + PER_TXN]}
            resp = await client.put_json(server_name, fed_path("/_matrix/federation/v1/send/{}", f"s{i}"), body)
            accepted += sum(1 for r in resp["pdus"].values() if r == {})
        elapsed = time.perf_counter() - start
        cpu1, _ = proc_stats(server.proc.pid)
        db1 = db_seconds(server)
        client.close()
    finally:
        server.stop()
    return {"what": f"inbound PDUs accepted (room of {args.members} members)", "n": accepted, "total": len(chunk),
            "wall": elapsed, "cpu": cpu1 - cpu0, "db": (db1[0] - db0[0], db1[1] - db0[1])}


async def _client_server(args: Any, directory: str, profile: str | None) -> tuple[ProfiledFedserver, list[str], list[str], str]:
    server = ProfiledFedserver(os.path.join(directory, "run"))
    server.profile_path = profile
    server.extra_config = {"log_level": "warn", "access_log": False}
    server.start()
    users, tokens = [], []
    for i in range(args.users):
        resp = await task.deferLater(reactor, 0, shared_secret_register, server.client_url, server.shared_secret, f"u{i}")
        users.append(resp["user_id"])
        tokens.append(resp["access_token"])
    return server, users, tokens, server.client_url


async def _call(pool: Any, method: str, url: str, token: str | None = None, body: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    kw: dict[str, Any] = {"headers": headers, "pool": pool, "reactor": reactor}
    if body is not None:
        kw["json"] = body
    resp = await treq.request(method, url, **kw)
    data = await resp.json()
    if resp.code != 200:
        raise RuntimeError(f"{method} {url}: {resp.code} {data}")
    return data


async def scenario_client(args: Any, directory: str, profile: str | None, kind: str) -> dict[str, Any]:
    server, users, tokens, base = await _client_server(args, directory, profile)
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = args.users + 2
    try:
        room = (await _call(pool, "POST", f"{base}/_matrix/client/v3/createRoom", tokens[0], {"preset": "public_chat"}))["room_id"]
        for t in tokens[1:]:
            await _call(pool, "POST", f"{base}/_matrix/client/v3/join/{quote(room)}", t, {})
        since = [(await _call(pool, "GET", f"{base}/_matrix/client/v3/sync?timeout=0", t))["next_batch"] for t in tokens]
        per_user = max(1, args.requests // len(tokens))
        cpu0, _ = proc_stats(server.proc.pid)
        db0 = db_seconds(server)
        start = time.perf_counter()
        done = 0

        async def loop(i: int) -> None:
            nonlocal done
            for n in range(per_user):
                if kind == "send":
                    await _call(pool, "PUT", f"{base}/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/b{i}-{n}",
                                tokens[i], {"msgtype": "m.text", "body": f"message {n} from {i}"})
                elif kind == "sync":
                    if i == 0:
                        await _call(pool, "PUT", f"{base}/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/s{n}",
                                    tokens[0], {"msgtype": "m.text", "body": f"message {n}"})
                    got = await _call(pool, "GET", f"{base}/_matrix/client/v3/sync?timeout=0&since={quote(since[i])}", tokens[i])
                    since[i] = got["next_batch"]
                else:
                    await _call(pool, "GET", f"{base}/_matrix/client/versions")
                done += 1

        await defer.gatherResults([defer.ensureDeferred(loop(i)) for i in range(len(tokens))], consumeErrors=True)
        elapsed = time.perf_counter() - start
        cpu1, _ = proc_stats(server.proc.pid)
        db1 = db_seconds(server)
    finally:
        await pool.closeCachedConnections()
        server.stop()
    what = {"send": f"messages sent by clients (PUT /send, {args.users} users in one room)",
            "sync": f"incremental /sync requests ({args.users} users, one sending)",
            "versions": "GET /_matrix/client/versions"}[kind]
    return {"what": what, "n": done, "total": per_user * len(tokens), "wall": elapsed, "cpu": cpu1 - cpu0,
            "db": (db1[0] - db0[0], db1[1] - db0[1])}


async def run(args: Any) -> None:
    scenarios = ["ingest", "send", "sync", "versions"] if args.scenario == "all" else [args.scenario]
    print(f"machine: {os.cpu_count()} CPUs (shared), load average {os.getloadavg()[0]:.1f}, Python {sys.version.split()[0]}")
    for name in scenarios:
        directory = tempfile.mkdtemp(prefix=f"fedserver-bench-sat-{name}-")
        profile = os.path.join(directory, "server.prof") if args.profile else None
        try:
            if name == "ingest":
                result = await scenario_ingest(args, directory, profile)
            else:
                result = await scenario_client(args, directory, profile, name)
            print()
            print(f"== {name}: {result['what']}")
            print(f"   done {result['n']:,} of {result['total']:,}; wall {result['wall']:.2f} s "
                  f"({result['n'] / result['wall']:,.0f}/s); server CPU {result['cpu']:.2f} s "
                  f"-> {result['n'] / max(result['cpu'], 1e-9):,.0f} per CPU-second"
                  + ("  (under the profiler: slower than without)" if profile else ""))
            db_s, db_n = result["db"]
            print(f"   database thread: {db_n:,} transactions, {db_s:.2f} s in them "
                  f"({db_n / max(result['n'], 1):.1f} per item; {db_s / max(result['cpu'], 1e-9) * 100:.0f}% of the server's CPU time, "
                  "commits and disk waits included)")
            if profile and os.path.exists(profile):
                print("   where the server's CPU time went (own time by area):")
                for area, seconds, share in areas_of(profile):
                    print(f"     {share * 100:5.1f}%  {seconds:7.2f} s  {area}")
                print("   busiest functions (own time):")
                for fn, seconds in top_functions(profile):
                    print(f"     {seconds:7.2f} s  {fn}")
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=["ingest", "send", "sync", "versions", "all"], default="all")
    parser.add_argument("--profile", action="store_true", help="run the server under cProfile and attribute its time")
    parser.add_argument("--members", type=int, default=1000, help="ingest: members of the room")
    parser.add_argument("--pdus", type=int, default=5000, help="ingest: PDUs sent")
    parser.add_argument("--version", default="10", help="ingest: room version")
    parser.add_argument("--users", type=int, default=10, help="client scenarios: concurrent users")
    parser.add_argument("--requests", type=int, default=2000, help="client scenarios: requests in all")
    args = parser.parse_args()
    task.react(lambda _r: defer.ensureDeferred(run(args)))


if __name__ == "__main__":
    main()
