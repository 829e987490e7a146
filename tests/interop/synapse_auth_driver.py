"""Synapse's verdicts on authorization cases: the oracle side of the auth conformance check.

Run ONLY with the Python of a Synapse install (``FEDSERVER_SYNAPSE_PYTHON``), as a child
process; never imported by fedserver or its tests (fedserver must not import Synapse, and
this file holds no Synapse code: it calls Synapse's public functions)::

    $SYNAPSE_PYTHON tests/interop/synapse_auth_driver.py < cases.json > verdicts.json

Input: ``{"cases": [case, ...]}`` where a case is::

    {"id": str, "room_version": "1".."12", "mode": "receipt" | "state",
     "event": pdu, "event_id": our id for it,
     "known": [{"pdu": pdu, "event_id": our id, "rejected": bool}, ...],
     "state": [event ids of known events]}        # mode "state" only

Mode ``receipt`` is the spec's check 4 of "Checks performed on receipt of a PDU" as
Synapse runs it (``synapse.handlers.federation_event._check_event_auth``): the event's
format checks, the state-independent rules against the auth events it cites (looked up
among ``known``), then the state-dependent rules against those auth events.  Mode
``state`` is checks 5 and 6 (and state resolution): the state-dependent rules against the
events named by ``state`` (after the format checks, which come first in both modes).

Output: ``{"synapse": version, "verdicts": [{"id", "verdict", "detail"}, ...]}`` in input
order, where ``verdict`` is ``allow``, ``reject`` (Synapse raised ``AuthError``: the event
is rejected), ``invalid`` (Synapse cannot even build the event: it is dropped as
malformed), ``error`` (Synapse raised anything else while authorising it: it cannot
process the event, which it therefore never accepts), or ``badid`` (Synapse computes
another event id than ours for some event of the case: the case is meaningless and the
comparison fails on it).
"""

import json
import logging
import sys

import synapse
from synapse import event_auth
from synapse.api.errors import AuthError
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.events import make_event_from_dict

logging.disable(logging.CRITICAL)


class _Store:
    """The one store method the state-independent rules call."""

    def __init__(self, events):
        self._events = events

    async def get_events(self, event_ids, redact_behaviour=None, get_prev_content=False,
                         allow_rejected=False):
        return {e: self._events[e] for e in event_ids if e in self._events}


def _run(coro):
    """Drive a coroutine that never really waits (our store answers at once)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("coroutine suspended")


def _verdict(case):
    rv = KNOWN_ROOM_VERSIONS[case["room_version"]]
    known = {}
    for entry in case["known"]:
        ev = make_event_from_dict(
            entry["pdu"], rv, rejected_reason="auth_error" if entry.get("rejected") else None
        )
        if ev.event_id != entry["event_id"]:
            return "badid", f"known event: Synapse {ev.event_id}, ours {entry['event_id']}"
        known[ev.event_id] = ev
    try:
        event = make_event_from_dict(case["event"], rv)
    except Exception as e:
        return "invalid", f"{type(e).__name__}: {e}"
    if event.event_id != case["event_id"]:
        return "badid", f"event: Synapse {event.event_id}, ours {case['event_id']}"
    # The event's own checks (sizes, the signatures it must carry) do not depend on the
    # state; Synapse runs them at receipt, before any state check, so in both modes.
    event_auth.validate_event_for_room_version(event)
    if case["mode"] == "receipt":
        _run(event_auth.check_state_independent_auth_rules(_Store(known), event))
        cited = [known[e] for e in event.auth_event_ids()]
        event_auth.check_state_dependent_auth_rules(event, cited)
    else:
        event_auth.check_state_dependent_auth_rules(event, [known[e] for e in case["state"]])
    return "allow", ""


def main():
    cases = json.load(sys.stdin)["cases"]
    out = []
    for case in cases:
        try:
            verdict, detail = _verdict(case)
        except AuthError as e:
            verdict, detail = "reject", str(e.msg)
        except Exception as e:  # Synapse cannot process the event at all
            verdict, detail = "error", f"{type(e).__name__}: {e}"
        out.append({"id": case["id"], "verdict": verdict, "detail": detail[:300]})
    json.dump({"synapse": synapse.__version__, "verdicts": out}, sys.stdout)


if __name__ == "__main__":
    main()
