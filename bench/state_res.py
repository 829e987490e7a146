"""Benchmark: state resolution of two forks with N conflicted state events (not a test).

Run as ``python bench/state_res.py [N ...]`` from the repository root. For each N it builds
a synthetic room: a common base (creator, moderators, N members who joined), then two forks
from the same point, each with N/2 state events on its own members and on shared keys
(self-leaves, new joins, bans by moderators, topics, power levels changes, join rules
changes). It resolves the states at the two fork heads with the room v11 algorithm (v2)
and the room v12 one (v2.1), using the real auth engine, and for comparison an auth check
that allows everything (the cost of the algorithm alone), with and without auth orders (the
persistence order, as storage would give it).
Times are the best of several runs, in CPU time of this process (other processes on
the machine disturb wall-clock time); memory is the tracemalloc peak of one resolution.
"""

from __future__ import annotations

import gc
import os
import sys
import time
import tracemalloc
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import load_line  # noqa: E402
from fedserver.auth.engine import AuthEngine  # noqa: E402
from fedserver.auth.plugins import make_plugin_manager  # noqa: E402
from fedserver.events.hashing import compute_event_id  # noqa: E402
from fedserver.events.model import Event  # noqa: E402
from fedserver.room_versions import V11, V12, RoomVersion  # noqa: E402
from fedserver.state import resolve_state  # noqa: E402
from fedserver.state.graph import AuthGraph  # noqa: E402
from fedserver.state.v2 import split_conflicted  # noqa: E402


CREATE, MEMBER, PL, JR, TOPIC = (
    "m.room.create", "m.room.member", "m.room.power_levels", "m.room.join_rules",
    "m.room.topic",
)
ADMIN = "@admin:hs0.test"
MODS = [f"@mod{i}:hs{i % 3}.test" for i in range(8)]


