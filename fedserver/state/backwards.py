"""The state before events reached backwards (history fetched with /backfill), derived from the known state of their descendants (pure)."""

# History arrives newest first: a /backfill answer holds events *before* ones we hold with
# state, and their own prev events are usually unknown to us. Rather than asking the other
# server for the state at every page (a /state_ids round trip per page), the state is
# carried backwards, exactly, through the DAG:
#
# - If an event C (held, or already derived) has exactly one prev event E, the state after
#   E *is* the state before C (that is what "the state before an event" means when it has
#   a single prev event).
# - The state before E is the state after E, except for E's own key when E is a state
#   event that the state after it holds (an accepted state event). Its previous value is
#   known when that key is one the auth events selection (server-server API, "Auth events
#   selection") makes E cite: the target's membership for m.room.member, the power levels
#   for m.room.power_levels. E's auth events then name the previous value, or by naming
#   none say there was none. The m.room.create event has nothing before it.
# - Otherwise (E's key is, say, m.room.name or m.room.history_visibility; or E's
#   children all have several prev events, where state resolution cannot be run
#   backwards) the state before E is not derivable: the caller asks a server for it
#   (/state_ids) and calls again with it given.
#
# Trust: the starting states are ours (computed, or checked when we joined). What this
# adds is the previous value of an event's own key taken from its auth events, which the
# receipt checks verify E against (step 4); a server that forged them could only mislabel
# history, never the current state, which backfilled events do not touch.

from __future__ import annotations

from typing import Callable, Iterable, Mapping, NamedTuple, Optional, Sequence

from fedserver.auth.selection import CREATE_KEY, auth_types_for_event
from fedserver.events.model import Event
from fedserver.state.statemap import StateKey, StateMap


class Derived(NamedTuple):
    """What :func:`derive_states_before` found.

    :ivar before: ``{event_id: state before it}`` for the events it could derive (or was
        given).
    :ivar unknown: the events whose state before could not be derived, newest (closest to
        what we hold) first: ask a server for the first and call again.
    """

    before: dict[str, Mapping[StateKey, str]]
    unknown: list[str]


def newest_first(events: Iterable[Event]) -> list[Event]:
    """``events`` ordered so that every event comes before its prev events among them
    (children first), ties broken by depth then id."""
    by_id = {e.event_id: e for e in events}
    children: dict[str, int] = {eid: 0 for eid in by_id}
    for e in by_id.values():
        for p in set(e.prev_event_ids):
            if p in children:
                children[p] += 1
    ready = sorted((e for eid, e in by_id.items() if children[eid] == 0), key=lambda e: (-e.depth, e.event_id))
    out: list[Event] = []
    while ready:
        e = ready.pop(0)
        out.append(e)
        freed = []
        for p in set(e.prev_event_ids):
            if p in children:
                children[p] -= 1
                if children[p] == 0:
                    freed.append(by_id[p])
        if freed:
            ready = sorted(ready + freed, key=lambda ev: (-ev.depth, ev.event_id))
    if len(out) < len(by_id):  # a cycle (malformed input): the rest by depth
        seen = {e.event_id for e in out}
        out.extend(sorted((e for e in by_id.values() if e.event_id not in seen), key=lambda e: (-e.depth, e.event_id)))
    return out


def derive_states_before(
    events: Sequence[Event],
    held_children: Mapping[str, Sequence[tuple[Sequence[str], Mapping[StateKey, str]]]],
    key_of: Callable[[str], Optional[StateKey]],
    given: Optional[Mapping[str, Mapping[StateKey, str]]] = None,
) -> Derived:
    """The state before each of ``events`` that can be carried back from known states.

    :param events: the fetched events (of one room).
    :param held_children: ``{event_id: [(child's prev event ids, state before the
        child)]}`` for events we hold with state whose prev events include one of
        ``events``.
    :param key_of: the ``(type, state_key)`` of an auth event of ``events`` (``None`` if
        it is not a state event or not known).
    :param given: states before some of ``events`` obtained otherwise (a server's
        ``/state_ids``); they are used as they are.
    :returns: a :class:`Derived`.
    """
    given = dict(given or {})
    batch = {e.event_id: e for e in events}
    # Children within the batch: prev id -> [child events].
    batch_children: dict[str, list[Event]] = {}
    for e in events:
        for p in set(e.prev_event_ids):
            if p in batch:
                batch_children.setdefault(p, []).append(e)
    before: dict[str, Mapping[StateKey, str]] = {}
    unknown: list[str] = []
    for e in newest_first(events):
        eid = e.event_id
        if eid in given:
            before[eid] = given[eid]
            continue
        after = _state_after(eid, held_children.get(eid, ()), batch_children.get(eid, ()), before)
        if after is None:
            unknown.append(eid)
            continue
        state = _undo(e, after, key_of)
        if state is None:
            unknown.append(eid)
        else:
            before[eid] = state
    return Derived(before, unknown)


def _state_after(
    eid: str,
    held: Sequence[tuple[Sequence[str], Mapping[StateKey, str]]],
    in_batch: Sequence[Event],
    before: Mapping[str, Mapping[StateKey, str]],
) -> Optional[Mapping[StateKey, str]]:
    """The state after ``eid`` from a child whose only prev event it is (held children
    first: their states are ours)."""
    for prevs, state in held:
        if set(prevs) == {eid}:
            return state
    for child in in_batch:
        if set(child.prev_event_ids) == {eid} and child.event_id in before:
            return before[child.event_id]
    return None


def _undo(event: Event, after: Mapping[StateKey, str], key_of: Callable[[str], Optional[StateKey]]) -> Optional[Mapping[StateKey, str]]:
    """The state before ``event`` from the state after it, or ``None`` if the previous
    value of its key cannot be known from its auth events."""
    if event.state_key is None:
        return after
    key = (event.type, event.state_key)
    if after.get(key) != event.event_id:
        return after  # not part of the state after it: it was rejected, so it changed nothing
    if key == CREATE_KEY:
        return _without(after, key)
    selected = auth_types_for_event(event.room_version, event.type, event.state_key, event.sender, event.content)
    if key not in selected:
        return None
    previous = [a for a in event.auth_event_ids if a != event.event_id and key_of(a) == key]
    if len(previous) > 1:
        return None  # two auth events for one key: malformed; let a server say
    if previous:
        return _with(after, key, previous[0])
    return _without(after, key)


def _with(state: Mapping[StateKey, str], key: StateKey, value: str) -> Mapping[StateKey, str]:
    if isinstance(state, StateMap):
        return state.evolve({key: value})
    out = dict(state)
    out[key] = value
    return out


def _without(state: Mapping[StateKey, str], key: StateKey) -> Mapping[StateKey, str]:
    if isinstance(state, StateMap):
        return state.evolve({key: None})
    out = dict(state)
    out.pop(key, None)
    return out


__all__ = ["Derived", "derive_states_before", "newest_first"]
