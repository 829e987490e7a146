"""State resolution v2 (room versions 2-11) and v2.1 (room version 12)."""

from __future__ import annotations

import heapq
from typing import Callable, Mapping, Sequence

from fedserver.events.model import Event
from fedserver.room_versions import RoomVersion
from fedserver.state.graph import POWER_LEVELS, AuthGraph
from fedserver.state.iterative import AuthCheck, StateKey, iterative_auth_checks
from fedserver.state.power import SenderPower, is_power_event

#: A mainline position greater than any real one (the spec's "infinity").
_NO_MAINLINE = 1 << 62


def split_conflicted(
    state_sets: Sequence[Mapping[StateKey, str]],
) -> tuple[dict[StateKey, str], set[str]]:
    """Spec "Unconflicted state map and conflicted state set".

    A key present in every set with the same event is unconflicted; every event of any
    other key is conflicted (a key missing from one set is conflicted).

    :returns: ``(unconflicted state map, conflicted event ids)``.
    """
    first, rest = state_sets[0], state_sets[1:]
    unconflicted: dict[StateKey, str] = {}
    for key, eid in first.items():
        for s in rest:
            if s.get(key) != eid:
                break
        else:
            unconflicted[key] = eid
    conflicted: set[str] = set()
    for s in state_sets:
        if len(s) == len(unconflicted):
            continue  # holds exactly the unconflicted map
        for key, eid in s.items():
            if key not in unconflicted:
                conflicted.add(eid)
    return unconflicted, conflicted


def _ts(ev: Event) -> int:
    ts = ev.origin_server_ts
    return ts if type(ts) is int else 0


def reverse_topological_power_sort(
    graph: AuthGraph, nodes: set[int], power: Callable[[int], float]
) -> list[int]:
    """Spec "Reverse topological power ordering" of ``nodes``: Kahn's algorithm over their
    ``auth_events`` edges, always taking the candidate with the greatest sender power, then
    the smallest ``origin_server_ts``, then the smallest event id.

    Events on a cycle (only possible with format-V1 ids) never become candidates and are
    left out.

    :returns: nodes, earliest first.
    """
    events = graph.events
    ids = graph.ids
    pending: dict[int, int] = {}
    children: dict[int, list[int]] = {}
    ready = []
    for n in nodes:
        count = 0
        for p in graph.parents(n):
            if p in nodes:
                count += 1
                children.setdefault(p, []).append(n)
        pending[n] = count
    for n, count in pending.items():
        if count == 0:
            ready.append((-power(n), _ts(events[n]), ids[n], n))  # type: ignore[arg-type]
    heapq.heapify(ready)
    out: list[int] = []
    while ready:
        n = heapq.heappop(ready)[3]
        out.append(n)
        for c in children.get(n, ()):
            left = pending[c] - 1
            pending[c] = left
            if left == 0:
                heapq.heappush(ready, (-power(c), _ts(events[c]), ids[c], c))  # type: ignore[arg-type]
    return out


def mainline_sort(graph: AuthGraph, nodes: set[int], power_levels_id: str | None) -> list[int]:
    """Spec "Mainline ordering" of ``nodes`` based on the power levels event
    ``power_levels_id``: by mainline position descending (events based on older power
    levels first, events reaching no mainline event first of all), then
    ``origin_server_ts``, then event id.

    :returns: nodes in order.
    """
    mainline_index: dict[int, int] = {}
    if power_levels_id is not None:
        p: int | None = graph.node(power_levels_id)
        if graph.events[p] is None:  # type: ignore[index]
            p = None
        i = 0
        while p is not None and p not in mainline_index:
            mainline_index[p] = i
            i += 1
            p = graph.power_levels_parent(p)
    memo: dict[int, int] = {}
    pl_parent = graph.power_levels_parent

    def position(first: int) -> int:
        # The mainline position of an event whose e_1 is ``first``, off the mainline.
        p: int | None = first
        walked: list[int] = []
        pos = _NO_MAINLINE
        while p is not None:
            if p in mainline_index:
                pos = mainline_index[p]
                break
            known = memo.get(p)
            if known is not None:
                pos = known
                break
            if p in walked:  # a cycle of power levels events
                break
            walked.append(p)
            p = pl_parent(p)
        for w in walked:
            memo[w] = pos
        return pos

    events = graph.events
    ids = graph.ids
    # Spec: "x < y if 1. the mainline position of x is greater than the mainline position
    # of y ...; or 2. the mainline positions of the events are the same, but x's
    # origin_server_ts is less than y's origin_server_ts; or 3. ... x's event_id is less
    # than y's event_id": one sort key per event.
    keyed = []
    for n in nodes:
        # Spec: "Find the smallest index j >= 1 for which e_j belongs to the mainline of
        # P. If such a j exists, then e_j = P_i for some unique index i >= 0. Otherwise
        # set i = infinity". e_0 (the event itself) is not considered.
        p = pl_parent(n)
        if p is None:
            pos = _NO_MAINLINE
        else:
            pos = mainline_index.get(p)  # the usual case: e_1 is on the mainline
            if pos is None:
                pos = position(p)
        ts = events[n].origin_server_ts  # type: ignore[union-attr]
        keyed.append((-pos, ts if type(ts) is int else 0, ids[n], n))
    keyed.sort()
    return [k[3] for k in keyed]


