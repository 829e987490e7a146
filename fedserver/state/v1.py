"""State resolution for room version 1 (``content/rooms/v1.md``, "State resolution")."""

from __future__ import annotations

import hashlib
from collections import ChainMap
from typing import Callable, Mapping, Sequence

from fedserver.events.model import Event
from fedserver.room_versions import RoomVersion
from fedserver.state.graph import AuthGraph
from fedserver.state.iterative import AuthCheck, AuthStateView, StateKey, checked

POWER_LEVELS = "m.room.power_levels"
JOIN_RULES = "m.room.join_rules"
MEMBER = "m.room.member"


def _sha1(event_id: str) -> str:
    return hashlib.sha1(event_id.encode("utf-8")).hexdigest()


def _ascending_depth_descending_sha1(events: list[Event]) -> list[Event]:
    # Sort by ascending depth, then descending sha1(event_id).
    return sorted(
        sorted(events, key=lambda e: _sha1(e.event_id), reverse=True),
        key=lambda e: e.depth if type(e.depth) is int else 0,
    )


def resolve_state_v1(
    rv: RoomVersion,
    state_sets: Sequence[Mapping[StateKey, str]],
    get_event: Callable[[str], Event],
    auth_check: AuthCheck,
    *,
    room_id: str | None = None,
) -> dict[StateKey, str]:
    """Resolve ``state_sets`` with the room v1 algorithm.

    R starts as the union of the states without the conflicting keys (a key some states
    lack is not a conflict). Conflicts are then resolved in passes: power levels, join
    rules, memberships, then everything else; each pass checks against R as it stood after
    the previous pass. For the first three, the candidates are sorted by ascending
    ``depth`` then descending ``sha1(event_id)``; the first is taken and each next one
    replaces it while the auth rules allow it against R with the current choice applied.
    For the others the first candidate by descending ``depth`` then ascending
    ``sha1(event_id)`` that passes against R wins; if none passes, the last of that order
    (the spec is silent; this is what Synapse does).

    Candidates ``get_event`` cannot supply, and rejected ones, are dropped; a key left with
    none is left out.

    :param rv: the room version (kept for a uniform signature).
    :param state_sets: the states, ``(type, state_key)`` -> event id.
    :param get_event: event id -> :class:`Event`; raises :class:`KeyError` if unknown.
    :param auth_check: ``auth_check(event, state) -> bool``.
    :param room_id: if given, events of other rooms are treated as missing.
    :returns: the resolved state, a new dict.
    """
    sets = list(state_sets)
    if not sets:
        return {}
    if len(sets) == 1:
        return dict(sets[0])
    resolved, conflicts = _split_conflicts(sets)
    if not conflicts:
        return resolved

    graph = AuthGraph(get_event, room_id)
    # The power levels, join rules and membership passes, each against R as it stands.
    stages = (
        [k for k in conflicts if k == (POWER_LEVELS, "")],
        [k for k in conflicts if k[0] == JOIN_RULES],
        [k for k in conflicts if k[0] == MEMBER],
    )
    done: set[StateKey] = set()
    for keys in stages:
        resolved.update(_auth_pass(sorted(keys), conflicts, resolved, graph, auth_check))
        done.update(keys)
    # All other conflicts.
    others = sorted(k for k in conflicts if k not in done)
    resolved.update(_other_conflicts(others, conflicts, resolved, graph, auth_check))
    return resolved


def _split_conflicts(
    sets: list[Mapping[StateKey, str]]
) -> tuple[dict[StateKey, str], dict[StateKey, set[str]]]:
    """"Start by setting R to the union of the states to be resolved, excluding any
    conflicting events." ("A conflict occurs between states where those states have
    different event_ids for the same (event_type, state_key)".)

    :returns: R, and the conflicting event ids by key.
    """
    candidates: dict[StateKey, set[str]] = {}
    for s in sets:
        for key, eid in s.items():
            candidates.setdefault(key, set()).add(eid)
    resolved: dict[StateKey, str] = {}
    conflicts: dict[StateKey, set[str]] = {}
    for key, ids in candidates.items():
        if len(ids) == 1:
            resolved[key] = next(iter(ids))
        else:
            conflicts[key] = ids
    return resolved, conflicts


def _present(graph: AuthGraph, ids: set[str]) -> list[Event]:
    """The events of ``ids`` we have and did not reject."""
    out = []
    for eid in ids:
        ev = graph.event(eid)
        if ev is not None and ev.rejected_reason is None:
            out.append(ev)
    return out


def _auth_pass(
    keys: list[StateKey],
    conflicts: dict[StateKey, set[str]],
    resolved: dict[StateKey, str],
    graph: AuthGraph,
    auth_check: AuthCheck,
) -> dict[StateKey, str]:
    """One of the power levels, join rules and membership passes, for ``keys``:

    "Assemble all the m.room.power_levels events from the states to be resolved into a
    list. Sort the list by ascending depth then descending sha1(event_id). Add the first
    event in the list to R. For each subsequent event in the list, check that the event
    would be allowed by the authorisation rules for a room in state R. If the event would
    be allowed, then update R with the event and continue with the next event in the list.
    If it would not be allowed, stop and continue below with m.room.join_rules events."

    :returns: the choice for each key (``resolved``, R before the pass, is not changed).
    """
    chosen: dict[StateKey, str] = {}
    for key in keys:
        evs = _ascending_depth_descending_sha1(_present(graph, conflicts[key]))
        if not evs:
            continue
        current: dict[StateKey, str] = {}
        local = ChainMap(current, resolved)
        prev = evs[0]
        for ev in evs[1:]:
            current[key] = prev.event_id
            if not checked(auth_check, ev, AuthStateView(local, {}, graph)):
                break
            prev = ev
        chosen[key] = prev.event_id
    return chosen


def _other_conflicts(
    keys: list[StateKey],
    conflicts: dict[StateKey, set[str]],
    resolved: Mapping[StateKey, str],
    graph: AuthGraph,
    auth_check: AuthCheck,
) -> dict[StateKey, str]:
    """"No other events affect the authorisation rules, so for all other conflicts, just
    pick the event with the highest depth and lowest sha1(event_id) that passes
    authentication in R and add it to R."

    If none passes, the last of that order (the spec is silent; this is what Synapse does).

    :returns: the choice for each key, all checked against ``resolved`` (not changed).
    """
    others: dict[StateKey, str] = {}
    view = AuthStateView(resolved, {}, graph)
    for key in keys:
        evs = _ascending_depth_descending_sha1(_present(graph, conflicts[key]))
        if not evs:
            continue
        winner = evs[0]  # the last in descending-depth order
        for ev in reversed(evs):
            if checked(auth_check, ev, view):
                winner = ev
                break
        others[key] = winner.event_id
    return others
