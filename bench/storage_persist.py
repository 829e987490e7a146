"""Benchmark of the store on SQLite and PostgreSQL: batch persist, a 20,000-entry state group, reads, DB size.

Run: ``python bench/storage_persist.py [members] [--backend sqlite|postgresql|both]
[--postgres URL]`` from the repository root. Both engines are measured in the same run by
default (PostgreSQL on a throwaway local cluster with its default durability, unless
``--postgres`` names a server), and printed side by side. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from fedserver.events.hashing import add_content_hash  # noqa: E402
from fedserver.events.model import Event  # noqa: E402
from fedserver.room_versions import V10  # noqa: E402
from fedserver.storage import PersistEntry, open_store  # noqa: E402
from bench._common import Databases, add_backend_arguments  # noqa: E402


def member_event(room_id: str, user: str, auth: list[str], prev: list[str], depth: int) -> Event:
    pdu = {
        "type": "m.room.member",
        "room_id": room_id,
        "sender": user,
        "state_key": user,
        "content": {"membership": "join", "displayname": user[1:12]},
        "depth": depth,
        "origin_server_ts": 1_700_000_000_000 + depth,
        "prev_events": prev,
        "auth_events": auth,
    }
    add_content_hash(pdu)
    return Event.from_pdu(pdu, V10)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def measure(reactor, members: int, dbs: Databases, backend: str) -> dict[str, tuple[int, float] | str]:
    """Run every step on one engine; returns ``{label: (items, seconds)}`` and the size."""
    results: dict[str, tuple[int, float] | str] = {}

    def report(label: str, n: int, seconds: float) -> None:
        results[label] = (n, seconds)
        rate = f"{n / seconds:,.0f}/s" if n else ""
        print(f"  [{backend}] {label:<58} {seconds * 1000:9.1f} ms  {rate:>12}", flush=True)

    tmp = tempfile.mkdtemp(prefix="fedserver-bench-")
    options = dbs.options(backend, tmp)
    store = await open_store(dbs.target(options), reactor)
    room_id = "!bench:a.example"
    create = {
        "type": "m.room.create", "room_id": room_id, "sender": "@a:a.example", "state_key": "",
        "content": {"creator": "@a:a.example", "room_version": "10"}, "depth": 1,
        "origin_server_ts": 1, "prev_events": [], "auth_events": [],
    }
    add_content_hash(create)
    create_ev = Event.from_pdu(create, V10)
    await store.persist_events([PersistEntry(create_ev, state_before={}, update_current_state={("m.room.create", ""): create_ev.event_id})])

    room_state = [create_ev]
    for etype, content in (("m.room.power_levels", {"users": {"@a:a.example": 100}}), ("m.room.join_rules", {"join_rule": "public"})):
        pdu = {
            "type": etype, "room_id": room_id, "sender": "@a:a.example", "state_key": "",
            "content": content, "depth": len(room_state) + 1, "origin_server_ts": 1,
            "prev_events": [room_state[-1].event_id], "auth_events": [e.event_id for e in room_state],
        }
        add_content_hash(pdu)
        room_state.append(Event.from_pdu(pdu, V10))
    await store.persist_events([PersistEntry(e, outlier=True) for e in room_state[1:]])
    auth = [e.event_id for e in room_state]
    events = [
        member_event(room_id, f"@user{i}:s{i % 500}.example", auth, [room_state[-1].event_id], 4)
        for i in range(members)
    ]
    t = time.perf_counter()
    await store.persist_events([PersistEntry(e, outlier=True) for e in events])
    report(f"persist {members} member events (outliers, one batch)", members, time.perf_counter() - t)

    state = {e.state_tuple: e.event_id for e in events}
    state.update({e.state_tuple: e.event_id for e in room_state})
    t = time.perf_counter()
    group = await store.store_state_group(room_id, state)
    report(f"store one {len(state)}-entry state group", len(state), time.perf_counter() - t)

    t = time.perf_counter()
    await store.update_current_state(room_id, state)
    report(f"set current state ({len(state)} entries)", len(state), time.perf_counter() - t)

    # Ingest-like: transactions of 50 PDUs, messages on top of the big state.
    prev = events[-1].event_id
    msgs = []
    for i in range(5_000):
        pdu = {
            "type": "m.room.message", "room_id": room_id, "sender": "@user1:s1.example",
            "content": {"body": f"message {i}", "msgtype": "m.text"}, "depth": 3 + i,
            "origin_server_ts": 2_000_000_000_000 + i, "prev_events": [prev],
            "auth_events": [create_ev.event_id, events[1].event_id],
        }
        add_content_hash(pdu)
        e = Event.from_pdu(pdu, V10)
        msgs.append(e)
        prev = e.event_id
    t = time.perf_counter()
    for i in range(0, len(msgs), 50):
        await store.persist_events([PersistEntry(e, state_group_before=group) for e in msgs[i : i + 50]])
    report("persist 5000 messages in transactions of 50", len(msgs), time.perf_counter() - t)

    # Membership churn: each state event gets its own state-after group (deltas, snapshots).
    churn = [
        member_event(room_id, f"@new{i}:n{i % 50}.example", [create_ev.event_id], [prev], 10_000 + i)
        for i in range(1_000)
    ]
    t = time.perf_counter()
    before = group
    for e in churn:
        out = await store.persist_events(
            [PersistEntry(e, state_group_before=before, update_current_state={e.state_tuple: e.event_id})]
        )
        before = out[e.event_id].state_group_after
    report("persist 1000 membership changes, one per transaction", len(churn), time.perf_counter() - t)

    store.close()
    store = await open_store(dbs.target(options), reactor)
    t = time.perf_counter()
    st = await store.get_state_group(group)
    report(f"cold read of the {len(st)}-entry state group", len(st), time.perf_counter() - t)
    t = time.perf_counter()
    st2 = await store.get_state_group(before)
    report(f"read a group {len(st2)} entries after churn (cold chain)", len(st2), time.perf_counter() - t)
    t = time.perf_counter()
    await store.get_state_group(group)
    report("warm read of the same group (cache)", 0, time.perf_counter() - t)
    t = time.perf_counter()
    got = await store.get_events([e.event_id for e in events])
    report(f"cold get_events of {len(got)} events", len(got), time.perf_counter() - t)
    t = time.perf_counter()
    chain = await store.get_auth_chain_ids([e.event_id for e in events])
    report(f"auth chain of {members} members ({len(chain)} ids)", members, time.perf_counter() - t)
    t = time.perf_counter()
    cur = await store.get_current_state_ids(room_id)
    report(f"get_current_state_ids ({len(cur)} entries)", len(cur), time.perf_counter() - t)
    t = time.perf_counter()
    hosts = await store.get_joined_hosts(room_id)
    report(f"get_joined_hosts ({len(hosts)} hosts)", 0, time.perf_counter() - t)
    store.close()
    results["database size"] = f"{dbs.size_bytes(options) / 1e6:.1f} MB"
    return results


async def main(reactor, args: argparse.Namespace) -> None:
    with Databases(args) as dbs:
        measured = {}
        for backend in dbs.backends:
            print(f"{backend}: {dbs.describe(backend)}", flush=True)
            measured[backend] = await measure(reactor, args.members, dbs, backend)
    backends = list(measured)
    labels = list(measured[backends[0]])
    print()
    print(f"{'':<58}" + "".join(f"{b:>26}" for b in backends))
    for label in labels:
        cells = []
        for b in backends:
            value = measured[b][label]
            if isinstance(value, str):
                cells.append(f"{value:>26}")
            else:
                n, seconds = value
                rate = f"{n / seconds:,.0f}/s" if n else ""
                cells.append(f"{seconds * 1000:>11.1f} ms {rate:>11}")
        print(f"{label:<58}" + "".join(cells))
    print(f"peak RSS: {rss_mb():.0f} MB; machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("members", type=int, nargs="?", default=20_000)
    add_backend_arguments(parser)
    arguments = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
