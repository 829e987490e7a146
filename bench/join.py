"""Benchmark: joining a large room on another server, fedserver and a real Synapse side by side.

Run as ``python bench/join.py [--members 20000] [--version 10] [--runs 3] [--modes full,partial,idle]``
from the repository root, with ``FEDSERVER_SYNAPSE_PYTHON`` naming a Python that has
matrix-synapse (without it only fedserver is measured, and the output says so). Not a test:
it prints figures, every one measured in this run.

1. Setup, in this process: a resident fedserver database with a public room of
   ``--members`` joined members (built through the room pipeline, signed with its key).
2. The resident runs as operators run it (``twistd -n fedserver``) in its own process.
3. For each mode and run, alternating fedserver and Synapse, a fresh joining server is
   started in its own process; we read its resident memory once idle, then a user of it
   joins through the client API (``POST /join/{roomId}?server_name=resident``) and we time:
   - the join's 200 (for a partial-state join: as soon as the partial state checks out);
   - until ``GET /joined_members`` lists every member (both servers make it wait for the
     full state while the room is partial-state);
   then we read its peak memory (VmHWM) and, after a short settle, its resident memory.
   Mode ``full``: the resident does not serve partial state (option
   ``serve_partial_state: false``; Synapse then gets the whole state in its send_join).
   Mode ``partial``: it does; fedserver asks for it (``partial_state_joins``), Synapse
   always does as a joiner.
   Mode ``idle``: no room and no join: a fresh server of each kind is started and its
   resident memory read once idle (as in the other modes), and it is stopped.
4. Per mode and server: the medians over the runs, and fedserver's figure against Synapse's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from bench._common import load_line, populated_room, rss, with_service  # noqa: E402
from fedserver.room_versions import spec_version  # noqa: E402
from tests.interop.peers import Fedserver, PeerUnavailable, Synapse, http_json, wait_until  # noqa: E402


async def build_room(directory: str, server_name: str, members: int, version: str) -> str:
    """The resident's database: a public room with ``members`` joined members of its own."""
    rv = spec_version(version)

    async def work(service):
        joiners = ((f"@member{i}:{server_name}", server_name, service.signing_key) for i in range(members))
        room, _state, _last, _depth = await populated_room(service, rv, f"@owner:{server_name}", joiners, 1000)
        return room

    return await with_service(directory, server_name, work)


def measure_join(server, user: str, room: str, resident: str, expected: int) -> tuple[float, float, float, float]:
    """Join ``room`` as ``user`` through ``server``'s client API.

    :returns: ``(seconds to the 200, seconds until every member is listed, peak RSS, RSS
        once settled)``.
    """
    q = urllib.parse.quote(room, safe="")
    start = time.perf_counter()
    # A 100,000-member full join takes Synapse minutes: wait as long as it takes.
    http_json("POST", f"{server.client_url}/_matrix/client/v3/join/{q}?server_name={urllib.parse.quote(resident)}", {},
              token=server.tokens.get(user), timeout=1800)
    to_200 = time.perf_counter() - start

    def all_members():
        got = server.client("GET", f"/_matrix/client/v3/rooms/{q}/joined_members", as_user=user)
        return len(got.get("joined", {})) >= expected

    wait_until(all_members, 900, "every member to be listed", interval=0.05)
    to_all = time.perf_counter() - start
    peak = rss(server.proc.pid, "VmHWM")
    time.sleep(2.0)
    return to_200, to_all, peak, rss(server.proc.pid)


#: Joining servers of earlier runs, kept running until the end: their joins are in the
#: room's state, and later joiners must be able to fetch their keys to check them.
_running: list = []


def run_fedserver(base: str, n: int, room: str, resident: str, expected: int, partial: bool) -> dict:
    joiner = Fedserver(os.path.join(base, f"joiner-{n}"), extra_config={
        "log_level": "info", "partial_state_joins": partial, "federation_client_timeout": 600,
    })
    _running.append(joiner)
    joiner.start()
    time.sleep(1.0)
    idle = rss(joiner.proc.pid)
    bob = joiner.user("bob")
    to_200, to_all, peak, after = measure_join(joiner, bob, room, resident, expected)
    return {"to_200": to_200, "to_all": to_all, "peak": peak, "idle": idle, "after": after}


def idle_rss(base: str, n: int, who: str, version: str) -> dict:
    """Mode ``idle``: a fresh server's resident memory once idle (read as the join modes
    read it), then the server is stopped."""
    if who == "fedserver":
        server: Any = Fedserver(os.path.join(base, f"idle-{n}"), extra_config={"log_level": "info"})
    else:
        server = Synapse(os.path.join(base, f"idle-{n}"), room_version=version)
    server.start()
    try:
        time.sleep(1.0)
        return {"idle": rss(server.proc.pid)}
    finally:
        server.stop()


def run_synapse(base: str, n: int, room: str, resident: str, expected: int, version: str) -> dict:
    synapse = Synapse(os.path.join(base, f"synapse-{n}"), room_version=version)
    _running.append(synapse)
    synapse.start()
    time.sleep(1.0)
    idle = rss(synapse.proc.pid)
    alice = synapse.register("alice")
    to_200, to_all, peak, after = measure_join(synapse, alice, room, resident, expected)
    return {"to_200": to_200, "to_all": to_all, "peak": peak, "idle": idle, "after": after}