def resolve_state_v2(
    rv: RoomVersion,
    state_sets: Sequence[Mapping[StateKey, str]],
    get_event: Callable[[str], Event],
    auth_check: AuthCheck,
    *,
    v2_1: bool = False,
    room_id: str | None = None,
    auth_order: Callable[[str], int] | None = None,
) -> dict[StateKey, str]:
    """Resolve ``state_sets`` with the room v2 algorithm, or with v2.1 (room v12).

    Follows the spec's "Algorithm" steps 1-5 (``content/rooms/fragments/v2-state-res.md``;
    v2.1: ``content/rooms/v12.md``).

    Choices where the spec is silent or where we follow deployed servers, all documented
    where they happen: events ``get_event`` cannot supply are left out of the algorithm (an
    unconflicted entry stays in the result); previously rejected events are ordered as usual
    but never admitted, and rejected auth events are never used; step 1 follows auth edges
    through the full conflicted set only (for v2.1 this is exactly the spec's set); an
    exception from ``auth_check`` counts as a denial.

    :param rv: the room version (read for its auth-related flags).
    :param state_sets: the states to resolve, ``(type, state_key)`` -> event id.
    :param get_event: event id -> :class:`Event`; raises :class:`KeyError` if unknown. It
        must supply the conflicted events and their auth chains: all of them, or with
        ``auth_order`` only the part above where the sets' chains meet.
    :param auth_check: ``auth_check(event, state) -> bool``; called once per replayed event
        with a mapping that looks up state lazily.
    :param v2_1: use state resolution v2.1: step 2 starts from an empty map and the full
        conflicted set includes the conflicted state subgraph.
    :param room_id: if given, events of other rooms are treated as missing.
    :param auth_order: optional event id -> auth order, which lets the auth difference and
        the conflicted state subgraph stop early (see :class:`AuthGraph`).
    :returns: the resolved state, a new dict.
    """
    sets = list(state_sets)
    if not sets:
        return {}
    if len(sets) == 1:
        return dict(sets[0])
    unconflicted, conflicted_ids = split_conflicted(sets)
    if not conflicted_ids:
        return unconflicted

    graph = AuthGraph(get_event, room_id, auth_order)
    full = _full_conflicted_set(graph, sets, conflicted_ids, v2_1)

    # Step 1: the power events of the full conflicted set and their auth chains within it,
    # in reverse topological power ordering.
    chosen = _power_events_closure(graph, full)
    power_order = reverse_topological_power_sort(graph, chosen, SenderPower(rv, graph))

    # Step 2: iterative auth checks from the unconflicted state map (v2.1: from nothing).
    partial: dict[StateKey, str] = {} if v2_1 else dict(unconflicted)
    iterative_auth_checks(rv, graph, power_order, partial, auth_check)

    # Step 3: everything else, in mainline order of the partially resolved power levels.
    rest = mainline_sort(graph, full - chosen, partial.get((POWER_LEVELS, "")))

    # Step 4: iterative auth checks on the partial state.
    iterative_auth_checks(rv, graph, rest, partial, auth_check)

    # Step 5: the unconflicted state map wins.
    partial.update(unconflicted)
    return partial


def _full_conflicted_set(
    graph: AuthGraph,
    sets: list[Mapping[StateKey, str]],
    conflicted_ids: set[str],
    v2_1: bool,
) -> set[int]:
    """The "Full conflicted set": "the union of the conflicted state set and the auth
    difference" (v2.1: "the union of the conflicted state set, the conflicted state
    subgraph, and the auth difference"), as nodes of ``graph``.

    Conflicted events ``graph`` cannot supply are left out.
    """
    events = graph.events
    conflicted = {graph.node(eid) for eid in conflicted_ids}
    conflicted = {n for n in conflicted if events[n] is not None}
    full = conflicted | graph.auth_difference(sets)
    if v2_1:
        full |= graph.conflicted_subgraph(conflicted)
    return full


def _power_events_closure(graph: AuthGraph, full: set[int]) -> set[int]:
    """Step 1's set X: "Select the set X of all power events that appear in the full
    conflicted set. For each such power event P, enlarge X by adding the events in the
    auth chain of P which also belong to the full conflicted set."

    The auth chain is followed through the full conflicted set only (for v2.1 this is
    exactly the spec's set).
    """
    events = graph.events
    chosen: set[int] = set()
    stack = [n for n in full if is_power_event(events[n])]  # type: ignore[arg-type]
    chosen.update(stack)
    parents = graph.parents
    while stack:
        n = stack.pop()
        for p in parents(n):
            if p in full and p not in chosen:
                chosen.add(p)
                stack.append(p)
    return chosen


def resolve_state_v2_1(
    rv: RoomVersion,
    state_sets: Sequence[Mapping[StateKey, str]],
    get_event: Callable[[str], Event],
    auth_check: AuthCheck,
    *,
    room_id: str | None = None,
    auth_order: Callable[[str], int] | None = None,
) -> dict[StateKey, str]:
    """State resolution v2.1 (room v12): :func:`resolve_state_v2` with ``v2_1=True``."""
    return resolve_state_v2(
        rv, state_sets, get_event, auth_check, v2_1=True, room_id=room_id, auth_order=auth_order
    )
