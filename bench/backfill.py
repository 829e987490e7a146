"""Benchmark: paging back through 1,000 messages said on another server before the reader
joined (history fetched with /backfill), fedserver and Synapse side by side.

Run as ``FEDSERVER_SYNAPSE_PYTHON=... python bench/backfill.py [--messages 1000] [--page 20]``
from the repository root (not a test: it prints figures it measured, nothing else).

A real Synapse and a fedserver run as child processes on loopback (tests/interop/peers.py),
federating over HTTPS. For each case a user of one server says ``--messages`` things in a
``shared`` public room, a user of the reader's server joins, and the reader pages back with
``GET /messages?dir=b&limit=--page`` from the newest event until there is no ``end`` (a
server that says "no further events" before the start is counted as an early end and asked
again after half a second, as a patient client would). We
time every page, check that every message came back once and in order, and count the
history requests the reading server made to the other one, from the other's request log:
``/backfill``, ``/state_ids``, ``/event`` (fetches of single events).

Cases:
1. fedserver reads a Synapse room (fedserver backfills from Synapse);
2. Synapse reads a fedserver room (Synapse backfills from fedserver);
3. Synapse reads its own room (no federation: the local baseline);
4. fedserver reads its own room (the local baseline).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.interop.peers import Fedserver, PeerUnavailable, Synapse  # noqa: E402

def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def api(server, method: str, path: str, user: str, body=None, params=None):
    return server.client(method, "/_matrix/client/v3" + path, body, as_user=user, params=params)


def make_room(server, user: str, messages: int) -> tuple[str, list[str]]:
    room = api(server, "POST", "/createRoom", user, {"preset": "public_chat", "room_version": "12"})["room_id"]
    said = []
    for i in range(messages):
        body = f"message {i}"
        api(server, "PUT", f"/rooms/{q(room)}/send/m.room.message/{uuid.uuid4().hex}", user, {"msgtype": "m.text", "body": body})
        said.append(body)
    return room, said


def count_requests(log_path: str, room: str) -> dict[str, int]:
    """Inbound history requests in a server's log: ``/backfill`` and ``/state_ids`` about
    ``room``, and every ``/event`` (they name no room). Both servers log each inbound
    request once with its request line in quotes."""
    counts = {"backfill": 0, "state_ids": 0, "event": 0}
    pattern = re.compile(r'"GET /_matrix/federation/v1/(backfill|state_ids|event)/([^?" ]*)')
    quoted = q(room)
    try:
        with open(log_path, errors="replace") as f:
            for line in f:
                m = pattern.search(line)
                if m is not None and (m.group(1) == "event" or m.group(2) in (quoted, room)):
                    counts[m.group(1)] += 1
    except OSError:
        pass
    return counts


def page_back(server, user: str, room: str, page: int, expected: int) -> tuple[list[str], list[float], int]:
    """Page back to the start; the message bodies (oldest first), each page's time, and
    how often the server answered "no further events" (no ``end``) before all
    ``expected`` messages had come back. A client would stop there; the bench asks the
    same page again after half a second (at most 60 times) to measure to the end."""
    bodies: list[str] = []
    times: list[float] = []
    early = 0
    token = None
    for _ in range(100_000):
        params = {"dir": "b", "limit": page}
        if token:
            params["from"] = token
        start = time.perf_counter()
        answer = api(server, "GET", f"/rooms/{q(room)}/messages", user, params=params)
        times.append(time.perf_counter() - start)
        got = [e["content"].get("body") for e in answer["chunk"] if e.get("type") == "m.room.message"]
        bodies.extend(got)
        if "end" not in answer:
            if len(bodies) < expected and early < 60:
                early += 1
                time.sleep(0.5)
                continue
            break
        token = answer["end"]
    return list(reversed(bodies)), times, early


def run_case(name, writer, w_user, reader, r_user, messages, page, other_log):
    room, said = make_room(writer, w_user, messages)
    via = {"server_name": [writer.server_name]} if reader is not writer else None
    api(reader, "POST", f"/join/{q(room)}", r_user, {}, params=via)
    before = count_requests(other_log, room) if other_log else None
    started = time.perf_counter()
    bodies, times, early = page_back(reader, r_user, room, page, len(said))
    total = time.perf_counter() - started
    after = count_requests(other_log, room) if other_log else None
    ok = bodies == said
    requests = {k: after[k] - before[k] for k in after} if other_log else None
    return {"case": name, "pages": len(times), "seconds": total, "p50": statistics.median(times),
            "max": max(times), "ok": ok, "got": len(bodies), "requests": requests, "early": early}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--page", type=int, default=20)
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="fedserver-bench-backfill-")
    fed = Fedserver(os.path.join(base, "fedserver"))
    try:
        syn = Synapse(os.path.join(base, "synapse"))
    except PeerUnavailable as e:
        raise SystemExit(f"needs a real Synapse: {e}")
    rows = []
    try:
        fed.start()
        syn.start()
        f_writer, f_reader = fed.admin_user("fwriter"), fed.admin_user("freader")
        s_writer, s_reader = syn.register("swriter"), syn.register("sreader")
        syn_log = os.path.join(syn.directory, "homeserver.log")
        rows.append(run_case("fedserver reads a Synapse room", syn, s_writer, fed, f_reader, args.messages, args.page, syn_log))
        rows.append(run_case("Synapse reads a fedserver room", fed, f_writer, syn, s_reader, args.messages, args.page, fed.log_path))
        rows.append(run_case("Synapse reads its own room", syn, s_writer, syn, s_reader, args.messages, args.page, None))
        rows.append(run_case("fedserver reads its own room", fed, f_writer, fed, f_reader, args.messages, args.page, None))
    finally:
        syn.stop()
        fed.stop()
        shutil.rmtree(base, ignore_errors=True)
    print()
    print(f"{args.messages:,} messages, pages of {args.page}; requests counted in the other server's log")
    print(f"{'case':<34}{'pages':>6}{'total':>9}{'p50/page':>10}{'max/page':>10}{'/backfill':>10}{'/state_ids':>11}{'/event':>8}{'req/page':>9}{'early ends':>11}  all back in order")
    for r in rows:
        req = r["requests"]
        fetches = "" if req is None else f"{req['backfill']:>10}{req['state_ids']:>11}{req['event']:>8}{(req['backfill'] + req['state_ids'] + req['event']) / r['pages']:>9.2f}"
        if req is None:
            fetches = f"{'-':>10}{'-':>11}{'-':>8}{'-':>9}"
        print(f"{r['case']:<34}{r['pages']:>6}{r['seconds']:>8.2f}s{r['p50'] * 1000:>8.0f}ms{r['max'] * 1000:>8.0f}ms{fetches}{r['early']:>11}  "
              f"{'yes' if r['ok'] else 'NO (' + str(r['got']) + ')'}")
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
