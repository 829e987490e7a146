"""Benchmark: joining a 20,000-member room hosted on another server; idle memory.

Run as ``python bench/join.py [--members 20000] [--version 10] [--synapse]`` from the
repository root (not a test: it prints figures).

1. Setup, in this process: the resident server's database with a public room holding
   ``--members`` joined members (built through the room pipeline, signed with its key).
2. The resident and a fresh joining fedserver run as operators run them (``twistd -n
   fedserver``), each in its own process, federating over HTTPS on loopback.
3. We read the joining server's resident memory when idle, then a user of it joins the room
   through the client API (``POST /join/{roomId}?server_name=resident``: directory of
   candidates, make_join, send_join, every returned state and auth event checked and stored,
   the join taken in on that state) and we time the call, then read its peak memory.
4. With ``--synapse`` (and ``FEDSERVER_SYNAPSE_PYTHON`` naming a Python with matrix-synapse),
   a real Synapse joins the same room the same way, for a side-by-side figure.

The brief's figures for Synapse on this machine: 13 s and 340 MB for a 20,000-member room.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from bench._common import populated_room, with_service  # noqa: E402
from fedserver.room_versions import spec_version  # noqa: E402
from tests.interop.peers import Fedserver, PeerUnavailable, Synapse  # noqa: E402

SYNAPSE_SECONDS, SYNAPSE_MB = 13.0, 340  # the brief's figures for a 20,000-member room


def rss(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of a process (bytes) from /proc: VmRSS now, or VmHWM (peak)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


async def build_room(directory: str, server_name: str, members: int, version: str) -> str:
    """The resident's database: a public room with ``members`` joined members of its own."""
    rv = spec_version(version)

    async def work(service):
        joiners = ((f"@member{i}:{server_name}", server_name, service.signing_key) for i in range(members))
        room, _state, _last, _depth = await populated_room(service, rv, f"@owner:{server_name}", joiners, 1000)
        return room

    return await with_service(directory, server_name, work)


def join_through_client(server, user: str, room: str, resident: str) -> float:
    q = urllib.parse.quote(room, safe="")
    start = time.perf_counter()
    server.client("POST", f"/_matrix/client/v3/join/{q}", {}, as_user=user, params={"server_name": resident})
    return time.perf_counter() - start


async def run(args) -> None:
    base = tempfile.mkdtemp(prefix="fedserver-bench-join-")
    resident = Fedserver(os.path.join(base, "resident"))
    os.makedirs(resident.directory, exist_ok=True)
    t0 = time.perf_counter()
    room = await build_room(resident.directory, resident.server_name, args.members, args.version)
    print(f"setup: room {room} (v{args.version}) with {args.members + 1:,} members in {time.perf_counter() - t0:.1f}s")
    joiner = Fedserver(os.path.join(base, "joiner"))
    rows = []
    try:
        resident.start()
        joiner.start()
        time.sleep(1.0)
        idle = rss(joiner.proc.pid)
        bob = joiner.user("bob")
        seconds = join_through_client(joiner, bob, room, resident.server_name)
        peak = rss(joiner.proc.pid, "VmHWM")
        state = joiner.client("GET", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room, safe='')}/joined_members", as_user=bob)
        rows.append(("fedserver", seconds, peak, idle, len(state.get("joined", {}))))
        if args.synapse:
            try:
                synapse = Synapse(os.path.join(base, "synapse"), room_version=args.version)
            except PeerUnavailable as e:
                print(f"(Synapse not run: {e})")
            else:
                try:
                    synapse.start()
                    time.sleep(1.0)
                    s_idle = rss(synapse.proc.pid)
                    alice = synapse.register("alice")
                    s_seconds = join_through_client(synapse, alice, room, resident.server_name)
                    s_peak = rss(synapse.proc.pid, "VmHWM")
                    members = synapse.client("GET", f"/_matrix/client/v3/rooms/{urllib.parse.quote(room, safe='')}/joined_members", as_user=alice)
                    rows.append(("Synapse (measured)", s_seconds, s_peak, s_idle, len(members.get("joined", {}))))
                finally:
                    synapse.stop()
    finally:
        joiner.stop()
        resident.stop()
        shutil.rmtree(base, ignore_errors=True)
    print()
    print(f"{'joining server':<22}{'join time':>11}{'peak RSS':>11}{'idle RSS':>11}{'members seen':>14}")
    for name, seconds, peak, idle, seen in rows:
        print(f"{name:<22}{seconds:>10.2f}s{peak / 2**20:>9.0f}MB{idle / 2**20:>9.0f}MB{seen:>14,}")
    print(f"{'Synapse (the brief)':<22}{SYNAPSE_SECONDS:>10.2f}s{SYNAPSE_MB:>9}MB{'':>11}{'':>14}")
    print(f"targets: ~2 s and < 150 MB for 20,000 members; idle < 60 MB. machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--version", default="10")
    parser.add_argument("--synapse", action="store_true", help="also measure a real Synapse joining")
    args = parser.parse_args()
    task.react(lambda _r: defer.ensureDeferred(run(args)))


if __name__ == "__main__":
    main()
