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
    if not conflicts:
        return resolved

    graph = AuthGraph(get_event, room_id)

    def present(ids: set[str]) -> list[Event]:
        out = []
        for eid in ids:
            ev = graph.event(eid)
            if ev is not None and ev.rejected_reason is None:
                out.append(ev)
        return out

    def auth_pass(keys: list[StateKey]) -> dict[StateKey, str]:
        chosen: dict[StateKey, str] = {}
        for key in keys:
            evs = _ascending_depth_descending_sha1(present(conflicts[key]))
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

    stages = (
        [k for k in conflicts if k == (POWER_LEVELS, "")],
        [k for k in conflicts if k[0] == JOIN_RULES],
        [k for k in conflicts if k[0] == MEMBER],
    )
    done: set[StateKey] = set()
    for keys in stages:
        resolved.update(auth_pass(sorted(keys)))
        done.update(keys)

    others: dict[StateKey, str] = {}
    view = AuthStateView(resolved, {}, graph)
    for key in sorted(k for k in conflicts if k not in done):
        evs = _ascending_depth_descending_sha1(present(conflicts[key]))
        if not evs:
            continue
        winner = evs[0]  # the last in descending-depth order
        for ev in reversed(evs):
            if checked(auth_check, ev, view):
                winner = ev
                break
        others[key] = winner.event_id
    resolved.update(others)
    return resolved
