"""Run by bench/state_res.py with the Synapse venv's Python: times Synapse's own state
resolution (``synapse.state.v2.resolve_events_with_store``) on the synthetic room it is
given, and prints the result as JSON. Synapse is used as a library here; nothing of it is
copied into fedserver.

Input (stdin, JSON): ``{"room_version", "room_id", "events": [pdu...], "event_ids": [...],
"state_sets": [[[type, state_key, event_id], ...], ...], "auth_difference": [...],
"conflicted_subgraph": [...] | null, "runs": n}``. The auth chain difference (and the v2.1
conflicted subgraph) are what Synapse's database computes with its chain cover index; they
are given precomputed, so the time is Synapse's algorithm alone (in fedserver's figure they
are included). Synapse's periodic ``clock.sleep(0)`` yields are made free for the same
reason. Output: ``{"seconds": best CPU time, "state": [[type, state_key, event_id], ...]}``.
"""

import asyncio
import gc
import json
import sys
import time

import synapse.event_auth  # noqa: F401 - first: synapse.state and event_auth import each other
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.events import make_event_from_dict
from synapse.state.v2 import resolve_events_with_store
from synapse.storage.databases.main.event_federation import StateDifference


class _Clock:
    async def sleep(self, duration):  # no reactor: the yields cost nothing
        return None


class _Store:
    def __init__(self, events, difference):
        self._events = events
        self._difference = difference

    async def get_events(self, event_ids, allow_rejected=False):
        return {e: self._events[e] for e in event_ids if e in self._events}

    async def get_auth_chain_difference(self, room_id, state_sets, conflicted_state, additional=None):
        auth_difference, subgraph = self._difference
        return StateDifference(set(auth_difference), set(subgraph) if subgraph is not None else None)


def main():
    data = json.load(sys.stdin)
    rv = KNOWN_ROOM_VERSIONS[data["room_version"]]
    events = {}
    for pdu, expected in zip(data["events"], data["event_ids"]):
        ev = make_event_from_dict(pdu, rv)
        if ev.event_id != expected:
            raise SystemExit(f"event id mismatch: {ev.event_id} != {expected}")
        events[ev.event_id] = ev
    state_sets = [{(t, k): e for t, k, e in s} for s in data["state_sets"]]
    store = _Store(events, (data["auth_difference"], data["conflicted_subgraph"]))
    best, result = float("inf"), None
    for _ in range(data["runs"]):
        gc.collect()
        t0 = time.process_time()
        result = asyncio.run(resolve_events_with_store(
            _Clock(), data["room_id"], rv, state_sets, dict(events), store))
        best = min(best, time.process_time() - t0)
    json.dump({"seconds": best, "state": sorted([t, k, e] for (t, k), e in result.items())}, sys.stdout)


if __name__ == "__main__":
    main()