async def run(args) -> None:
    base = tempfile.mkdtemp(prefix="fedserver-bench-join-")
    resident = Fedserver(os.path.join(base, "resident"))
    os.makedirs(resident.directory, exist_ok=True)
    joins = [m for m in args.modes if m != "idle"]
    room = ""
    if joins:
        t0 = time.perf_counter()
        room = await build_room(resident.directory, resident.server_name, args.members, args.version)
        print(f"setup: room {room} (v{args.version}) with {args.members + 1:,} members in {time.perf_counter() - t0:.1f}s")
    synapse_ok = True
    try:
        Synapse(os.path.join(base, "probe"))
    except PeerUnavailable as e:
        synapse_ok = False
        print(f"Synapse NOT measured: {e}")
    results: dict[tuple[str, str], list[dict]] = {}
    counter = 0
    try:
        for mode in args.modes:
            if mode == "idle":
                for r in range(args.runs):
                    for who in ("fedserver", "synapse"):
                        if who == "synapse" and not synapse_ok:
                            continue
                        counter += 1
                        res = idle_rss(base, counter, who, args.version)
                        print(f"  idle, run {r + 1}, {who}: {res['idle'] / 2**20:.1f} MB; {load_line()}", flush=True)
                        results.setdefault((mode, who), []).append(res)
                continue
            resident.stop()
            resident.extra_config = {"serve_partial_state": mode == "partial", "log_level": "warn"}
            resident.start()
            for r in range(args.runs):
                for who in ("fedserver", "synapse"):
                    if who == "synapse" and not synapse_ok:
                        continue
                    counter += 1
                    # The owner, the members and the joining user (users joined by earlier
                    # runs are not counted).
                    expected = args.members + 2
                    print(f"  {mode} join, run {r + 1}, {who} ... {load_line()}", flush=True)
                    if who == "fedserver":
                        res = run_fedserver(base, counter, room, resident.server_name, expected, mode == "partial")
                    else:
                        res = run_synapse(base, counter, room, resident.server_name, expected, args.version)
                    print(f"    200 after {res['to_200']:.2f}s, all members after {res['to_all']:.2f}s, "
                          f"peak {res['peak'] / 2**20:.0f} MB", flush=True)
                    results.setdefault((mode, who), []).append(res)
    finally:
        for server in _running:
            server.stop()
        resident.stop()
        shutil.rmtree(base, ignore_errors=True)

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    print()
    if joins:
        print(f"{args.members + 1:,}-member room, medians of {args.runs} alternating runs; {load_line()}")
    else:
        print(f"medians of {args.runs} alternating runs; {load_line()}")
    print(f"{'mode':<8}{'server':<11}{'to 200':>9}{'to all members':>16}{'peak RSS':>10}"
          f"{'idle RSS':>10}{'RSS after':>11}")
    for mode in args.modes:
        if mode == "idle":
            for who in ("fedserver", "synapse"):
                rows = results.get((mode, who))
                if rows:
                    print(f"{mode:<8}{who:<11}{'':>9}{'':>16}{'':>10}{med(rows, 'idle') / 2**20:>8.1f}MB")
            f, s = results.get((mode, "fedserver")), results.get((mode, "synapse"))
            if f and s:
                print(f"{mode:<8}{'Synapse/fedserver':<19}{'':>35}{med(s, 'idle') / med(f, 'idle'):>9.1f}x")
            continue
        for who in ("fedserver", "synapse"):
            rows = results.get((mode, who))
            if not rows:
                continue
            print(f"{mode:<8}{who:<11}{med(rows, 'to_200'):>8.2f}s{med(rows, 'to_all'):>15.2f}s"
                  f"{med(rows, 'peak') / 2**20:>8.0f}MB{med(rows, 'idle') / 2**20:>8.0f}MB"
                  f"{med(rows, 'after') / 2**20:>9.0f}MB")
        f, s = results.get((mode, "fedserver")), results.get((mode, "synapse"))
        if f and s:
            print(f"{mode:<8}{'Synapse/fedserver':<19}{med(s, 'to_200') / med(f, 'to_200'):>6.1f}x"
                  f"{med(s, 'to_all') / med(f, 'to_all'):>15.1f}x{med(s, 'peak') / med(f, 'peak'):>9.1f}x"
                  f"{med(s, 'idle') / med(f, 'idle'):>9.1f}x{med(s, 'after') / med(f, 'after'):>10.1f}x")
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--version", default="10")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--modes", default="full,partial", type=lambda s: [m for m in s.split(",") if m],
                        help="full, partial (joins) and idle (memory of a fresh server, no room built)")
    args = parser.parse_args()
    for m in args.modes:
        if m not in ("full", "partial", "idle"):
            parser.error(f"unknown mode {m!r}")
    task.react(lambda _r: defer.ensureDeferred(run(args)))


if __name__ == "__main__":
    main()
