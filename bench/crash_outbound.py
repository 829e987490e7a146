"""Crash check: events answered 200 survive a SIGKILL of the resident and reach the peer.

Run as ``python bench/crash_outbound.py [--rounds 25] [--burst 1] [--peer fedserver|synapse]``
from the repository root (not a test: it prints the figures of this run). Bounded: each
round is a few requests, one restart and at most ``--wait`` seconds of waiting; it stops by
itself and everything stays on loopback.

1. A resident fedserver (``A``) and a peer (a second fedserver, or with ``--peer synapse``
   a real Synapse from ``FEDSERVER_SYNAPSE_PYTHON``) run as child processes; the peer's
   user joins a public room on A.
2. Each round, A's user sends ``--burst`` messages; the moment the last one is answered
   200, A is killed with SIGKILL (no shutdown code runs) and started again. The round's
   messages must then reach the peer within ``--wait`` seconds: a message that does not
   was answered 200 but not queued (a later message would hide the loss, since the peer
   fetches missing prev events: that is why each round is checked on its own).
3. At the end: events answered 200, stored on A, delivered within the wait, lost (not
   delivered within the wait), and still queued on A.

What fedserver promises (docs/operators.md, "Crashes"): every event answered 200 is stored
and reaches every server in the room once the resident runs again, so "lost" must be 0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.interop.peers import Fedserver, PeerUnavailable, Synapse  # noqa: E402


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def held(db_path: str, event_ids: list[str], table_sql: str) -> set[str]:
    """The ids of ``event_ids`` present in a server's database (opened read-only)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        found: set[str] = set()
        for i in range(0, len(event_ids), 500):
            part = event_ids[i:i + 500]
            sql = table_sql.format(",".join("?" * len(part)))
            found.update(r[0] for r in conn.execute(sql, part).fetchall())
        return found
    finally:
        conn.close()


def queued_on(db_path: str) -> int:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT COUNT(*) FROM outbound_queue").fetchone()[0]
    finally:
        conn.close()


def run(args) -> int:
    base = tempfile.mkdtemp(prefix="crash-outbound-")
    a = Fedserver(os.path.join(base, "a"))
    if args.peer == "synapse":
        try:
            peer = Synapse(os.path.join(base, "synapse"))
        except PeerUnavailable as e:
            print(f"Synapse not available: {e}")
            return 2
        peer_db = os.path.join(peer.directory, "homeserver.db")
        # Synapse keeps outliers in `events` too; the room timeline is what counts.
        peer_sql = "SELECT event_id FROM events WHERE outlier = 0 AND event_id IN ({})"
    else:
        peer = Fedserver(os.path.join(base, "b"))
        peer_db = os.path.join(peer.directory, "fedserver.db")
        peer_sql = "SELECT event_id FROM events WHERE outlier = 0 AND rejected = 0 AND event_id IN ({})"
    a_db = os.path.join(a.directory, "fedserver.db")
    try:
        a.start()
        peer.start()
        alice = a.admin_user("alice")
        bob = peer.register("bob") if args.peer == "synapse" else peer.admin_user("bob")
        room = a.client("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, as_user=alice)["room_id"]
        peer.client("POST", f"/_matrix/client/v3/join/{q(room)}", {}, as_user=bob, params={"server_name": a.server_name})

        answered: list[str] = []
        lost: list[str] = []
        restart_s: list[float] = []
        deliver_s: list[float] = []
        for r in range(args.rounds):
            sent = []
            for i in range(args.burst):
                path = f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/r{r}m{i}"
                answer = a.client("PUT", path, {"msgtype": "m.text", "body": f"round {r} message {i}"}, as_user=alice)
                sent.append(answer["event_id"])
            a.proc.kill()  # SIGKILL right after the last 200 of the round
            a.proc.wait()
            t0 = time.monotonic()
            a.start()
            restart_s.append(time.monotonic() - t0)
            answered += sent
            got: set[str] = set()
            while time.monotonic() - t0 < args.wait:
                got = held(peer_db, sent, peer_sql)
                if len(got) == len(sent):
                    deliver_s.append(time.monotonic() - t0)
                    break
                time.sleep(0.1)
            lost += [e for e in sent if e not in got]
        delivered = len(answered) - len(lost)
        stored = held(a_db, answered, "SELECT event_id FROM events WHERE event_id IN ({})")
        still_queued = queued_on(a_db)
    finally:
        a.stop()
        peer.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    print(f"resident: fedserver; peer: {args.peer}; {args.rounds} rounds of {args.burst} message(s), "
          f"SIGKILL right after the last 200 of each round")
    print(f"{'answered 200':>14}{'stored on A':>13}{'delivered':>11}{'lost':>6}{'queued on A':>13}")
    print(f"{len(answered):>14}{len(stored):>13}{delivered:>11}{len(lost):>6}{still_queued:>13}")
    print(f"delivered: on the peer within {args.wait:.0f}s of the restart that followed; "
          f"lost: answered 200 but not sent after the restart")
    median = sorted(restart_s)[len(restart_s) // 2]
    line = f"restart to serving: median {median:.2f}s"
    if deliver_s:
        line += f"; restart to delivered: median {sorted(deliver_s)[len(deliver_s) // 2]:.2f}s"
    print(line)
    kept = f"; files kept in {base}" if args.keep else ""
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}{kept}")
    return 0 if not lost and len(stored) == len(answered) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=25, help="kill/restart rounds (default 25)")
    parser.add_argument("--burst", type=int, default=1, help="messages per round before the kill (default 1)")
    parser.add_argument("--peer", choices=("fedserver", "synapse"), default="fedserver")
    parser.add_argument("--wait", type=float, default=10, help="seconds a round's messages get to reach the peer")
    parser.add_argument("--keep", action="store_true", help="keep the servers' files and logs")
    args = parser.parse_args()
    if args.rounds < 1 or args.burst < 1:
        parser.error("--rounds and --burst must be at least 1")
    sys.exit(run(args))


if __name__ == "__main__":
    main()