class SyntheticRoom:
    """Events, state maps and auth orders of one synthetic room."""

    def __init__(self, rv: RoomVersion):
        self.rv = rv
        self.events: dict[str, Event] = {}
        self.auth_orders: dict[str, int] = {}
        self.ts = 1_000_000
        self.room_id = "!bench:hs0.test"
        self.count = 0

    def add(self, type: str, sender: str, content: dict, state_key: str | None,
            prev: str | None, state: dict, depth: int) -> tuple[str, dict]:
        self.count += 1
        self.ts += 1
        if type == CREATE:
            auth: list[str] = []
        else:
            keys = [(PL, ""), (MEMBER, sender)]
            if not self.rv.room_id_from_create_event:
                keys.append((CREATE, ""))
            if type == MEMBER:
                keys.append((MEMBER, state_key))
                if content.get("membership") in ("join", "invite", "knock"):
                    keys.append((JR, ""))
            auth = []
            for k in keys:
                a = state.get(k)
                if a is not None and a not in auth:
                    auth.append(a)
        pdu: dict[str, Any] = {
            "type": type, "sender": sender, "content": content,
            "prev_events": [prev] if prev else [], "auth_events": auth, "depth": depth,
            "origin_server_ts": self.ts,
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        pdu["hashes"] = {"sha256": "0" * 43}  # not checked; present as in any PDU
        pdu["signatures"] = {}
        if not (type == CREATE and self.rv.room_id_from_create_event):
            pdu["room_id"] = self.room_id
        # Real reference-hash ids, so that Synapse (given the same PDUs) names the events
        # as we do.
        eid = compute_event_id(pdu, self.rv)
        if type == CREATE and self.rv.room_id_from_create_event:
            self.room_id = "!" + eid[1:]
        ev = Event.from_pdu(pdu, self.rv, event_id=eid)
        self.events[eid] = ev
        self.auth_orders[eid] = self.count  # persistence order
        new_state = state
        if state_key is not None:
            new_state[(type, state_key)] = eid
        return eid, new_state

    def levels(self, extra: dict[str, int]) -> dict:
        users = {} if self.rv.privileged_creators else {ADMIN: 100}
        users.update({m: 50 for m in MODS})
        users.update(extra)
        return {"users": users, "users_default": 0, "state_default": 50, "events_default": 0,
                "ban": 50, "kick": 50, "redact": 50, "invite": 0}


def build(rv: RoomVersion, n: int, churn: int = 0) -> tuple[SyntheticRoom, list[dict]]:
    """The room and the states at its two fork heads.

    :param n: the size of the conflicted state set to aim for.
    :param churn: how many times each member joined and left before its last join (the
        part of the auth chains that no state set holds any more).
    """
    room = SyntheticRoom(rv)
    state: dict = {}
    depth = 1
    content = {"room_version": rv.identifier}
    if not rv.implicit_room_creator:
        content["creator"] = ADMIN
    last, state = room.add(CREATE, ADMIN, content, "", None, state, depth)
    depth += 1
    last, state = room.add(MEMBER, ADMIN, {"membership": "join"}, ADMIN, last, state, depth)
    depth += 1
    last, state = room.add(PL, ADMIN, room.levels({}), "", last, state, depth)
    depth += 1
    last, state = room.add(JR, ADMIN, {"join_rule": "public"}, "", last, state, depth)
    for m in MODS:
        depth += 1
        last, state = room.add(MEMBER, m, {"membership": "join"}, m, last, state, depth)
    members = [f"@u{i}:hs{i % 50}.test" for i in range(n)]
    for u in members:
        for _ in range(churn):
            for m in ("join", "leave"):
                depth += 1
                last, state = room.add(MEMBER, u, {"membership": m}, u, last, state, depth)
        depth += 1
        last, state = room.add(MEMBER, u, {"membership": "join"}, u, last, state, depth)
    fork_point, fork_depth = last, depth

    heads = []
    # Each fork event on a base member conflicts twice (its value and the base's), a new
    # join once: about 1.46 conflicted events per fork event with this mix.
    half = round(n / 2 / 1.46)
    for f in range(2):
        st = dict(state)
        prev, d = fork_point, fork_depth
        mine = members[f * half:(f + 1) * half]
        for i, u in enumerate(mine):
            d += 1
            mod = MODS[(i + f) % len(MODS)]
            k = i % 100
            if k == 0:
                ev = (TOPIC, mod, {"topic": f"fork {f} #{i}"}, "")
            elif k == 1:
                ev = (PL, ADMIN, room.levels({u: 10 + f}), "")
            elif k == 2:
                rule = "invite" if (i // 100 + f) % 2 else "public"
                ev = (JR, ADMIN, {"join_rule": rule}, "")
            elif k % 10 == 3:
                ev = (MEMBER, mod, {"membership": "ban"}, u)
            elif k % 2:
                ev = (MEMBER, u, {"membership": "leave"}, u)
            else:
                new = f"@new{f}_{i}:hs{i % 40}.test"
                ev = (MEMBER, new, {"membership": "join"}, new)
            prev, st = room.add(ev[0], ev[1], ev[2], ev[3], prev, st, d)
        heads.append(st)
    return room, heads


def time_best(fn, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        gc.collect()
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def main(sizes: list[int]) -> None:
    engine = AuthEngine(make_plugin_manager(load_entrypoints=False))

    def real_check(event, state):
        return engine.check_against_state(event, state).allowed

    def allow_all(event, state):
        return True

    print("N: conflicted events aimed at; history: events in the auth chains from before the")
    print("fork that no state set holds (members who joined and left before); auth check:")
    print("the real engine or allow-all (the algorithm alone); depths: auth orders given.")
    print()
    print(f"Start: {load_line()}")
    print(f"{'room':>5} {'N':>6} {'history':>7} {'conflicted':>10} {'full confl.':>11} "
          f"{'auth check':>10} {'depths':>6} {'ms':>9} {'peak MiB':>8}")
    results = {}
    cases = [(n, 0) for n in sizes] + [(max(sizes), 2)]
    for rv in (V11, V12):
        for n, churn in cases:
            room, sets = build(rv, n, churn)
            get_event = room.events.__getitem__
            auth_order = room.auth_orders.__getitem__
            _, conflicted = split_conflicted(sets)
            graph = AuthGraph(get_event, auth_order=auth_order)
            cnodes = {graph.node(e) for e in conflicted}
            full = cnodes | graph.auth_difference(sets)
            if rv.state_res.value == "v2.1":
                full |= graph.conflicted_subgraph(cnodes)
            runs = 7 if n <= 1000 else 5
            for label, check in (("engine", real_check), ("allow", allow_all)):
                for depths in (auth_order, None):
                    def run(check=check, depths=depths):
                        return resolve_state(rv, sets, get_event, check, auth_order=depths)
                    seconds = time_best(run, runs)
                    tracemalloc.start()
                    run()
                    peak = tracemalloc.get_traced_memory()[1]
                    tracemalloc.stop()
                    results[(rv.identifier, n, churn, label, depths is not None)] = seconds
                    print(f"{'v' + rv.identifier:>5} {n:>6} {2 * churn * n:>7} "
                          f"{len(conflicted):>10} "
                          f"{len(full):>11} {label:>10} {'yes' if depths else 'no':>6} "
                          f"{seconds * 1000:>9.1f} {peak / 2**20:>8.1f}")
    biggest = max(sizes)
    print(f"End of the table: {load_line()}")
    print()
    print(f"Side by side, N={biggest}, real auth rules (fedserver: engine, with auth orders; best of runs, CPU time):")
    synapse_py = os.environ.get("FEDSERVER_SYNAPSE_PYTHON")
    if not synapse_py:
        print("  Synapse NOT measured: FEDSERVER_SYNAPSE_PYTHON is not set")
    for rv in (V11, V12):
        ours = results.get((rv.identifier, biggest, 0, "engine", True))
        line = f"  room v{rv.identifier} ({rv.state_res.value}): fedserver {ours * 1000:.0f} ms"
        if synapse_py:
            theirs, agree = synapse_time(synapse_py, rv, biggest)
            line += (f", Synapse {theirs * 1000:.0f} ms (its algorithm, auth difference given), "
                     f"Synapse/fedserver {theirs / ours:.1f}x; same resolved state: {'yes' if agree else 'NO'}")
        print(f"{line}; {load_line()}")


def synapse_time(python: str, rv: RoomVersion, n: int) -> tuple[float, bool]:
    """Synapse's best time resolving the same room (bench/_synapse_state_res.py run with
    ``python``), and whether its result equals ours."""
    import json
    import subprocess

    room, sets = build(rv, n, 0)
    get_event = room.events.__getitem__
    _, conflicted = split_conflicted(sets)
    graph = AuthGraph(get_event, auth_order=room.auth_orders.__getitem__)
    cnodes = {graph.node(e) for e in conflicted}
    diff = [graph.ids[x] for x in graph.auth_difference(sets)]
    subgraph = [graph.ids[x] for x in graph.conflicted_subgraph(cnodes)] if rv.state_res.value == "v2.1" else None
    engine = AuthEngine(make_plugin_manager(load_entrypoints=False))
    ours = resolve_state(rv, sets, get_event, lambda e, st: engine.check_against_state(e, st).allowed,
                         auth_order=room.auth_orders.__getitem__)
    payload = {
        "room_version": rv.identifier, "room_id": room.room_id,
        "events": [e.pdu for e in room.events.values()], "event_ids": list(room.events),
        "state_sets": [[[t, k, e] for (t, k), e in st.items()] for st in sets],
        "auth_difference": diff, "conflicted_subgraph": subgraph, "runs": 3,
    }
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([python, os.path.join(here, "_synapse_state_res.py")], input=json.dumps(payload).encode(),
                          capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError("Synapse's state resolution failed:\n" + proc.stderr.decode(errors="replace")[-3000:])
    out = json.loads(proc.stdout)
    theirs = {(t, k): e for t, k, e in out["state"]}
    return out["seconds"], theirs == dict(ours)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [100, 1_000, 10_000])
